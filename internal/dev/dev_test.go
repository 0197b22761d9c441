package dev

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spry-run/spry/internal/backend/local"
	"github.com/spry-run/spry/internal/blob"
	"github.com/spry-run/spry/internal/logtest"
	"github.com/spry-run/spry/internal/npmtest"
	"github.com/spry-run/spry/internal/sandbox"
)

func TestMain(m *testing.M) {
	sandbox.MaybeExec()
	os.Exit(m.Run())
}

// devRun is a session run in the test's process, in the real sandbox.
type devRun struct {
	t    *testing.T
	file string
	out  *logtest.Buffer // the terminal
	logs *logtest.Buffer // the parts' own logs
	url  string
}

var servingLine = regexp.MustCompile(`serving \S+ \((?:deno|node)\) on (http://[^/]+)/`)

// runDev serves code from a file in a temporary directory until the test
// ends, with cfg's policy where it is set.
func runDev(t *testing.T, code string, cfg Config) *devRun {
	t.Helper()
	file := filepath.Join(t.TempDir(), "fn.ts")
	d := &devRun{t: t, file: file}
	d.save(code)
	return startDev(t, file, cfg)
}

// runProject serves a project directory of files until the test ends;
// d.file is the directory.
func runProject(t *testing.T, files map[string]string, cfg Config) *devRun {
	t.Helper()
	dir := t.TempDir()
	d := &devRun{t: t, file: dir}
	for name, content := range files {
		d.saveAs(name, content)
	}
	return startDev(t, dir, cfg)
}

// startDev serves path (a file or a project directory) until the test
// ends.
func startDev(t *testing.T, path string, cfg Config) *devRun {
	t.Helper()
	d := &devRun{t: t, file: path, out: &logtest.Buffer{}, logs: &logtest.Buffer{}}
	if cfg.Runtime == "" {
		cfg.Runtime = "deno"
	}
	cfg.File, cfg.Name, cfg.Listen = d.file, "fn", "127.0.0.1:0"
	cfg.MemoryMiB, cfg.Timeout, cfg.Network = 128, 30*time.Second, "none"
	cfg.Poll = 10 * time.Millisecond
	cfg.Out = d.out
	cfg.Logger = slog.New(slog.NewTextHandler(d.logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("the session did not stop within 30s")
		}
		if t.Failed() {
			t.Logf("terminal:\n%s\nlogs:\n%s", d.out.String(), d.logs.String())
		}
	})
	d.wait(servingLine, "the session to serve")
	d.url = servingLine.FindStringSubmatch(d.out.String())[1]
	return d
}

// save replaces the file's content at once, as an editor that renames a
// temporary file over it does (a write in place may be read half done).
func (d *devRun) save(code string) {
	d.t.Helper()
	tmp := d.file + ".tmp"
	if err := os.WriteFile(tmp, []byte(code), 0o644); err != nil {
		d.t.Fatal(err)
	}
	if err := os.Rename(tmp, d.file); err != nil {
		d.t.Fatal(err)
	}
}

// saveAs replaces the file name (slash-separated, relative to the
// project directory d.file) at once, as save does.
func (d *devRun) saveAs(name, code string) {
	d.t.Helper()
	p := filepath.Join(d.file, filepath.FromSlash(name))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		d.t.Fatal(err)
	}
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, []byte(code), 0o644); err != nil {
		d.t.Fatal(err)
	}
	if err := os.Rename(tmp, p); err != nil {
		d.t.Fatal(err)
	}
}

