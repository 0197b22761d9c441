package sandbox

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/cgroups/v3/cgroup1"
)

// TestMain lets this binary (/proc/self/exe) run the exec step, which
// puts a build command in its cgroup.
func TestMain(m *testing.M) {
	MaybeExec()
	os.Exit(m.Run())
}

// testBuilds makes build cgroups under a parent of the test's own,
// removed (with whatever is left in it) when the test ends.
func testBuilds(t testing.TB) *Builds { return testBoundBuilds(t, Tree{}) }

// testBoundBuilds is testBuilds with the subtree bounded by tree.
func testBoundBuilds(t testing.TB, tree Tree) *Builds {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for cgroups and uids")
	}
	parent := fmt.Sprintf("spry-test-writes/%d-%s", os.Getpid(), strings.ReplaceAll(t.Name(), "/", "-"))
	b, err := NewBuilds(parent, "", tree)
	if err != nil {
		t.Skip(err)
	}
	t.Cleanup(func() {
		if n := b.cg.sweep(); n != 0 {
			t.Errorf("%d processes left in the build cgroups", n)
		}
		// sweep removed the test's own parent; this one too, unless
		// another test's is still in it.
		if b.cg.v2 {
			os.Remove(filepath.Join(cgroupRoot, "spry-test-writes"))
			return
		}
		path := cgroup1.NestedPath("spry-test-writes")
		for _, n := range v1Names {
			if p, err := path(n); err == nil {
				os.Remove(filepath.Join(cgroupRoot, string(n), p))
			}
		}
	})
	return b
}

// A build that writes past LimitWrites' bound is killed, its whole
// cgroup, and WriteErr says why; one that stays under it runs to its
// end. Writes of processes that have exited count once: those reaped
// inside the group (which the kernel adds to the reaper's own) and
// those reaped outside it (an orphan's, which only the meter
// remembers).
func TestLimitWrites(t *testing.T) {
	const uid = 2999998
	const mib = 1 << 20
	b := testBuilds(t)
	for _, c := range []struct {
		name   string
		max    int64
		script string
		killed bool
	}{
		// Each head is a child of the shell, reaped by it.
		{"loop past the bound", 4 * mib, `while :; do head -c 1048576 /dev/zero >> out; done`, true},
		{"one large write", 4 * mib, `head -c 104857600 /dev/zero > out; sleep 5`, true},
		{"under the bound", 4 * mib, `head -c 3145728 /dev/zero > out; sleep 0.3`, false},
		// The subshell, seen while it lives, writes 3 MiB and is reaped
		// by the shell, which then holds them: counted once, not twice.
		{"reaped inside, counted once", 4 * mib, `(head -c 3145728 /dev/zero > out; sleep 0.5); sleep 0.5`, false},
		// The same, a level down: the subshell's child holds the 3 MiB
		// (its head's, reaped by it) when seen, and ends with the
		// subshell between two polls, the subshell reaped by the shell,
		// which then holds them: counted once, not twice.
		{"reaped inside two levels down, counted once", 4 * mib, `(sh -c 'head -c 3145728 /dev/zero > out; sleep 0.5'; true); sleep 0.5`, false},
		// The orphan's 3 MiB, reaped outside the group, still count:
		// with the shell's 2 MiB after it, past 4.
		{"reaped outside, counted", 4 * mib, `(sh -c 'head -c 3145728 /dev/zero > a; sleep 0.5' &); sleep 1; head -c 2097152 /dev/zero > out; sleep 5`, true},
		// All of it between the start and the first poll: the first
		// process's own writes and its reaped child's are read once it
		// has exited, before it is reaped.
		{"past the bound and gone before the first poll", 4 * mib, `head -c 16777216 /dev/zero > out; exec head -c 1048576 /dev/zero > out2`, true},
		{"under the bound and gone before the first poll", 4 * mib, `head -c 2097152 /dev/zero > out; exec head -c 1048576 /dev/zero > out2`, false},
		// The exec step raised the OOM score, before anything ran.
		{"its OOM score", 4 * mib, `test "$(cat /proc/self/oom_score_adj)" = 1000`, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			// The build's uid must reach it: its parent is 0700.
			if err := os.Chmod(filepath.Dir(dir), 0o711); err != nil {
				t.Fatal(err)
			}
			if err := os.Chown(dir, uid, uid); err != nil {
				t.Fatal(err)
			}
			cmd, err := b.Command(context.Background(), Resources{MemoryBytes: 256 << 20, Pids: 64}, uid, []string{"/bin/sh", "-c", c.script})
			if err != nil {
				t.Fatal(err)
			}
			defer cmd.Cleanup()
			cmd.Dir = dir
			cmd.LimitWrites(c.max)
			start := time.Now()
			err = cmd.Run()
			took := time.Since(start)
			wrote := written(t, dir)
			werr := cmd.WriteErr()
			cmd.Cleanup()
			if !c.killed {
				if err != nil || werr != nil {
					t.Fatalf("run: %v; WriteErr: %v (wrote %d bytes)", err, werr, wrote)
				}
				return
			}
			// A kill, or, for a command that had ended before the watch
			// saw it past the bound, Wait's own ErrWroteTooMuch.
			var ee *exec.ExitError
			if !(errors.As(err, &ee) || errors.Is(err, ErrWroteTooMuch)) || !errors.Is(werr, ErrWroteTooMuch) {
				t.Fatalf("run: %v; WriteErr: %v, want a kill and ErrWroteTooMuch (wrote %d bytes in %v)", err, werr, wrote, took)
			}
			t.Logf("killed after %v, having written %.1f MiB (bound %d MiB)", took.Round(time.Millisecond), float64(wrote)/mib, c.max/mib)
		})
	}
}

