package sandbox

import (
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// The sandbox's seccomp policy, handed to bubblewrap as --seccomp FD.
//
// It is Docker's default profile (moby/profiles seccomp/default.json) for
// x86_64, for a container without capabilities, made stricter. The kernel
// runs it on every system call of the sandboxed program:
//
//   - Foreign system call ABIs are killed: i386 (int 0x80) and x32 calls
//     would be matched against the wrong numbers, and no runtime we start
//     makes them.
//   - seccompAllowed is allowed whatever the arguments: Docker's list minus
//     adjtimex, clock_adjtime, name_to_handle_at and modify_ldt (Docker
//     allows them; nothing here needs them), and minus the unimplemented
//     epoll_ctl_old/epoll_wait_old.
//   - clone is allowed without namespace flags (so threads and fork work)
//     and fails with EPERM with any; clone3 fails with ENOSYS, as in Docker:
//     its flags sit behind a pointer seccomp cannot read, and ENOSYS makes
//     glibc fall back to clone, whose flags it can.
//   - socket is allowed for AF_UNIX with a stream, datagram or seqpacket
//     type (so never SOCK_RAW), for AF_INET and AF_INET6 as TCP or UDP
//     only, and for AF_NETLINK with NETLINK_ROUTE (getifaddrs); any other
//     socket is EPERM. Docker allows most families, AF_PACKET and raw
//     sockets included, and every protocol.
//   - personality is allowed only for the values Docker allows.
//   - ioctl is allowed except TIOCSTI and TIOCLINUX, which can inject input
//     into a terminal the sandbox shares (as in Flatpak's filter).
//   - Everything else fails with EPERM, like Docker's default action. That
//     includes every seccompDenied call, among them the ones Docker gates on
//     a capability (mount, unshare, setns, bpf, perf_event_open, ptrace,
//     kexec, modules, time setting, NUMA policy, ...) and those it never
//     allows (keyctl, userfaultfd, io_uring, ...).
//
// prctl and seccomp stay allowed as in Docker: a process can only add
// filters, which are evaluated together with this one, so PR_SET_SECCOMP
// and seccomp(2) cannot loosen the policy, and bubblewrap has already set
// no_new_privs.
//
// The program is classic BPF assembled with golang.org/x/net/bpf (no pure Go
// seccomp library is available to this module), and only for linux/amd64:
// the syscall numbers below are x86_64's, and the constants taken from
// golang.org/x/sys/unix are the build's own architecture's.

// seccompAllowed are the system calls allowed whatever their arguments.
var seccompAllowed = []string{
	"accept",
	"accept4",
	"access",
	"alarm",
	"arch_prctl",
	"bind",
	"brk",
	"cachestat",
	"capget",
	"capset",
	"chdir",
	"chmod",
	"chown",
	"clock_getres",
	"clock_gettime",
	"clock_nanosleep",
	"close",
	"close_range",
	"connect",
	"copy_file_range",
	"creat",
	"dup",
	"dup2",
	"dup3",
	"epoll_create",
	"epoll_create1",
	"epoll_ctl",
	"epoll_pwait",
	"epoll_pwait2",
	"epoll_wait",
	"eventfd",
	"eventfd2",
	"execve",
	"execveat",
	"exit",
	"exit_group",
	"faccessat",
	"faccessat2",
	"fadvise64",
	"fallocate",
	"fanotify_mark",
	"fchdir",
	"fchmod",
	"fchmodat",
	"fchmodat2",
	"fchown",
	"fchownat",
	"fcntl",
	"fdatasync",
	"fgetxattr",
	"flistxattr",
	"flock",
	"fork",
	"fremovexattr",
	"fsetxattr",
	"fstat",
	"fstatfs",
	"fsync",
	"ftruncate",
	"futex",
	"futex_requeue",
	"futex_wait",
	"futex_waitv",
	"futex_wake",
	"futimesat",
	"get_robust_list",
	"get_thread_area",
	"getcpu",
	"getcwd",
	"getdents",
	"getdents64",
	"getegid",
	"geteuid",
	"getgid",
	"getgroups",
	"getitimer",
	"getpeername",
	"getpgid",
	"getpgrp",
	"getpid",
	"getppid",
	"getpriority",
	"getrandom",
	"getresgid",
	"getresuid",
	"getrlimit",
	"getrusage",
	"getsid",
	"getsockname",
	"getsockopt",
	"gettid",
	"gettimeofday",
	"getuid",
	"getxattr",
	"getxattrat",
	"inotify_add_watch",
	"inotify_init",
	"inotify_init1",
	"inotify_rm_watch",
	"io_cancel",
	"io_destroy",
	"io_getevents",
	"io_pgetevents",
	"io_setup",
	"io_submit",
	"ioprio_get",
	"ioprio_set",
	"kill",
	"landlock_add_rule",
	"landlock_create_ruleset",
	"landlock_restrict_self",
	"lchown",
	"lgetxattr",
	"link",
	"linkat",
	"listen",
	"listmount",
	"listxattr",
	"listxattrat",
	"llistxattr",
	"lremovexattr",
	"lseek",
	"lsetxattr",
	"lstat",
	"madvise",
	"map_shadow_stack",
	"membarrier",
	"memfd_create",
	"memfd_secret",
	"mincore",
	"mkdir",
	"mkdirat",
	"mknod",
	"mknodat",
	"mlock",
	"mlock2",
	"mlockall",
	"mmap",
	"mprotect",
	"mq_getsetattr",
	"mq_notify",
	"mq_open",
	"mq_timedreceive",
	"mq_timedsend",
	"mq_unlink",
	"mremap",
	"mseal",
	"msgctl",
	"msgget",
	"msgrcv",
	"msgsnd",
	"msync",
	"munlock",
	"munlockall",
	"munmap",
	"nanosleep",
	"newfstatat",
	"open",
	"openat",
	"openat2",
	"pause",
	"pidfd_open",
	"pidfd_send_signal",
	"pipe",
	"pipe2",
	"pkey_alloc",
	"pkey_free",
	"pkey_mprotect",
	"poll",
	"ppoll",
	"prctl",
	"pread64",
	"preadv",
	"preadv2",
	"prlimit64",
	"process_mrelease",
	"pselect6",
	"pwrite64",
	"pwritev",
	"pwritev2",
	"read",
	"readahead",
	"readlink",
	"readlinkat",
	"readv",
	"recvfrom",
	"recvmmsg",
	"recvmsg",
	"remap_file_pages",
	"removexattr",
	"removexattrat",
	"rename",
	"renameat",
	"renameat2",
	"restart_syscall",
	"rmdir",
	"rseq",
	"rt_sigaction",
	"rt_sigpending",
	"rt_sigprocmask",
	"rt_sigqueueinfo",
	"rt_sigreturn",
	"rt_sigsuspend",
	"rt_sigtimedwait",
	"rt_tgsigqueueinfo",
	"sched_get_priority_max",
	"sched_get_priority_min",
	"sched_getaffinity",
	"sched_getattr",
	"sched_getparam",
	"sched_getscheduler",
	"sched_rr_get_interval",
	"sched_setaffinity",
	"sched_setattr",
	"sched_setparam",
	"sched_setscheduler",
	"sched_yield",
	"seccomp",
	"select",
	"semctl",
	"semget",
	"semop",
	"semtimedop",
	"sendfile",
	"sendmmsg",
	"sendmsg",
	"sendto",
	"set_robust_list",
	"set_thread_area",
	"set_tid_address",
	"setfsgid",
	"setfsuid",
	"setgid",
	"setgroups",
	"setitimer",
	"setpgid",
	"setpriority",
	"setregid",
	"setresgid",
	"setresuid",
	"setreuid",
	"setrlimit",
	"setsid",
	"setsockopt",
	"setuid",
	"setxattr",
	"setxattrat",
	"shmat",
	"shmctl",
	"shmdt",
	"shmget",
	"shutdown",
	"sigaltstack",
	"signalfd",
	"signalfd4",
	"socketpair",
	"splice",
	"stat",
	"statfs",
	"statmount",
	"statx",
	"symlink",
	"symlinkat",
	"sync",
	"sync_file_range",
	"syncfs",
	"sysinfo",
	"tee",
	"tgkill",
	"time",
	"timer_create",
	"timer_delete",
	"timer_getoverrun",
	"timer_gettime",
	"timer_settime",
	"timerfd_create",
	"timerfd_gettime",
	"timerfd_settime",
	"times",
	"tkill",
	"truncate",
	"umask",
	"uname",
	"unlink",
	"unlinkat",
	"uretprobe",
	"utime",
	"utimensat",
	"utimes",
	"vfork",
	"vmsplice",
	"wait4",
	"waitid",
	"write",
	"writev",
}

// seccompDenied are system calls the policy must never allow. The default
// action denies them anyway (they are not in seccompAllowed); listing them
// makes the build refuse a policy that allows one, and lets the tests check
// each of them.
var seccompDenied = []string{
	"acct",
	"add_key",
	"adjtimex",
	"bpf",
	"chroot",
	"clock_adjtime",
	"clock_settime",
	"delete_module",
	"fanotify_init",
	"finit_module",
	"fsconfig",
	"fsmount",
	"fsopen",
	"fspick",
	"get_mempolicy",
	"init_module",
	"io_uring_enter",
	"io_uring_register",
	"io_uring_setup",
	"ioperm",
	"iopl",
	"kcmp",
	"kexec_file_load",
	"kexec_load",
	"keyctl",
	"lookup_dcookie",
	"mbind",
	"migrate_pages",
	"modify_ldt",
	"mount",
	"mount_setattr",
	"move_mount",
	"move_pages",
	"name_to_handle_at",
	"open_by_handle_at",
	"open_tree",
	"perf_event_open",
	"pidfd_getfd",
	"pivot_root",
	"process_madvise",
	"process_vm_readv",
	"process_vm_writev",
	"ptrace",
	"quotactl",
	"quotactl_fd",
	"reboot",
	"request_key",
	"set_mempolicy",
	"set_mempolicy_home_node",
	"setdomainname",
	"sethostname",
	"setns",
	"settimeofday",
	"swapoff",
	"swapon",
	"syslog",
	"umount2",
	"unshare",
	"userfaultfd",
	"vhangup",
}

// x86_64Syscalls numbers every system call the policy names (from the
// kernel's arch/x86/entry/syscalls/syscall_64.tbl, as in
// golang.org/x/sys/unix's zsysnum_linux_amd64.go). They are written out
// rather than taken from unix.SYS_* so that the package still builds on
// other architectures, where SeccompFilter returns an error.
var x86_64Syscalls = map[string]uint32{
	"read":                    0,
	"write":                   1,
	"open":                    2,
	"close":                   3,
	"stat":                    4,
	"fstat":                   5,
	"lstat":                   6,
	"poll":                    7,
	"lseek":                   8,
	"mmap":                    9,
	"mprotect":                10,
	"munmap":                  11,
	"brk":                     12,
	"rt_sigaction":            13,
	"rt_sigprocmask":          14,
	"rt_sigreturn":            15,
	"ioctl":                   16,
	"pread64":                 17,
	"pwrite64":                18,
	"readv":                   19,
	"writev":                  20,
	"access":                  21,
	"pipe":                    22,
	"select":                  23,
	"sched_yield":             24,
	"mremap":                  25,
	"msync":                   26,
	"mincore":                 27,
	"madvise":                 28,
	"shmget":                  29,
	"shmat":                   30,
	"shmctl":                  31,
	"dup":                     32,
	"dup2":                    33,
	"pause":                   34,
	"nanosleep":               35,
	"getitimer":               36,
	"alarm":                   37,
	"setitimer":               38,
	"getpid":                  39,
	"sendfile":                40,
	"socket":                  41,
	"connect":                 42,
	"accept":                  43,
	"sendto":                  44,
	"recvfrom":                45,
	"sendmsg":                 46,
	"recvmsg":                 47,
	"shutdown":                48,
	"bind":                    49,
	"listen":                  50,
	"getsockname":             51,
	"getpeername":             52,
	"socketpair":              53,
	"setsockopt":              54,
	"getsockopt":              55,
	"clone":                   56,
	"fork":                    57,
	"vfork":                   58,
	"execve":                  59,
	"exit":                    60,
	"wait4":                   61,
	"kill":                    62,
	"uname":                   63,
	"semget":                  64,
	"semop":                   65,
	"semctl":                  66,
	"shmdt":                   67,
	"msgget":                  68,
	"msgsnd":                  69,
	"msgrcv":                  70,
	"msgctl":                  71,
	"fcntl":                   72,
	"flock":                   73,
	"fsync":                   74,
	"fdatasync":               75,
	"truncate":                76,
	"ftruncate":               77,
	"getdents":                78,
	"getcwd":                  79,
	"chdir":                   80,
	"fchdir":                  81,
	"rename":                  82,
	"mkdir":                   83,
	"rmdir":                   84,
	"creat":                   85,
	"link":                    86,
	"unlink":                  87,
	"symlink":                 88,
	"readlink":                89,
	"chmod":                   90,
	"fchmod":                  91,
	"chown":                   92,
	"fchown":                  93,
	"lchown":                  94,
	"umask":                   95,
	"gettimeofday":            96,
	"getrlimit":               97,
	"getrusage":               98,
	"sysinfo":                 99,
	"times":                   100,
	"ptrace":                  101,
	"getuid":                  102,
	"syslog":                  103,
	"getgid":                  104,
	"setuid":                  105,
	"setgid":                  106,
	"geteuid":                 107,
	"getegid":                 108,
	"setpgid":                 109,
	"getppid":                 110,
	"getpgrp":                 111,
	"setsid":                  112,
	"setreuid":                113,
	"setregid":                114,
	"getgroups":               115,
	"setgroups":               116,
	"setresuid":               117,
	"getresuid":               118,
	"setresgid":               119,
	"getresgid":               120,
	"getpgid":                 121,
	"setfsuid":                122,
	"setfsgid":                123,
	"getsid":                  124,
	"capget":                  125,
	"capset":                  126,
	"rt_sigpending":           127,
	"rt_sigtimedwait":         128,
	"rt_sigqueueinfo":         129,
	"rt_sigsuspend":           130,
	"sigaltstack":             131,
	"utime":                   132,
	"mknod":                   133,
	"personality":             135,
	"statfs":                  137,
	"fstatfs":                 138,
	"getpriority":             140,
	"setpriority":             141,
	"sched_setparam":          142,
	"sched_getparam":          143,
	"sched_setscheduler":      144,
	"sched_getscheduler":      145,
	"sched_get_priority_max":  146,
	"sched_get_priority_min":  147,
	"sched_rr_get_interval":   148,
	"mlock":                   149,
	"munlock":                 150,
	"mlockall":                151,
	"munlockall":              152,
	"vhangup":                 153,
	"modify_ldt":              154,
	"pivot_root":              155,
	"prctl":                   157,
	"arch_prctl":              158,
	"adjtimex":                159,
	"setrlimit":               160,
	"chroot":                  161,
	"sync":                    162,
	"acct":                    163,
	"settimeofday":            164,
	"mount":                   165,
	"umount2":                 166,
	"swapon":                  167,
	"swapoff":                 168,
	"reboot":                  169,
	"sethostname":             170,
	"setdomainname":           171,
	"iopl":                    172,
	"ioperm":                  173,
	"init_module":             175,
	"delete_module":           176,
	"quotactl":                179,
	"gettid":                  186,
	"readahead":               187,
	"setxattr":                188,
	"lsetxattr":               189,
	"fsetxattr":               190,
	"getxattr":                191,
	"lgetxattr":               192,
	"fgetxattr":               193,
	"listxattr":               194,
	"llistxattr":              195,
	"flistxattr":              196,
	"removexattr":             197,
	"lremovexattr":            198,
	"fremovexattr":            199,
	"tkill":                   200,
	"time":                    201,
	"futex":                   202,
	"sched_setaffinity":       203,
	"sched_getaffinity":       204,
	"set_thread_area":         205,
	"io_setup":                206,
	"io_destroy":              207,
	"io_getevents":            208,
	"io_submit":               209,
	"io_cancel":               210,
	"get_thread_area":         211,
	"lookup_dcookie":          212,
	"epoll_create":            213,
	"remap_file_pages":        216,
	"getdents64":              217,
	"set_tid_address":         218,
	"restart_syscall":         219,
	"semtimedop":              220,
	"fadvise64":               221,
	"timer_create":            222,
	"timer_settime":           223,
	"timer_gettime":           224,
	"timer_getoverrun":        225,
	"timer_delete":            226,
	"clock_settime":           227,
	"clock_gettime":           228,
	"clock_getres":            229,
	"clock_nanosleep":         230,
	"exit_group":              231,
	"epoll_wait":              232,
	"epoll_ctl":               233,
	"tgkill":                  234,
	"utimes":                  235,
	"mbind":                   237,
	"set_mempolicy":           238,
	"get_mempolicy":           239,
	"mq_open":                 240,
	"mq_unlink":               241,
	"mq_timedsend":            242,
	"mq_timedreceive":         243,
	"mq_notify":               244,
	"mq_getsetattr":           245,
	"kexec_load":              246,
	"waitid":                  247,
	"add_key":                 248,
	"request_key":             249,
	"keyctl":                  250,
	"ioprio_set":              251,
	"ioprio_get":              252,
	"inotify_init":            253,
	"inotify_add_watch":       254,
	"inotify_rm_watch":        255,
	"migrate_pages":           256,
	"openat":                  257,
	"mkdirat":                 258,
	"mknodat":                 259,
	"fchownat":                260,
	"futimesat":               261,
	"newfstatat":              262,
	"unlinkat":                263,
	"renameat":                264,
	"linkat":                  265,
	"symlinkat":               266,
	"readlinkat":              267,
	"fchmodat":                268,
	"faccessat":               269,
	"pselect6":                270,
	"ppoll":                   271,
	"unshare":                 272,
	"set_robust_list":         273,
	"get_robust_list":         274,
	"splice":                  275,
	"tee":                     276,
	"sync_file_range":         277,
	"vmsplice":                278,
	"move_pages":              279,
	"utimensat":               280,
	"epoll_pwait":             281,
	"signalfd":                282,
	"timerfd_create":          283,
	"eventfd":                 284,
	"fallocate":               285,
	"timerfd_settime":         286,
	"timerfd_gettime":         287,
	"accept4":                 288,
	"signalfd4":               289,
	"eventfd2":                290,
	"epoll_create1":           291,
	"dup3":                    292,
	"pipe2":                   293,
	"inotify_init1":           294,
	"preadv":                  295,
	"pwritev":                 296,
	"rt_tgsigqueueinfo":       297,
	"perf_event_open":         298,
	"recvmmsg":                299,
	"fanotify_init":           300,
	"fanotify_mark":           301,
	"prlimit64":               302,
	"name_to_handle_at":       303,
	"open_by_handle_at":       304,
	"clock_adjtime":           305,
	"syncfs":                  306,
	"sendmmsg":                307,
	"setns":                   308,
	"getcpu":                  309,
	"process_vm_readv":        310,
	"process_vm_writev":       311,
	"kcmp":                    312,
	"finit_module":            313,
	"sched_setattr":           314,
	"sched_getattr":           315,
	"renameat2":               316,
	"seccomp":                 317,
	"getrandom":               318,
	"memfd_create":            319,
	"kexec_file_load":         320,
	"bpf":                     321,
	"execveat":                322,
	"userfaultfd":             323,
	"membarrier":              324,
	"mlock2":                  325,
	"copy_file_range":         326,
	"preadv2":                 327,
	"pwritev2":                328,
	"pkey_mprotect":           329,
	"pkey_alloc":              330,
	"pkey_free":               331,
	"statx":                   332,
	"io_pgetevents":           333,
	"rseq":                    334,
	"uretprobe":               335,
	"pidfd_send_signal":       424,
	"io_uring_setup":          425,
	"io_uring_enter":          426,
	"io_uring_register":       427,
	"open_tree":               428,
	"move_mount":              429,
	"fsopen":                  430,
	"fsconfig":                431,
	"fsmount":                 432,
	"fspick":                  433,
	"pidfd_open":              434,
	"clone3":                  435,
	"close_range":             436,
	"openat2":                 437,
	"pidfd_getfd":             438,
	"faccessat2":              439,
	"process_madvise":         440,
	"epoll_pwait2":            441,
	"mount_setattr":           442,
	"quotactl_fd":             443,
	"landlock_create_ruleset": 444,
	"landlock_add_rule":       445,
	"landlock_restrict_self":  446,
	"memfd_secret":            447,
	"process_mrelease":        448,
	"futex_waitv":             449,
	"set_mempolicy_home_node": 450,
	"cachestat":               451,
	"fchmodat2":               452,
	"map_shadow_stack":        453,
	"futex_wake":              454,
	"futex_wait":              455,
	"futex_requeue":           456,
	"statmount":               457,
	"listmount":               458,
	"mseal":                   462,
	"setxattrat":              463,
	"getxattrat":              464,
	"listxattrat":             465,
	"removexattrat":           466,
}

// Fields of struct seccomp_data (linux/seccomp.h), the input the program
// reads. The arguments are 64 bits wide; on little-endian x86_64 the low 32
// bits of args[i] are at seccompArgs+8*i. Every argument checked here is an
// int (or, for clone, has all its flags in the low half: the kernel uses
// only lower_32_bits(flags)), so the low half is exactly what the kernel
// acts on.
const (
	seccompNR   = 0
	seccompArch = 4
	seccompArgs = 16

	// x32SyscallBit marks x32 ABI calls, which share AUDIT_ARCH_X86_64.
	x32SyscallBit = 0x40000000

	// cloneNamespaces are the clone flags that create a namespace, as in
	// Docker's rule. (CLONE_NEWTIME overlaps clone's exit signal byte, so
	// only clone3 and unshare can ask for it, and both are denied.)
	cloneNamespaces = unix.CLONE_NEWNS | unix.CLONE_NEWUTS | unix.CLONE_NEWIPC |
		unix.CLONE_NEWUSER | unix.CLONE_NEWPID | unix.CLONE_NEWNET | unix.CLONE_NEWCGROUP

	// sockTypeMask keeps the socket type of socket(2)'s second argument,
	// without SOCK_NONBLOCK and SOCK_CLOEXEC.
	sockTypeMask = 0xf
)

// seccompPersonalities are the personality(2) arguments Docker allows:
// PER_LINUX, PER_LINUX32, UNAME26, PER_LINUX32|UNAME26, and 0xffffffff,
// which only queries the current persona.
var seccompPersonalities = []uint32{0x0, 0x8, 0x20000, 0x20008, 0xffffffff}

var (
	seccompOnce sync.Once
	seccompProg []byte
	seccompErr  error
)

// SeccompFilter returns the sandbox's seccomp program (the policy is
// described above seccompAllowed) in the form bubblewrap's --seccomp FD
// reads: an array of struct sock_filter in native byte order. It is built
// once; each call returns a fresh copy.
func SeccompFilter() ([]byte, error) {
	seccompOnce.Do(func() {
		seccompProg, seccompErr = buildSeccompFilter()
	})
	if seccompErr != nil {
		return nil, seccompErr
	}
	return slices.Clone(seccompProg), nil
}

func buildSeccompFilter() ([]byte, error) {
	if runtime.GOARCH != "amd64" {
		return nil, fmt.Errorf("seccomp filter: only linux/amd64 is supported, not %s", runtime.GOARCH)
	}
	insns, err := seccompProgram()
	if err != nil {
		return nil, err
	}
	raw, err := bpf.Assemble(insns)
	if err != nil {
		return nil, fmt.Errorf("seccomp filter: %w", err)
	}
	// The kernel refuses longer programs (BPF_MAXINSNS).
	if len(raw) > 4096 {
		return nil, fmt.Errorf("seccomp filter: %d instructions, more than the kernel's 4096", len(raw))
	}
	out := make([]byte, 0, 8*len(raw))
	for _, r := range raw {
		// struct sock_filter { __u16 code; __u8 jt; __u8 jf; __u32 k; }
		out = binary.NativeEndian.AppendUint16(out, r.Op)
		out = append(out, r.Jt, r.Jf)
		out = binary.NativeEndian.AppendUint32(out, r.K)
	}
	return out, nil
}

// seccompProgram builds the policy's instructions, unassembled (the tests
// run them in x/net/bpf's VM).
func seccompProgram() ([]bpf.Instruction, error) {
	denied := map[string]bool{}
	for _, name := range seccompDenied {
		denied[name] = true
	}
	var missing []string
	nr := func(name string) uint32 {
		n, ok := x86_64Syscalls[name]
		if !ok {
			missing = append(missing, name)
		}
		return n
	}
	for _, name := range seccompDenied {
		nr(name)
	}
	var allowed []uint32
	for _, name := range seccompAllowed {
		if denied[name] {
			return nil, fmt.Errorf("seccomp filter: %s is both allowed and denied", name)
		}
		allowed = append(allowed, nr(name))
	}
	var (
		sysClone       = nr("clone")
		sysClone3      = nr("clone3")
		sysSocket      = nr("socket")
		sysPersonality = nr("personality")
		sysIoctl       = nr("ioctl")
	)
	if len(missing) > 0 {
		return nil, fmt.Errorf("seccomp filter: no x86_64 number for %v", missing)
	}
	slices.Sort(allowed)

	var (
		retAllow = bpf.RetConstant{Val: unix.SECCOMP_RET_ALLOW}
		retKill  = bpf.RetConstant{Val: unix.SECCOMP_RET_KILL_PROCESS}
		retErrno = func(e unix.Errno) bpf.RetConstant {
			return bpf.RetConstant{Val: unix.SECCOMP_RET_ERRNO | uint32(e)&unix.SECCOMP_RET_DATA}
		}
		loadArg = func(i uint32) bpf.LoadAbsolute {
			return bpf.LoadAbsolute{Off: seccompArgs + 8*i, Size: 4}
		}
	)

	var a asm
	a.emit(bpf.LoadAbsolute{Off: seccompArch, Size: 4})
	a.jump(bpf.JumpEqual, unix.AUDIT_ARCH_X86_64, "", "foreign")
	a.emit(bpf.LoadAbsolute{Off: seccompNR, Size: 4})
	a.jump(bpf.JumpGreaterOrEqual, x32SyscallBit, "foreign", "native")
	a.label("foreign")
	a.emit(retKill)
	a.label("native")

	// One compare-and-return pair per syscall keeps every jump short
	// (classic BPF's conditional jumps reach 255 instructions at most). The
	// linear scan costs allowed calls nothing: since Linux 5.11 the kernel
	// caches, per syscall number, that a filter allows it whatever the
	// arguments, and then skips the filter. Only the calls that reach the
	// rules below still run it.
	for _, n := range allowed {
		a.emit(bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: n, SkipTrue: 1}, retAllow)
	}

	// The syscalls whose arguments decide; A still holds the number.
	a.jump(bpf.JumpEqual, sysClone, "clone", "")
	a.jump(bpf.JumpEqual, sysSocket, "socket", "")
	a.jump(bpf.JumpEqual, sysPersonality, "personality", "")
	a.jump(bpf.JumpEqual, sysIoctl, "ioctl", "")
	a.jump(bpf.JumpEqual, sysClone3, "enosys", "")
	// Everything else: the default action.
	a.emit(retErrno(unix.EPERM))

	// clone(flags, ...): no namespace flag.
	a.label("clone")
	a.emit(loadArg(0))
	a.jump(bpf.JumpBitsSet, cloneNamespaces, "eperm", "allow")

	// socket(domain, type, protocol).
	a.label("socket")
	a.emit(loadArg(0))
	a.jump(bpf.JumpEqual, unix.AF_UNIX, "unixType", "")
	a.jump(bpf.JumpEqual, unix.AF_INET, "inetType", "")
	a.jump(bpf.JumpEqual, unix.AF_INET6, "inetType", "")
	a.jump(bpf.JumpEqual, unix.AF_NETLINK, "netlink", "eperm")
	a.label("unixType")
	a.emit(loadArg(1), bpf.ALUOpConstant{Op: bpf.ALUOpAnd, Val: sockTypeMask})
	a.jump(bpf.JumpEqual, unix.SOCK_STREAM, "allow", "")
	a.jump(bpf.JumpEqual, unix.SOCK_DGRAM, "allow", "")
	a.jump(bpf.JumpEqual, unix.SOCK_SEQPACKET, "allow", "eperm")
	// inet sockets are TCP or UDP, nothing else: another protocol (SCTP,
	// UDP-Lite, MPTCP, ICMP's ping sockets, ...) is kernel code no
	// function needs, and a socket of a modular one loads its module.
	a.label("inetType")
	a.emit(loadArg(1), bpf.ALUOpConstant{Op: bpf.ALUOpAnd, Val: sockTypeMask})
	a.jump(bpf.JumpEqual, unix.SOCK_STREAM, "tcp", "")
	a.jump(bpf.JumpEqual, unix.SOCK_DGRAM, "udp", "eperm")
	a.label("tcp")
	a.emit(loadArg(2))
	a.jump(bpf.JumpEqual, 0, "allow", "")
	a.jump(bpf.JumpEqual, unix.IPPROTO_TCP, "allow", "eperm")
	a.label("udp")
	a.emit(loadArg(2))
	a.jump(bpf.JumpEqual, 0, "allow", "")
	a.jump(bpf.JumpEqual, unix.IPPROTO_UDP, "allow", "eperm")
	a.label("netlink")
	a.emit(loadArg(2))
	a.jump(bpf.JumpEqual, unix.NETLINK_ROUTE, "allow", "eperm")

	// personality(persona).
	a.label("personality")
	a.emit(loadArg(0))
	for i, p := range seccompPersonalities {
		next := ""
		if i == len(seccompPersonalities)-1 {
			next = "eperm"
		}
		a.jump(bpf.JumpEqual, p, "allow", next)
	}

	// ioctl(fd, request, ...).
	a.label("ioctl")
	a.emit(loadArg(1))
	a.jump(bpf.JumpEqual, unix.TIOCSTI, "eperm", "")
	a.jump(bpf.JumpEqual, unix.TIOCLINUX, "eperm", "allow")

	// The verdicts the rules jump to; BPF only jumps forward, so they
	// come last.
	a.label("allow")
	a.emit(retAllow)
	a.label("eperm")
	a.emit(retErrno(unix.EPERM))
	a.label("enosys")
	a.emit(retErrno(unix.ENOSYS))
	return a.resolve()
}