// wait waits until the terminal matches re.
func (d *devRun) wait(re *regexp.Regexp, what string) {
	d.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !re.MatchString(d.out.String()) {
		if time.Now().After(deadline) {
			d.t.Fatalf("timed out after 10s waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// get returns the body of a GET of path, which must answer 200.
func (d *devRun) get(path string) string {
	d.t.Helper()
	body, err := d.fetch(path)
	if err != nil {
		d.t.Fatal(err)
	}
	return body
}

func (d *devRun) fetch(path string) (string, error) {
	client := &http.Client{Timeout: 30 * time.Second}
	res, err := client.Get(d.url + path)
	if err != nil {
		return "", err
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err == nil && res.StatusCode != http.StatusOK {
		err = &statusError{res.StatusCode, string(body)}
	}
	return string(body), err
}

type statusError struct {
	status int
	body   string
}

func (e *statusError) Error() string { return http.StatusText(e.status) + ": " + e.body }

// answering is a function that answers its version.
func answering(v string) string {
	return `export default { fetch() { return new Response("` + v + `"); } };` + "\n"
}

// heldBlobs holds the first bundle lookup (the first instance start)
// until release is closed, and reports how it went.
type heldBlobs struct {
	*blob.Store
	first    atomic.Bool
	entered  chan struct{}
	release  chan struct{}
	returned chan error
}

func (h *heldBlobs) Path(digest string) (string, error) {
	if !h.first.CompareAndSwap(false, true) {
		return h.Store.Path(digest)
	}
	close(h.entered)
	<-h.release
	p, err := h.Store.Path(digest)
	h.returned <- err
	return p, err
}

// TestCollectSparesStartingVersion: a version two saves old, retired
// while an instance of it was being started (a request came for it just
// before the saves), keeps its bundle until that start is done: the start
// finds it.
func TestCollectSparesStartingVersion(t *testing.T) {
	held := &heldBlobs{entered: make(chan struct{}), release: make(chan struct{}), returned: make(chan error, 1)}
	orig := blobsFor
	blobsFor = func(s *blob.Store) local.Blobs { held.Store = s; return held }
	t.Cleanup(func() { blobsFor = orig })
	d := runDev(t, answering("v1"), Config{})

	// A request for version 1 starts it; the start is held at its
	// bundle's lookup.
	answered := make(chan error, 1)
	go func() { _, err := d.fetch("/"); answered <- err }()
	select {
	case <-held.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("no instance start of version 1 within 10s")
	}

	// Two saves later, version 1 is two versions old.
	d.save(answering("v2"))
	d.wait(regexp.MustCompile(`(?m)reloaded \(version 2\)$`), "version 2")
	d.save(answering("v3"))
	d.wait(regexp.MustCompile(`(?m)reloaded \(version 3\)$`), "version 3")

	close(held.release)
	if err := <-held.returned; err != nil {
		t.Errorf("version 1's start, under way while version 3 went live, found no bundle: %v", err)
	}
	// The request went to a later version once version 1 was retired.
	if err := <-answered; err != nil {
		t.Errorf("the request: %v", err)
	}
	if got := d.get("/"); got != "v3" {
		t.Errorf("got %q, want v3", got)
	}
}

// TestDevSlowLoad: a save whose top level does not end is said to be
// still loading at once (here: SlowLoad is 1ms), while the previous
// version serves; the next save replaces it without waiting for its
// load to end; and one whose top level ends late goes live once it has.
func TestDevSlowLoad(t *testing.T) {
	d := runDev(t, answering("v1"), Config{SlowLoad: time.Millisecond})
	if got := d.get("/"); got != "v1" {
		t.Fatalf("got %q, want v1", got)
	}

	// A top level that never ends.
	d.save("await new Promise(() => {});\n" + answering("v2"))
	d.wait(regexp.MustCompile(`(?m)version 2 is still loading after 1ms .*; version 1 serves until it loads`), "version 2 said to be still loading")
	if got := d.get("/while-loading"); got != "v1" {
		t.Fatalf("while version 2 loads: got %q, want v1", got)
	}

	// The next save replaces it at once.
	d.save(answering("v3"))
	d.wait(regexp.MustCompile(`(?m)version 2 dropped before it loaded: the file changed again$`), "version 2 dropped")
	d.wait(regexp.MustCompile(`(?m)reloaded \(version 3\)$`), "version 3")
	if got := d.get("/"); got != "v3" {
		t.Fatalf("after the next save: got %q, want v3", got)
	}

	// A top level that ends, later: said to be loading, then live.
	d.save("await new Promise((r) => setTimeout(r, 500));\n" + answering("v4"))
	d.wait(regexp.MustCompile(`(?m)version 4 is still loading after 1ms`), "version 4 said to be still loading")
	d.wait(regexp.MustCompile(`(?m)reloaded \(version 4\)$`), "version 4 once loaded")
	if got := d.get("/"); got != "v4" {
		t.Fatalf("once version 4 loaded: got %q, want v4", got)
	}
	if out := d.out.String(); regexp.MustCompile(`(?m)version [24] did not load`).MatchString(out) {
		t.Errorf("a version was said not to load:\n%s", out)
	}
}

// TestDevSameContentKeepsLoad: a check that finds the file changed but
// its content that of the version still loading (a touch, or a save whose
// stamp the previous check read before it) does not drop that load and
// start it over: that version goes live.
func TestDevSameContentKeepsLoad(t *testing.T) {
	d := runDev(t, answering("v1"), Config{SlowLoad: time.Millisecond})
	d.save("await new Promise((r) => setTimeout(r, 3000));\n" + answering("v2"))
	d.wait(regexp.MustCompile(`(?m)version 2 is still loading after 1ms`), "version 2 said to be still loading")

	// Touched while it loads: a new stamp, the same content.
	now := time.Now()
	if err := os.Chtimes(d.file, now, now); err != nil {
		t.Fatal(err)
	}
	d.wait(regexp.MustCompile(`(?m)reloaded \(version \d+\)$`), "a version to go live")
	if out := d.out.String(); regexp.MustCompile(`dropped|version 3`).MatchString(out) {
		t.Errorf("version 2 was dropped for a touch:\n%s", out)
	}
	if got := d.get("/"); got != "v2" {
		t.Errorf("got %q, want v2", got)
	}
}

// TestScheduled: --cron runs the scheduled handler on its schedule, and
// --test-scheduled's /__scheduled runs it now, answering as `spry invoke
// --scheduled` does: 200 once it returned, 400 for a module without
// one, 502 when it threw. The function's own paths are served as ever.
func TestScheduled(t *testing.T) {
	d := runDev(t, `export default {
		fetch() { return new Response("v1"); },
		scheduled(event) { console.log("tick", event.type, JSON.stringify(event.cron)); },
	};`, Config{Cron: "* * * * * *", TestScheduled: true})
	d.wait(regexp.MustCompile(`(?m)^\S+ v1 \| tick scheduled "\* \* \* \* \* \*"$`), "a run of the schedule")
	d.wait(regexp.MustCompile(`(?m)^\S+ v1 scheduled run \("\* \* \* \* \* \*", for \S+\): done in `), "the run's line")
	if body := d.get("/__scheduled?cron=0+9+*+*+*"); body != "ran the scheduled handler\n" {
		t.Errorf("/__scheduled answered %q", body)
	}
	d.wait(regexp.MustCompile(`(?m)^\S+ v1 \| tick scheduled "0 9 \* \* \*"$`), "the run asked for")
	if body := d.get("/"); body != "v1" {
		t.Errorf("/ answered %q", body)
	}

	for _, tt := range []struct {
		version, code string
		status        int
	}{
		{"2", answering("v2"), http.StatusBadRequest},
		{"3", `export default { fetch() { return new Response("v3"); }, scheduled() { throw new Error("no"); } };`, http.StatusBadGateway},
	} {
		d.save(tt.code)
		d.wait(regexp.MustCompile(`(?m)reloaded \(version `+tt.version+`\)$`), "version "+tt.version)
		_, err := d.fetch("/__scheduled")
		if se, ok := err.(*statusError); !ok || se.status != tt.status {
			t.Errorf("version %s: /__scheduled: %v, want status %d", tt.version, err, tt.status)
		}
	}
}

// TestKV: ctx.kv works in a session as deployed, its entries lasting
// across requests and reloads.
func TestKV(t *testing.T) {
	code := `export default { async fetch(req, ctx) {
		const n = ((await ctx.kv.get("n")) ?? 0) + 1;
		await ctx.kv.set("n", n);
		return new Response("VERSION " + n);
	} };`
	d := runDev(t, strings.Replace(code, "VERSION", "v1", 1), Config{})
	for _, want := range []string{"v1 1", "v1 2"} {
		if got := d.get("/"); got != want {
			t.Errorf("got %q, want %q", got, want)
		}
	}
	d.save(strings.Replace(code, "VERSION", "v2", 1))
	d.wait(regexp.MustCompile(`(?m)reloaded \(version 2\)$`), "version 2")
	if got := d.get("/"); got != "v2 3" {
		t.Errorf("after the reload: %q, want \"v2 3\"", got)
	}
}

// TestDevProject: a project directory builds as a deploy of it does, its
// relative imports included; a save of an imported file reloads it, a
// syntax error there is printed with its file:line:col while the last
// good version serves, and the next good save recovers. A burst of saves,
// or an editor's atomic save (the file removed, then written anew), is
// one reload.
func TestDevProject(t *testing.T) {
	lib := func(v string) string { return `export const version = "` + v + `";` + "\n" }
	d := runProject(t, map[string]string{
		"index.ts":   `import { version } from "./src/lib.ts";` + "\nexport default { fetch() { return new Response(version); } };\n",
		"src/lib.ts": lib("v1"),
	}, Config{})
	d.wait(regexp.MustCompile(`(?m)built \S+/ \(version 1\)$`), "version 1")
	if got := d.get("/"); got != "v1" {
		t.Fatalf("got %q, want v1", got)
	}

	d.saveAs("src/lib.ts", lib("v2"))
	d.wait(regexp.MustCompile(`(?m)reloaded \(version 2\)$`), "version 2")
	if got := d.get("/"); got != "v2" {
		t.Fatalf("after a save of the imported file: got %q, want v2", got)
	}

	d.saveAs("src/lib.ts", "export const version = ;\n")
	d.wait(regexp.MustCompile(`(?m)build failed; still serving version 2:\n\s+src/lib\.ts:1:24: Unexpected`), "the build error")
	if got := d.get("/"); got != "v2" {
		t.Fatalf("after a syntax error: got %q, want v2", got)
	}
	d.saveAs("src/lib.ts", lib("v3"))
	d.wait(regexp.MustCompile(`(?m)reloaded \(version 3\)$`), "version 3")

	// A burst of saves, then an atomic save: one reload each.
	for i := range 5 {
		d.saveAs("src/lib.ts", lib("v4-"+string(rune('a'+i))))
		time.Sleep(5 * time.Millisecond) // an editor's save-all, or a formatter after the save
	}
	d.wait(regexp.MustCompile(`(?m)reloaded \(version 4\)$`), "version 4")
	if got := d.get("/"); got != "v4-e" {
		t.Fatalf("after a burst: got %q, want v4-e", got)
	}
	p := filepath.Join(d.file, "src", "lib.ts")
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Millisecond) // the editor writing the new file
	if err := os.WriteFile(p, []byte(lib("v5")), 0o644); err != nil {
		t.Fatal(err)
	}
	d.wait(regexp.MustCompile(`(?m)reloaded \(version 5\)$`), "version 5")
	if got := d.get("/"); got != "v5" {
		t.Fatalf("after an atomic save: got %q, want v5", got)
	}
	if out := d.out.String(); regexp.MustCompile(`version 6|Could not resolve|cannot read`).MatchString(out) {
		t.Errorf("a burst or an atomic save was seen as more than one save:\n%s", out)
	}
}

// TestDevProjectDependencies: a project's package.json dependencies are
// installed (from a registry on loopback) and bundled, in both runtimes,
// and a dependency added to package.json is installed on its save.
func TestDevProjectDependencies(t *testing.T) {
	if testing.Short() {
		t.Skip("runs npm")
	}
	if _, err := exec.LookPath("npm"); err != nil {
		t.Skip("npm not found")
	}
	reg := npmtest.Start(t, npmtest.IsNumber, npmtest.MS)
	for _, runtime := range []string{"deno", "node"} {
		t.Run(runtime, func(t *testing.T) {
			d := runProject(t, map[string]string{
				"package.json": `{"name": "fn", "type": "module", "dependencies": {"is-number": "7.0.0"}}`,
				"index.js":     "import isNumber from 'is-number';\nexport default { fetch() { return new Response(String(isNumber('42'))); } };\n",
			}, Config{Runtime: runtime, NPMRegistry: reg.URL})
			if got := d.get("/"); got != "true" {
				t.Fatalf("got %q, want true", got)
			}

			d.saveAs("package.json", `{"name": "fn", "type": "module", "dependencies": {"is-number": "7.0.0", "ms": "2.1.3"}}`)
			d.saveAs("index.js", "import isNumber from 'is-number';\nimport ms from 'ms';\nexport default { fetch() { return new Response(isNumber('42') + ' ' + ms(60000)); } };\n")
			d.wait(regexp.MustCompile(`(?m)reloaded \(version \d+\)$`), "the version with the new dependency")
			if got := d.get("/"); got != "true 1m" {
				t.Fatalf("after the dependency was added: got %q, want \"true 1m\"", got)
			}
		})
	}
}

// TestDevPortInUse: a port another program listens on is refused at the
// start with the way out, before anything is made.
func TestDevPortInUse(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	file := filepath.Join(t.TempDir(), "fn.ts")
	if err := os.WriteFile(file, []byte(answering("v1")), 0o644); err != nil {
		t.Fatal(err)
	}
	err = Run(context.Background(), Config{File: file, Name: "fn", Listen: ln.Addr().String(), Runtime: "deno",
		MemoryMiB: 128, Timeout: time.Second, Network: "none", Out: io.Discard})
	if err == nil || !strings.Contains(err.Error(), ln.Addr().String()+" is in use") || !strings.Contains(err.Error(), "--port 0") {
		t.Fatalf("Run on a port in use: %v", err)
	}
}

// TestDevFileImportsAFile: a file that imports another is built alone,
// as a deploy of it is, and the error says how to serve its project.
func TestDevFileImportsAFile(t *testing.T) {
	d := runDev(t, `import { v } from "./lib.ts";`+"\nexport default { fetch() { return new Response(v); } };\n", Config{})
	d.wait(regexp.MustCompile(`(?m)Could not resolve "\./lib\.ts".*\n.*serve its project to build the files it imports: spry dev /\S+$`), "the hint to serve the project")
}
