package sandbox

import (
	"errors"
	"os/exec"
	goruntime "runtime"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// asIDs lowers the open-file limit of a process whose real uid and gid
// are those it is given (the kernel wants each, without
// CAP_SYS_RESOURCE), and, without that capability, of no other: not of
// root's, nor of one whose gid differs.
func TestAsIDsReachesOnlyItsIDs(t *testing.T) {
	if syscall.Getuid() != 0 {
		t.Skip("needs root to run a process as another uid")
	}
	const uid, gid = 2999960, 2999961
	start := func(uid, gid uint32) int {
		cmd := exec.Command("sleep", "30")
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid, Groups: []uint32{}}, Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		return cmd.Process.Pid
	}
	lower := func(pid int) (uint64, error) {
		st, err := procStatus(pid)
		if err != nil {
			t.Fatal(err)
		}
		want := st.nofile - 1
		err = asIDs(uid, gid, func() error { return unix.Prlimit(pid, unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: want, Max: want}, nil) })
		after, serr := procStatus(pid)
		if serr != nil {
			t.Fatal(serr)
		}
		if set := after.nofile == want; set != (err == nil) {
			t.Fatalf("open-file limit %d after %v (it was %d)", after.nofile, err, st.nofile)
		}
		return want, err
	}
	if _, err := lower(start(uid, gid)); err != nil {
		t.Fatalf("lower the open-file limit of a process of uid %d, gid %d: %v", uid, gid, err)
	}
	if raisesFiles() {
		t.Skip("with CAP_SYS_RESOURCE the kernel checks no ids")
	}
	for _, other := range [][2]uint32{{0, 0}, {uid, uid}, {gid, gid}} {
		if _, err := lower(start(other[0], other[1])); !errors.Is(err, unix.EPERM) {
			t.Errorf("lower the open-file limit of a process of uid %d, gid %d as uid %d, gid %d: %v, want EPERM", other[0], other[1], uid, gid, err)
		}
	}
}

// A call that ends its goroutine on the credentials' thread (a test's
// t.Fatal in a hook does) gets an error back, and the thread's
// credentials are set back: before, the caller waited for ever.
func TestOnThreadSurvivesGoexit(t *testing.T) {
	left := false
	done := make(chan error, 1)
	go func() {
		done <- onThread(func() error { return nil }, func() bool { left = true; return true }, func() error {
			goruntime.Goexit()
			return nil
		})
	}()
	select {
	case err := <-done:
		if err == nil {
			t.Error("no error from a call that never returned")
		}
		if !left {
			t.Error("leave did not run")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("onThread did not return within 10s")
	}
}
