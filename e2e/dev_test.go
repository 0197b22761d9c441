package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spry-run/spry/internal/runtime"
)

// devSession is one running `spry dev`.
type devSession struct {
	t       *testing.T
	cmd     *exec.Cmd
	out     *syncBuffer // stdout: builds, function output, access lines
	errOut  *syncBuffer
	url     string
	uidBase int
	runDir  string
	done    chan struct{}
	stopped bool
}

var runDirLine = regexp.MustCompile(`instances run in (/run/spry/dev-[0-9a-f]+) as uids`)

// startDev runs `spry dev FILE` (in FILE's directory) on a free port with
// its own uid range, and waits until it answers HTTP.
func startDev(t *testing.T, file string, extra ...string) *devSession {
	t.Helper()
	addr := freePort(t)
	_, port, _ := net.SplitHostPort(addr)
	d := &devSession{
		t:       t,
		url:     "http://" + addr,
		uidBase: 3000000 + int(uidBases.Add(1))*20000,
		out:     &syncBuffer{},
		errOut:  &syncBuffer{},
		done:    make(chan struct{}),
	}
	args := append([]string{"dev", filepath.Base(file), "--port", port, "--uid-base", strconv.Itoa(d.uidBase)}, extra...)
	if !slices.Contains(extra, "--runtime") {
		deno, err := runtime.FindDeno("")
		if err != nil {
			t.Fatal(err)
		}
		args = append(args, "--deno", deno)
	}
	d.cmd = exec.Command(binary(t), args...)
	d.cmd.Dir = filepath.Dir(file)
	d.cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir()}
	d.cmd.Stdout, d.cmd.Stderr = d.out, d.errOut
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = d.cmd.Wait(); close(d.done) }()
	t.Cleanup(func() {
		if !d.stopped {
			d.stop()
		}
		if t.Failed() {
			t.Logf("spry dev stdout:\n%s\nstderr:\n%s", d.out.String(), d.errOut.String())
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	client := &http.Client{Timeout: 5 * time.Second}
	for {
		res, err := client.Get(d.url + "/")
		if err == nil {
			res.Body.Close()
			break
		}
		select {
		case <-d.done:
			t.Fatalf("spry dev exited while starting:\n%s\n%s", d.out.String(), d.errOut.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("spry dev did not answer within 30s:\n%s\n%s", d.out.String(), d.errOut.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	m := runDirLine.FindStringSubmatch(d.out.String())
	if m == nil {
		t.Fatalf("spry dev did not say where its instances run:\n%s", d.out.String())
	}
	d.runDir = m[1]
	return d
}

// get sends a GET and returns status and body.
func (d *devSession) get(path string) (int, string) {
	d.t.Helper()
	client := &http.Client{Timeout: 30 * time.Second}
	res, err := client.Get(d.url + path)
	if err != nil {
		d.t.Fatalf("GET %s: %v", path, err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		d.t.Fatalf("GET %s: %v", path, err)
	}
	return res.StatusCode, string(body)
}

// stop sends SIGTERM, expects a clean exit, and checks that nothing of
// the session is left.
func (d *devSession) stop() {
	t := d.t
	t.Helper()
	d.stopped = true
	// The cgroups are known from the sandboxes' own view, so only while
	// one runs.
	cgroups := d.cgroups()
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
		if code := d.cmd.ProcessState.ExitCode(); code != 0 {
			t.Errorf("spry dev exited with %d after SIGTERM", code)
		}
	case <-time.After(30 * time.Second):
		_ = d.cmd.Process.Kill()
		<-d.done
		t.Errorf("spry dev did not stop within 30s of SIGTERM")
	}
	d.checkNothingLeft(cgroups)
}

// checkNothingLeft checks, once spry dev has exited, that no sandbox
// process, run directory, blob directory or cgroup (of those given) of
// the session is left.
func (d *devSession) checkNothingLeft(cgroups []string) {
	t := d.t
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		left := d.procs()
		if len(left) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("processes left behind after spry dev stopped:\n%s", strings.Join(left, "\n"))
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if d.runDir == "" {
		return
	}
	if _, err := os.Stat(d.runDir); !os.IsNotExist(err) {
		t.Errorf("run dir %s is still there (%v)", d.runDir, err)
	}
	if blobs := d.blobDirs(); len(blobs) > 0 {
		t.Errorf("blob dir left behind: %v", blobs)
	}
	for _, dir := range cgroups {
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Errorf("cgroup %s is still there (%v)", dir, err)
		}
	}
}

// id is the session's random id, which names its run directory, blob
// directory and cgroups.
func (d *devSession) id() string { return filepath.Base(d.runDir) }

// blobDirs lists the session's blob directories (os.MkdirTemp's, in /tmp:
// spry dev runs with no TMPDIR).
func (d *devSession) blobDirs() []string {
	dirs, _ := filepath.Glob("/tmp/spry-" + d.id() + "-*")
	return dirs
}

// cgroups lists the session's cgroup directories (spry/<id>, in each
// hierarchy), as /proc/PID/cgroup of its running sandboxes shows them.
func (d *devSession) cgroups() []string {
	var out []string
	seg := "/spry/" + d.id() + "/"
	for _, pid := range d.pids() {
		data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
		for _, line := range strings.Split(string(data), "\n") {
			// hierarchy-ID:controllers:path; v2's has no controllers.
			f := strings.SplitN(line, ":", 3)
			if len(f) != 3 {
				continue
			}
			i := strings.Index(f[2], seg)
			if i < 0 {
				continue
			}
			dir := filepath.Join("/sys/fs/cgroup", f[1], f[2][:i+len(seg)])
			if !slices.Contains(out, dir) {
				out = append(out, dir)
			}
		}
	}
	return out
}

// pids lists the session's sandbox processes.
func (d *devSession) pids() []int {
	var pids []int
	for _, p := range d.procs() {
		var pid int
		if _, err := fmt.Sscanf(p, "pid %d ", &pid); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

// procs lists live processes of this session's sandboxes: running as one
// of its uids, or naming its run directory.
func (d *devSession) procs() []string {
	return liveProcs(func(uid int, cmd string) bool {
		return uid >= d.uidBase && uid < d.uidBase+10000 || d.runDir != "" && strings.Contains(cmd, d.runDir)
	})
}

// waitOutput waits until the dev output matches re.
func (d *devSession) waitOutput(re *regexp.Regexp, what string) {
	d.t.Helper()
	eventually(d.t, 10*time.Second, what+" in the spry dev output", func() bool { return re.MatchString(d.out.String()) })
}

// writeFile replaces a file's content and moves its mtime forward, as an
// editor's save does (and past what a coarse clock could confuse).
func writeFile(t *testing.T, path, content string, bump time.Duration) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	mt := time.Now().Add(bump)
	if err := os.Chtimes(path, mt, mt); err != nil {
		t.Fatal(err)
	}
}

const devFnTemplate = `export default {
  fetch(req: Request, ctx: { env: Record<string, string>; name: string; owner: string }): Response {
    const u = new URL(req.url);
    console.log("handling " + u.pathname);
    return Response.json({ v: VERSION, path: u.pathname, search: u.search, name: ctx.name, owner: ctx.owner, greeting: ctx.env.GREETING });
  },
};
`

type devAnswer struct {
	V        int    `json:"v"`
	Path     string `json:"path"`
	Search   string `json:"search"`
	Name     string `json:"name"`
	Owner    string `json:"owner"`
	Greeting string `json:"greeting"`
}

func (d *devSession) answer(path string) devAnswer {
	d.t.Helper()
	status, body := d.get(path)
	if status != 200 {
		d.t.Fatalf("GET %s: %d %s", path, status, body)
	}
	var a devAnswer
	if err := json.Unmarshal([]byte(body), &a); err != nil {
		d.t.Fatalf("GET %s: %v: %s", path, err, body)
	}
	return a
}

// TestDevDeno: spry dev serves a TypeScript file at the root of its port,
// reloads it on save, keeps the old version on a build error (naming the
// line and column), prints the function's output and access lines, and
// leaves nothing behind on SIGTERM.
func TestDevDeno(t *testing.T) {
	file := filepath.Join(t.TempDir(), "hello.ts")
	writeFile(t, file, strings.Replace(devFnTemplate, "VERSION", "1", 1), 0)
	d := startDev(t, file, "--env", "GREETING=Howdy")

	a := d.answer("/any/path?q=1&x=%2F")
	want := devAnswer{V: 1, Path: "/any/path", Search: "?q=1&x=%2F", Name: "hello", Owner: "dev", Greeting: "Howdy"}
	if a != want {
		t.Fatalf("got %+v, want %+v", a, want)
	}
	// The leak check below sees the session's sandboxes while they run.
	if len(d.procs()) == 0 {
		t.Fatalf("no sandbox process found for uids %d+ or %s", d.uidBase, d.runDir)
	}
	d.waitOutput(regexp.MustCompile(`(?m)v1 \| handling /any/path$`), "the function's console.log")
	d.waitOutput(regexp.MustCompile(`(?m)v1 GET /any/path\?q=1&x=%2F 200 [0-9.]+ms (cold|warm)$`), "the access line")

	// Save a new version: it answers within 10 s.
	writeFile(t, file, strings.Replace(devFnTemplate, "VERSION", "2", 1), 2*time.Second)
	eventually(t, 10*time.Second, "version 2 to answer", func() bool { return d.answer("/v").V == 2 })
	d.waitOutput(regexp.MustCompile(`(?m)reloaded \(version 2\)$`), "the reload")

	// A syntax error: reported with its line and column; version 2 keeps
	// answering.
	bad := "export default {\n  fetch() { return new Response(\"x\" }\n};\n"
	col := strings.Index(strings.Split(bad, "\n")[1], "}") + 1
	writeFile(t, file, bad, 4*time.Second)
	d.waitOutput(regexp.MustCompile(regexp.QuoteMeta(fmt.Sprintf("hello.ts:2:%d: ", col))), "the build error's line:col")
	if !strings.Contains(d.out.String(), "still serving version 2") {
		t.Errorf("the build error does not say version 2 still serves:\n%s", d.out.String())
	}
	if a := d.answer("/after-error"); a.V != 2 || a.Path != "/after-error" {
		t.Fatalf("after a build error: got %+v, want version 2", a)
	}

	// Fixed again: version 3.
	writeFile(t, file, strings.Replace(devFnTemplate, "VERSION", "3", 1), 6*time.Second)
	eventually(t, 10*time.Second, "version 3 to answer", func() bool { return d.answer("/").V == 3 })
	d.waitOutput(regexp.MustCompile(`(?m)reloaded \(version 3\)$`), "the reload")

	d.stop()
}

// TestDevLoadFailure: a save that builds but does not load (its top level
// throws, or exits the runtime) does not replace the version that
// serves: the terminal says why, and requests keep getting the previous
// version, without a request sent to the broken one. The next good save
// serves.
func TestDevLoadFailure(t *testing.T) {
	file := filepath.Join(t.TempDir(), "load.ts")
	writeFile(t, file, strings.Replace(devFnTemplate, "VERSION", "1", 1), 0)
	d := startDev(t, file)
	if a := d.answer("/"); a.V != 1 {
		t.Fatalf("got %+v, want version 1", a)
	}

	// Its top level throws: version 2 does not load.
	writeFile(t, file, "throw new Error(\"boom at the top\");\n"+strings.Replace(devFnTemplate, "VERSION", "2", 1), 2*time.Second)
	d.waitOutput(regexp.MustCompile(`(?m)version 2 did not load; still serving version 1: the function failed to load: boom at the top$`), "the load failure")
	if a := d.answer("/after-throw"); a.V != 1 {
		t.Fatalf("after a load failure: got %+v, want version 1", a)
	}

	// Its top level exits the runtime: version 3 does not load.
	writeFile(t, file, "Deno.exit(7);\n"+strings.Replace(devFnTemplate, "VERSION", "3", 1), 4*time.Second)
	d.waitOutput(regexp.MustCompile(`(?m)version 3 did not load; still serving version 1: the runtime exited unexpectedly: exit status 7$`), "the exit at load")
	if a := d.answer("/after-exit"); a.V != 1 {
		t.Fatalf("after a load failure: got %+v, want version 1", a)
	}

	// Fixed: version 4 serves.
	writeFile(t, file, strings.Replace(devFnTemplate, "VERSION", "4", 1), 6*time.Second)
	d.waitOutput(regexp.MustCompile(`(?m)reloaded \(version 4\)$`), "the reload")
	if a := d.answer("/fixed"); a.V != 4 {
		t.Fatalf("after the fix: got %+v, want version 4", a)
	}
	// No request reached the versions that did not load.
	if out := d.out.String(); regexp.MustCompile(`(?m)^\S+ v[23] (GET|\| handling)`).MatchString(out) {
		t.Errorf("a request went to a version that did not load:\n%s", out)
	}
	d.stop()
}

// TestDevSameSizeSaves: a save that keeps the file's size and its
// modification time (cp -p, rsync -t, an editor renaming a temporary
// file over it) is seen and served.
func TestDevSameSizeSaves(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "same.ts")
	mod := time.Now().Add(-time.Hour).Truncate(time.Second)
	save := func(path string, version int) {
		t.Helper()
		if err := os.WriteFile(path, []byte(strings.Replace(devFnTemplate, "VERSION", strconv.Itoa(version), 1)), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(path, mod, mod); err != nil {
			t.Fatal(err)
		}
	}
	save(file, 1)
	d := startDev(t, file)
	if a := d.answer("/"); a.V != 1 {
		t.Fatalf("got %+v, want version 1", a)
	}

	// Written in place: same size, the old modification time.
	save(file, 2)
	eventually(t, 10*time.Second, "version 2 to answer", func() bool { return d.answer("/").V == 2 })

	// A temporary file renamed over it, same size and time.
	tmp := filepath.Join(dir, ".same.ts.tmp")
	save(tmp, 3)
	if err := os.Rename(tmp, file); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "version 3 to answer", func() bool { return d.answer("/").V == 3 })

	d.stop()
}

// TestDevNode: spry dev runs a CommonJS Express-style handler on Node.
func TestDevNode(t *testing.T) {
	node, err := runtime.FindNode("")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	file := filepath.Join(dir, "fn.js")
	writeFile(t, file, `module.exports = (req, res) => { console.log("node saw " + req.path); res.send("hi " + process.env.SECRET); };`+"\n", 0)
	// A secret from a file (--env-file), not the command line.
	envFile := filepath.Join(dir, ".env")
	writeFile(t, envFile, "# for spry dev\nSECRET=\"s3cret\"\n", 0)
	d := startDev(t, file, "--runtime", "node", "--node", node, "--network", "none", "--env-file", envFile)
	if status, body := d.get("/x?y=1"); status != 200 || body != "hi s3cret" {
		t.Fatalf("got %d %q, want 200 \"hi s3cret\"", status, body)
	}
	d.waitOutput(regexp.MustCompile(`(?m)v1 GET /x\?y=1 200 [0-9.]+ms (cold|warm)$`), "the access line")
	d.waitOutput(regexp.MustCompile(`(?m)v1 \| node saw /x$`), "the function's console.log")
	d.stop()
}

// TestDevSecondInterrupt: a second Ctrl-C stops spry dev at once, cutting
// a request in flight that the first would have let finish, and still
// leaves nothing of the session behind: no sandbox process, run
// directory, blob directory or cgroup.
func TestDevSecondInterrupt(t *testing.T) {
	file := filepath.Join(t.TempDir(), "busy.ts")
	writeFile(t, file, `export default {
  async fetch(req: Request): Promise<Response> {
    const path = new URL(req.url).pathname;
    if (path === "/slow") {
      console.log("busy " + path);
      await new Promise((r) => setTimeout(r, 120_000));
    }
    return new Response("done");
  },
};
`, 0)
	d := startDev(t, file, "--timeout", "5m")

	// A request that would keep the graceful stop waiting.
	type result struct {
		status int
		err    error
	}
	inflight := make(chan result, 1)
	go func() {
		client := &http.Client{Timeout: 2 * time.Minute}
		res, err := client.Get(d.url + "/slow")
		if err != nil {
			inflight <- result{err: err}
			return
		}
		_, err = io.Copy(io.Discard, res.Body)
		res.Body.Close()
		inflight <- result{status: res.StatusCode, err: err}
	}()
	d.waitOutput(regexp.MustCompile(`(?m)v1 \| busy /slow$`), "the request to reach the function")
	cgroups := d.cgroups()
	if len(cgroups) == 0 {
		t.Fatalf("no cgroup of session %s found; sandboxes: %v", d.id(), d.procs())
	}
	for _, dir := range append(append([]string{d.runDir}, d.blobDirs()...), cgroups...) {
		if _, err := os.Stat(dir); err != nil {
			t.Fatalf("while serving: %v", err)
		}
	}
	if len(d.blobDirs()) == 0 {
		t.Fatalf("no blob dir /tmp/spry-%s-* while serving", d.id())
	}

	// The first Ctrl-C: spry dev waits for the request.
	if err := d.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	d.waitOutput(regexp.MustCompile(`(?m)stopping$`), "the graceful stop to begin")
	select {
	case <-d.done:
		t.Fatalf("spry dev exited on the first Ctrl-C with a request in flight")
	default:
	}

	// The second: it ends promptly, well before the request or the
	// graceful wait would, and cleans up first.
	second := time.Now()
	if err := d.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case <-d.done:
	case <-time.After(30 * time.Second):
		_ = d.cmd.Process.Kill()
		<-d.done
		d.stopped = true
		t.Fatalf("spry dev did not exit within 30s of the second Ctrl-C")
	}
	took := time.Since(second)
	d.stopped = true // the checks are below, not stop's
	t.Logf("exited %v after the second Ctrl-C: %v", took.Round(time.Millisecond), d.cmd.ProcessState)
	if took > 2*time.Second {
		t.Errorf("spry dev took %v to exit after the second Ctrl-C, want under 2s", took)
	}
	d.checkNothingLeft(cgroups)
	if code := d.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("spry dev exited with %d (%v) after the second Ctrl-C, want 0", code, d.cmd.ProcessState)
	}
	select {
	case r := <-inflight:
		t.Logf("the request in flight ended: status %d, err %v", r.status, r.err)
		if r.err == nil && r.status == 200 {
			t.Errorf("the request in flight was not cut: it got 200")
		}
	case <-time.After(5 * time.Second):
		t.Errorf("the request in flight still waits after spry dev exited")
	}
}

// runIn runs a program in dir with a minimal environment and returns its
// combined output and exit code.
func runIn(t *testing.T, dir, prog string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(prog, args...)
	cmd.Dir = dir
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir(), "NO_COLOR=1", "DENO_NO_UPDATE_CHECK=1"}
	out, err := cmd.CombinedOutput()
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("run %s %v: %v", prog, args, err)
		}
		return string(out), ee.ExitCode()
	}
	return string(out), 0
}

