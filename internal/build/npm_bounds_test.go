package build

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spry-run/spry/internal/errdefs"
	"github.com/spry-run/spry/internal/npmtest"
	"github.com/spry-run/spry/internal/sandbox"
)

// TestMain lets this binary (/proc/self/exe) run the sandbox's exec step,
// which puts npm in its cgroup.
func TestMain(m *testing.M) {
	sandbox.MaybeExec()
	os.Exit(m.Run())
}

// reachableDir is a directory others may search (not list), as the
// server's build directories are, so that npm's uid reaches what is in it.
func reachableDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "spry-npm-bounds-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o711); err != nil {
		t.Fatal(err)
	}
	return dir
}

// testBuilds makes npm cgroups under a parent of the test's own, and
// checks at the end that every build's cgroup is gone.
func testBuilds(t *testing.T) *sandbox.Builds {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for cgroups and uids")
	}
	parent := fmt.Sprintf("spry-test-npm/%d-%s", os.Getpid(), strings.ReplaceAll(t.Name(), "/", "-"))
	b, err := sandbox.NewBuilds(parent, "", sandbox.Tree{})
	if err != nil {
		t.Skip(err)
	}
	dirs := cgroupDirs(t, parent)
	t.Cleanup(func() {
		for _, dir := range dirs {
			if left, _ := filepath.Glob(filepath.Join(dir, "build-*")); len(left) > 0 {
				t.Errorf("cgroups left behind: %v", left)
			}
			os.Remove(dir)
			os.Remove(filepath.Dir(dir)) // unless another test's is still there
		}
	})
	return b
}

// cgroupDirs are the directories of the cgroup parent (nested in this
// process's own on v1, as the sandbox nests it) in each hierarchy the
// sandbox uses.
func cgroupDirs(t *testing.T, parent string) []string {
	t.Helper()
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		return []string{filepath.Join("/sys/fs/cgroup", parent)}
	}
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	var dirs []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.SplitN(line, ":", 3)
		if len(f) != 3 {
			continue
		}
		for _, c := range strings.Split(f[1], ",") {
			switch c {
			case "memory", "pids", "cpu", "freezer":
				dirs = append(dirs, filepath.Join("/sys/fs/cgroup", f[1], f[2], parent))
			}
		}
	}
	return dirs
}

// limitsScript is an npm that writes its uid, groups and the limits of
// the cgroups it runs in to ./out (cgroup v1 or v2).
const limitsScript = `#!/bin/sh
if [ "$1 $2 $3" = "config get allow-git" ]; then echo "$npm_config_allow_git"; exit 0; fi
{
echo "uid $(id -u) $(id -G)"
while IFS=: read -r _ ctl path; do
	d=/sys/fs/cgroup/$ctl$path
	case "$ctl" in
	memory) echo "memory $(cat $d/memory.limit_in_bytes) $(cat $d/memory.memsw.limit_in_bytes 2>/dev/null || echo noswap)"; echo "group ${path##*/}" ;;
	pids) echo "pids $(cat $d/pids.max)" ;;
	cpu|cpu,cpuacct) echo "cpu $(cat $d/cpu.cfs_quota_us) $(cat $d/cpu.shares)" ;;
	"") [ -f /sys/fs/cgroup/cgroup.controllers ] || continue # hybrid: v1 holds the controllers
		d=/sys/fs/cgroup$path; echo "memory $(cat $d/memory.max) $(cat $d/memory.swap.max)"; echo "group ${path##*/}"
		echo "pids $(cat $d/pids.max)"; echo "cpu $(cat $d/cpu.max)" ;;
	esac
done < /proc/self/cgroup
} > out
`

// Under DirOptions.Cgroups, npm runs as NPMUID in a cgroup of its own
// from its first instruction, with the limits asked for (defaults for the
// rest).
func TestBundleDirNPMCgroup(t *testing.T) {
	builds := testBuilds(t)
	const uid = 2999999
	top := reachableDir(t)
	npm := filepath.Join(top, "npm")
	if err := os.WriteFile(npm, []byte(limitsScript), 0o755); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(top, "src")
	writeFiles(t, dir, map[string]string{
		"index.ts":     "export default 1;\n",
		"package.json": `{"dependencies": {"x": "^1.0.0"}}`,
	})
	opts := DirOptions{NPM: npm, NPMCache: filepath.Join(top, "cache"), NPMUID: uid, Cgroups: builds,
		NPMLimits: sandbox.Resources{MemoryBytes: 300 << 20, Pids: 64}}
	if _, err := BundleDir(context.Background(), dir, opts); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "out"))
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		k, v, _ := strings.Cut(line, " ")
		got[k] = v
	}
	mem := fmt.Sprint(300 << 20)
	want := map[string]string{
		"uid":    fmt.Sprintf("%d %d", uid, uid),
		"memory": mem + " " + mem, // v1: memory and swap together
		"pids":   "64",
		"cpu":    "100000 1024",
	}
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		want["memory"] = mem + " 0" // v2: no swap
		want["cpu"] = "100000 100000"
	}
	if swap := got["memory"]; strings.HasSuffix(swap, "noswap") {
		want["memory"] = mem + " noswap" // a kernel that does not account swap
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: npm saw %q, want %q\n%s", k, got[k], v, b)
		}
	}
	if !strings.HasPrefix(got["group"], "build-") {
		t.Errorf("npm ran in cgroup %q, not a build's\n%s", got["group"], b)
	}
}

