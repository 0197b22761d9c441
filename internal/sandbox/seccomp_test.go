//go:build linux && amd64

package sandbox_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"

	"github.com/spry-run/spry/internal/runtime"
	"github.com/spry-run/spry/internal/sandbox"
)

// The seccomp filter is checked twice: by running the compiled program in
// x/net/bpf's VM against chosen system calls (TestSeccompFilterPolicy), and
// for real, with bubblewrap loading it in front of this test binary
// (TestSeccompSandbox, whose child half is TestSeccompChild), Deno and
// Node.

const (
	retAllow = unix.SECCOMP_RET_ALLOW
	retKill  = unix.SECCOMP_RET_KILL_PROCESS
	retEPERM = unix.SECCOMP_RET_ERRNO | uint32(unix.EPERM)
	retNOSYS = unix.SECCOMP_RET_ERRNO | uint32(unix.ENOSYS)

	// auditArchI386 is what a 64-bit process's int 0x80 calls report.
	auditArchI386 = unix.AUDIT_ARCH_I386

	// Flatpak-style ioctl requests the filter denies (x86_64 values).
	tiocsti   = 0x5412
	tioclinux = 0x541c

	// linux/personality.h and linux/userfaultfd.h, which x/sys lacks.
	readImpliesExec  = 0x0400000
	addrNoRandomize  = 0x0040000
	uffdUserModeOnly = 1
)

// forbidden are system calls the sandbox must never make, whatever their
// arguments.
var forbidden = map[string]uintptr{
	"mount": unix.SYS_MOUNT, "umount2": unix.SYS_UMOUNT2, "pivot_root": unix.SYS_PIVOT_ROOT,
	"chroot": unix.SYS_CHROOT, "ptrace": unix.SYS_PTRACE,
	"process_vm_readv": unix.SYS_PROCESS_VM_READV, "process_vm_writev": unix.SYS_PROCESS_VM_WRITEV,
	"kexec_load": unix.SYS_KEXEC_LOAD, "kexec_file_load": unix.SYS_KEXEC_FILE_LOAD,
	"bpf": unix.SYS_BPF, "keyctl": unix.SYS_KEYCTL, "add_key": unix.SYS_ADD_KEY,
	"request_key": unix.SYS_REQUEST_KEY, "unshare": unix.SYS_UNSHARE, "setns": unix.SYS_SETNS,
	"init_module": unix.SYS_INIT_MODULE, "finit_module": unix.SYS_FINIT_MODULE,
	"delete_module": unix.SYS_DELETE_MODULE, "reboot": unix.SYS_REBOOT,
	"swapon": unix.SYS_SWAPON, "swapoff": unix.SYS_SWAPOFF, "acct": unix.SYS_ACCT,
	"perf_event_open": unix.SYS_PERF_EVENT_OPEN, "userfaultfd": unix.SYS_USERFAULTFD,
	"io_uring_setup": unix.SYS_IO_URING_SETUP, "io_uring_enter": unix.SYS_IO_URING_ENTER,
	"io_uring_register": unix.SYS_IO_URING_REGISTER,
	"open_by_handle_at": unix.SYS_OPEN_BY_HANDLE_AT, "name_to_handle_at": unix.SYS_NAME_TO_HANDLE_AT,
	"lookup_dcookie": unix.SYS_LOOKUP_DCOOKIE, "quotactl": unix.SYS_QUOTACTL,
	"quotactl_fd": unix.SYS_QUOTACTL_FD, "syslog": unix.SYS_SYSLOG,
	"settimeofday": unix.SYS_SETTIMEOFDAY, "clock_settime": unix.SYS_CLOCK_SETTIME,
	"adjtimex": unix.SYS_ADJTIMEX, "clock_adjtime": unix.SYS_CLOCK_ADJTIME,
	"iopl": unix.SYS_IOPL, "ioperm": unix.SYS_IOPERM, "modify_ldt": unix.SYS_MODIFY_LDT,
	"mbind": unix.SYS_MBIND, "set_mempolicy": unix.SYS_SET_MEMPOLICY,
	"get_mempolicy": unix.SYS_GET_MEMPOLICY, "move_pages": unix.SYS_MOVE_PAGES,
	"migrate_pages": unix.SYS_MIGRATE_PAGES, "kcmp": unix.SYS_KCMP,
	"pidfd_getfd": unix.SYS_PIDFD_GETFD, "process_madvise": unix.SYS_PROCESS_MADVISE,
	"fsopen": unix.SYS_FSOPEN, "fsmount": unix.SYS_FSMOUNT, "fspick": unix.SYS_FSPICK,
	"fsconfig": unix.SYS_FSCONFIG, "open_tree": unix.SYS_OPEN_TREE, "move_mount": unix.SYS_MOVE_MOUNT,
	"mount_setattr": unix.SYS_MOUNT_SETATTR, "sethostname": unix.SYS_SETHOSTNAME,
	"setdomainname": unix.SYS_SETDOMAINNAME, "vhangup": unix.SYS_VHANGUP,
	"fanotify_init": unix.SYS_FANOTIFY_INIT, "uselib": unix.SYS_USELIB,
}