// asm is a minimal assembler over x/net/bpf's instructions that lets
// conditional jumps name their targets by label. Classic BPF only jumps
// forward, and a conditional jump by at most 255 instructions; resolve
// checks both.
type asm struct {
	insns  []bpf.Instruction
	labels map[string]int
	jumps  []asmJump
}

type asmJump struct {
	at              int
	ifTrue, ifFalse string // "" is the next instruction
}

func (a *asm) emit(insns ...bpf.Instruction) { a.insns = append(a.insns, insns...) }

func (a *asm) label(name string) {
	if a.labels == nil {
		a.labels = map[string]int{}
	}
	a.labels[name] = len(a.insns)
}

// jump emits "if A <cond> val goto ifTrue else goto ifFalse".
func (a *asm) jump(cond bpf.JumpTest, val uint32, ifTrue, ifFalse string) {
	a.jumps = append(a.jumps, asmJump{at: len(a.insns), ifTrue: ifTrue, ifFalse: ifFalse})
	a.emit(bpf.JumpIf{Cond: cond, Val: val})
}

func (a *asm) resolve() ([]bpf.Instruction, error) {
	skip := func(from int, label string) (uint8, error) {
		if label == "" {
			return 0, nil
		}
		to, ok := a.labels[label]
		if !ok {
			return 0, fmt.Errorf("seccomp filter: no label %q", label)
		}
		n := to - from - 1
		if n < 0 || n > 255 {
			return 0, fmt.Errorf("seccomp filter: jump to %q spans %d instructions", label, n)
		}
		return uint8(n), nil
	}
	for _, j := range a.jumps {
		ins := a.insns[j.at].(bpf.JumpIf)
		var err1, err2 error
		ins.SkipTrue, err1 = skip(j.at, j.ifTrue)
		ins.SkipFalse, err2 = skip(j.at, j.ifFalse)
		if err := errors.Join(err1, err2); err != nil {
			return nil, err
		}
		a.insns[j.at] = ins
	}
	return a.insns, nil
}
