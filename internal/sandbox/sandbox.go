package sandbox

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Mount makes a host path visible inside the sandbox. The host path is
// opened by the (privileged) server and handed to bubblewrap as a file
// descriptor, so the sandbox's unprivileged uid needs no access to the
// path's parent directories.
type Mount struct {
	Source   string // host path
	Dest     string // path inside the sandbox
	Writable bool
}

// Spec describes one sandboxed process.
type Spec struct {
	Name      string   // unique among live sandboxes; names the cgroup
	Program   string   // path inside the sandbox
	Args      []string // arguments after Program
	Env       []string // the complete environment inside ("K=V")
	Mounts    []Mount
	UID       int    // host uid (and gid) the sandbox runs as; unprivileged
	Network   string // NetworkNone or NetworkEgress
	Isolation string // IsolationStandard ("" too) or IsolationGVisor
	// BundleDir is a private directory gVisor isolation writes its OCI
	// bundle to.
	BundleDir string
	Resources Resources
	TmpBytes  int64 // size of the private /tmp
	NoFiles   uint64
}

// Config is the sandbox's host-wide setup, resolved once at start.
type Config struct {
	// Bwrap is the bubblewrap binary.
	Bwrap string
	// Prlimit is util-linux's prlimit, which sets a sandbox's rlimits.
	Prlimit string
	// Self is the spry binary that runs the __sandbox-exec step (gVisor).
	Self string
	// CgroupParent names this server's cgroup subtree, e.g. "spry/3f2a9c".
	CgroupParent string
	// Tree bounds the whole subtree, every sandbox and build together.
	Tree Tree
	// SystemLibs are host files (shared libraries) the runtime needs,
	// bound read-only at the same path.
	SystemLibs []string
	// StateDir is a directory (reachable by other uids) where the sandbox
	// keeps files it binds into sandboxes, such as resolv.conf.
	StateDir string
	// EgressAllow are private ranges egress sandboxes may reach anyway
	// (the operator's choice, e.g. an internal database).
	EgressAllow []netip.Prefix
	// Slirp4netns is the slirp4netns binary ("" finds it on $PATH).
	Slirp4netns string
	// Runsc is gVisor's runsc binary ("" finds it on $PATH when needed).
	Runsc string
}

// Network modes.
const (
	// NetworkNone: a network namespace with only a loopback interface.
	NetworkNone = "none"
	// NetworkEgress: outbound to public addresses through a user-mode
	// network stack (slirp4netns); the host, link-local and private
	// ranges are rejected inside the sandbox's own namespace.
	NetworkEgress = "egress"
)

// Sandbox builds sandboxed commands.
type Sandbox struct {
	cfg       Config
	cgroups   *cgroups
	netMounts []Mount // /etc files for egress sandboxes
	// hostNets reads the host's own addresses and subnets (a test sets
	// its own); EgressRanges's last answer is kept for as long as they
	// stay the same.
	hostNets func() []string
	denyMu   sync.Mutex
	denyHost []string
	deny     []string
	// live are the egress sandboxes whose network is up, for
	// RefreshNetworks.
	liveMu   sync.Mutex
	live     map[*Cmd]struct{}
	seen     bool
	seenHost []string // the host's addresses RefreshNetworks last saw
}

// New checks the host can run sandboxes and returns a Sandbox.
func New(cfg Config) (*Sandbox, error) {
	if cfg.Bwrap == "" {
		p, err := exec.LookPath("bwrap")
		if err != nil {
			return nil, errors.New("bubblewrap (bwrap) is not installed: apt-get install bubblewrap")
		}
		cfg.Bwrap = p
	}
	if cfg.Prlimit == "" {
		p, err := exec.LookPath("prlimit")
		if err != nil {
			return nil, errors.New("prlimit is not installed: apt-get install util-linux")
		}
		cfg.Prlimit = p
	}
	if cfg.Self == "" {
		cfg.Self = "/proc/self/exe"
	}
	cg, err := newCgroups(cfg.CgroupParent, cfg.Tree)
	if err != nil {
		return nil, err
	}
	s := &Sandbox{cfg: cfg, cgroups: cg, live: map[*Cmd]struct{}{}}
	if err := s.setupNetwork(); err != nil {
		return nil, err
	}
	return s, nil
}

// Sweep kills and removes whatever a previous run of this server left
// behind (after a kill -9). It returns the number of processes killed.
func (s *Sandbox) Sweep() int { return s.cgroups.sweep() }