// needed are system calls Deno (V8, tokio) and Node (libuv) make, which the
// filter must allow whatever their arguments.
var needed = map[string]uintptr{
	"read": unix.SYS_READ, "write": unix.SYS_WRITE, "openat": unix.SYS_OPENAT, "close": unix.SYS_CLOSE,
	"mmap": unix.SYS_MMAP, "mprotect": unix.SYS_MPROTECT, "munmap": unix.SYS_MUNMAP,
	"madvise": unix.SYS_MADVISE, "mremap": unix.SYS_MREMAP, "brk": unix.SYS_BRK,
	"futex": unix.SYS_FUTEX, "futex_waitv": unix.SYS_FUTEX_WAITV,
	"epoll_create1": unix.SYS_EPOLL_CREATE1, "epoll_ctl": unix.SYS_EPOLL_CTL,
	"epoll_wait": unix.SYS_EPOLL_WAIT, "epoll_pwait": unix.SYS_EPOLL_PWAIT,
	"epoll_pwait2": unix.SYS_EPOLL_PWAIT2, "eventfd2": unix.SYS_EVENTFD2,
	"signalfd4": unix.SYS_SIGNALFD4, "timerfd_create": unix.SYS_TIMERFD_CREATE,
	"timerfd_settime": unix.SYS_TIMERFD_SETTIME, "getrandom": unix.SYS_GETRANDOM,
	"statx": unix.SYS_STATX, "newfstatat": unix.SYS_NEWFSTATAT, "memfd_create": unix.SYS_MEMFD_CREATE,
	"prctl": unix.SYS_PRCTL, "arch_prctl": unix.SYS_ARCH_PRCTL, "rseq": unix.SYS_RSEQ,
	"set_robust_list": unix.SYS_SET_ROBUST_LIST, "set_tid_address": unix.SYS_SET_TID_ADDRESS,
	"sched_getaffinity": unix.SYS_SCHED_GETAFFINITY, "sched_yield": unix.SYS_SCHED_YIELD,
	"membarrier": unix.SYS_MEMBARRIER, "pkey_alloc": unix.SYS_PKEY_ALLOC,
	"pkey_mprotect": unix.SYS_PKEY_MPROTECT, "rt_sigaction": unix.SYS_RT_SIGACTION,
	"rt_sigprocmask": unix.SYS_RT_SIGPROCMASK, "rt_sigreturn": unix.SYS_RT_SIGRETURN,
	"sigaltstack": unix.SYS_SIGALTSTACK, "tgkill": unix.SYS_TGKILL, "pipe2": unix.SYS_PIPE2,
	"accept4": unix.SYS_ACCEPT4, "connect": unix.SYS_CONNECT, "bind": unix.SYS_BIND,
	"listen": unix.SYS_LISTEN, "sendto": unix.SYS_SENDTO, "recvfrom": unix.SYS_RECVFROM,
	"sendmsg": unix.SYS_SENDMSG, "recvmsg": unix.SYS_RECVMSG, "shutdown": unix.SYS_SHUTDOWN,
	"socketpair": unix.SYS_SOCKETPAIR, "getsockopt": unix.SYS_GETSOCKOPT,
	"setsockopt": unix.SYS_SETSOCKOPT, "prlimit64": unix.SYS_PRLIMIT64, "uname": unix.SYS_UNAME,
	"sysinfo": unix.SYS_SYSINFO, "clock_gettime": unix.SYS_CLOCK_GETTIME,
	"clock_nanosleep": unix.SYS_CLOCK_NANOSLEEP, "execve": unix.SYS_EXECVE,
	"wait4": unix.SYS_WAIT4, "exit_group": unix.SYS_EXIT_GROUP, "getcwd": unix.SYS_GETCWD,
	"getdents64": unix.SYS_GETDENTS64, "fcntl": unix.SYS_FCNTL, "copy_file_range": unix.SYS_COPY_FILE_RANGE,
	"sendfile": unix.SYS_SENDFILE, "inotify_init1": unix.SYS_INOTIFY_INIT1,
	"pidfd_open": unix.SYS_PIDFD_OPEN, "close_range": unix.SYS_CLOSE_RANGE,
	"fork": unix.SYS_FORK, "vfork": unix.SYS_VFORK, "seccomp": unix.SYS_SECCOMP,
}

// filterVM loads the filter's bytes (not its source) into x/net/bpf's VM.
func filterVM(t *testing.T) *bpf.VM {
	t.Helper()
	prog, err := sandbox.SeccompFilter()
	if err != nil {
		t.Fatal(err)
	}
	if len(prog) == 0 || len(prog)%8 != 0 || len(prog)/8 > 4096 {
		t.Fatalf("program is %d bytes; want a whole number of 8-byte instructions, at most 4096", len(prog))
	}
	var insns []bpf.Instruction
	for b := prog; len(b) > 0; b = b[8:] {
		raw := bpf.RawInstruction{
			Op: binary.NativeEndian.Uint16(b[0:]),
			Jt: b[2],
			Jf: b[3],
			K:  binary.NativeEndian.Uint32(b[4:]),
		}
		insns = append(insns, raw.Disassemble())
	}
	vm, err := bpf.NewVM(insns)
	if err != nil {
		t.Fatal(err)
	}
	return vm
}

// verdict runs the filter on one system call. The VM reads its input as a
// packet, in network byte order; the filter only loads aligned 32-bit
// words, so writing struct seccomp_data's words big-endian gives it the
// values the kernel would.
func verdict(t *testing.T, vm *bpf.VM, arch, nr uint32, args ...uint64) uint32 {
	t.Helper()
	in := make([]byte, 64)
	binary.BigEndian.PutUint32(in[0:], nr)
	binary.BigEndian.PutUint32(in[4:], arch)
	for i, a := range args {
		// args[i] is a u64; on x86_64 its low word comes first.
		binary.BigEndian.PutUint32(in[16+8*i:], uint32(a))
		binary.BigEndian.PutUint32(in[20+8*i:], uint32(a>>32))
	}
	v, err := vm.Run(in)
	if err != nil {
		t.Fatal(err)
	}
	return uint32(v)
}

