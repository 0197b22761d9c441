package sandbox

import (
	"os/exec"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// prlimitNoFile lowers the open-file limit of a process of another uid
// whose gid differs from its uid: without CAP_SYS_RESOURCE the kernel
// wants the caller's real uid and real gid to be the process's, each.
func TestPrlimitNoFileOtherUIDAndGID(t *testing.T) {
	if syscall.Getuid() != 0 {
		t.Skip("needs root to run a process as another uid")
	}
	const uid, gid = 340260, 340261
	cmd := exec.Command("sleep", "30")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid, Groups: []uint32{}}, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	pid := cmd.Process.Pid
	st, err := procStatus(pid)
	if err != nil {
		t.Fatal(err)
	}
	want := st.nofile - 1
	if err := prlimitNoFile(pid, &unix.Rlimit{Cur: want, Max: want}); err != nil {
		t.Fatalf("lower the open-file limit of a process of uid %d, gid %d: %v", uid, gid, err)
	}
	if st, err = procStatus(pid); err != nil {
		t.Fatal(err)
	}
	if st.nofile != want {
		t.Fatalf("open-file limit %d, want %d", st.nofile, want)
	}
}
