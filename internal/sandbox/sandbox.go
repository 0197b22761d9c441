package sandbox

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
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
	// Self is the spry binary that runs the __sandbox-exec step.
	Self string
	// CgroupParent names this server's cgroup subtree, e.g. "spry/3f2a9c".
	CgroupParent string
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
	blocked   []string
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
	if cfg.Self == "" {
		cfg.Self = "/proc/self/exe"
	}
	cg, err := newCgroups(cfg.CgroupParent)
	if err != nil {
		return nil, err
	}
	s := &Sandbox{cfg: cfg, cgroups: cg}
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
	group *group
	fds   []*os.File // passed to the child as fds 3, 4, ...
	// The network's parts, guarded by netMu: Cleanup (when the sandbox
	// dies) may run while StartNetwork does.
	netMu      sync.Mutex
	netStopped bool
	info       *os.File // bwrap's --info-fd, read for the sandbox's pid
	slirp      *exec.Cmd
	slirpFD    *os.File // closing it tells slirp4netns to exit
	once       sync.Once
	oomBase    uint64
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
	g, err := s.cgroups.create(spec.Name, spec.Resources)
	if err != nil {
		return nil, err
	}
	c := &Cmd{sb: s, group: g}
	ok := false
	defer func() {
		if !ok {
			c.Cleanup()
		}
	}()

	// Mount sources become fds 3, 4, ... in the exec step and in bwrap.
	bw := []string{
		"--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
		"--unshare-cgroup-try", "--unshare-net",
		"--uid", "65534", "--gid", "65534",
		"--disable-userns",
		"--die-with-parent", "--new-session",
		"--hostname", "spry",
		"--clearenv",
	}
	for _, e := range spec.Env {
		k, v, _ := cut(e)
		bw = append(bw, "--setenv", k, v)
	}
	for _, lib := range s.cfg.SystemLibs {
		bw = append(bw, "--ro-bind", lib, lib)
	}
	mounts := spec.Mounts
	if spec.Network == NetworkEgress {
		mounts = append(mounts, s.netMounts...)
		r, w, err := os.Pipe()
		if err != nil {
			return nil, err
		}
		c.info = r
		bw = append(bw, "--info-fd", c.addFile(w))
	} else if spec.Network != NetworkNone {
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

	uid, program := spec.UID, append([]string{s.cfg.Bwrap}, bw...)
	if spec.Isolation == IsolationGVisor {
		// The files opened for bubblewrap are not passed to runsc.
		c.CloseFiles()
		if program, err = s.gvisorCommand(c, spec); err != nil {
			return nil, err
		}
		uid = 0
	}
	args := []string{ExecCommand, "--uid", strconv.Itoa(uid)}
	for _, p := range g.procsFiles() {
		args = append(args, "--cgroup", p)
	}
	if spec.NoFiles > 0 {
		args = append(args, "--nofile", strconv.FormatUint(spec.NoFiles, 10))
	}
	args = append(args, "--")
	args = append(args, program...)

	cmd := exec.Command(s.cfg.Self, args...)
	cmd.Env = []string{}
	cmd.ExtraFiles = c.fds
	cmd.SysProcAttr = &syscall.SysProcAttr{
		// The exec step re-arms this after dropping privileges (a uid
		// change clears it); here it covers the moment before that.
		Pdeathsig: syscall.SIGKILL,
		Setpgid:   true,
	}
	c.Cmd = cmd
	c.oomBase = g.oomKills()
	ok = true
	return c, nil
}

// SetCPU changes the sandbox's CPU weight and its quota (per 100 ms; 0
// removes it).
func (c *Cmd) SetCPU(shares uint64, quotaUs int64) error { return c.group.setCPU(shares, quotaUs) }

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

// Cleanup kills anything left in the sandbox's cgroup and removes it.
func (c *Cmd) Cleanup() {
	c.once.Do(func() {
		c.CloseFiles()
		c.stopNetwork()
		c.deleteRunsc()
		for i := 0; i < 50; i++ {
			if err := c.group.destroy(); err == nil {
				return
			}
			time.Sleep(2 * time.Millisecond)
		}
	})
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