// A real npm install that needs more memory than its limit (its
// dependency's registry document alone is larger) fails with ErrTooLarge,
// naming the limit; the next build, the same within the default limit,
// is fine.
func TestBundleDirNPMOutOfMemory(t *testing.T) {
	needNPM(t)
	builds := testBuilds(t)
	npm, err := exec.LookPath("npm")
	if err != nil {
		t.Skip(err)
	}
	reg := npmtest.Start(t, npmtest.Package{Name: "big-meta", Version: "1.0.0", Main: "index.js",
		Files:       map[string]string{"index.js": "module.exports = 42;\n"},
		Description: strings.Repeat("x", 48<<20)})
	top := reachableDir(t)
	files := map[string]string{
		"package.json": `{"name": "fn", "dependencies": {"big-meta": "1.0.0"}}`,
		"index.ts":     "import n from 'big-meta';\nexport default () => new Response(String(n));\n",
	}
	for i, c := range []struct {
		memory int64
		want   string // "" for success
	}{
		{48 << 20, "dependency install ran out of memory: npm may use at most 48 MiB"},
		{0, ""},
	} {
		dir := filepath.Join(top, fmt.Sprint(i))
		writeFiles(t, dir, files)
		opts := DirOptions{NPM: npm, Registry: reg.URL, NPMCache: filepath.Join(top, "cache"), NPMUID: 2999999,
			Cgroups: builds, NPMLimits: sandbox.Resources{MemoryBytes: c.memory}}
		_, err := BundleDir(context.Background(), dir, opts)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("memory %d: %v", c.memory, err)
		case c.want != "" && (!errors.Is(err, errdefs.ErrTooLarge) || err.Error() != c.want):
			t.Errorf("memory %d: err = %v, want ErrTooLarge %q", c.memory, err, c.want)
		}
	}
}

// On timeout every process of the npm run is killed, one that left its
// process group (setsid) included.
func TestBundleDirNPMTimeoutKillsAll(t *testing.T) {
	builds := testBuilds(t)
	top := reachableDir(t)
	npm := filepath.Join(top, "npm")
	script := `#!/bin/sh
if [ "$1 $2 $3" = "config get allow-git" ]; then echo "$npm_config_allow_git"; exit 0; fi
setsid sh -c 'echo $$ > escaped.tmp && mv escaped.tmp escaped; exec sleep 1000' </dev/null >/dev/null 2>&1 &
while [ ! -e escaped ]; do :; done
exec sleep 1000
`
	if err := os.WriteFile(npm, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(top, "src")
	writeFiles(t, dir, map[string]string{
		"index.ts":     "export default 1;\n",
		"package.json": `{"dependencies": {"x": "^1.0.0"}}`,
	})
	opts := DirOptions{NPM: npm, NPMCache: filepath.Join(top, "cache"), NPMUID: 2999999, Cgroups: builds, InstallTimeout: time.Second}
	_, err := BundleDir(context.Background(), dir, opts)
	if !errors.Is(err, errdefs.ErrTimeout) {
		t.Fatalf("err = %v, want ErrTimeout", err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "escaped"))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err == nil && !strings.Contains(string(stat), ") Z ") {
		syscall.Kill(pid, syscall.SIGKILL)
		t.Errorf("npm's child that left its process group still runs: %s", stat)
	}
}

// An npm run that writes more than NPMWriteBytes, all its processes
// together, is killed and fails with ErrTooLarge naming the bound; the
// same run under the bound succeeds.
func TestBundleDirNPMWriteBound(t *testing.T) {
	builds := testBuilds(t)
	top := reachableDir(t)
	// Like npm, it writes into node_modules; each head is a process of
	// its own. As many MiB as ./mib says, then it waits, to be seen by
	// the watch.
	npm := fakeNPMIn(t, top, `mkdir -p node_modules/big
i=0
while [ $i -lt $(cat mib) ]; do head -c 1048576 /dev/zero >> node_modules/big/data; i=$((i+1)); done
sleep 0.5`)
	for _, c := range []struct {
		mib  int
		want string // "" for success
	}{
		{64, "dependency install wrote too much: npm may write at most 8 MiB (node_modules, the npm cache and temporary files together)"},
		{6, ""},
	} {
		dir := filepath.Join(top, fmt.Sprint(c.mib))
		writeFiles(t, dir, map[string]string{
			"mib":          fmt.Sprint(c.mib),
			"index.ts":     "export default 1;\n",
			"package.json": `{"dependencies": {"x": "^1.0.0"}}`,
		})
		opts := DirOptions{NPM: npm, NPMCache: filepath.Join(top, "cache"), NPMUID: 2999999, Cgroups: builds, NPMWriteBytes: 8 << 20}
		_, err := BundleDir(context.Background(), dir, opts)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%d MiB: %v", c.mib, err)
		case c.want != "" && (!errors.Is(err, errdefs.ErrTooLarge) || err.Error() != c.want):
			t.Errorf("%d MiB: err = %v, want ErrTooLarge %q", c.mib, err, c.want)
		}
		if fi, err := os.Stat(filepath.Join(dir, "node_modules/big/data")); err == nil {
			t.Logf("%d MiB asked: %d MiB written", c.mib, fi.Size()>>20)
		}
	}
}

