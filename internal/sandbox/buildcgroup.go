package sandbox

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"time"
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

// NewBuilds checks the host for cgroups and setpriv. parent is the
// server's cgroup parent (Config.CgroupParent); self the spry binary that
// runs the exec step ("" is /proc/self/exe, which must call MaybeExec).
func NewBuilds(parent, self string) (*Builds, error) {
	cg, err := newCgroups(parent)
	if err != nil {
		return nil, err
	}
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		return nil, errors.New("setpriv is not installed: apt-get install util-linux")
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
}

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

// OOMKilled reports whether the kernel's OOM killer killed a process of
// the cgroup. Call it after Wait and before Cleanup.
func (c *BuildCmd) OOMKilled() bool { return c.group.oomKills() > c.oomBase }

// Cleanup kills whatever is left in the cgroup and removes it.
func (c *BuildCmd) Cleanup() {
	c.once.Do(func() {
		retryBusy(time.Now().Add(busyFor), func() bool { return c.group.destroy() == nil })
	})
}
