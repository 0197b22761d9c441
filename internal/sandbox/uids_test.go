package sandbox

import (
	"os/exec"
	"syscall"
	"testing"
	"time"
)

// KillUIDs kills the processes running as the uids of its range, and
// only those.
func TestKillUIDs(t *testing.T) {
	if syscall.Getuid() != 0 {
		t.Skip("needs root to run processes as other uids")
	}
	start := func(uid int) *exec.Cmd {
		cmd := exec.Command("sleep", "30")
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}, Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		return cmd
	}
	in1, in2, out := start(340250), start(340251), start(340252)
	if n := KillUIDs(340250, 340252); n != 2 {
		t.Errorf("KillUIDs killed %d processes, want 2", n)
	}
	for _, c := range []*exec.Cmd{in1, in2} {
		done := make(chan error, 1)
		go func() { done <- c.Wait() }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatalf("pid %d (uid in the range) still runs", c.Process.Pid)
		}
	}
	if err := out.Process.Signal(syscall.Signal(0)); err != nil {
		t.Errorf("the process outside the range was killed: %v", err)
	}
}
