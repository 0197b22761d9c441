//go:build linux && amd64

package sandbox_test

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spry-run/spry/internal/sandbox"
)

const holdEnv = "SPRY_HOLD_CHILD"

// TestStartChild is the sandboxed half of TestStartAppliesLimitsToEveryProcess:
// it says it runs, then waits for its stdin to close.
func TestStartChild(t *testing.T) {
	if os.Getenv(holdEnv) == "" {
		t.Skip("runs only inside the sandbox TestStartAppliesLimitsToEveryProcess starts")
	}
	fmt.Println("running")
	b, _ := os.ReadFile("/proc/self/cgroup")
	fmt.Println("cgroup", strings.ReplaceAll(strings.TrimSpace(string(b)), "\n", ";"))
	// What it reads of /proc's host-wide files: name=bytes, or name=error.
	// A directory reads as the bytes of every file under it.
	var read []string
	for _, name := range []string{"vmstat", "zoneinfo", "buddyinfo", "diskstats", "partitions", "swaps", "interrupts", "softirqs", "locks", "key-users", "pressure/memory", "pressure/cpu",
		"cgroups", "fs", "cmdline", "sys/fs/file-nr", "sys/fs/inode-nr", "sys/fs/inode-state", "sys/fs/dentry-state", "sys/fs/aio-nr", "sys/fs/quota", "sys/kernel/pty/nr", "sys/kernel/random/boot_id",
		"cpuinfo"} {
		n, ok := 0, false
		_ = filepath.WalkDir("/proc/"+name, func(p string, d fs.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				if b, err := os.ReadFile(p); err == nil {
					n, ok = n+len(b), true
				}
			}
			return nil
		})
		if ok {
			read = append(read, fmt.Sprintf("%s=%d", name, n))
		} else {
			read = append(read, name+"=error")
		}
	}
	fmt.Println("proc", strings.Join(read, " "))
	_, _ = bufio.NewReader(os.Stdin).ReadString('\n')
}

// Start holds the sandbox until it is in its cgroups; prlimit(1) lowers
// the rlimits before bubblewrap runs. Every process of the sandbox
// (bubblewrap outside, its pid 1 and the program) must end up inside all
// of it, which a fork before the hold ended would escape.
func TestStartAppliesLimitsToEveryProcess(t *testing.T) {
	const uid, noFiles = 2999934, 777
	sb, spec := holdSpec(t, uid, noFiles)
	name := spec.Name
	c, out := startRunning(t, sb, spec)
	// On cgroup v2 the sandbox starts in its cgroup, so its cgroup
	// namespace is rooted there; on v1 it is moved in after bubblewrap
	// made the namespace (docs/security.md).
	view, err := out.ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil && view != "cgroup 0::/\n" {
		t.Errorf("inside a v2 sandbox /proc/self/cgroup reads %q, want 0::/", view)
	}
	t.Logf("the view inside: %s", view)
	// The host's activity is not in its /proc (cpuinfo, which is not
	// masked, shows that the reads work).
	proc, err := out.ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range strings.Fields(strings.TrimPrefix(strings.TrimSpace(proc), "proc ")) {
		name, n, _ := strings.Cut(f, "=")
		_, hostErr := os.Stat("/proc/" + name)
		switch {
		case name == "cpuinfo" && (n == "0" || n == "error"):
			t.Errorf("/proc/cpuinfo inside reads %s", n)
		case name != "cpuinfo" && hostErr == nil && n != "0" && n != "error":
			t.Errorf("/proc/%s inside reads %s bytes of the host's", name, n)
		}
	}
	t.Logf("inside: %s", strings.TrimSpace(proc))

	pids := tree(t, c.Process.Pid)
	if len(pids) < 3 {
		t.Fatalf("sandbox processes %v, want bubblewrap, its pid 1 and the program", pids)
	}
	for _, pid := range pids {
		status := procFile(t, pid, "status")
		want := fmt.Sprintf("%d\t%d\t%d\t%d", uid, uid, uid, uid)
		for _, f := range []struct{ key, want string }{
			{"Uid", want}, {"Gid", want}, {"Groups", ""}, {"NoNewPrivs", "1"},
		} {
			if got := field(status, f.key+":"); got != f.want {
				t.Errorf("pid %d: %s %q, want %q", pid, f.key, got, f.want)
			}
		}
		// The host's OOM killer takes it before the server.
		if got := strings.TrimSpace(procFile(t, pid, "oom_score_adj")); got != "1000" {
			t.Errorf("pid %d: oom_score_adj %s, want 1000", pid, got)
		}
		limits := procFile(t, pid, "limits")
		for _, l := range []struct{ key, want string }{
			{"Max open files", fmt.Sprintf("%d %d", noFiles, noFiles)},
			{"Max core file size", "0 0"},
		} {
			if got := strings.Join(strings.Fields(field(limits, l.key))[:2], " "); got != l.want {
				t.Errorf("pid %d: %s %q, want %q", pid, l.key, got, l.want)
			}
		}
		// Every line (each v1 hierarchy we use, or the one v2 line) that
		// names a spry cgroup names this sandbox's.
		var in int
		for _, cg := range strings.Split(strings.TrimSpace(procFile(t, pid, "cgroup")), "\n") {
			switch {
			case strings.HasSuffix(cg, "/"+name):
				in++
			case strings.Contains(cg, "spry-test/"):
				t.Errorf("pid %d: in %q, outside its sandbox's cgroup", pid, cg)
			}
		}
		if in == 0 {
			t.Errorf("pid %d is in none of its sandbox's cgroups:\n%s", pid, procFile(t, pid, "cgroup"))
		}
	}
}

