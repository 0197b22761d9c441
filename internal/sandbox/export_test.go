package sandbox

import (
	"fmt"
	"os/exec"
	"testing"
)

// SlirpPid is the pid of the sandbox's slirp4netns, or 0.
func (c *Cmd) SlirpPid() int {
	c.netMu.Lock()
	defer c.netMu.Unlock()
	if c.slirp == nil || c.slirp.Process == nil {
		return 0
	}
	return c.slirp.Process.Pid
}

// SetHostNets makes the sandbox take the host's addresses from f.
func (s *Sandbox) SetHostNets(f func() []string) { s.hostNets = f }

// Rules lists the filter rules loaded in the sandbox's network namespace.
func (c *Cmd) Rules() (string, error) {
	out, err := exec.Command("nsenter", "--net="+fmt.Sprintf("/proc/%d/ns/net", c.pid), "--", "nft", "list", "ruleset").CombinedOutput()
	return string(out), err
}

// SetPrlimitHook has f called just before each prlimit(2) call that sets
// an open-file limit of a process found to be a sandbox's, until the test
// ends.
func SetPrlimitHook(t testing.TB, f func(pid int)) {
	testHookPrlimit = f
	t.Cleanup(func() { testHookPrlimit = nil })
}