func TestSeccompFilterPolicy(t *testing.T) {
	vm := filterVM(t)
	x86 := uint32(unix.AUDIT_ARCH_X86_64)

	a, err := sandbox.SeccompFilter()
	if err != nil {
		t.Fatal(err)
	}
	a[0] ^= 0xff
	if b, _ := sandbox.SeccompFilter(); bytes.Equal(a, b) {
		t.Error("SeccompFilter returns its cached slice, which callers can change")
	}

	// Whatever the arguments (those that make the rules below allow).
	someArgs := [][]uint64{nil, {unix.AF_UNIX, unix.SOCK_STREAM}, {0xffffffff, 0, 0}}
	for name, nr := range forbidden {
		for _, args := range someArgs {
			if got := verdict(t, vm, x86, uint32(nr), args...); got != retEPERM {
				t.Errorf("%s%v: verdict %#x, want EPERM", name, args, got)
			}
		}
	}
	for name, nr := range needed {
		if got := verdict(t, vm, x86, uint32(nr), 0xffffffffffffffff, 0xffffffffffffffff); got != retAllow {
			t.Errorf("%s: verdict %#x, want allow", name, got)
		}
	}

	ns := map[string]uint64{
		"CLONE_NEWUSER": unix.CLONE_NEWUSER, "CLONE_NEWNS": unix.CLONE_NEWNS,
		"CLONE_NEWPID": unix.CLONE_NEWPID, "CLONE_NEWNET": unix.CLONE_NEWNET,
		"CLONE_NEWIPC": unix.CLONE_NEWIPC, "CLONE_NEWUTS": unix.CLONE_NEWUTS,
		"CLONE_NEWCGROUP": unix.CLONE_NEWCGROUP,
	}
	const threadFlags = unix.CLONE_VM | unix.CLONE_FS | unix.CLONE_FILES | unix.CLONE_SIGHAND |
		unix.CLONE_THREAD | unix.CLONE_SYSVSEM | unix.CLONE_SETTLS | unix.CLONE_PARENT_SETTID |
		unix.CLONE_CHILD_CLEARTID
	for name, flag := range ns {
		if got := verdict(t, vm, x86, unix.SYS_CLONE, threadFlags|flag); got != retEPERM {
			t.Errorf("clone(%s): verdict %#x, want EPERM", name, got)
		}
	}
	for _, flags := range []uint64{threadFlags, unix.CLONE_VM | unix.CLONE_VFORK | uint64(unix.SIGCHLD), uint64(unix.SIGCHLD), 0xffffffff00000000} {
		if got := verdict(t, vm, x86, unix.SYS_CLONE, flags); got != retAllow {
			t.Errorf("clone(%#x): verdict %#x, want allow", flags, got)
		}
	}
	if got := verdict(t, vm, x86, unix.SYS_CLONE3, 0, 88); got != retNOSYS {
		t.Errorf("clone3: verdict %#x, want ENOSYS", got)
	}

	sockets := []struct {
		domain, typ, proto uint64
		want               uint32
	}{
		{unix.AF_UNIX, unix.SOCK_STREAM | unix.SOCK_CLOEXEC | unix.SOCK_NONBLOCK, 0, retAllow},
		{unix.AF_UNIX, unix.SOCK_DGRAM, 0, retAllow},
		{unix.AF_UNIX, unix.SOCK_SEQPACKET, 0, retAllow},
		{unix.AF_INET, unix.SOCK_STREAM, unix.IPPROTO_TCP, retAllow},
		{unix.AF_INET, unix.SOCK_DGRAM | unix.SOCK_CLOEXEC, 0, retAllow},
		{unix.AF_INET6, unix.SOCK_STREAM, 0, retAllow},
		{unix.AF_INET6, unix.SOCK_DGRAM, unix.IPPROTO_UDP, retAllow},
		{unix.AF_INET, unix.SOCK_STREAM | unix.SOCK_NONBLOCK, unix.IPPROTO_TCP, retAllow},
		{unix.AF_INET6, unix.SOCK_DGRAM, unix.IPPROTO_ICMPV6, retEPERM},
		{unix.AF_INET, unix.SOCK_DGRAM, unix.IPPROTO_ICMP, retEPERM},
		{unix.AF_INET, unix.SOCK_STREAM, unix.IPPROTO_SCTP, retEPERM},
		{unix.AF_INET6, unix.SOCK_SEQPACKET, unix.IPPROTO_SCTP, retEPERM},
		{unix.AF_INET, unix.SOCK_SEQPACKET, 0, retEPERM},
		{unix.AF_INET, unix.SOCK_DGRAM, unix.IPPROTO_UDPLITE, retEPERM},
		{unix.AF_INET6, unix.SOCK_STREAM, unix.IPPROTO_MPTCP, retEPERM},
		{unix.AF_INET, unix.SOCK_DCCP, unix.IPPROTO_DCCP, retEPERM},
		{unix.AF_INET, unix.SOCK_STREAM, 1<<32 | unix.IPPROTO_TCP, retAllow},
		{unix.AF_INET, unix.SOCK_STREAM, 1<<32 | unix.IPPROTO_SCTP, retEPERM},
		{unix.AF_NETLINK, unix.SOCK_RAW | unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE, retAllow},
		{unix.AF_NETLINK, unix.SOCK_DGRAM, unix.NETLINK_ROUTE, retAllow},
		{unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_ICMP, retEPERM},
		{unix.AF_INET6, unix.SOCK_RAW | unix.SOCK_CLOEXEC, unix.IPPROTO_RAW, retEPERM},
		{unix.AF_INET, unix.SOCK_PACKET, 0, retEPERM},
		{unix.AF_UNIX, unix.SOCK_RAW, 0, retEPERM},
		{unix.AF_PACKET, unix.SOCK_RAW, 0x0300, retEPERM},
		{unix.AF_PACKET, unix.SOCK_DGRAM, 0, retEPERM},
		{unix.AF_NETLINK, unix.SOCK_RAW, unix.NETLINK_AUDIT, retEPERM},
		{unix.AF_NETLINK, unix.SOCK_RAW, unix.NETLINK_NETFILTER, retEPERM},
		{unix.AF_VSOCK, unix.SOCK_STREAM, 0, retEPERM},
		{unix.AF_ALG, unix.SOCK_SEQPACKET, 0, retEPERM},
		{unix.AF_BLUETOOTH, unix.SOCK_STREAM, 0, retEPERM},
		// The kernel reads the domain as an int: the high word is ignored.
		{1<<32 | unix.AF_INET, unix.SOCK_STREAM, 0, retAllow},
		{1<<32 | unix.AF_PACKET, unix.SOCK_DGRAM, 0, retEPERM},
	}
	for _, s := range sockets {
		if got := verdict(t, vm, x86, unix.SYS_SOCKET, s.domain, s.typ, s.proto); got != s.want {
			t.Errorf("socket(%#x, %#x, %d): verdict %#x, want %#x", s.domain, s.typ, s.proto, got, s.want)
		}
	}

	for _, p := range []uint64{0, 0x8, 0x20000, 0x20008, 0xffffffff} {
		if got := verdict(t, vm, x86, unix.SYS_PERSONALITY, p); got != retAllow {
			t.Errorf("personality(%#x): verdict %#x, want allow", p, got)
		}
	}
	for _, p := range []uint64{readImpliesExec, addrNoRandomize, 0x0004 /* PER_SVR4 */, 0x0008 | readImpliesExec} {
		if got := verdict(t, vm, x86, unix.SYS_PERSONALITY, p); got != retEPERM {
			t.Errorf("personality(%#x): verdict %#x, want EPERM", p, got)
		}
	}

	for req, want := range map[uint64]uint32{tiocsti: retEPERM, tioclinux: retEPERM, unix.TCGETS: retAllow, unix.TIOCINQ: retAllow, 0x5421 /* FIONBIO */ : retAllow} {
		if got := verdict(t, vm, x86, unix.SYS_IOCTL, 0, req); got != want {
			t.Errorf("ioctl(%#x): verdict %#x, want %#x", req, got, want)
		}
	}

	// Foreign ABIs die rather than have their numbers read as x86_64's.
	if got := verdict(t, vm, auditArchI386, 0 /* i386 restart_syscall */); got != retKill {
		t.Errorf("i386 call: verdict %#x, want kill", got)
	}
	if got := verdict(t, vm, x86, 0x40000000|unix.SYS_READ); got != retKill {
		t.Errorf("x32 read: verdict %#x, want kill", got)
	}
	if got := verdict(t, vm, x86, 0x40000000|545 /* x32 execveat */); got != retKill {
		t.Errorf("x32 execveat: verdict %#x, want kill", got)
	}

	// Unknown and future syscalls get the default, EPERM.
	for _, nr := range []uint32{472, 511, 1000, 0x3fffffff} {
		if got := verdict(t, vm, x86, nr); got != retEPERM {
			t.Errorf("syscall %d: verdict %#x, want EPERM", nr, got)
		}
	}
}