// Cmd is a built, not yet started, sandboxed command. The caller sets
// Stdin/Stdout/Stderr on Cmd.Cmd, starts it, waits for it, and then calls
// Cleanup exactly once.
type Cmd struct {
	*exec.Cmd
	sb    *Sandbox
	name  string
	group *group
	fds   []*os.File // passed to the child as fds 3, 4, ...
	// The network's parts, guarded by netMu: Cleanup (when the sandbox
	// dies) may run while StartNetwork does.
	netMu      sync.Mutex
	netStopped bool
	egress     bool
	rulesMu    sync.Mutex // orders loads of the filter rules
	netns      *os.File   // the sandbox's network namespace, held; guarded by rulesMu
	slirp      *exec.Cmd
	slirpFD    *os.File // closing it tells slirp4netns to exit
	once       sync.Once
	oomBase    uint64
	noFiles    uint64 // the sandbox's open-file limit, slirp4netns's too
	ids        int    // the host uid, and gid, its processes run as
	// limitMu orders changes of its processes' open-file limits
	// (limitNoFiles) before Cleanup; limitsDone: Cleanup has begun.
	limitMu    sync.Mutex
	limitsDone bool
	// The hold (see Start): bwrap's --info-fd and --block-fd.
	info    *os.File
	release *os.File
	pid     int // the sandbox's first process (its pid 1)
	// cgroupDir is the v2 cgroup bwrap starts in; nil on v1, where Start
	// moves the sandbox in.
	cgroupDir *os.File
	// runsc's state, under gVisor isolation.
	runscBin, runscRoot, runscID string
}

// addFile passes f to the child and returns its fd number there.
func (c *Cmd) addFile(f *os.File) string {
	c.fds = append(c.fds, f)
	return strconv.Itoa(2 + len(c.fds))
}