func checkFiles(t *testing.T, dir string, want ...string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range entries {
		got = append(got, e.Name())
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("%s holds %v, want %v", dir, got, want)
	}
}

// TestInitDeno: spry init makes a Deno project whose own test passes with
// the pinned Deno and which spry dev serves.
func TestInitDeno(t *testing.T) {
	bin := binary(t)
	work := t.TempDir()
	out, code := runIn(t, work, bin, "init", "demo")
	if code != 0 {
		t.Fatalf("spry init: exit %d\n%s", code, out)
	}
	dir := filepath.Join(work, "demo")
	checkFiles(t, dir, "index.ts", "index_test.ts", "README.md", ".gitignore")
	for _, f := range []string{"index.ts", "index_test.ts", "README.md", ".gitignore"} {
		if !strings.Contains(out, filepath.Join("demo", f)) {
			t.Errorf("spry init does not list %s:\n%s", f, out)
		}
	}
	readme, _ := os.ReadFile(filepath.Join(dir, "README.md"))
	for _, s := range []string{"spry dev .", "deno test", "spry deploy . --name demo"} {
		if !strings.Contains(string(readme), s) {
			t.Errorf("README.md does not mention %q:\n%s", s, readme)
		}
	}

	deno, err := runtime.FindDeno("")
	if err != nil {
		t.Fatal(err)
	}
	if out, code := runIn(t, dir, deno, "test", "--allow-read", "index_test.ts"); code != 0 {
		t.Fatalf("deno test: exit %d\n%s", code, out)
	}

	// Never over an existing project; names are checked.
	if out, code := runIn(t, work, bin, "init", "demo"); code == 0 || !strings.Contains(out, "not empty") {
		t.Errorf("spry init over a non-empty dir: exit %d\n%s", code, out)
	}
	if out, code := runIn(t, work, bin, "init", "Bad_Name"); code != 2 {
		t.Errorf("spry init Bad_Name: exit %d, want 2\n%s", code, out)
	}
	if _, err := os.Stat(filepath.Join(work, "Bad_Name")); !os.IsNotExist(err) {
		t.Errorf("spry init Bad_Name made a directory")
	}

	// spry dev serves it, as README.md says (the project directory),
	// named after its directory.
	d := startDev(t, dir)
	status, body := d.get("/hello?name=Ada")
	var got map[string]any
	if err := json.Unmarshal([]byte(body), &got); status != 200 || err != nil || got["message"] != "Hello, Ada!" || got["function"] != "demo" || got["path"] != "/hello" {
		t.Fatalf("spry dev of the new project: %d %s", status, body)
	}
	d.stop()
}

