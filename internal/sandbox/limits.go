package sandbox

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	goruntime "runtime"
	"slices"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// HostPids is how many processes and threads the host can hold at once:
// the lower of kernel.pid_max and kernel.threads-max (every task takes a
// pid). 32768, the kernel's default, if they cannot be read.
func HostPids() int64 {
	n := readSysctl("/proc/sys/kernel/pid_max", 32768)
	return min(n, readSysctl("/proc/sys/kernel/threads-max", n))
}

// HostFiles is how many files the host's unprivileged processes can hold
// open at once: fs.file-max (root passes it). 1<<20 if it cannot be read.
func HostFiles() int64 { return readSysctl("/proc/sys/fs/file-max", 1<<20) }

func readSysctl(path string, def int64) int64 {
	n, err := readInt(path)
	if err != nil || n <= 0 {
		return def
	}
	return n
}

// SetPids changes the sandbox's limit on processes and threads (its
// cgroup's pids.max) and returns what it may hold from now on: the
// limit, or the tasks it has if they are more (a lower limit stops
// forks, it kills nothing).
func (c *Cmd) SetPids(n int64) (int64, error) {
	dir, err := c.group.pidsDir()
	if err != nil {
		return 0, err
	}
	if err := os.WriteFile(filepath.Join(dir, "pids.max"), strconv.AppendInt(nil, n, 10), 0); err != nil {
		return 0, fmt.Errorf("set pids.max: %w", err)
	}
	// Read after the write: from here on the count only grows up to n.
	cur, err := readInt(filepath.Join(dir, "pids.current"))
	if err != nil {
		return 0, err
	}
	return max(n, cur), nil
}

// PidsHeld is what the sandbox may hold of processes and threads from now
// on, at its current limit: that limit, or the tasks it has if more.
func (c *Cmd) PidsHeld() (int64, error) {
	limit, cur, err := c.Pids()
	return max(limit, cur), err
}

// PidsHeldAt is what the sandbox would hold of processes and threads at
// the limit n (what SetPids(n) would return): n, or the tasks it has if
// more.
func (c *Cmd) PidsHeldAt(n int64) (int64, error) {
	_, cur, err := c.Pids()
	return max(n, cur), err
}

// Pids reads the sandbox's limit on processes and threads (-1: none) and
// how many it has.
func (c *Cmd) Pids() (limit, current int64, err error) {
	dir, err := c.group.pidsDir()
	if err != nil {
		return 0, 0, err
	}
	if current, err = readInt(filepath.Join(dir, "pids.current")); err != nil {
		return 0, 0, err
	}
	b, err := os.ReadFile(filepath.Join(dir, "pids.max"))
	if err != nil {
		return 0, 0, err
	}
	if s := strings.TrimSpace(string(b)); s == "max" {
		return -1, current, nil
	}
	limit, err = strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	return limit, current, err
}

// openers are the sandbox's processes whose open files the function
// drives: every process in its cgroup but bubblewrap's two (outside and
// the sandbox's pid 1), so the runtime, whatever it forks, and
// slirp4netns, which holds a host socket for each of the function's
// connections. bubblewrap's processes hold a few pipes and open no more.
func (c *Cmd) openers() ([]int, error) {
	pids, err := c.procs()
	if err != nil {
		return nil, err
	}
	return slices.DeleteFunc(pids, func(pid int) bool {
		return pid == c.pid || (c.Process != nil && pid == c.Process.Pid)
	}), nil
}

// procs lists the processes in the sandbox's cgroup.
func (c *Cmd) procs() ([]int, error) {
	dir, err := c.group.pidsDir()
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return nil, err
	}
	var out []int
	for _, f := range strings.Fields(string(b)) {
		if pid, err := strconv.Atoi(f); err == nil && pid > 0 {
			out = append(out, pid)
		}
	}
	return out, nil
}