// Command builds the command for spec. It creates the cgroup and opens the
// mount sources; Cleanup releases them.
func (s *Sandbox) Command(spec Spec) (*Cmd, error) {
	if spec.UID <= 0 {
		return nil, fmt.Errorf("sandbox %s: refusing to run as uid %d", spec.Name, spec.UID)
	}
	if err := inheritNothing(); err != nil {
		return nil, fmt.Errorf("sandbox %s: %w", spec.Name, err)
	}
	g, err := s.cgroups.create(spec.Name, spec.Resources)
	if err != nil {
		return nil, err
	}
	c := &Cmd{sb: s, group: g, name: spec.Name, noFiles: spec.NoFiles, ids: spec.UID}
	ok := false
	defer func() {
		if !ok {
			c.Cleanup()
		}
	}()

	// Mount sources become fds 3, 4, ... in bwrap.
	bw := []string{
		"--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
		"--unshare-cgroup-try", "--unshare-net",
		"--uid", "65534", "--gid", "65534",
		"--disable-userns",
		"--die-with-parent", "--new-session",
		"--hostname", "spry",
		"--clearenv",
	}
	// bubblewrap names the sandbox's first process (--info-fd), and holds
	// it, namespaces built, before it runs anything of the runtime
	// (--block-fd), until Start has put it in its cgroups. Start closes
	// the info pipe's write end, so a bubblewrap that dies early is an
	// EOF, not a hang.
	infoR, infoW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	c.info = infoR
	blockR, blockW, err := os.Pipe()
	if err != nil {
		infoW.Close()
		return nil, err
	}
	c.release = blockW
	bw = append(bw, "--info-fd", c.addFile(infoW), "--block-fd", c.addFile(blockR))
	for _, e := range spec.Env {
		k, v, _ := cut(e)
		bw = append(bw, "--setenv", k, v)
	}
	for _, lib := range s.cfg.SystemLibs {
		bw = append(bw, "--ro-bind", lib, lib)
	}
	mounts := spec.Mounts
	switch spec.Network {
	case NetworkEgress:
		mounts = append(mounts, s.netMounts...)
		c.egress = true
	case NetworkNone:
	default:
		return nil, fmt.Errorf("sandbox %s: unknown network mode %q", spec.Name, spec.Network)
	}
	for _, m := range mounts {
		f, err := os.OpenFile(m.Source, unix.O_PATH|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("sandbox %s: mount source: %w", spec.Name, err)
		}
		flag := "--ro-bind-fd"
		if m.Writable {
			flag = "--bind-fd"
		}
		bw = append(bw, flag, c.addFile(f), m.Dest)
	}
	// The seccomp filter travels through a pipe; bubblewrap loads it just
	// before it execs the runtime.
	filter, err := SeccompFilter()
	if err != nil {
		return nil, fmt.Errorf("sandbox %s: %w", spec.Name, err)
	}
	fr, fw, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	_, err = fw.Write(filter)
	fw.Close()
	if err != nil {
		fr.Close()
		return nil, fmt.Errorf("sandbox %s: write seccomp filter: %w", spec.Name, err)
	}
	bw = append(bw, "--seccomp", c.addFile(fr))
	bw = append(bw, "--proc", "/proc")
	views := procViews(spec.Resources.MemoryBytes)
	for _, name := range slices.Sorted(maps.Keys(views)) {
		r, w, err := os.Pipe()
		if err != nil {
			return nil, err
		}
		// Small enough for the pipe's buffer: bubblewrap reads it later.
		_, err = w.WriteString(views[name])
		w.Close()
		if err != nil {
			r.Close()
			return nil, fmt.Errorf("sandbox %s: write /proc/%s: %w", spec.Name, name, err)
		}
		bw = append(bw, "--ro-bind-data", c.addFile(r), "/proc/"+name)
	}
	bw = append(bw, procMasks()...)
	// Nothing in /proc is written from inside: a process there lowered
	// its own oom_score_adj from 1000 back to the server's 0 (without
	// CAP_SYS_RESOURCE, which this host's root lacks, the server's write
	// sets no floor), and so had the host's OOM killer take the server
	// first.
	bw = append(bw, "--remount-ro", "/proc")
	// Only the harmless devices: no /dev/shm, ttys or anything else.
	bw = append(bw, "--tmpfs", "/dev")
	for _, d := range []string{"null", "zero", "random", "urandom"} {
		bw = append(bw, "--dev-bind", "/dev/"+d, "/dev/"+d)
	}
	bw = append(bw, "--symlink", "/proc/self/fd", "/dev/fd", "--remount-ro", "/dev")
	if spec.TmpBytes > 0 {
		bw = append(bw, "--size", strconv.FormatInt(spec.TmpBytes, 10))
	}
	bw = append(bw, "--tmpfs", "/tmp", "--chdir", "/tmp", "--remount-ro", "/")
	bw = append(bw, "--", spec.Program)
	bw = append(bw, spec.Args...)

	if spec.Isolation == IsolationGVisor {
		// The files opened for bubblewrap are not passed to runsc.
		c.CloseFiles()
		c.closeHold()
		program, err := s.gvisorCommand(c, spec)
		if err != nil {
			return nil, err
		}
		c.Cmd = c.execStep(spec, program)
	} else {
		// bubblewrap runs as the instance's uid, behind prlimit(1), which
		// lowers its own rlimits (this server may not have
		// CAP_SYS_RESOURCE to set another process's) and execs it. Start
		// does the rest.
		limits := []string{"--core=0:0"}
		if spec.NoFiles > 0 {
			n := strconv.FormatUint(spec.NoFiles, 10)
			limits = append(limits, "--nofile="+n+":"+n)
		}
		args := append(append(limits, "--", s.cfg.Bwrap), bw...)
		cmd := exec.Command(s.cfg.Prlimit, args...)
		cmd.Env = []string{}
		cmd.ExtraFiles = c.fds
		cmd.SysProcAttr = &syscall.SysProcAttr{
			// Go sets the parent-death signal after the uid change (which
			// would clear it) and checks the parent still lives.
			Credential: &syscall.Credential{Uid: uint32(spec.UID), Gid: uint32(spec.UID), Groups: []uint32{}},
			Pdeathsig:  syscall.SIGKILL,
			Setpgid:    true,
		}
		// On cgroup v2 the process starts in its cgroup (clone3's
		// CLONE_INTO_CGROUP), and so does everything it forks: no move,
		// whose first one after a quiet moment waits for an RCU grace
		// period, and the cgroup namespace is rooted at the instance's.
		dir, err := g.openV2()
		if err != nil {
			return nil, fmt.Errorf("sandbox %s: open cgroup: %w", spec.Name, err)
		}
		if dir != nil {
			c.cgroupDir = dir
			cmd.SysProcAttr.UseCgroupFD = true
			cmd.SysProcAttr.CgroupFD = int(dir.Fd())
		}
		c.Cmd = cmd
	}
	c.oomBase = g.oomKills()
	ok = true
	return c, nil
}