// A probe is one system call the sandboxed child makes. Its arguments are
// chosen so that, were the filter to let it through, the kernel would fail
// it harmlessly (a bad fd, a missing path, invalid flags) even for root.
type probe struct {
	name string
	// want is the errno the call must fail with under the filter, or 0 if
	// it must succeed.
	want unix.Errno
	// control marks probes the kernel itself fails differently (with
	// neither privileges nor a filter): that want differs proves it is
	// the filter's doing.
	control bool
	run     func() error
}

func errnoOf(_, _ uintptr, e unix.Errno) error {
	if e != 0 {
		return e
	}
	return nil
}

func sys(trap uintptr, args ...uintptr) error {
	var a [6]uintptr
	copy(a[:], args)
	return errnoOf(unix.Syscall6(trap, a[0], a[1], a[2], a[3], a[4], a[5]))
}

// sysPath is sys with a C string for path as the argument at index i.
func sysPath(trap uintptr, i int, path string, args ...uintptr) error {
	p, err := unix.BytePtrFromString(path)
	if err != nil {
		return err
	}
	err = sys(trap, slices.Insert(args, i, uintptr(unsafe.Pointer(p)))...)
	goruntime.KeepAlive(p)
	return err
}

func socketProbe(domain, typ, proto int) func() error {
	return func() error {
		fd, err := unix.Socket(domain, typ, proto)
		if err == nil {
			unix.Close(fd)
		}
		return err
	}
}

func cloneProbe(flags uintptr) func() error {
	// CLONE_SIGHAND without CLONE_VM is invalid, so no process is ever
	// created: the kernel answers EINVAL once the filter lets it through.
	return func() error {
		return errnoOf(unix.RawSyscall6(unix.SYS_CLONE, flags|unix.CLONE_SIGHAND, 0, 0, 0, 0, 0))
	}
}

func ioctlProbe(req uintptr) func() error {
	return func() error {
		f, err := os.Open("/dev/null")
		if err != nil {
			return err
		}
		defer f.Close()
		return sys(unix.SYS_IOCTL, f.Fd(), req, 0)
	}
}