// TestInitNode: the same for Node, in another directory (--dir), with
// node --test.
func TestInitNode(t *testing.T) {
	bin := binary(t)
	work := t.TempDir()
	out, code := runIn(t, work, bin, "init", "demo", "--runtime", "node", "--dir", "sub")
	if code != 0 {
		t.Fatalf("spry init: exit %d\n%s", code, out)
	}
	dir := filepath.Join(work, "sub", "demo")
	checkFiles(t, dir, "index.mjs", "index.test.mjs", "package.json", "README.md", ".gitignore")
	var pkg struct {
		Type    string            `json:"type"`
		Scripts map[string]string `json:"scripts"`
	}
	data, _ := os.ReadFile(filepath.Join(dir, "package.json"))
	if err := json.Unmarshal(data, &pkg); err != nil || pkg.Type != "module" || pkg.Scripts["test"] != "node --test" {
		t.Fatalf("package.json: %v\n%s", err, data)
	}

	node, err := runtime.FindNode("")
	if err != nil {
		t.Fatal(err)
	}
	if out, code := runIn(t, dir, node, "--test"); code != 0 || !strings.Contains(out, "# pass 2") {
		t.Fatalf("node --test: exit %d\n%s", code, out)
	}

	d := startDev(t, dir, "--runtime", "node", "--node", node)
	status, body := d.get("/hello?name=Ada")
	var got map[string]any
	if err := json.Unmarshal([]byte(body), &got); status != 200 || err != nil || got["message"] != "Hello, Ada!" || got["function"] != "demo" {
		t.Fatalf("spry dev of the new project: %d %s", status, body)
	}
	d.stop()
}
