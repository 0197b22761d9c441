package sandbox

// SlirpPid is the pid of the sandbox's slirp4netns, or 0.
func (c *Cmd) SlirpPid() int {
	c.netMu.Lock()
	defer c.netMu.Unlock()
	if c.slirp == nil || c.slirp.Process == nil {
		return 0
	}
	return c.slirp.Process.Pid
}