var probes = []probe{
	// Denied outright.
	{"mount", unix.EPERM, true, func() error {
		return unix.Mount("none", "/nonexistent-spry", "tmpfs", 0, "")
	}},
	{"umount2", unix.EPERM, true, func() error { return unix.Unmount("/", 0x7fffffff) }},
	{"pivot_root", unix.EPERM, false, func() error {
		return unix.PivotRoot("/nonexistent-spry", "/nonexistent-spry")
	}},
	{"chroot", unix.EPERM, true, func() error { return unix.Chroot("/nonexistent-spry") }},
	{"ptrace attach", unix.EPERM, true, func() error { return unix.PtraceAttach(1 << 30) }},
	{"process_vm_readv", unix.EPERM, true, func() error {
		return sys(unix.SYS_PROCESS_VM_READV, uintptr(os.Getpid()), 0, 0, 0, 0, 0)
	}},
	{"kexec_load", unix.EPERM, false, func() error { return sys(unix.SYS_KEXEC_LOAD, 0, 0, 0, 0x8000) }},
	{"kexec_file_load", unix.EPERM, false, func() error {
		return sys(unix.SYS_KEXEC_FILE_LOAD, ^uintptr(0), ^uintptr(0), 0, 0, 0x80000000)
	}},
	{"bpf", unix.EPERM, false, func() error { return sys(unix.SYS_BPF, 0x7fff, 0, 0) }},
	{"keyctl", unix.EPERM, true, func() error { return sys(unix.SYS_KEYCTL, 0x7fffffff) }},
	{"add_key", unix.EPERM, true, func() error { _, err := unix.AddKey("", "spry", nil, 0); return err }},
	{"request_key", unix.EPERM, true, func() error { _, err := unix.RequestKey("", "spry", "", 0); return err }},
	{"unshare user", unix.EPERM, true, func() error { return unix.Unshare(unix.CLONE_NEWUSER) }},
	{"unshare mount", unix.EPERM, false, func() error { return unix.Unshare(unix.CLONE_NEWNS) }},
	{"setns", unix.EPERM, true, func() error { return unix.Setns(-1, 0) }},
	{"init_module", unix.EPERM, false, func() error { return unix.InitModule(nil, "") }},
	{"finit_module", unix.EPERM, false, func() error { return unix.FinitModule(-1, "", 0) }},
	{"delete_module", unix.EPERM, false, func() error { return unix.DeleteModule("spry-none", unix.O_NONBLOCK) }},
	// Zero magic numbers: even a permitted reboot(2) fails.
	{"reboot", unix.EPERM, false, func() error { return sys(unix.SYS_REBOOT, 0, 0, 0, 0) }},
	{"swapon", unix.EPERM, false, func() error { return sysPath(unix.SYS_SWAPON, 0, "/nonexistent-spry", 0) }},
	{"acct", unix.EPERM, false, func() error { return unix.Acct("/nonexistent-spry") }},
	{"perf_event_open", unix.EPERM, true, func() error {
		return sys(unix.SYS_PERF_EVENT_OPEN, 0, 0, ^uintptr(0), ^uintptr(0), 0)
	}},
	{"userfaultfd", unix.EPERM, true, func() error {
		fd, _, e := unix.Syscall(unix.SYS_USERFAULTFD, unix.O_CLOEXEC|uffdUserModeOnly, 0, 0)
		if e != 0 {
			return e
		}
		return unix.Close(int(fd))
	}},
	{"io_uring_setup", unix.EPERM, false, func() error { return sys(unix.SYS_IO_URING_SETUP, 1, 0) }},
	{"io_uring_enter", unix.EPERM, true, func() error { return sys(unix.SYS_IO_URING_ENTER, ^uintptr(0), 0, 0, 0, 0, 0) }},
	{"io_uring_register", unix.EPERM, true, func() error { return sys(unix.SYS_IO_URING_REGISTER, ^uintptr(0), 0, 0, 0) }},
	{"name_to_handle_at", unix.EPERM, true, func() error {
		return sysPath(unix.SYS_NAME_TO_HANDLE_AT, 1, "/", ^uintptr(0), 0, 0, 0x7fff0000)
	}},
	{"open_by_handle_at", unix.EPERM, false, func() error { return sys(unix.SYS_OPEN_BY_HANDLE_AT, ^uintptr(0), 0, 0) }},
	{"lookup_dcookie", unix.EPERM, false, func() error { return sys(unix.SYS_LOOKUP_DCOOKIE, 0, 0, 0) }},
	{"syslog", unix.EPERM, false, func() error { _, err := unix.Klogctl(unix.SYSLOG_ACTION_SIZE_BUFFER, nil); return err }},
	{"settimeofday", unix.EPERM, false, func() error { return sys(unix.SYS_SETTIMEOFDAY, 0, 0) }},
	{"clock_settime", unix.EPERM, true, func() error { return sys(unix.SYS_CLOCK_SETTIME, unix.CLOCK_REALTIME, 0) }},
	{"adjtimex", unix.EPERM, true, func() error { return sys(unix.SYS_ADJTIMEX, 0) }},
	{"personality READ_IMPLIES_EXEC", unix.EPERM, true, func() error {
		// personality(2) never fails; the old persona comes back in r1.
		old, _, e := unix.Syscall(unix.SYS_PERSONALITY, readImpliesExec, 0, 0)
		if e != 0 {
			return e
		}
		unix.Syscall(unix.SYS_PERSONALITY, old, 0, 0)
		return nil
	}},
	{"iopl", unix.EPERM, true, func() error { return sys(unix.SYS_IOPL, 4) }},
	{"ioperm", unix.EPERM, true, func() error { return sys(unix.SYS_IOPERM, 0x10000, 1, 1) }},
	{"modify_ldt", unix.EPERM, true, func() error { return sys(unix.SYS_MODIFY_LDT, 99, 0, 0) }},
	{"mbind", unix.EPERM, true, func() error { return sys(unix.SYS_MBIND, 0, 0, 0, 0, 0, 0) }},
	{"set_mempolicy", unix.EPERM, true, func() error { return sys(unix.SYS_SET_MEMPOLICY, 0, 0, 0) }},
	{"move_pages", unix.EPERM, true, func() error { return sys(unix.SYS_MOVE_PAGES, 0, 0, 0, 0, 0, 0) }},
	{"kcmp", unix.EPERM, true, func() error {
		pid := uintptr(os.Getpid())
		return sys(unix.SYS_KCMP, pid, pid, 1 /* KCMP_VM */, 0, 0)
	}},
	{"pidfd_getfd", unix.EPERM, true, func() error { return sys(unix.SYS_PIDFD_GETFD, ^uintptr(0), 0, 0) }},
	{"fsopen", unix.EPERM, false, func() error { return sysPath(unix.SYS_FSOPEN, 0, "spry-none", 0) }},
	{"sethostname", unix.EPERM, false, func() error { return sys(unix.SYS_SETHOSTNAME, 0, 1000) }},
	{"clone3", unix.ENOSYS, true, func() error { return sys(unix.SYS_CLONE3, 0, 0) }},
	{"clone CLONE_NEWUSER", unix.EPERM, true, cloneProbe(unix.CLONE_NEWUSER)},
	{"clone CLONE_NEWNS", unix.EPERM, true, cloneProbe(unix.CLONE_NEWNS)},
	{"clone CLONE_NEWPID", unix.EPERM, true, cloneProbe(unix.CLONE_NEWPID)},
	{"clone CLONE_NEWNET", unix.EPERM, true, cloneProbe(unix.CLONE_NEWNET)},
	{"clone CLONE_NEWIPC", unix.EPERM, true, cloneProbe(unix.CLONE_NEWIPC)},
	{"clone CLONE_NEWUTS", unix.EPERM, true, cloneProbe(unix.CLONE_NEWUTS)},
	{"clone CLONE_NEWCGROUP", unix.EPERM, true, cloneProbe(unix.CLONE_NEWCGROUP)},
	{"socket AF_INET SOCK_RAW", unix.EPERM, false, socketProbe(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_ICMP)},
	{"socket AF_PACKET", unix.EPERM, false, socketProbe(unix.AF_PACKET, unix.SOCK_RAW, 0x0300)},
	{"socket AF_PACKET SOCK_DGRAM", unix.EPERM, false, socketProbe(unix.AF_PACKET, unix.SOCK_DGRAM, 0x0300)},
	{"socket AF_ALG", unix.EPERM, true, socketProbe(unix.AF_ALG, unix.SOCK_SEQPACKET, 0)},
	{"socket AF_VSOCK", unix.EPERM, true, socketProbe(unix.AF_VSOCK, unix.SOCK_STREAM, 0)},
	// No control: unfiltered, the call would load the host's sctp module.
	{"socket SCTP", unix.EPERM, false, socketProbe(unix.AF_INET, unix.SOCK_STREAM, unix.IPPROTO_SCTP)},
	{"socket UDP-Lite", unix.EPERM, true, socketProbe(unix.AF_INET6, unix.SOCK_DGRAM, unix.IPPROTO_UDPLITE)},
	{"socket NETLINK_KOBJECT_UEVENT", unix.EPERM, true, socketProbe(unix.AF_NETLINK, unix.SOCK_RAW, unix.NETLINK_KOBJECT_UEVENT)},
	{"ioctl TIOCSTI", unix.EPERM, true, ioctlProbe(tiocsti)},
	{"ioctl TIOCLINUX", unix.EPERM, true, ioctlProbe(tioclinux)},

	// Allowed: what the runtimes need.
	{"clone without namespaces", unix.EINVAL, false, cloneProbe(0)},
	{"personality query", 0, false, func() error { return sys(unix.SYS_PERSONALITY, 0xffffffff) }},
	{"file in /tmp", 0, false, func() error {
		p := "/tmp/spry-probe.txt"
		if err := os.WriteFile(p, []byte("hello"), 0o600); err != nil {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if string(b) != "hello" {
			return fmt.Errorf("read back %q", b)
		}
		return os.Remove(p)
	}},
	{"getrandom", 0, false, func() error {
		b := make([]byte, 32)
		_, err := unix.Getrandom(b, 0)
		return err
	}},
	{"threads", 0, false, func() error {
		// Each goroutine locks a thread and ends locked, so the runtime
		// must clone new threads (and let these exit).
		var wg sync.WaitGroup
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				goruntime.LockOSThread()
				time.Sleep(time.Millisecond)
			}()
		}
		wg.Wait()
		return nil
	}},
	{"fork and exec", 0, false, func() error {
		return exec.Command("/bin/sh", "-c", "exit 0").Run()
	}},
	{"socket AF_INET SOCK_STREAM", 0, false, socketProbe(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)},
	{"socket AF_INET6 SOCK_DGRAM", 0, false, socketProbe(unix.AF_INET6, unix.SOCK_DGRAM, 0)},
	{"socket AF_INET TCP", 0, false, socketProbe(unix.AF_INET, unix.SOCK_STREAM, unix.IPPROTO_TCP)},
	{"socket AF_INET6 UDP", 0, false, socketProbe(unix.AF_INET6, unix.SOCK_DGRAM, unix.IPPROTO_UDP)},
	{"socket AF_UNIX SOCK_STREAM", 0, false, socketProbe(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK, 0)},
	{"socket AF_UNIX SOCK_SEQPACKET", 0, false, socketProbe(unix.AF_UNIX, unix.SOCK_SEQPACKET, 0)},
	{"socket NETLINK_ROUTE", 0, false, socketProbe(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)},
	{"socketpair", 0, false, func() error {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
		if err == nil {
			unix.Close(fds[0])
			unix.Close(fds[1])
		}
		return err
	}},
	{"unix socket round trip", 0, false, func() error {
		l, err := netListenUnix("/tmp/spry-probe.sock")
		if err != nil {
			return err
		}
		return l()
	}},
	{"executable memory", 0, false, func() error {
		// What a JIT does: write code, then make it executable.
		b, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
		if err != nil {
			return err
		}
		defer unix.Munmap(b)
		b[0] = 0xc3 // ret
		if err := unix.Mprotect(b, unix.PROT_READ|unix.PROT_EXEC); err != nil {
			return err
		}
		return unix.Madvise(b, unix.MADV_DONTNEED)
	}},
	{"event fds", 0, false, func() error {
		var fds []int
		defer func() {
			for _, fd := range fds {
				unix.Close(fd)
			}
		}()
		ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
		if err != nil {
			return fmt.Errorf("epoll_create1: %w", err)
		}
		fds = append(fds, ep)
		ev, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
		if err != nil {
			return fmt.Errorf("eventfd: %w", err)
		}
		fds = append(fds, ev)
		if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, ev, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(ev)}); err != nil {
			return fmt.Errorf("epoll_ctl: %w", err)
		}
		if _, err := unix.Write(ev, []byte{1, 0, 0, 0, 0, 0, 0, 0}); err != nil {
			return fmt.Errorf("eventfd write: %w", err)
		}
		events := make([]unix.EpollEvent, 1)
		if n, err := unix.EpollWait(ep, events, 1000); err != nil || n != 1 {
			return fmt.Errorf("epoll_wait: %d, %v", n, err)
		}
		tfd, err := unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_CLOEXEC)
		if err != nil {
			return fmt.Errorf("timerfd_create: %w", err)
		}
		fds = append(fds, tfd)
		if err := unix.TimerfdSettime(tfd, 0, &unix.ItimerSpec{Value: unix.Timespec{Nsec: 1000}}, nil); err != nil {
			return fmt.Errorf("timerfd_settime: %w", err)
		}
		var mask unix.Sigset_t
		mask.Val[0] = 1 << (unix.SIGUSR2 - 1)
		sfd, _, e := unix.Syscall6(unix.SYS_SIGNALFD4, ^uintptr(0), uintptr(unsafe.Pointer(&mask)), 8, unix.SFD_CLOEXEC, 0, 0)
		if e != 0 {
			return fmt.Errorf("signalfd4: %w", e)
		}
		fds = append(fds, int(sfd))
		mfd, err := unix.MemfdCreate("spry", unix.MFD_CLOEXEC)
		if err != nil {
			return fmt.Errorf("memfd_create: %w", err)
		}
		fds = append(fds, mfd)
		var p [2]int
		if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
			return fmt.Errorf("pipe2: %w", err)
		}
		fds = append(fds, p[0], p[1])
		return nil
	}},
	{"statx", 0, false, func() error {
		var st unix.Statx_t
		return unix.Statx(unix.AT_FDCWD, "/proc/self/exe", 0, unix.STATX_BASIC_STATS, &st)
	}},
	{"prctl", 0, false, func() error { return sysPath(unix.SYS_PRCTL, 1, "spry-probe", unix.PR_SET_NAME, 0, 0, 0) }},
	{"ioctl FIONREAD", 0, false, func() error {
		var p [2]int
		if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
			return err
		}
		defer unix.Close(p[0])
		defer unix.Close(p[1])
		_, err := unix.IoctlGetInt(p[0], unix.TIOCINQ)
		return err
	}},
}

