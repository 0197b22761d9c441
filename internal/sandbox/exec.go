package sandbox

import (
	"fmt"
	"os"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// ExecCommand is the hidden first argument that makes the spry binary run
// ExecMain instead of its CLI.
const ExecCommand = "__sandbox-exec"

// ExecMain is the sandbox's exec step. It runs as root in the freshly
// forked child: it joins the instance's cgroups, sets rlimits, drops every
// privilege to the instance's uid, re-arms the parent-death signal and execs
// bubblewrap. It never returns.
//
//	spry __sandbox-exec --uid N [--cgroup F]... [--nofile N] -- bwrap ARGS...
func ExecMain(args []string) {
	if err := execMain(args); err != nil {
		fmt.Fprintf(os.Stderr, "spry sandbox: %v\n", err)
		os.Exit(125)
	}
}

func execMain(args []string) error {
	uid := -1
	var cgroupFiles []string
	var nofile uint64
	i := 0
	for ; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			i++
			break
		}
		if i+1 >= len(args) {
			return fmt.Errorf("flag %s needs a value", a)
		}
		v := args[i+1]
		i++
		switch a {
		case "--uid":
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				return fmt.Errorf("bad --uid %q", v)
			}
			uid = n
		case "--cgroup":
			cgroupFiles = append(cgroupFiles, v)
		case "--nofile":
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				return fmt.Errorf("bad --nofile %q", v)
			}
			nofile = n
		default:
			return fmt.Errorf("unknown flag %s", a)
		}
	}
	argv := args[i:]
	// uid 0 is only for gVisor's runsc, which needs root to build its
	// sandbox and drops it itself.
	if uid < 0 || len(argv) == 0 {
		return fmt.Errorf("usage: %s --uid N [--cgroup FILE]... -- PROGRAM ARGS", ExecCommand)
	}
	// Join the cgroups first: every process the sandbox forks inherits them.
	for _, f := range cgroupFiles {
		if err := os.WriteFile(f, []byte("0"), 0); err != nil {
			return fmt.Errorf("join cgroup: %w", err)
		}
	}
	if nofile > 0 {
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: nofile, Max: nofile}); err != nil {
			return fmt.Errorf("rlimit nofile: %w", err)
		}
	}
	if err := unix.Setrlimit(unix.RLIMIT_CORE, &unix.Rlimit{}); err != nil {
		return fmt.Errorf("rlimit core: %w", err)
	}
	if uid > 0 {
		if err := syscall.Setgroups(nil); err != nil {
			return fmt.Errorf("setgroups: %w", err)
		}
		if err := syscall.Setresgid(uid, uid, uid); err != nil {
			return fmt.Errorf("setgid: %w", err)
		}
		if err := syscall.Setresuid(uid, uid, uid); err != nil {
			return fmt.Errorf("setuid: %w", err)
		}
	}
	// A credential change cleared the parent-death signal; re-arm it, then
	// make sure the parent did not die in between.
	ppid := os.Getppid()
	if err := unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(syscall.SIGKILL), 0, 0, 0); err != nil {
		return fmt.Errorf("pdeathsig: %w", err)
	}
	if os.Getppid() != ppid || ppid == 1 {
		return fmt.Errorf("parent exited")
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("no_new_privs: %w", err)
	}
	return syscall.Exec(argv[0], argv, os.Environ())
}

// MaybeExec runs the exec step and does not return if the process was
// started as one (os.Args[1] == ExecCommand). Binaries that build sandboxes
// (spry itself, and test binaries that use /proc/self/exe) call it first
// thing in main or TestMain.
func MaybeExec() {
	if len(os.Args) > 1 && os.Args[1] == ExecCommand {
		ExecMain(os.Args[2:])
	}
}
