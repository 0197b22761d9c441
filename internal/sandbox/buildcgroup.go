package sandbox

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Builds runs programs the server starts outside any sandbox (a deploy's
// npm install) each in a cgroup of its own, under the server's cgroup
// parent: bounded like an instance, and swept with the instances when a
// killed server restarts.
type Builds struct {
	cg      *cgroups
	self    string // the binary that runs the exec step
	setpriv string // util-linux's setpriv, which drops to the program's uid
}

// NewBuilds checks the host for cgroups, setpriv and CAP_SYS_PTRACE
// (LimitWrites reads other uids' /proc/PID/io). parent is the
// server's cgroup parent (Config.CgroupParent); self the spry binary that
// runs the exec step ("" is /proc/self/exe, which must call MaybeExec);
// tree the subtree's bounds, as Config.Tree.
func NewBuilds(parent, self string, tree Tree) (*Builds, error) {
	cg, err := newCgroups(parent, tree)
	if err != nil {
		return nil, err
	}
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		return nil, errors.New("setpriv is not installed: apt-get install util-linux")
	}
	// Without it, LimitWrites would fail every build run as another uid.
	if !hasCap(unix.CAP_SYS_PTRACE) {
		return nil, errors.New("build cgroups: the server needs CAP_SYS_PTRACE, to read what npm writes from its /proc/PID/io")
	}
	if self == "" {
		self = "/proc/self/exe"
	}
	return &Builds{cg: cg, self: self, setpriv: setpriv}, nil
}

// BuildCmd is a built, not yet started, command in its own cgroup. The
// caller sets its I/O, environment and directory on BuildCmd.Cmd, starts
// it, waits for it, and then calls Cleanup exactly once.
type BuildCmd struct {
	*exec.Cmd
	group   *group
	oomBase uint64
	once    sync.Once

	meterMu   sync.Mutex  // one poll at a time: the watch's, or Wait's
	meter     *writeMeter // LimitWrites'; nil if none
	bound     uint64
	stopWatch func() // ends LimitWrites' watch, at the first call
	writeMu   sync.Mutex
	writeErr  error // ErrWroteTooMuch, or why the watch failed
}

// ErrWroteTooMuch is BuildCmd.WriteErr's when the command's processes
// wrote more than LimitWrites allows.
var ErrWroteTooMuch = errors.New("build cgroup: its processes wrote more than their bound")

// writePoll is how often LimitWrites reads what the processes wrote:
// often enough that little gets written past the bound (a process
// writing as fast as it can to the page cache, ~800 MB/s here, writes
// ~80 MB in one period), seldom enough to cost next to nothing (a poll
// of a group of one process takes ~90 µs here, mostly system calls:
// 0.1% of a CPU, while a build runs).
const writePoll = 100 * time.Millisecond

// Command builds the command that runs argv (argv[0] an absolute path) as
// uid and its gid, with no supplementary groups (uid 0: as the server), in
// a new cgroup with limits r. The exec step (exec.go) joins the cgroup, as
// root, before anything of the program runs, so the program and all it
// forks are bounded from their first instruction; setpriv then drops to
// uid. When ctx is done, every process in the cgroup is killed.
func (b *Builds) Command(ctx context.Context, r Resources, uid int, argv []string) (*BuildCmd, error) {
	if len(argv) == 0 {
		return nil, errors.New("build cgroup: no program")
	}
	var id [6]byte
	if _, err := rand.Read(id[:]); err != nil {
		return nil, err
	}
	g, err := b.cg.create("build-"+hex.EncodeToString(id[:]), r)
	if err != nil {
		return nil, err
	}
	args := []string{ExecCommand}
	for _, p := range g.procsFiles() {
		args = append(args, "--cgroup", p)
	}
	args = append(args, "--")
	if uid != 0 {
		u := strconv.Itoa(uid)
		args = append(args, b.setpriv, "--reuid="+u, "--regid="+u, "--clear-groups", "--")
	}
	args = append(args, argv...)
	cmd := exec.CommandContext(ctx, b.self, args...)
	// Its own process group: a signal to the server's (a terminal's ^C)
	// is not npm's.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	c := &BuildCmd{Cmd: cmd, group: g, oomBase: g.oomKills()}
	// The whole cgroup, not only the first process: npm's children too,
	// wherever they went.
	cmd.Cancel = c.Kill
	return c, nil
}