// netListenUnix listens on a Unix socket at path and returns a function
// that connects to it and checks that bytes cross.
func netListenUnix(path string) (func() error, error) {
	ln, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	addr := &unix.SockaddrUnix{Name: path}
	if err := unix.Bind(ln, addr); err != nil {
		unix.Close(ln)
		return nil, err
	}
	if err := unix.Listen(ln, 1); err != nil {
		unix.Close(ln)
		return nil, err
	}
	return func() error {
		defer os.Remove(path)
		defer unix.Close(ln)
		c, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(c)
		if err := unix.Connect(c, addr); err != nil {
			return err
		}
		s, _, err := unix.Accept4(ln, unix.SOCK_CLOEXEC)
		if err != nil {
			return err
		}
		defer unix.Close(s)
		if _, err := unix.Write(c, []byte("ping")); err != nil {
			return err
		}
		b := make([]byte, 4)
		if n, err := unix.Read(s, b); err != nil || string(b[:n]) != "ping" {
			return fmt.Errorf("read %q, %v", b[:n], err)
		}
		return nil
	}, nil
}

const probeEnv = "SPRY_SECCOMP_PROBE"

// TestSeccompChild is the sandboxed half of TestSeccompSandbox: it runs
// every probe and prints one "probe NAME RESULT" line for each, RESULT
// being the errno number (0 for success) or "error: ..." for a failure
// that is not an errno.
func TestSeccompChild(t *testing.T) {
	if os.Getenv(probeEnv) == "" {
		t.Skip("runs only inside the sandbox TestSeccompSandbox starts")
	}
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if mode, ok := strings.CutPrefix(line, "Seccomp:"); ok {
			fmt.Printf("seccomp %s\n", strings.TrimSpace(mode))
		}
	}
	for _, p := range probes {
		done := make(chan error)
		go func() {
			// Never unlocked: the thread exits with the goroutine, and
			// takes along whatever per-thread state (personality,
			// namespaces) a probe changed when run without the filter.
			goruntime.LockOSThread()
			done <- p.run()
		}()
		err := <-done
		var errno unix.Errno
		switch {
		case err == nil:
			fmt.Printf("probe %s 0\n", p.name)
		case errors.As(err, &errno):
			fmt.Printf("probe %s %d\n", p.name, int(errno))
		default:
			fmt.Printf("probe %s error: %s\n", p.name, strings.ReplaceAll(err.Error(), "\n", " "))
		}
	}
}