// inheritNothing marks every descriptor of this process above stderr
// close-on-exec. Go opens its own so, but one the server inherited (a
// shell's redirection, a supervisor's pipe) is passed on by exec, and by
// prlimit and bubblewrap after it, into the sandbox: a host file,
// directory or socket for the function to use. A command's own files
// (stdio, ExtraFiles) are dup'ed into place in the child, so they still
// pass.
func inheritNothing() error {
	if unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC) == nil {
		return nil
	}
	// Before Linux 5.11.
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return fmt.Errorf("close inherited files: %w", err)
	}
	for _, e := range ents {
		if fd, err := strconv.Atoi(e.Name()); err == nil && fd > 2 {
			// The directory's own fd is gone by now: EBADF.
			_, _ = unix.FcntlInt(uintptr(fd), unix.F_SETFD, unix.FD_CLOEXEC)
		}
	}
	return nil
}

// execStep runs program through the exec step (exec.go), which joins the
// cgroups and sets the rlimits before the program's first instruction:
// for gVisor's runsc, which cannot be held the way bubblewrap can.
func (c *Cmd) execStep(spec Spec, program []string) *exec.Cmd {
	args := []string{ExecCommand}
	for _, p := range c.group.procsFiles() {
		args = append(args, "--cgroup", p)
	}
	if spec.NoFiles > 0 {
		args = append(args, "--nofile", strconv.FormatUint(spec.NoFiles, 10))
	}
	args = append(args, "--")
	args = append(args, program...)
	cmd := exec.Command(c.sb.cfg.Self, args...)
	cmd.Env = []string{}
	cmd.ExtraFiles = c.fds
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	return cmd
}

// Start starts the sandbox. A bubblewrap sandbox waits, its namespaces
// built, until it is in the instance's cgroups: on v2 it starts there
// (CLONE_INTO_CGROUP); on v1 Start moves bubblewrap and the sandbox's
// first process in. Every process of the runtime is forked after that
// and inherits them. Doing it here rather than in a re-exec of
// this (large) binary before bubblewrap saves ~7 ms of CPU per sandbox
// (docs/performance.md, item 25).
func (c *Cmd) Start() error {
	if err := c.Cmd.Start(); err != nil {
		if c.cgroupDir != nil {
			// clone3 fails this way too, say into a removed cgroup; Go
			// then names the program as if it were missing.
			err = fmt.Errorf("sandbox %s: start in its cgroup: %w", c.name, err)
		}
		c.closeHold()
		return err
	}
	if c.release == nil {
		return nil
	}
	// bubblewrap has its copies; without ours, its death ends the read.
	c.CloseFiles()
	err := c.admit()
	if err != nil {
		if c.pid > 0 {
			_ = unix.Kill(c.pid, unix.SIGKILL)
		}
		_ = c.Process.Kill()
		_ = c.Wait()
	}
	// Closing the hold releases the sandbox; after a failure it is dead
	// already (a sandbox released unadmitted would run outside its limits).
	c.closeHold()
	if err != nil {
		return fmt.Errorf("sandbox %s: %w", c.name, err)
	}
	return nil
}

const infoTimeout = 10 * time.Second

// admit reads the sandbox's first pid, moves it and bubblewrap into the
// cgroups, raises their OOM score and lets the sandbox go on.
func (c *Cmd) admit() error {
	// v1: bubblewrap moves first, while it starts. The first move after a
	// quiet moment waits for an RCU grace period (5-12 ms here), which so
	// overlaps bubblewrap's start rather than following it.
	var joinErr error
	if c.cgroupDir == nil {
		joinErr = c.join(c.Process.Pid)
	}
	// bubblewrap names the pid right after its first clone: a long wait
	// means it is stuck, and Start must not hang with it. The pid is read
	// even after a failed move: Start must kill that process too.
	_ = c.info.SetReadDeadline(time.Now().Add(infoTimeout))
	pid, err := readChildPid(c.info)
	if err != nil {
		return err
	}
	c.pid = pid
	if joinErr != nil {
		return joinErr
	}
	// bubblewrap and the sandbox's first process, whose children (the
	// runtime) inherit it.
	for _, p := range []int{c.Process.Pid, pid} {
		if err := raiseOOMScoreOf(p, c.ids); err != nil {
			return err
		}
	}
	// On v2 the sandbox was forked inside its cgroup. On v1 it moves too,
	// as it was most likely forked before bubblewrap moved.
	if c.cgroupDir == nil {
		if err := c.join(pid); err != nil {
			return err
		}
	}
	return c.releaseHold()
}

// join moves process pid into the instance's (v1) cgroups.
func (c *Cmd) join(pid int) error {
	for _, f := range c.group.procsFiles() {
		if err := os.WriteFile(f, []byte(strconv.Itoa(pid)), 0); err != nil {
			return fmt.Errorf("join cgroup: %w", err)
		}
	}
	return nil
}

func (c *Cmd) releaseHold() error {
	if _, err := c.release.Write([]byte{1}); err != nil {
		return fmt.Errorf("release the sandbox: %w", err)
	}
	return nil
}

