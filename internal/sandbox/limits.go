package sandbox

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	goruntime "runtime"
	"slices"
	"strconv"
	"strings"

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
		pid, err := strconv.Atoi(f)
		if err != nil || pid <= 0 || pid == c.pid || (c.Process != nil && pid == c.Process.Pid) {
			continue
		}
		out = append(out, pid)
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
	l := unix.Rlimit{Cur: n, Max: n}
	var done []int
	for range 8 {
		pids, err := c.openers()
		if err != nil {
			return 0, err
		}
		fresh := false
		for _, pid := range pids {
			if slices.Contains(done, pid) {
				continue
			}
			fresh = true
			if err := prlimitNoFile(pid, &l); err != nil && !errors.Is(err, unix.ESRCH) {
				return 0, fmt.Errorf("set the open-file limit of %d: %w", pid, err)
			}
			done = append(done, pid)
		}
		if !fresh {
			return filesHeld(pids), nil
		}
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
	l := unix.Rlimit{Cur: files, Max: files}
	for _, pid := range pids {
		if err := prlimitNoFile(pid, &l); err != nil {
			return fmt.Errorf("set the open-file limit of %d: %w", pid, err)
		}
	}
	return nil
}

// prlimitNoFile sets pid's open-file limit. Without CAP_SYS_RESOURCE
// (this host's root lacks it, as in some containers) only a caller whose
// real uid and gid are the process's may lower its limits: the call is
// then made on a thread locked for it whose real ids are set to those
// (the kernel's credentials are per thread; its effective uid stays
// root's, so it may set them back). Should setting them back fail, the
// thread stays locked, and ends with its goroutine.
func prlimitNoFile(pid int, l *unix.Rlimit) error {
	err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, l, nil)
	if !errors.Is(err, unix.EPERM) {
		return err
	}
	st, err := procStatus(pid)
	if err != nil {
		return err
	}
	if st.uid == 0 {
		return unix.EPERM // root's own: the capability is what it lacks
	}
	res := make(chan error, 1)
	go func() {
		goruntime.LockOSThread()
		keep := ^uintptr(0) // -1: unchanged
		setIDs := func(uid, gid uintptr) error {
			if _, _, e := unix.RawSyscall(unix.SYS_SETRESGID, gid, keep, keep); e != 0 {
				return fmt.Errorf("setresgid: %w", e)
			}
			if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, uid, keep, keep); e != 0 {
				return fmt.Errorf("setresuid: %w", e)
			}
			return nil
		}
		err := setIDs(uintptr(st.uid), uintptr(st.gid))
		if err == nil {
			err = unix.Prlimit(pid, unix.RLIMIT_NOFILE, l, nil)
		}
		// Root's again (its gid first would need the uid's change undone).
		if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, 0, keep, keep); e == 0 {
			if _, _, e := unix.RawSyscall(unix.SYS_SETRESGID, 0, keep, keep); e == 0 {
				goruntime.UnlockOSThread()
			}
		}
		res <- err
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
func (c *Cmd) FilesHeld() (uint64, error) {
	pids, err := c.openers()
	if err != nil {
		return 0, err
	}
	return filesHeld(pids), nil
}

// filesHeld sums, over pids, what each may hold from now on: its hard
// limit, plus the descriptors it has at or above it (left from a higher
// limit; they stay open, while those below it can all be filled). A
// process that has ended holds none.
func filesHeld(pids []int) uint64 {
	var sum uint64
	for _, pid := range pids {
		st, err := procStatus(pid)
		if err != nil {
			continue
		}
		sum += st.nofile
		if st.fdSize > st.nofile {
			sum += descriptorsFrom(pid, st.nofile)
		}
	}
	return sum
}

// status is what procStatus reads of a process.
type status struct {
	uid, gid int
	fdSize   uint64 // its descriptor table's size
	nofile   uint64 // its hard open-file limit
}

// procStatus reads a process's real ids, descriptor table size and hard
// open-file limit from /proc (which, unlike prlimit(2), anyone may read).
func procStatus(pid int) (status, error) {
	var st status
	dir := "/proc/" + strconv.Itoa(pid)
	b, err := os.ReadFile(dir + "/status")
	if err != nil {
		return st, err
	}
	field := func(key string) []string {
		_, v, _ := bytes.Cut(b, []byte("\n"+key+":"))
		v, _, _ = bytes.Cut(v, []byte("\n"))
		return strings.Fields(string(v))
	}
	uid, gid, size := field("Uid"), field("Gid"), field("FDSize")
	if len(uid) == 0 || len(gid) == 0 || len(size) == 0 {
		return st, fmt.Errorf("%s/status: no ids", dir)
	}
	st.uid, _ = strconv.Atoi(uid[0])
	st.gid, _ = strconv.Atoi(gid[0])
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