// bwrapOrSkip returns bubblewrap's path, or skips the test where the
// sandbox cannot run.
func bwrapOrSkip(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: the sandbox tests run bubblewrap as root and as uid 65534")
	}
	p, err := exec.LookPath("bwrap")
	if err != nil {
		t.Skip("bubblewrap (bwrap) is not installed")
	}
	return p
}

// probeBinary copies this test binary where other uids can read it
// (bubblewrap opens bind sources as the uid it runs as), to run a child
// test inside a sandbox; it returns the directory and the copy's path.
func probeBinary(t *testing.T) (dir, bin string) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir = reachableDir(t)
	bin = filepath.Join(dir, "probe.test")
	copyFile(t, self, bin, 0o755)
	return dir, bin
}

// reachableDir makes a directory under /tmp that uid 65534 can read.
func reachableDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "spry-seccomp-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// sandboxRun describes one program run under bubblewrap.
type sandboxRun struct {
	uid    int  // 0 runs bubblewrap as root (uid 0 in its user namespace)
	filter bool // load SeccompFilter with --seccomp
	binds  [][2]string
	env    []string // K=V, set inside with --setenv
	argv   []string
}

// run runs r and returns its stdout, stderr and error.
func (r sandboxRun) run(t *testing.T, bwrap string) (string, string, error) {
	t.Helper()
	args := []string{
		"--unshare-all", "--die-with-parent", "--new-session",
		"--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp",
		"--chdir", "/tmp", "--clearenv",
		"--setenv", "PATH", "/usr/local/bin:/usr/bin:/bin",
	}
	args = append(args, hostRoot()...)
	for _, b := range r.binds {
		args = append(args, "--ro-bind", b[0], b[1])
	}
	args = append(args, "--remount-ro", "/")
	for _, e := range r.env {
		k, v, _ := strings.Cut(e, "=")
		args = append(args, "--setenv", k, v)
	}
	var extra []*os.File
	if r.filter {
		prog, err := sandbox.SeccompFilter()
		if err != nil {
			t.Fatal(err)
		}
		// bwrap reads the program from fd 3 until EOF; it is far smaller
		// than a pipe's buffer, so it can be written before bwrap starts.
		pr, pw, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		defer pr.Close()
		if _, err := pw.Write(prog); err != nil {
			t.Fatal(err)
		}
		pw.Close()
		extra = append(extra, pr)
		args = append(args, "--seccomp", "3")
	}
	args = append(args, "--")
	args = append(args, r.argv...)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bwrap, args...)
	cmd.ExtraFiles = extra
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if r.uid != 0 {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uint32(r.uid), Gid: uint32(r.uid), Groups: []uint32{}}
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	return stdout.String(), stderr.String(), err
}

// hostRoot gives the sandbox the host's /usr and /etc, and its /bin, /lib,
// ... as they are (links into /usr on a merged-/usr system), read-only.
// Unlike binding all of / this leaves bubblewrap's own root, a tmpfs,
// where other binds (/code) can create their mount points.
func hostRoot() []string {
	args := []string{"--ro-bind", "/usr", "/usr", "--ro-bind", "/etc", "/etc"}
	for _, name := range []string{"/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"} {
		fi, err := os.Lstat(name)
		switch {
		case err != nil:
		case fi.Mode()&os.ModeSymlink != 0:
			if target, err := os.Readlink(name); err == nil {
				args = append(args, "--symlink", target, name)
			}
		case fi.IsDir():
			args = append(args, "--ro-bind", name, name)
		}
	}
	return args
}

var users = []struct {
	name string
	uid  int
}{{"root", 0}, {"nobody", 65534}}

func TestSeccompSandbox(t *testing.T) {
	bwrap := bwrapOrSkip(t)
	_, bin := probeBinary(t)

	for _, u := range users {
		t.Run(u.name, func(t *testing.T) {
			results := map[bool]map[string]string{}
			for _, filter := range []bool{true, false} {
				r := sandboxRun{
					uid:    u.uid,
					filter: filter,
					binds:  [][2]string{{bin, "/probe/probe.test"}},
					env:    []string{probeEnv + "=1", "HOME=/tmp"},
					argv:   []string{"/probe/probe.test", "-test.run=^TestSeccompChild$", "-test.count=1"},
				}
				stdout, stderr, err := r.run(t, bwrap)
				if err != nil {
					t.Fatalf("child (filter %v): %v\nstdout:\n%s\nstderr:\n%s", filter, err, stdout, stderr)
				}
				res, mode := parseProbes(stdout)
				wantMode := "0"
				if filter {
					wantMode = "2"
				}
				if mode != wantMode {
					t.Fatalf("child (filter %v) runs in seccomp mode %q, want %s\n%s", filter, mode, wantMode, stdout)
				}
				results[filter] = res
			}
			for _, p := range probes {
				t.Run(p.name, func(t *testing.T) {
					want := strconv.Itoa(int(p.want))
					got, ok := results[true][p.name]
					if !ok {
						t.Fatal("the child did not report this probe")
					}
					t.Logf("with the filter: %s; without: %s", describe(got), describe(results[false][p.name]))
					if got != want {
						t.Errorf("under the filter: %s, want %s", describe(got), describe(want))
					}
					if p.control && results[false][p.name] == want {
						t.Errorf("without the filter the kernel also answers %s, so the probe does not show the filter works", describe(want))
					}
				})
			}
		})
	}
}

func parseProbes(out string) (results map[string]string, seccompMode string) {
	results = map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		if m, ok := strings.CutPrefix(line, "seccomp "); ok {
			seccompMode = m
			continue
		}
		rest, ok := strings.CutPrefix(line, "probe ")
		if !ok {
			continue
		}
		if i := strings.Index(rest, " error: "); i >= 0 {
			results[rest[:i]] = rest[i+1:]
			continue
		}
		if i := strings.LastIndexByte(rest, ' '); i >= 0 {
			results[rest[:i]] = rest[i+1:]
		}
	}
	return results, seccompMode
}

// describe turns a probe result into words: "0" is success, a number an
// errno.
func describe(result string) string {
	n, err := strconv.Atoi(result)
	switch {
	case err != nil:
		return result
	case n == 0:
		return "success"
	default:
		return fmt.Sprintf("%s (%d)", unix.ErrnoName(unix.Errno(n)), n)
	}
}

func copyFile(t *testing.T, src, dst string, mode os.FileMode) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