// written is what the files in dir hold.
func written(t *testing.T, dir string) int64 {
	t.Helper()
	var n int64
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		fi, err := os.Stat(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		n += fi.Size()
	}
	return n
}

// BenchmarkWriteMeterPoll is the cost of one poll of a group that holds
// one process (npm's usual).
func BenchmarkWriteMeterPoll(b *testing.B) {
	builds := testBuilds(b)
	cmd, err := builds.Command(context.Background(), Resources{Pids: 16}, 0, []string{"/bin/sleep", "60"})
	if err != nil {
		b.Fatal(err)
	}
	defer cmd.Cleanup()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer cmd.Wait()
	m := newWriteMeter(cmd.group.procsFiles()[0])
	for len(m.last) == 0 {
		if _, err := m.poll(); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := m.poll(); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	_ = cmd.Kill()
}

// startTwo starts script as two builds, each allowed 256 MiB and 64
// processes, and returns them with their stderr.
func startTwo(t *testing.T, b *Builds, script string) ([]*BuildCmd, []*bytes.Buffer) {
	t.Helper()
	var cmds []*BuildCmd
	var outs []*bytes.Buffer
	for range 2 {
		cmd, err := b.Command(context.Background(), Resources{MemoryBytes: 256 << 20, Pids: 64}, 0, []string{"/bin/sh", "-c", script})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(cmd.Cleanup)
		out := &bytes.Buffer{}
		cmd.Stderr = out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds, outs = append(cmds, cmd), append(outs, out)
	}
	return cmds, outs
}

// treeDir is the directory of the builds' subtree that holds ctrl's
// files (v2: the one directory).
func treeDir(t *testing.T, b *Builds, ctrl cgroup1.Name) string {
	t.Helper()
	if b.cg.v2 {
		return filepath.Join(cgroupRoot, b.cg.parent)
	}
	p, err := cgroup1.NestedPath(b.cg.parent)(ctrl)
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(cgroupRoot, string(ctrl), p)
}

// The subtree's bound holds for all its groups together, whatever each
// group's own: two builds each forking 30 processes, each allowed 64,
// hold at most the tree's 40 together, and the forks past it fail.
func TestTreePidsBound(t *testing.T) {
	const tree = 40
	b := testBoundBuilds(t, Tree{Pids: tree})
	script := `i=0; while [ $i -lt 30 ]; do sleep 3 & i=$((i+1)); done; wait`
	cmds, outs := startTwo(t, b, script)
	dir := treeDir(t, b, cgroup1.Pids)
	max, err := os.ReadFile(filepath.Join(dir, "pids.max"))
	if err != nil || strings.TrimSpace(string(max)) != fmt.Sprint(tree) {
		t.Fatalf("the tree's pids.max: %q, %v; want %d", max, err, tree)
	}
	// Each shell forks as fast as it can, and then waits 3 s.
	time.Sleep(time.Second)
	held := 0
	for _, cmd := range cmds {
		held += len(readPids(cmd.group.dirs[0]))
	}
	current, err := os.ReadFile(filepath.Join(dir, "pids.current"))
	if err != nil {
		t.Fatal(err)
	}
	if held > tree || held < tree-5 {
		t.Errorf("the builds hold %d processes together (the tree's pids.current: %s), want about the bound %d", held, bytes.TrimSpace(current), tree)
	}
	for _, cmd := range cmds {
		_ = cmd.Kill()
		_ = cmd.Wait()
	}
	failed := strings.Contains(outs[0].String()+outs[1].String(), "fork")
	if !failed {
		t.Errorf("no fork failed past the bound; the shells said %q and %q", outs[0], outs[1])
	}
}

// The subtree's memory bound holds for all its groups together: two
// builds, each allowed 256 MiB, each fill 100 MiB under a tree of
// 160 MiB, and the kernel's OOM killer stops one of them; the other
// keeps its memory until its pipe's reader is gone.
func TestTreeMemoryBound(t *testing.T) {
	const tree = 160 << 20
	b := testBoundBuilds(t, Tree{MemoryBytes: tree})
	// dd holds its 100 MiB buffer, filled, blocked writing to a reader
	// that never reads; it says how it ended: 137 killed, 141 when the
	// reader left (SIGPIPE).
	script := `(dd if=/dev/zero bs=100M count=1 status=none; echo dd=$? >&2) | sleep 2`
	cmds, outs := startTwo(t, b, script)
	file := filepath.Join(treeDir(t, b, cgroup1.Memory), "memory.max")
	if !b.cg.v2 {
		file = filepath.Join(treeDir(t, b, cgroup1.Memory), "memory.limit_in_bytes")
	}
	got, err := os.ReadFile(file)
	if err != nil || strings.TrimSpace(string(got)) != fmt.Sprint(tree) {
		t.Fatalf("the tree's %s: %q, %v; want %d", filepath.Base(file), got, err, tree)
	}
	for _, cmd := range cmds {
		_ = cmd.Wait()
	}
	said := outs[0].String() + outs[1].String()
	if killed, left := strings.Count(said, "dd=137"), strings.Count(said, "dd=141"); killed != 1 || left != 1 {
		t.Errorf("the builds' dd said %q; want one killed (137) and one left by its reader (141)", said)
	}
	if !cmds[0].OOMKilled() && !cmds[1].OOMKilled() {
		t.Errorf("neither build reports an OOM kill")
	}
}

// LimitWrites watches until Cleanup, as its doc says: a process of the
// group that outlives the command's first process and keeps its stderr
// open (npm.go's Stderr is a buffer, so a pipe, and its WaitDelay 5 s)
// holds Wait in exec.Cmd.Wait's wait for the pipe, and what it writes
// meanwhile must still be counted and stopped.
func TestLimitWritesWatchesWhileWaitWaitsForOutput(t *testing.T) {
	const uid = 2999900
	const mib = 1 << 20
	b := testBuilds(t)
	dir := t.TempDir()
	if err := os.Chmod(filepath.Dir(dir), 0o711); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dir, uid, uid); err != nil {
		t.Fatal(err)
	}
	// The shell ends at once; its background child, which holds the
	// shell's stderr, writes 64 MiB half a second later, then lingers.
	script := `(sleep 0.5; head -c 67108864 /dev/zero > big; sleep 2) & exit 0`
	cmd, err := b.Command(context.Background(), Resources{MemoryBytes: 256 << 20, Pids: 64}, uid, []string{"/bin/sh", "-c", script})
	if err != nil {
		t.Fatal(err)
	}
	defer cmd.Cleanup()
	cmd.Dir = dir
	var stderr strings.Builder
	cmd.Stderr = &stderr
	cmd.WaitDelay = 5 * time.Second
	cmd.LimitWrites(4 * mib)
	err = cmd.Run()
	werr := cmd.WriteErr()
	wrote := written(t, dir)
	cmd.Cleanup()
	if !errors.Is(werr, ErrWroteTooMuch) {
		t.Fatalf("run: %v; WriteErr: %v, want ErrWroteTooMuch: the group wrote %.1f MiB past a bound of 4 while Wait waited for its stderr", err, werr, float64(wrote)/mib)
	}
}
