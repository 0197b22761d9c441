//go:build linux && amd64

package sandbox_test

import (
	"errors"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spry-run/spry/internal/sandbox"
)

// startAt starts a process that sleeps, as uid and gid, at pid: the pid
// of a process that has just ended. It sets the host's last pid so that
// the next fork takes pid, and tries again if another took it first.
func startAt(t *testing.T, pid, uid, gid int) *exec.Cmd {
	t.Helper()
	// Other processes of a loaded host may take the pid first: try often.
	for range 5000 {
		if err := os.WriteFile("/proc/sys/kernel/ns_last_pid", []byte(strconv.Itoa(pid-1)), 0); err != nil {
			t.Skipf("cannot choose the next pid: %v", err)
		}
		cmd := exec.Command("sleep", "60")
		// Its ids are set even to root's: the fork may be made from a
		// thread whose real ids are a sandbox's (the hook runs there).
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL,
			Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		if cmd.Process.Pid == pid {
			t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
			return cmd
		}
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}
	t.Fatalf("no process could be started at pid %d", pid)
	return nil
}

// endAndReap kills pid, a process of a sandbox, and waits until it is
// reaped (its parent in the sandbox reaps it): its pid is free.
func endAndReap(t *testing.T, pid int) {
	t.Helper()
	_ = syscall.Kill(pid, syscall.SIGKILL)
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); errors.Is(err, os.ErrNotExist) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %d was not reaped", pid)
		}
		time.Sleep(time.Millisecond)
	}
}

// hardNoFile reads pid's hard open-file limit.
func hardNoFile(t *testing.T, pid int) string {
	t.Helper()
	return strings.Fields(field(procFile(t, pid, "limits"), "Max open files"))[1]
}

// A sandbox's process whose open-file limit is to be set may end, and its
// pid be taken by another process, of the host or of another sandbox,
// whatever its uid: that process keeps its limit. The pid is taken after
// the sandbox's processes were listed, the sandbox's share being given
// (LimitFresh, as the server does it, from the list it made to count
// them); and after a process was found in the sandbox, just before its
// limit is set (SetNoFiles, as the server changes shares).
func TestNoFileLimitMissesAReusedPid(t *testing.T) {
	victims := []struct {
		name     string
		uid, gid int
	}{{"root", 0, 0}, {"another uid", 2999971, 2999971}}
	for _, when := range []string{"listed", "checked"} {
		for _, v := range victims {
			t.Run(when+"/"+v.name, func(t *testing.T) {
				if when == "checked" && sandbox.RaisesOpenFiles() {
					t.Skip("with CAP_SYS_RESOURCE the kernel checks no ids of prlimit(2)'s target: nothing holds past the check")
				}
				sb, spec := holdSpec(t, 2999970, 4096)
				c, _ := startRunning(t, sb, spec)
				pids, err := c.Openers()
				if err != nil || len(pids) != 1 {
					t.Fatalf("openers %v, %v; want the program alone", pids, err)
				}
				pid := pids[0]
				// The limits reach the sandbox's own process.
				if _, err := c.SetNoFiles(3000); err != nil {
					t.Fatal(err)
				}
				if got := hardNoFile(t, pid); got != "3000" {
					t.Fatalf("the sandbox's process has an open-file limit of %s, want 3000", got)
				}
				var victim *exec.Cmd
				reuse := func() {
					endAndReap(t, pid)
					victim = startAt(t, pid, v.uid, v.gid)
				}
				if when == "listed" {
					reuse()
					err = c.LimitFresh(32, 1000, pids)
				} else {
					sandbox.SetPrlimitHook(t, func(got int) {
						if got == pid && victim == nil {
							reuse()
						}
					})
					_, err = c.SetNoFiles(1000)
					if victim == nil {
						t.Fatal("the hook did not run")
					}
				}
				t.Logf("err = %v", err)
				// It started with this process's limit.
				if got, want := hardNoFile(t, victim.Process.Pid), hardNoFile(t, os.Getpid()); got != want {
					t.Fatalf("the process of uid %d that took the sandbox's pid %d has an open-file limit of %s, not the %s it started with", v.uid, pid, got, want)
				}
			})
		}
	}
}