func writeFiles(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func sha256Hex(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// denoScript exercises what a function instance does: timers, WebCrypto,
// a module Worker, files in /tmp, and an HTTP server on a Unix socket that
// it calls itself. It prints OK.
const denoScript = `
const fail = (msg) => { console.error(msg); Deno.exit(1); };

await new Promise((resolve) => setTimeout(resolve, 10));

const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode("spry"));
const hex = [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
if (hex !== "%s") fail("sha-256: " + hex);

const worker = new Worker(new URL("./worker.js", import.meta.url), { type: "module" });
const fib = await new Promise((resolve, reject) => {
  worker.onmessage = (e) => resolve(e.data);
  worker.onerror = (e) => { e.preventDefault(); reject(new Error(e.message)); };
  worker.postMessage(20);
});
worker.terminate();
if (fib !== 6765) fail("worker: " + fib);

await Deno.writeTextFile("/tmp/deno.txt", "hello");
if (await Deno.readTextFile("/tmp/deno.txt") !== "hello") fail("file");

const path = "/tmp/deno.sock";
const ac = new AbortController();
let listening;
const ready = new Promise((resolve) => { listening = resolve; });
const server = Deno.serve(
  { path, signal: ac.signal, onListen: () => listening() },
  (req) => new Response("pong " + new URL(req.url).pathname),
);
await ready;
const conn = await Deno.connect({ transport: "unix", path });
await conn.write(new TextEncoder().encode("GET /ping HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"));
let response = "";
const buf = new Uint8Array(4096);
for (;;) {
  const n = await conn.read(buf);
  if (n === null) break;
  response += new TextDecoder().decode(buf.subarray(0, n));
}
conn.close();
if (!response.startsWith("HTTP/1.1 200") || !response.endsWith("pong /ping")) fail("http: " + response);
ac.abort();
await server.finished;

console.log("OK");
`

const denoWorker = `
const fib = (n) => (n < 2 ? n : fib(n - 1) + fib(n - 2));
self.onmessage = (e) => self.postMessage(fib(e.data));
`

func TestSeccompDeno(t *testing.T) {
	bwrap := bwrapOrSkip(t)
	deno, err := runtime.FindDeno("")
	if err != nil {
		t.Skip(err)
	}
	deno, err = filepath.Abs(deno)
	if err != nil {
		t.Fatal(err)
	}
	code := reachableDir(t)
	if !sandbox.OthersCanReach(deno) {
		// bwrap resolves the path as uid 65534 too.
		copyFile(t, deno, filepath.Join(code, "deno"), 0o755)
		deno = filepath.Join(code, "deno")
	}
	writeFiles(t, code, map[string]string{
		"main.js":   fmt.Sprintf(denoScript, sha256Hex("spry")),
		"worker.js": denoWorker,
	})
	for _, u := range users {
		t.Run(u.name, func(t *testing.T) {
			r := sandboxRun{
				uid:    u.uid,
				filter: true,
				binds:  [][2]string{{deno, deno}, {code, "/code"}},
				env:    []string{"DENO_DIR=/tmp/.deno", "HOME=/tmp", "DENO_NO_UPDATE_CHECK=1", "NO_COLOR=1"},
				argv: []string{deno, "run", "--allow-read=/tmp,/code", "--allow-write=/tmp", "--allow-net",
					"/code/main.js"},
			}
			stdout, stderr, err := r.run(t, bwrap)
			if err != nil || strings.TrimSpace(stdout) != "OK" {
				t.Fatalf("deno under the filter: %v\nstdout:\n%s\nstderr:\n%s", err, stdout, stderr)
			}
		})
	}
}

// nodeScript is denoScript for Node: an HTTP server on a Unix socket and a
// request to it, worker_threads, crypto (hash and WebCrypto), and files in
// /tmp.
const nodeScript = `
import http from "node:http";
import { Worker } from "node:worker_threads";
import { createHash, webcrypto } from "node:crypto";
import { readFile, writeFile } from "node:fs/promises";
import { setTimeout as sleep } from "node:timers/promises";

const fail = (msg) => { console.error(msg); process.exit(1); };

await sleep(10);

const want = "%s";
if (createHash("sha256").update("spry").digest("hex") !== want) fail("createHash");
const digest = await webcrypto.subtle.digest("SHA-256", new TextEncoder().encode("spry"));
if (Buffer.from(digest).toString("hex") !== want) fail("subtle.digest");

const fib = await new Promise((resolve, reject) => {
  const w = new Worker(
    "const { parentPort } = require('node:worker_threads');" +
    "const fib = (n) => (n < 2 ? n : fib(n - 1) + fib(n - 2));" +
    "parentPort.on('message', (n) => parentPort.postMessage(fib(n)));",
    { eval: true },
  );
  w.on("message", (v) => { w.terminate(); resolve(v); });
  w.on("error", reject);
  w.postMessage(20);
});
if (fib !== 6765) fail("worker: " + fib);

await writeFile("/tmp/node.txt", "hello");
if (await readFile("/tmp/node.txt", "utf8") !== "hello") fail("file");

const path = "/tmp/node.sock";
const server = http.createServer((req, res) => res.end("pong " + req.url));
await new Promise((resolve) => server.listen(path, resolve));
const body = await new Promise((resolve, reject) => {
  http.get({ socketPath: path, path: "/ping" }, (res) => {
    let data = "";
    res.setEncoding("utf8");
    res.on("data", (c) => (data += c));
    res.on("end", () => resolve(res.statusCode + " " + data));
  }).on("error", reject);
});
if (body !== "200 pong /ping") fail("http: " + body);
await new Promise((resolve) => server.close(resolve));

console.log("OK");
`

func TestSeccompNode(t *testing.T) {
	bwrap := bwrapOrSkip(t)
	const node = "/usr/bin/node"
	if _, err := os.Stat(node); err != nil {
		t.Skip("node is not installed")
	}
	code := reachableDir(t)
	writeFiles(t, code, map[string]string{"main.mjs": fmt.Sprintf(nodeScript, sha256Hex("spry"))})
	for _, u := range users {
		t.Run(u.name, func(t *testing.T) {
			r := sandboxRun{
				uid:    u.uid,
				filter: true,
				binds:  [][2]string{{code, "/code"}},
				env:    []string{"HOME=/tmp"},
				argv:   []string{node, "/code/main.mjs"},
			}
			stdout, stderr, err := r.run(t, bwrap)
			if err != nil || strings.TrimSpace(stdout) != "OK" {
				t.Fatalf("node under the filter: %v\nstdout:\n%s\nstderr:\n%s", err, stdout, stderr)
			}
		})
	}
}
