package sandbox

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// ExecCommand is the hidden first argument that makes the spry binary run
// ExecMain instead of its CLI.
const ExecCommand = "__sandbox-exec"

// ExecMain is the exec step of a gVisor sandbox (and of a build's
// command). It runs as root in the freshly forked child: it joins the
// instance's cgroups, sets rlimits and the OOM score, sets no_new_privs
// and execs runsc (which needs root to build its sandbox and
// drops it itself). It never returns. bubblewrap sandboxes need no such
// step: bubblewrap holds the sandbox until Cmd.Start has done the same.
//
//	spry __sandbox-exec [--cgroup F]... [--nofile N] -- PROGRAM ARGS...
func ExecMain(args []string) {
	if err := execMain(args); err != nil {
		fmt.Fprintf(os.Stderr, "spry sandbox: %v\n", err)
		os.Exit(125)
	}
}

func execMain(args []string) error {
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
	if len(argv) == 0 {
		return fmt.Errorf("usage: %s [--cgroup FILE]... [--nofile N] -- PROGRAM ARGS", ExecCommand)
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
	if err := raiseOOMScore(os.Getpid()); err != nil {
		return err
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

// oomScoreAdj is every sandboxed process's oom_score_adj, the kernel's
// largest: when the host runs out of memory, its OOM killer takes the
// largest of the functions' (and builds') processes, before the server
// or anything else of the host, whose score is 0 (so Kubernetes treats
// BestEffort pods). Without it the server, one process larger than any
// instance, would be the first to go. Raising a score needs no
// privilege; children inherit it.
const oomScoreAdj = "1000"

// raiseOOMScore sets process pid's oom_score_adj to oomScoreAdj.
func raiseOOMScore(pid int) error {
	if err := os.WriteFile("/proc/"+strconv.Itoa(pid)+"/oom_score_adj", []byte(oomScoreAdj), 0); err != nil {
		return fmt.Errorf("oom score: %w", err)
	}
	return nil
}

// raiseOOMScoreOf is raiseOOMScore for a process that runs as uid. Its
// /proc file is uid's, mode 0644: root writes it only with
// CAP_DAC_OVERRIDE, which a container may have dropped. Then it is
// written from a thread whose filesystem uid is uid, the file's owner
// (raising a score needs no privilege).
func raiseOOMScoreOf(pid, uid int) error {
	err := raiseOOMScore(pid)
	if !errors.Is(err, fs.ErrPermission) {
		return err
	}
	// setfsuid returns the previous fsuid whatever happens: the second
	// call of each pair reads back the first's effect.
	setfsuid := func(id int) bool {
		unix.RawSyscall(unix.SYS_SETFSUID, uintptr(id), 0, 0)
		now, _, _ := unix.RawSyscall(unix.SYS_SETFSUID, uintptr(id), 0, 0)
		return int(now) == id
	}
	return onThread(func() error {
		if !setfsuid(uid) {
			return fmt.Errorf("oom score: setfsuid %d failed", uid)
		}
		return nil
	}, func() bool { return setfsuid(0) }, func() error { return raiseOOMScore(pid) })
}