// Kill kills every process in the command's cgroup, those that left its
// process group included.
func (c *BuildCmd) Kill() error {
	if c.group.v2 != nil {
		return c.group.v2.Kill()
	}
	killV1(c.group.dirs)
	return nil
}

// LimitWrites watches, until Cleanup, what the command's processes pass
// to write(2) and its kin (to files, the cache's and the project's, and
// to pipes and sockets too), all together, and kills every process of
// the cgroup, as Kill does, once it is more than max bytes: a bound on
// what one build may write to disk, which no cgroup controller gives
// (io.max bounds rates, and tmpfs writes reach no block device). It is
// read every writePoll, so a process may write past max for that long;
// Wait reads once more, once the command has exited. Call it once,
// before Start, and run the command with BuildCmd's Run or Wait, not
// exec.Cmd's; WriteErr tells, after Wait, whether it killed.
func (c *BuildCmd) LimitWrites(max int64) {
	if max > 0 {
		c.bound = uint64(max)
	}
	// Any hierarchy's cgroup.procs lists them all. With none (no
	// controller could be made), polls fail, and kill: fail closed.
	procs := ""
	if f := c.group.procsFiles(); len(f) > 0 {
		procs = f[0]
	}
	c.meter = newWriteMeter(procs)
	stop, done := make(chan struct{}), make(chan struct{})
	c.stopWatch = sync.OnceFunc(func() {
		close(stop)
		<-done
	})
	go func() {
		defer close(done)
		t := time.NewTicker(writePoll)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
			}
			c.pollWrites()
		}
	}()
}

// pollWrites reads what the command's processes wrote, with exited
// those of them the group no longer lists (see writeMeter.poll), and
// kills them all if it is past the bound or cannot be read. Again at
// each poll until Cleanup: a kill that failed, or a process that
// slipped in, gets another.
func (c *BuildCmd) pollWrites(exited ...int) {
	c.meterMu.Lock()
	n, err := c.meter.poll(exited...)
	c.meterMu.Unlock()
	switch {
	case err != nil:
		err = fmt.Errorf("build cgroup: read what its processes wrote: %w", err)
	case n > c.bound:
		err = ErrWroteTooMuch
	default:
		return
	}
	c.writeMu.Lock()
	if c.writeErr == nil {
		c.writeErr = err
	}
	c.writeMu.Unlock()
	_ = c.Kill()
}

// Run starts the command and waits for it, as BuildCmd.Wait does.
func (c *BuildCmd) Run() error {
	if err := c.Start(); err != nil {
		return err
	}
	return c.Wait()
}

// Wait waits for the command as exec.Cmd.Wait does. With LimitWrites,
// it first waits for the command's process to exit without reaping it,
// and reads once more what the group wrote, that process's whole
// account included: a command that wrote past the bound and ended
// between two polls would otherwise pass unseen, and once reaped its
// account is gone. The watch goes on meanwhile, and after, until
// Cleanup: exec.Cmd.Wait may wait for a process of the group that holds
// the command's output. Wait fails with WriteErr's error even if the
// command exited 0.
func (c *BuildCmd) Wait() error {
	if c.meter != nil && c.Process != nil {
		var info unix.Siginfo
		var err error = unix.EINTR
		for err == unix.EINTR {
			err = unix.Waitid(unix.P_PID, c.Process.Pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		}
		if err == nil {
			c.pollWrites(c.Process.Pid)
		}
	}
	err := c.Cmd.Wait()
	if werr := c.WriteErr(); err == nil && werr != nil {
		return werr
	}
	return err
}

// WriteErr is nil unless LimitWrites' watch killed the command:
// ErrWroteTooMuch if it wrote more than its bound, or why the watch
// could not read what it wrote (it kills then too, rather than let the
// command write unbounded).
func (c *BuildCmd) WriteErr() error {
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	return c.writeErr
}

// OOMKilled reports whether the kernel's OOM killer killed a process of
// the cgroup. Call it after Wait and before Cleanup.
func (c *BuildCmd) OOMKilled() bool { return c.group.oomKills() > c.oomBase }

// Cleanup kills whatever is left in the cgroup and removes it.
func (c *BuildCmd) Cleanup() {
	c.once.Do(func() {
		if c.stopWatch != nil {
			c.stopWatch()
		}
		retryBusy(time.Now().Add(busyFor), func() bool { return c.group.destroy() == nil })
	})
}
