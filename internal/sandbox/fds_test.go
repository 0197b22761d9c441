//go:build linux && amd64

package sandbox_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

const leakedFDEnv = "SPRY_LEAKED_FD"

// TestInheritedFDChild is the sandboxed half of
// TestSandboxGetsNoInheritedFD: it reads what it can from the fd it is
// told of.
func TestInheritedFDChild(t *testing.T) {
	v := os.Getenv(leakedFDEnv)
	if v == "" {
		t.Skip("runs only inside the sandbox TestSandboxGetsNoInheritedFD starts")
	}
	fmt.Println("running")
	fd, _ := strconv.Atoi(v)
	b := make([]byte, 64)
	n, err := unix.Pread(fd, b, 0)
	if err != nil {
		fmt.Printf("read: %v\n", err)
		return
	}
	fmt.Printf("read: %q\n", b[:n])
}

// A descriptor the server inherited without close-on-exec (from whatever
// started it: a shell's redirection, a supervisor) must not reach the
// sandbox: Go's exec passes on every such fd, and so do prlimit and
// bubblewrap.
func TestSandboxGetsNoInheritedFD(t *testing.T) {
	const uid = 2999937
	secret := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secret, []byte("host secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(secret)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// As a parent process would leave it: no close-on-exec, and above
	// the fds the sandbox is given (which would take its place).
	fd := 200
	for ; ; fd++ {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err == unix.EBADF {
			break
		}
	}
	if err := unix.Dup2(int(f.Fd()), fd); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	sb, spec := holdSpec(t, uid, 0)
	spec.Args = []string{"-test.run=^TestInheritedFDChild$", "-test.count=1"}
	spec.Env = append(spec.Env, leakedFDEnv+"="+strconv.Itoa(fd))
	_, out := startRunning(t, sb, spec)
	line, err := out.ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("child: %s", line)
	if strings.Contains(line, "host secret") || !strings.Contains(line, "bad file descriptor") {
		t.Fatalf("the sandbox read the server's inherited fd %d: %s", fd, line)
	}
}