// closeHold closes the pipes of the hold, and the cgroup's directory.
func (c *Cmd) closeHold() {
	if c.cgroupDir != nil {
		c.cgroupDir.Close()
		c.cgroupDir = nil
	}
	if c.info != nil {
		c.info.Close()
		c.info = nil
	}
	if c.release != nil {
		c.release.Close()
		c.release = nil
	}
}

// SetCPU changes the sandbox's CPU weight and its quota (per 100 ms; 0
// removes it).
func (c *Cmd) SetCPU(shares uint64, quotaUs int64) error { return c.group.setCPU(shares, quotaUs) }

// SetCPUQuota changes only the sandbox's CPU quota (per 100 ms; 0
// removes it), quickly.
func (c *Cmd) SetCPUQuota(quotaUs int64) error { return c.group.setQuota(quotaUs) }

// SetCPUShares changes only the sandbox's CPU weight (in v1 shares),
// quickly.
func (c *Cmd) SetCPUShares(shares uint64) error { return c.group.setShares(shares) }

// CPUQuota reads the sandbox's CPU quota back (per 100 ms; -1: none).
func (c *Cmd) CPUQuota() (int64, error) { return c.group.cpuQuota() }

// CPUWeight reads the sandbox's CPU weight back, in the cgroup version's
// own unit (v1 shares, v2 weight): only its order is comparable.
func (c *Cmd) CPUWeight() (uint64, error) { return c.group.cpuWeight() }

// OOMKilled reports whether the kernel's OOM killer killed a process of
// this sandbox. Call it after Wait and before Cleanup.
func (c *Cmd) OOMKilled() bool { return c.group.oomKills() > c.oomBase }

// CloseFiles closes the server's copies of the mount fds; call it once the
// command has started (the child has its own copies).
func (c *Cmd) CloseFiles() {
	for _, f := range c.fds {
		f.Close()
	}
	c.fds = nil
}

// Kill ends the sandbox at once: every process in its cgroups, the
// runtime among them, and bubblewrap. Killing bubblewrap alone ends the
// runtime only by its parent-death signal, which the kernel sends once
// bubblewrap's exit has torn its namespaces down: on a busy host a few
// hundred milliseconds in which the runtime still serves, a deleted
// function's code among them after its data is gone.
func (c *Cmd) Kill() error {
	c.group.kill()
	if c.Process == nil {
		return nil
	}
	return c.Process.Kill()
}

// Cleanup kills anything left in the sandbox's cgroup and removes it.
func (c *Cmd) Cleanup() {
	c.once.Do(func() {
		// A limit being set finishes first, and none begins after: once
		// Cleanup returns, no prlimit(2) call made for this sandbox can
		// reach a process that holds its uid after it (see limitNoFiles).
		c.limitMu.Lock()
		c.limitsDone = true
		c.limitMu.Unlock()
		c.CloseFiles()
		c.closeHold()
		c.stopNetwork()
		c.deleteRunsc()
		// A group cannot be removed until its last process is fully gone,
		// which on a loaded host can take well over 100 ms after the kill.
		retryBusy(time.Now().Add(busyFor), func() bool { return c.group.destroy() == nil })
	})
}

// busyFor bounds how long a cgroup's removal is retried: a group stays
// busy while its last processes finish exiting.
const busyFor = 2 * time.Second

// retryBusy calls remove until it succeeds or the deadline passes,
// backing off from 2 to 50 ms between calls.
func retryBusy(deadline time.Time, remove func() bool) {
	for wait := 2 * time.Millisecond; !remove() && time.Now().Before(deadline); wait = min(2*wait, 50*time.Millisecond) {
		time.Sleep(wait)
	}
}

func cut(e string) (string, string, bool) {
	for i := 0; i < len(e); i++ {
		if e[i] == '=' {
			return e[:i], e[i+1:], true
		}
	}
	return e, "", false
}

func waitBriefly() { time.Sleep(20 * time.Millisecond) }

// SharedLibs returns the shared libraries an ELF binary needs (its
// interpreter and DT_NEEDED entries, resolved in the standard directories),
// so the sandbox can bind exactly those instead of the host's /lib.
func SharedLibs(binary string) ([]string, error) {
	return sharedLibs(binary, map[string]bool{})
}

var libDirs = []string{"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib", "/lib/aarch64-linux-gnu", "/usr/lib/aarch64-linux-gnu"}

func resolveLib(name string) string {
	for _, d := range libDirs {
		p := filepath.Join(d, name)
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return ""
}