// A real npm install whose package unpacks to more than NPMWriteBytes
// (16 MiB that pack to ~200 KiB: npm refuses more than 1000 to 1) fails
// with ErrTooLarge; the same within the default bound is fine.
func TestBundleDirNPMWroteTooMuch(t *testing.T) {
	needNPM(t)
	builds := testBuilds(t)
	npm, err := exec.LookPath("npm")
	if err != nil {
		t.Skip(err)
	}
	// A random 16 KiB, over and over: gzip's window takes each repeat
	// whole.
	chunk := make([]byte, 16<<10)
	rand.NewChaCha8([32]byte{1}).Read(chunk)
	reg := npmtest.Start(t, npmtest.Package{Name: "big-files", Version: "1.0.0", Main: "index.js",
		Files: map[string]string{"index.js": "module.exports = 42;\n", "data.bin": strings.Repeat(string(chunk), 1024)}})
	top := reachableDir(t)
	files := map[string]string{
		"package.json": `{"name": "fn", "dependencies": {"big-files": "1.0.0"}}`,
		"index.ts":     "import n from 'big-files';\nexport default () => new Response(String(n));\n",
	}
	for i, c := range []struct {
		max  int64
		want string // "" for success
	}{
		{8 << 20, "dependency install wrote too much: npm may write at most 8 MiB (node_modules, the npm cache and temporary files together)"},
		{0, ""},
	} {
		dir := filepath.Join(top, fmt.Sprint(i))
		writeFiles(t, dir, files)
		opts := DirOptions{NPM: npm, Registry: reg.URL, NPMCache: filepath.Join(top, "cache"), NPMUID: 2999999,
			Cgroups: builds, NPMWriteBytes: c.max}
		_, err := BundleDir(context.Background(), dir, opts)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("bound %d: %v", c.max, err)
		case c.want != "" && (!errors.Is(err, errdefs.ErrTooLarge) || err.Error() != c.want):
			t.Errorf("bound %d: err = %v, want ErrTooLarge %q", c.max, err, c.want)
		}
	}
}

// A process of npm's run that outlives npm and holds its stderr (which
// run reads through a pipe, waiting up to WaitDelay for it to close) is
// still watched while it does: what it writes past NPMWriteBytes fails
// the deploy with ErrTooLarge. (Once the watch killed it at the bound
// but the deploy, npm having exited 0, succeeded; then, for a while, the
// watch ended when npm did, and it wrote all 64 MiB.)
func TestBundleDirNPMWriteBoundAfterNPMExits(t *testing.T) {
	builds := testBuilds(t)
	top := reachableDir(t)
	npm := fakeNPMIn(t, top, `mkdir -p node_modules/big
(sleep 0.3; head -c 67108864 /dev/zero > node_modules/big/data; sleep 1) &
exit 0`)
	dir := filepath.Join(top, "fn")
	writeFiles(t, dir, map[string]string{
		"index.ts":     "export default 1;\n",
		"package.json": `{"dependencies": {"x": "^1.0.0"}}`,
	})
	opts := DirOptions{NPM: npm, NPMCache: filepath.Join(top, "cache"), NPMUID: 2999902, Cgroups: builds, NPMWriteBytes: 8 << 20}
	_, err := BundleDir(context.Background(), dir, opts)
	wrote := int64(-1)
	if fi, serr := os.Stat(filepath.Join(dir, "node_modules/big/data")); serr == nil {
		wrote = fi.Size()
	}
	if !errors.Is(err, errdefs.ErrTooLarge) {
		t.Fatalf("err = %v, want ErrTooLarge: npm's run wrote %d MiB, bound 8", err, wrote>>20)
	}
}