// SetNoFiles sets the open-file limit (RLIMIT_NOFILE, soft and hard) of
// the sandbox's processes that open files for the function (openers) and
// returns how many files they may hold from now on. A process forked
// while the limits change may have its parent's old limit: the cgroup is
// read again until it names no process not yet set. Raising a limit
// needs CAP_SYS_RESOURCE (RaisesOpenFiles).
func (c *Cmd) SetNoFiles(n uint64) (uint64, error) {
	var done []int
	for range 8 {
		pids, err := c.openers()
		if err != nil {
			return 0, err
		}
		var fresh []int
		for _, pid := range pids {
			if !slices.Contains(done, pid) {
				fresh = append(fresh, pid)
			}
		}
		if len(fresh) == 0 {
			return filesHeld(pids, n), nil
		}
		if err := c.limitNoFiles(fresh, n); err != nil {
			return 0, err
		}
		done = append(done, fresh...)
	}
	return 0, errors.New("set the open-file limit: the sandbox's processes keep changing")
}

// LimitFresh sets the limits of a sandbox that no function has run in
// yet, on the cold start's path: the pids limit n, and the open-file
// limit files of its openers, pids (as Openers listed them). Such a
// sandbox, the runtime's bootstrap alone, has fewer processes and files
// than any limit it is given and forks nothing, so none is read back.
func (c *Cmd) LimitFresh(n int64, files uint64, pids []int) error {
	dir, err := c.group.pidsDir()
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "pids.max"), strconv.AppendInt(nil, n, 10), 0); err != nil {
		return fmt.Errorf("set pids.max: %w", err)
	}
	return c.limitNoFiles(pids, files)
}

// testHookPrlimit, if set, is called just before the open-file limit of
// pid, a process found to be the sandbox's, is set (a test ends pid
// there and starts another process at its pid).
var testHookPrlimit func(pid int)

// limitNoFiles sets the open-file limit, n, of pids: processes listed from
// the sandbox's cgroup a moment ago, any of which may have ended since and
// its pid been taken by another process, of another sandbox or of the
// host, that prlimit(2), which names a process by its pid only, would then
// reach. So:
//
//   - slirp4netns is the server's own child, which is not reaped, its pid
//     not freed, before Cleanup, which waits for limitMu.
//   - Of any other pid a pidfd is opened first; a process that is in the
//     cgroup when it is read again after that, and whose pidfd still
//     names a live process after its ids are read, is the pidfd's process
//     (a pid is freed only once its process is reaped), so the
//     sandbox's. It must run as the sandbox's uid and gid.
//   - The limits are then set from a thread whose real uid and gid are the
//     sandbox's (unless this server has CAP_SYS_RESOURCE): the kernel lets
//     such a caller reach only processes whose ids are all the
//     sandbox's, which no other process holds while the sandbox lives
//     (Cleanup waits for limitMu, and only then may the server give the
//     uid to another sandbox). Should a process end between its check and
//     its prlimit and its pid be taken meanwhile, the call reaches
//     another process of the sandbox, or fails.
func (c *Cmd) limitNoFiles(pids []int, n uint64) error {
	c.limitMu.Lock()
	defer c.limitMu.Unlock()
	if c.limitsDone {
		return errors.New("set the open-file limit: the sandbox has ended")
	}
	l := unix.Rlimit{Cur: n, Max: n}
	c.netMu.Lock()
	slirp := 0
	if c.slirp != nil && c.slirp.Process != nil {
		slirp = c.slirp.Process.Pid
	}
	c.netMu.Unlock()
	type target struct{ pid, fd int }
	var opened []target
	defer func() {
		for _, t := range opened {
			unix.Close(t.fd)
		}
	}()
	for _, pid := range pids {
		if pid == slirp {
			// Root's, as the server is: no CAP_SYS_RESOURCE is needed
			// to lower it.
			if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, &l, nil); err != nil {
				return fmt.Errorf("set the open-file limit of slirp4netns: %w", err)
			}
			continue
		}
		fd, err := unix.PidfdOpen(pid, 0)
		if errors.Is(err, unix.ESRCH) || errors.Is(err, unix.EINVAL) {
			continue // ended (EINVAL: the pid names a thread now)
		}
		if err != nil {
			return fmt.Errorf("set the open-file limit of %d: %w", pid, err)
		}
		opened = append(opened, target{pid, fd})
	}
	if len(opened) == 0 {
		return nil
	}
	in, err := c.procs()
	if err != nil {
		return err
	}
	var targets []target
	for _, t := range opened {
		if !slices.Contains(in, t.pid) {
			continue // ended; the pid may name another process now
		}
		uid, gid, err := procIDs(t.pid)
		if !alive(t.fd) {
			continue // what was read may be another process's
		}
		if err != nil {
			return fmt.Errorf("set the open-file limit of %d: %w", t.pid, err)
		}
		if uid != c.ids || gid != c.ids {
			return fmt.Errorf("set the open-file limit of %d: it runs as uid %d, gid %d, not the sandbox's %d", t.pid, uid, gid, c.ids)
		}
		targets = append(targets, t)
	}
	set := func() error {
		for _, t := range targets {
			if testHookPrlimit != nil {
				testHookPrlimit(t.pid)
			}
			if err := unix.Prlimit(t.pid, unix.RLIMIT_NOFILE, &l, nil); err != nil && alive(t.fd) {
				return fmt.Errorf("set the open-file limit of %d: %w", t.pid, err)
			}
		}
		return nil
	}
	if raisesFiles() {
		// The kernel checks no ids of a capable caller's target: what
		// stands between the check and the call is the microseconds in
		// which the pid would have to be freed and allocated again
		// (the kernel hands pids out in turn, up to pid_max).
		return set()
	}
	return asIDs(c.ids, c.ids, set)
}

