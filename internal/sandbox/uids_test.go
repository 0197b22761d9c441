package sandbox

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// With zombieLeaderEnv set to a uid, the test binary becomes a process of
// that uid whose first thread exits on its own while its other threads go
// on: a zombie group leader with a live process behind it.
const zombieLeaderEnv = "SPRY_TEST_ZOMBIE_LEADER"

func init() {
	v := os.Getenv(zombieLeaderEnv)
	if v == "" {
		return
	}
	uid, _ := strconv.Atoi(v)
	// Locked in init, the main goroutine keeps the first thread.
	runtime.LockOSThread()
	if err := syscall.Setresgid(uid, uid, uid); err != nil {
		os.Exit(2)
	}
	if err := syscall.Setresuid(uid, uid, uid); err != nil {
		os.Exit(2)
	}
	go func() { time.Sleep(time.Minute); os.Exit(0) }()
	os.Stdout.WriteString("ready\n")
	for {
		// exit, not exit_group: only this thread ends.
		syscall.RawSyscall(syscall.SYS_EXIT, 0, 0, 0)
	}
}

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
	in1, in2, out := start(2999950), start(2999951), start(2999952)
	if n := KillUIDs(2999950, 2999952); n != 2 {
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

// A process whose group leader has exited while its other threads run is
// still killed: its leader shows as a zombie, but it is not dead.
func TestKillUIDsZombieLeader(t *testing.T) {
	if syscall.Getuid() != 0 {
		t.Skip("needs root to run processes as other uids")
	}
	const uid = 2999953
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%d", zombieLeaderEnv, uid))
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	buf := make([]byte, 6)
	if _, err := out.Read(buf); err != nil || string(buf) != "ready\n" {
		t.Fatalf("helper: %q, %v", buf, err)
	}
	status := "/proc/" + strconv.Itoa(cmd.Process.Pid) + "/status"
	deadline := time.Now().Add(5 * time.Second)
	for {
		b, _ := os.ReadFile(status)
		if bytes.Contains(b, []byte("State:\tZ")) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the helper's leader did not exit:\n%s", b)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if n := KillUIDs(uid, uid+1); n != 1 {
		t.Errorf("KillUIDs killed %d processes, want 1", n)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || ws.Signal() != syscall.SIGKILL {
			t.Errorf("helper ended with %v, want killed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the helper's threads still run")
	}
}