// A sandbox that cannot be put in its cgroups is killed, never released
// to run outside them.
func TestStartKillsASandboxItCannotAdmit(t *testing.T) {
	const uid = 2999935
	sb, spec := holdSpec(t, uid, 777)
	c, err := sb.Command(spec)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Cleanup()
	// A pipe of our own: Wait would close one from StdoutPipe.
	stdout, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer stdout.Close()
	c.Stdout = w
	said := make(chan string, 1)
	go func() {
		b, _ := io.ReadAll(stdout)
		said <- string(b)
	}()
	// Removes the sandbox's cgroups, as a restart's sweep would.
	sb.Sweep()
	if err := c.Start(); err == nil {
		c.Process.Kill()
		c.Wait()
		t.Fatal("Start succeeded without the sandbox's cgroups")
	} else {
		// v1: the move fails; v2: clone3 into the removed cgroup does.
		t.Logf("Start: %v", err)
	}
	w.Close()
	if c.Process != nil && c.ProcessState == nil {
		t.Fatal("bubblewrap was not reaped")
	}
	select {
	case out := <-said:
		if out != "" {
			t.Fatalf("the program ran: %q", out)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the sandbox's output did not end")
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		left := uidProcesses(t, uid)
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("processes of the sandbox's uid left running: %v", left)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// holdSpec makes a Sandbox and the spec of a sandbox that runs
// TestStartChild as uid.
// startRunning starts spec's sandbox and waits until its program says
// it runs; the sandbox ends with the test. It returns the rest of the
// program's output.
func startRunning(t *testing.T, sb *sandbox.Sandbox, spec sandbox.Spec) (*sandbox.Cmd, *bufio.Reader) {
	t.Helper()
	c, err := sb.Command(spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Cleanup)
	stdin, err := c.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := c.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	c.Stderr = os.Stderr
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		_ = c.Wait()
	})
	c.CloseFiles()
	out := bufio.NewReader(stdout)
	if line, err := out.ReadString('\n'); err != nil || line != "running\n" {
		t.Fatalf("child said %q, %v", line, err)
	}
	return c, out
}

func holdSpec(t *testing.T, uid int, noFiles uint64) (*sandbox.Sandbox, sandbox.Spec) {
	t.Helper()
	bwrapOrSkip(t)
	dir, bin := probeBinary(t)
	libs, err := sandbox.SharedLibs(bin)
	if err != nil {
		t.Fatal(err)
	}
	var rnd [6]byte
	_, _ = rand.Read(rnd[:])
	sb, err := sandbox.New(sandbox.Config{CgroupParent: "spry-test/" + hex.EncodeToString(rnd[:]), SystemLibs: libs, StateDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sb.Sweep() })
	return sb, sandbox.Spec{
		Name:      "hold-" + hex.EncodeToString(rnd[:]),
		Program:   "/probe/probe.test",
		Args:      []string{"-test.run=^TestStartChild$", "-test.count=1"},
		Env:       []string{holdEnv + "=1", "HOME=/tmp"},
		Mounts:    []sandbox.Mount{{Source: dir, Dest: "/probe"}},
		UID:       uid,
		Network:   sandbox.NetworkNone,
		Resources: sandbox.Resources{MemoryBytes: 256 << 20, Pids: 64},
		TmpBytes:  1 << 20,
		NoFiles:   noFiles,
	}
}

// uidProcesses lists the pids whose real uid is uid, but for zombies
// (which run nothing, and wait for whoever reaps orphans).
func uidProcesses(t *testing.T, uid int) []int {
	t.Helper()
	var out []int
	eachProc(t, "status", func(pid int, b []byte) {
		status := string(b)
		if strings.HasPrefix(field(status, "State:"), "Z") {
			return
		}
		if f := strings.Fields(field(status, "Uid:")); len(f) > 0 && f[0] == strconv.Itoa(uid) {
			out = append(out, pid)
		}
	})
	return out
}

// tree returns pid and its descendants.
func tree(t *testing.T, pid int) []int {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		children := map[int][]int{}
		eachProc(t, "stat", func(p int, b []byte) {
			// The command may hold spaces and parentheses; the fields
			// after the last ')' are fixed: state, then ppid.
			rest := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
			if ppid, err := strconv.Atoi(rest[1]); err == nil {
				children[ppid] = append(children[ppid], p)
			}
		})
		out := []int{pid}
		for i := 0; i < len(out); i++ {
			out = append(out, children[out[i]]...)
		}
		if len(out) >= 3 || time.Now().After(deadline) {
			return out
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// eachProc calls f with each process's /proc/PID/name (skipping those
// gone meanwhile).
func eachProc(t *testing.T, name string, f func(pid int, b []byte)) {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if b, err := os.ReadFile(filepath.Join("/proc", e.Name(), name)); err == nil {
			f(pid, b)
		}
	}
}

func procFile(t *testing.T, pid int, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// field returns the rest of the line that starts with key, trimmed.
func field(text, key string) string {
	for _, line := range strings.Split(text, "\n") {
		if rest, ok := strings.CutPrefix(line, key); ok {
			return strings.TrimSpace(rest)
		}
	}
	return ""
}

// An egress sandbox's slirp4netns holds a host socket, and buffers, for
// each of its connections: it is in the sandbox's cgroups and under its
// open-file limit, not the server's.
func TestSlirpCountsAsTheSandbox(t *testing.T) {
	const uid, noFiles = 2999935, 555
	sb, spec := holdSpec(t, uid, noFiles)
	spec.Network = sandbox.NetworkEgress
	c, _ := startRunning(t, sb, spec)
	if err := c.StartNetwork(t.Context()); err != nil {
		t.Fatal(err)
	}
	pid := c.SlirpPid()
	if pid == 0 {
		t.Fatal("no slirp4netns")
	}
	limits := procFile(t, pid, "limits")
	if got := strings.Join(strings.Fields(field(limits, "Max open files"))[:2], " "); got != fmt.Sprintf("%d %d", noFiles, noFiles) {
		t.Errorf("slirp4netns: Max open files %q, want %d", got, noFiles)
	}
	if got := strings.TrimSpace(procFile(t, pid, "oom_score_adj")); got != "1000" {
		t.Errorf("slirp4netns: oom_score_adj %s, want 1000", got)
	}
	var in int
	for _, cg := range strings.Split(strings.TrimSpace(procFile(t, pid, "cgroup")), "\n") {
		if !strings.HasSuffix(cg, "/"+spec.Name) {
			continue
		}
		in++
		// v1 bounds TCP buffers only where a limit is set.
		if f := strings.SplitN(cg, ":", 3); len(f) == 3 && f[1] == "memory" {
			b, err := os.ReadFile(filepath.Join("/sys/fs/cgroup/memory", f[2], "memory.kmem.tcp.limit_in_bytes"))
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.TrimSpace(string(b)); got != strconv.FormatInt(spec.Resources.MemoryBytes, 10) {
				t.Errorf("memory.kmem.tcp.limit_in_bytes is %s, want the memory limit %d", got, spec.Resources.MemoryBytes)
			}
		}
	}
	if in == 0 {
		t.Errorf("slirp4netns is in none of its sandbox's cgroups:\n%s", procFile(t, pid, "cgroup"))
	}
}

// An address the host gains after a sandbox started is kept from it too:
// RefreshNetworks loads the rules again into the running sandboxes.
func TestRefreshNetworksFollowsTheHost(t *testing.T) {
	const uid = 2999936
	sb, spec := holdSpec(t, uid, 0)
	spec.Network = sandbox.NetworkEgress
	var mu sync.Mutex
	host := []string{"127.0.0.1/32"}
	sb.SetHostNets(func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(host)
	})
	c, _ := startRunning(t, sb, spec)
	if err := c.StartNetwork(t.Context()); err != nil {
		t.Fatal(err)
	}
	if changed, err := sb.RefreshNetworks(t.Context()); changed || err != nil {
		t.Fatalf("first look: changed %v, %v", changed, err)
	}
	const added = "198.51.100.7"
	if rules, err := c.Rules(); err != nil || strings.Contains(rules, added) {
		t.Fatalf("rules before the change (%v):\n%s", err, rules)
	}
	if changed, err := sb.RefreshNetworks(t.Context()); changed || err != nil {
		t.Fatalf("nothing new: changed %v, %v", changed, err)
	}
	mu.Lock()
	host = append(host, added+"/32")
	mu.Unlock()
	if changed, err := sb.RefreshNetworks(t.Context()); !changed || err != nil {
		t.Fatalf("after the host gained %s: changed %v, %v", added, changed, err)
	}
	rules, err := c.Rules()
	if err != nil || !strings.Contains(rules, added) {
		t.Fatalf("rules after the change (%v):\n%s", err, rules)
	}
	if n := strings.Count(rules, "table inet spry"); n != 1 {
		t.Fatalf("%d spry tables after a reload:\n%s", n, rules)
	}
}

// An instance cannot go past its memory limit into swap, on a host that
// has swap: the limit covers memory and swap together.
func TestNoSwapBeyondTheMemoryLimit(t *testing.T) {
	const uid = 2999937
	sb, spec := holdSpec(t, uid, 0)
	c, _ := startRunning(t, sb, spec)
	checked := 0
	for _, cg := range strings.Split(strings.TrimSpace(procFile(t, c.Process.Pid, "cgroup")), "\n") {
		f := strings.SplitN(cg, ":", 3)
		if len(f) != 3 || !strings.HasSuffix(f[2], "/"+spec.Name) {
			continue
		}
		var file, want string
		switch f[1] {
		case "memory": // v1
			file, want = filepath.Join("/sys/fs/cgroup/memory", f[2], "memory.memsw.limit_in_bytes"), strconv.FormatInt(spec.Resources.MemoryBytes, 10)
		case "": // v2, unless only a hybrid host's empty unified tree
			if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err != nil {
				continue
			}
			file, want = filepath.Join("/sys/fs/cgroup", f[2], "memory.swap.max"), "0"
		default:
			continue
		}
		b, err := os.ReadFile(file)
		if errors.Is(err, os.ErrNotExist) && f[1] == "memory" {
			t.Log("the kernel does not account swap (no memsw files)")
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.TrimSpace(string(b)); got != want {
			t.Errorf("%s is %s, want %s", file, got, want)
		}
		checked++
	}
	if checked == 0 {
		t.Log("no swap limit to check on this host")
	}
}

const noDACEnv = "SPRY_TEST_NO_DAC_OVERRIDE"

// A server whose root lacks CAP_DAC_OVERRIDE (the documented needs are
// root, cgroups and CAP_SYS_PTRACE; this host's root already lacks
// CAP_SYS_RESOURCE) starts sandboxes as before: the test runs itself
// again under capsh with the capability dropped from the bounding set.
// (Their OOM score, set by writing files the sandbox's uid owns, needed
// it at first.)
func TestStartWithoutDACOverride(t *testing.T) {
	const uid = 2999901
	if os.Getenv(noDACEnv) != "" {
		sb, spec := holdSpec(t, uid, 0)
		c, _ := startRunning(t, sb, spec)
		// Their OOM score too, whose files are the sandbox uid's.
		for _, pid := range tree(t, c.Process.Pid) {
			if got := strings.TrimSpace(procFile(t, pid, "oom_score_adj")); got != "1000" {
				t.Errorf("pid %d: oom_score_adj %s, want 1000", pid, got)
			}
		}
		return
	}
	bwrapOrSkip(t)
	capsh, err := exec.LookPath("capsh")
	if err != nil {
		t.Skip("capsh is not installed")
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(capsh, "--drop=cap_dac_override,cap_dac_read_search", "--", "-c", `exec "$0" -test.run='^TestStartWithoutDACOverride$' -test.count=1 -test.v`, self)
	cmd.Env = append(os.Environ(), noDACEnv+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("a sandbox start without CAP_DAC_OVERRIDE: %v\n%s", err, out)
	}
}

// Kill ends every process of the sandbox by the time it returns: each is
// gone, dead, or has SIGKILL pending. Killing bubblewrap alone left the
// sandbox's processes running until bubblewrap's exit had torn its
// namespaces down (their parent-death signal comes after), on a busy
// host hundreds of milliseconds in which a deleted function served on.
func TestKillEndsEveryProcessAtOnce(t *testing.T) {
	sb, spec := holdSpec(t, 2999937, 100)
	c, _ := startRunning(t, sb, spec)
	pids := tree(t, c.Process.Pid)
	if len(pids) < 3 {
		t.Fatalf("sandbox processes %v, want bubblewrap, its pid 1 and the program", pids)
	}
	if err := c.Kill(); err != nil {
		t.Fatal(err)
	}
	for _, pid := range pids[1:] {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			continue // gone
		}
		status := string(b)
		if s := field(status, "State:"); strings.HasPrefix(s, "Z") || strings.HasPrefix(s, "X") {
			continue
		}
		const sigkill = 1 << (9 - 1)
		pending := false
		for _, key := range []string{"SigPnd:", "ShdPnd:"} {
			if mask, err := strconv.ParseUint(field(status, key), 16, 64); err == nil && mask&sigkill != 0 {
				pending = true
			}
		}
		if !pending {
			t.Errorf("pid %d of the sandbox runs on after Kill returned, no SIGKILL pending:\n%s", pid, status)
		}
	}
}