// alive reports whether the pidfd fd names a process not yet reaped (its
// pid is not free).
func alive(fd int) bool {
	err := unix.PidfdSendSignal(fd, 0, nil, 0)
	return err == nil || errors.Is(err, unix.EPERM)
}

// raisesFiles is RaisesOpenFiles, read once.
var raisesFiles = sync.OnceValue(RaisesOpenFiles)

// asIDs calls f on a thread locked for it whose real uid and gid are uid
// and gid: the kernel's credentials are per thread, and without
// CAP_SYS_RESOURCE prlimit(2) reaches only processes whose ids are all
// the caller's real ones (this host's root lacks it, as in some
// containers). The effective uid stays root's, so the thread may set
// them back; should that fail, the thread stays locked, and ends with
// its goroutine.
func asIDs(uid, gid int, f func() error) error {
	keep := ^uintptr(0) // -1: unchanged
	return onThread(func() error {
		if _, _, e := unix.RawSyscall(unix.SYS_SETRESGID, uintptr(gid), keep, keep); e != 0 {
			return fmt.Errorf("setresgid: %w", e)
		}
		if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, uintptr(uid), keep, keep); e != 0 {
			return fmt.Errorf("setresuid: %w", e)
		}
		return nil
	}, func() bool {
		// Root's again (its gid first would need the uid's change undone).
		_, _, e := unix.RawSyscall(unix.SYS_SETRESUID, 0, keep, keep)
		if e == 0 {
			_, _, e = unix.RawSyscall(unix.SYS_SETRESGID, 0, keep, keep)
		}
		return e == 0
	}, f)
}

// onThread calls f on a thread locked for it, between enter, which
// changes the thread's credentials (the kernel's are per thread; these
// raw calls change only this one's, where Go's would change every
// thread's), and leave, which sets them back. f runs only if enter
// succeeded; leave runs whatever happened, and if it fails, the thread
// stays locked and ends with its goroutine, never to run other code.
func onThread(enter func() error, leave func() bool, f func() error) error {
	res := make(chan error, 1)
	go func() {
		// Deferred, so that f ending its goroutine (runtime.Goexit: a
		// test's t.Fatal in a hook) still answers, rather than leave
		// the caller waiting for ever.
		err := errors.New("the credentials' thread ended before its call returned")
		defer func() { res <- err }()
		goruntime.LockOSThread()
		defer func() {
			if leave() {
				goruntime.UnlockOSThread()
			} // else the thread stays locked, and ends with its goroutine
		}()
		if e := enter(); e != nil {
			err = e
			return
		}
		err = f()
	}()
	return <-res
}

// RaisesOpenFiles reports whether this process may raise another's
// open-file limit (it has CAP_SYS_RESOURCE); without it they only go
// down.
func RaisesOpenFiles() bool { return hasCap(unix.CAP_SYS_RESOURCE) }

// hasCap reports whether this process holds the capability c.
func hasCap(c int) bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	_, v, ok := bytes.Cut(b, []byte("\nCapEff:"))
	if !ok {
		return false
	}
	v, _, _ = bytes.Cut(v, []byte("\n"))
	caps, err := strconv.ParseUint(string(bytes.TrimSpace(v)), 16, 64)
	return err == nil && caps&(1<<c) != 0
}

// FilesHeld is how many files the sandbox's openers may hold from now on,
// at their current limits.
func (c *Cmd) FilesHeld() (uint64, error) { return c.FilesHeldAt(math.MaxUint64) }

// FilesHeldAt is how many files the sandbox's openers would hold were
// their limits lowered to n (those below it kept): what SetNoFiles(n)
// would return, for an n no higher than their limits.
func (c *Cmd) FilesHeldAt(n uint64) (uint64, error) {
	pids, err := c.openers()
	if err != nil {
		return 0, err
	}
	return filesHeld(pids, n), nil
}

// filesHeld sums, over pids, what each may hold at its hard limit, or at
// n if lower: that limit, plus the descriptors it has at or above it
// (left from a higher limit; they stay open, while those below it can
// all be filled). A process that has ended holds none.
func filesHeld(pids []int, n uint64) uint64 {
	var sum uint64
	for _, pid := range pids {
		st, err := procStatus(pid)
		if err != nil {
			continue
		}
		limit := min(st.nofile, n)
		sum += limit
		if st.fdSize > limit {
			sum += descriptorsFrom(pid, limit)
		}
	}
	return sum
}

// status is what procStatus reads of a process.
type status struct {
	fdSize uint64 // its descriptor table's size
	nofile uint64 // its hard open-file limit
}

// procStatus reads a process's descriptor table size and hard open-file
// limit from /proc (which, unlike prlimit(2), anyone may read).
func procStatus(pid int) (status, error) {
	var st status
	dir := "/proc/" + strconv.Itoa(pid)
	b, err := os.ReadFile(dir + "/status")
	if err != nil {
		return st, err
	}
	size := statusField(b, "FDSize")
	if len(size) == 0 {
		return st, fmt.Errorf("%s/status: no FDSize", dir)
	}
	st.fdSize, _ = strconv.ParseUint(size[0], 10, 64)
	limits, err := os.ReadFile(dir + "/limits")
	if err != nil {
		return st, err
	}
	for _, line := range strings.Split(string(limits), "\n") {
		if rest, ok := strings.CutPrefix(line, "Max open files"); ok {
			if f := strings.Fields(rest); len(f) >= 2 {
				if st.nofile, err = strconv.ParseUint(f[1], 10, 64); err != nil {
					return st, fmt.Errorf("%s/limits: %q", dir, line)
				}
				return st, nil
			}
		}
	}
	return st, fmt.Errorf("%s/limits: no open-file limit", dir)
}

// procIDs reads a process's real uid and gid from /proc.
func procIDs(pid int) (uid, gid int, err error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, 0, err
	}
	u, g := statusField(b, "Uid"), statusField(b, "Gid")
	if len(u) == 0 || len(g) == 0 {
		return 0, 0, fmt.Errorf("/proc/%d/status: no ids", pid)
	}
	if uid, err = strconv.Atoi(u[0]); err == nil {
		gid, err = strconv.Atoi(g[0])
	}
	return uid, gid, err
}

// statusField is the fields of key's line in a /proc/PID/status, b.
func statusField(b []byte, key string) []string {
	_, v, _ := bytes.Cut(b, []byte("\n"+key+":"))
	v, _, _ = bytes.Cut(v, []byte("\n"))
	return strings.Fields(string(v))
}

// descriptorsFrom counts pid's open descriptors numbered from n up.
func descriptorsFrom(pid int, n uint64) uint64 {
	ents, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/fd")
	if err != nil {
		return 0
	}
	var k uint64
	for _, e := range ents {
		if fd, err := strconv.ParseUint(e.Name(), 10, 64); err == nil && fd >= n {
			k++
		}
	}
	return k
}

// readInt reads a number file.
func readInt(path string) (int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
}

// Openers lists the sandbox's processes that open files for the
// function (see openers).
func (c *Cmd) Openers() ([]int, error) { return c.openers() }
