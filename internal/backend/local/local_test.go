package local

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spry-run/spry/internal/backend"
	"github.com/spry-run/spry/internal/blob"
	"github.com/spry-run/spry/internal/nettest"
	"github.com/spry-run/spry/internal/runtime"
	"github.com/spry-run/spry/internal/runtime/runtimetest"
	"github.com/spry-run/spry/internal/sandbox"
)

func TestMain(m *testing.M) {
	sandbox.MaybeExec()
	os.Exit(m.Run())
}

type env struct {
	b     *Backend
	blobs *blob.Store
	logs  *runtimetest.Lines
}

func newEnv(t testing.TB, poolSize int) *env {
	t.Helper()
	return newEnvWith(t, poolSize, runtimetest.Options{})
}

func newEnvWith(t testing.TB, poolSize int, o runtimetest.Options) *env {
	t.Helper()
	re := runtimetest.NewWith(t, "deno", o)
	b, err := New(Config{
		RunDir:           re.Dir,
		Sandbox:          re.Sandbox,
		Runtimes:         []Runtime{re.Deno},
		Blobs:            re.Blobs,
		Logs:             re.Logs,
		Logger:           slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		PoolSize:         poolSize,
		DefaultMemoryMiB: 128,
		UIDBase:          300000,
		Pids:             256,
		TmpBytes:         16 << 20,
		NoFiles:          1024,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return &env{b: b, blobs: re.Blobs, logs: re.Logs}
}

// waitPool waits until n Deno sandboxes wait in the pool.
func (e *env) waitPool(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for e.b.PoolIdle()["deno"] < n {
		if time.Now().After(deadline) {
			t.Fatal("pool did not fill")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (e *env) spec(t testing.TB, code string) *backend.Spec {
	digest, err := e.blobs.Put([]byte(code))
	if err != nil {
		t.Fatal(err)
	}
	return &backend.Spec{FunctionID: "f1", Owner: "alice", Name: "hello", Version: 1, Runtime: "deno", Digest: digest, Env: map[string]string{"GREETING": "hi"}}
}

func client(inst *backend.Instance) *http.Client { return runtimetest.Client(inst, 10*time.Second) }

func get(t testing.TB, inst *backend.Instance, path string) (int, string) {
	t.Helper()
	res, err := client(inst).Get("http://instance" + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}

func TestStartServeStop(t *testing.T) {
	e := newEnv(t, 1)
	spec := e.spec(t, `export default { fetch(req, ctx) { console.log("called", new URL(req.url).pathname); return new Response(ctx.env.GREETING + " " + ctx.name + " " + new URL(req.url).pathname); } }`)
	ctx := context.Background()
	inst, err := e.b.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	code, body := get(t, inst, "/a/b?x=1")
	if code != 200 || body != "hi hello /a/b" {
		t.Fatalf("got %d %q", code, body)
	}
	if err := e.b.Stop(ctx, inst.ID); err != nil {
		t.Fatal(err)
	}
	<-inst.Done()
	if r := inst.Exit().Reason; r != backend.ExitStopped {
		t.Fatalf("exit reason %q", r)
	}
	if !strings.Contains(e.logs.String(), "stdout: called /a/b") {
		t.Fatalf("logs missing the function's output:\n%s", e.logs)
	}
	for _, l := range []string{runtime.BootLine, runtime.ReadyLine, runtime.LoadedLine} {
		if strings.Contains(e.logs.String(), l) {
			t.Fatalf("the runtime's %s is in the function's logs:\n%s", l, e.logs)
		}
	}
}

// Once the runtime listens, its socket directory is root's: nothing in
// the sandbox can swap a socket for a link to a host socket, which the
// server (root) would connect to in its stead.
func TestSocketDirectorySealed(t *testing.T) {
	e := newEnv(t, 1)
	inst, err := e.b.Start(context.Background(), e.spec(t, `export default { fetch() { return new Response("ok"); } }`))
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Dir(inst.Address))
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if st.Uid != 0 || fi.Mode().Perm()&0o022 != 0 {
		t.Fatalf("socket directory owned by %d, mode %v: want root's, written by no one else", st.Uid, fi.Mode())
	}
	if code, body := get(t, inst, "/"); code != 200 || body != "ok" {
		t.Fatalf("got %d %q", code, body)
	}
}

func TestSandboxContainsFunction(t *testing.T) {
	e := newEnv(t, 0)
	spec := e.spec(t, `export default { async fetch(req) {
		const what = new URL(req.url).searchParams.get("what");
		try {
			if (what === "read") return new Response(await Deno.readTextFile(new URL(req.url).searchParams.get("path")));
			if (what === "env") return new Response(JSON.stringify(Deno.env.toObject()));
			if (what === "run") { const o = await new Deno.Command("/bin/sh", { args: ["-c", "id"] }).output(); return new Response(new TextDecoder().decode(o.stdout)); }
			if (what === "writeroot") { await Deno.writeTextFile("/x", "x"); return new Response("wrote"); }
			if (what === "tmp") { await Deno.writeTextFile("/tmp/x", "ok"); return new Response(await Deno.readTextFile("/tmp/x")); }
		} catch (e) { return new Response("denied: " + e.name, { status: 403 }); }
		return new Response("?", { status: 400 });
	} }`)
	inst, err := e.b.Start(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ q, want string }{
		{"what=read&path=/etc/shadow", "denied"},
		{"what=read&path=/etc/passwd", "denied"},
		{"what=read&path=/proc/1/environ", "denied"},
		{"what=env", "denied"},
		{"what=run", "denied"},
		{"what=writeroot", "denied"},
		{"what=tmp", "ok"},
	} {
		if _, body := get(t, inst, "/?"+tc.q); !strings.HasPrefix(body, tc.want) {
			t.Errorf("%s: got %q, want prefix %q", tc.q, body, tc.want)
		}
	}
}

func TestCrashIsReported(t *testing.T) {
	e := newEnv(t, 1)
	// It exits on a request of its own, not on a timer after answering:
	// a loaded machine could deliver the answer later than the timer.
	spec := e.spec(t, `export default { fetch(req) { if (new URL(req.url).pathname === "/exit") Deno.exit(3); return new Response("up"); } }`)
	inst, err := e.b.Start(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	if code, body := get(t, inst, "/"); code != 200 || body != "up" {
		t.Fatalf("got %d %q", code, body)
	}
	if res, err := client(inst).Get("http://instance/exit"); err == nil {
		res.Body.Close() // (an answer is not expected: the process ends first)
	}
	select {
	case <-inst.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("instance did not end")
	}
	if ex := inst.Exit(); ex.Reason != backend.ExitCrashed || ex.Code != 3 {
		t.Fatalf("exit = %+v", ex)
	}
}

// Start hands the function over without waiting for its import, so the
// first request travels meanwhile: requests wait in the runtime for the
// import, and one that fails is answered to them, naming the error, and
// ends the instance.
func TestImportRunsWhileTheFirstRequestTravels(t *testing.T) {
	e := newEnv(t, 1)
	e.waitPool(t, 1)
	inst, err := e.b.Start(context.Background(), e.spec(t, `const v = await new Promise((r) => setTimeout(() => r("loaded"), 300)); export default () => new Response(v)`))
	if err != nil {
		t.Fatal(err)
	}
	if code, body := get(t, inst, "/"); code != 200 || body != "loaded" {
		t.Fatalf("got %d %q", code, body)
	}
}

// The instance stops counting as loading before the function's code runs
// a request, even one that blocks the event loop for good: a timeout must
// then take it for stuck.
func TestLoadedBeforeTheHandlerRuns(t *testing.T) {
	e := newEnv(t, 1)
	e.waitPool(t, 1)
	inst, err := e.b.Start(context.Background(), e.spec(t, runtimetest.SpinningHandler))
	if err != nil {
		t.Fatal(err)
	}
	runtimetest.AwaitLoadedWhileSpinning(t, inst)
	e.b.Kill(inst.ID, backend.ExitTimeout)
	<-inst.Done()
}

// A top level that leaves its output's last line unended does not hide
// the runtime's loaded line: the instance still stops counting as
// loading, and the function's part of the line is its output.
func TestLoadedAfterAnUnendedLine(t *testing.T) {
	e := newEnv(t, 1)
	e.waitPool(t, 1)
	inst, err := e.b.Start(context.Background(), e.spec(t, `Deno.stdout.writeSync(new TextEncoder().encode("no newline"));
`+runtimetest.SpinningHandler))
	if err != nil {
		t.Fatal(err)
	}
	runtimetest.AwaitLoadedWhileSpinning(t, inst)
	e.b.Kill(inst.ID, backend.ExitTimeout)
	<-inst.Done()
	if logs := e.logs.String(); !slices.Contains(strings.Split(logs, "\n"), "stdout: no newline") || strings.Contains(logs, runtime.LoadedLine) {
		t.Fatalf("logs:\n%s", logs)
	}
}

func TestImportFailure(t *testing.T) {
	for _, tc := range []struct {
		name, code, want string
	}{
		{"throws", `await new Promise((r) => setTimeout(r, 100)); throw new Error("boom\nat import"); export default () => new Response("never")`,
			"the function failed to load: boom at import"},
		{"no handler", `export default 42`,
			"the function failed to load: the module's default export is neither a function nor an object with a fetch method"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, 1)
			e.waitPool(t, 1)
			inst, err := e.b.Start(context.Background(), e.spec(t, tc.code))
			if err != nil {
				t.Fatal(err)
			}
			code, body := get(t, inst, "/")
			if code != 502 || !strings.Contains(body, `"code":"function_failed"`) || !strings.Contains(body, tc.want) {
				t.Fatalf("got %d %s, want 502 function_failed naming %q", code, body, tc.want)
			}
			select {
			case <-inst.Done():
			case <-time.After(10 * time.Second):
				t.Fatal("the instance did not end after its import failed")
			}
			if ex := inst.Exit(); ex.Reason != backend.ExitCrashed || ex.Detail != tc.want {
				t.Fatalf("exit = %+v, want crashed: %s", ex, tc.want)
			}
			if !strings.Contains(e.logs.String(), "instance ended: "+tc.want) {
				t.Fatalf("logs:\n%s", e.logs)
			}
		})
	}
}

// A pooled sandbox that dies while it waits leaves the pool at once, and
// the pool fills again: it is not counted as warm until a start finds it
// dead.
func TestPooledSandboxDeathRefills(t *testing.T) {
	e := newEnv(t, 2)
	e.waitPool(t, 2)
	e.b.mu.Lock()
	var victim *proc
	for _, ps := range e.b.pool {
		victim = ps[0] // the bottom of the stack, which take comes to last
	}
	e.b.mu.Unlock()
	if err := victim.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-victim.exited
	deadline := time.Now().Add(20 * time.Second)
	for {
		live := 0
		e.b.mu.Lock()
		for _, ps := range e.b.pool {
			for _, p := range ps {
				select {
				case <-p.exited:
				default:
					live++
				}
			}
		}
		e.b.mu.Unlock()
		if live == 2 && e.b.PoolIdle()["deno"] == 2 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d live sandboxes in the pool, %d counted, want 2", live, e.b.PoolIdle()["deno"])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A spawn a request waited for, which a pooled sandbox served first, stops
// waiting for a slot: it would otherwise hold the pool's refills back
// and start boosted for nobody.
func TestServedSpawnGivesUpItsWait(t *testing.T) {
	e := newEnv(t, 0)
	key := poolKey{"deno", 128, runtime.NetworkNone, ""}
	pooled, err := e.b.spawn(context.Background(), key, pooledShares, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Every slot busy: the request's spawn queues for one.
	for i := 0; i < cap(e.b.spawns); i++ {
		e.b.spawns <- struct{}{}
	}
	defer func() {
		for i := 0; i < cap(e.b.spawns); i++ {
			<-e.b.spawns
		}
	}()
	queued := func() int { e.b.mu.Lock(); defer e.b.mu.Unlock(); return e.b.queued }
	got := make(chan *proc, 1)
	go func() {
		p, err := e.b.spawnOrTake(context.Background(), key)
		if err != nil {
			t.Error(err)
		}
		got <- p
	}()
	for deadline := time.Now().Add(10 * time.Second); queued() != 1; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the request's spawn did not queue for a slot")
		}
	}
	e.b.toPool(pooled)
	if p := <-got; p != pooled {
		t.Fatal("the request did not take the pooled sandbox")
	}
	defer e.b.kill(pooled, backend.ExitStopped)
	for deadline := time.Now().Add(5 * time.Second); queued() != 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the spawn no request waits for still waits for a slot, holding the refills back")
		}
	}
}

// The last lines a runtime writes before it dies (a crash's stack trace)
// reach the logs: they are read to the pipes' end before the instance is
// reaped.
func TestOutputAtExitKept(t *testing.T) {
	e := newEnv(t, 0)
	inst, err := e.b.Start(context.Background(), e.spec(t, `export default { fetch() {
		for (let i = 0; i < 2000; i++) console.log("line " + i + " " + "x".repeat(100));
		console.error("last words");
		Deno.exit(3);
	} }`))
	if err != nil {
		t.Fatal(err)
	}
	res, err := client(inst).Get("http://instance/")
	if err == nil {
		res.Body.Close()
	}
	select {
	case <-inst.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the instance did not end")
	}
	logs := e.logs.String()
	if !strings.Contains(logs, "stdout: line 1999 ") || !strings.Contains(logs, "stderr: last words") {
		t.Fatalf("the output's end is missing; the last lines kept:\n%s", logs[max(0, len(logs)-500):])
	}
}

// A top level that exits the runtime ends the instance, described by its
// exit like any crash.
func TestImportThatExits(t *testing.T) {
	e := newEnv(t, 1)
	e.waitPool(t, 1)
	inst, err := e.b.Start(context.Background(), e.spec(t, `Deno.exit(3); export default () => new Response("never")`))
	if err != nil {
		t.Fatal(err)
	}
	if res, err := client(inst).Get("http://instance/"); err == nil {
		res.Body.Close()
		t.Fatalf("a request to a runtime that exited at import got %d", res.StatusCode)
	}
	select {
	case <-inst.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the instance did not end")
	}
	if ex := inst.Exit(); ex.Reason != backend.ExitCrashed || ex.Code != 3 || ex.Detail != "the runtime exited unexpectedly: exit status 3" {
		t.Fatalf("exit = %+v", ex)
	}
}

// An import that never ends is bounded by the start's deadline.
func TestImportThatHangsEndsTheInstance(t *testing.T) {
	e := newEnv(t, 1)
	e.waitPool(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	inst, err := e.b.Start(ctx, e.spec(t, `await new Promise(() => {}); export default () => new Response("never")`))
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-inst.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the instance outlived its start's deadline")
	}
	if ex := inst.Exit(); ex.Reason != backend.ExitCrashed || !strings.Contains(ex.Detail, "did not load in time") {
		t.Fatalf("exit = %+v", ex)
	}
}

// An instance out of memory ends as such, whether the cgroup's limit
// killed it (buffers, off V8's heap) or V8 aborted at its heap limit (JS
// objects; before, "the runtime exited unexpectedly: exit status 133").
func TestOutOfMemory(t *testing.T) {
	for _, tc := range []struct{ name, runtime, code, detail string }{
		{"buffers", "deno", `const keep = []; export default { fetch() { for (;;) keep.push(new Uint8Array(1 << 20).fill(7)); } }`, "exceeded its 64 MiB limit"},
		{"heap", "deno", `const keep = []; export default { fetch() { for (;;) keep.push(new Array(100000).fill({ x: 1 })); } }`, "JavaScript heap reached its limit"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, 0)
			spec := e.spec(t, tc.code)
			spec.MemoryMiB = 64
			spec.Runtime = tc.runtime
			inst, err := e.b.Start(context.Background(), spec)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := client(inst).Get("http://instance/"); err == nil {
				t.Fatal("request to an instance that ran out of memory succeeded")
			}
			<-inst.Done()
			if ex := inst.Exit(); ex.Reason != backend.ExitOOM || !strings.Contains(ex.Detail, tc.detail) {
				t.Fatalf("exit = %+v", ex)
			}
		})
	}
}

func TestPoolColdStart(t *testing.T) {
	e := newEnv(t, 2)
	e.waitPool(t, 2)
	spec := e.spec(t, `export default () => new Response("warm")`)
	start := time.Now()
	inst, err := e.b.Start(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	if _, body := get(t, inst, "/"); body != "warm" {
		t.Fatalf("body %q", body)
	}
	t.Logf("cold start from pool: %v", time.Since(start))
}

// The pool is not refilled while requests wait for spawns of their own
// that wait for a slot: a pooled sandbox would serve none of them and
// hold a slot. (With slots free, it refills beside them.)
func TestNoRefillWhileRequestsWaitForSpawns(t *testing.T) {
	e := newEnv(t, 1)
	e.waitPool(t, 1)
	key := e.b.defaultKeys()[0]
	p := e.b.take(key) // the pool is empty now, with no kick
	if p == nil {
		t.Fatal("nothing to take from the pool")
	}
	defer e.b.kill(p, backend.ExitStopped)
	for _, tc := range []struct {
		queued int
		fill   bool
	}{{1, false}, {3, false}, {0, true}} {
		e.b.mu.Lock()
		e.b.queued = tc.queued
		e.b.mu.Unlock()
		k, ok := e.b.nextToFill()
		if ok != tc.fill {
			t.Fatalf("%d spawns queued for a slot: refill %v, want %v", tc.queued, ok, tc.fill)
		}
		if ok {
			e.b.mu.Lock()
			e.b.filling[k]-- // undo: this test fills nothing
			e.b.mu.Unlock()
		}
	}
	// A spawn for a request counts as queued only while every slot is
	// taken; a pooled one never does.
	for len(e.b.spawns) < cap(e.b.spawns) {
		e.b.spawns <- struct{}{}
	}
	queued := func() int {
		e.b.mu.Lock()
		defer e.b.mu.Unlock()
		return e.b.queued
	}
	got := make(chan error, 2)
	go func() { got <- e.b.slot(context.Background(), false, nil) }()
	go func() { got <- e.b.slot(context.Background(), true, nil) }()
	for queued() != 1 {
		time.Sleep(time.Millisecond)
	}
	<-e.b.spawns
	<-e.b.spawns
	for i := 0; i < 2; i++ {
		if err := <-got; err != nil {
			t.Fatal(err)
		}
	}
	if n := queued(); n != 0 {
		t.Fatalf("%d queued after both took a slot", n)
	}
	for len(e.b.spawns) > 0 {
		<-e.b.spawns
	}
}

// A start that found the pool empty is served by the first sandbox ready,
// not only by the one it started: here a pooled one, while its own spawn
// waits for a slot. Its own spawn, still generic, joins the pool after,
// at the pool's CPU weight.
func TestStartTakesASandboxPooledWhileItWaits(t *testing.T) {
	e := newEnv(t, 1)
	e.waitPool(t, 1)
	pooled := e.b.take(e.b.defaultKeys()[0]) // the pool is empty now, with no kick
	if pooled == nil {
		t.Fatal("nothing to take from the pool")
	}
	held := cap(e.b.spawns) - len(e.b.spawns)
	for i := 0; i < held; i++ {
		e.b.spawns <- struct{}{}
	}
	type started struct {
		inst *backend.Instance
		err  error
	}
	got := make(chan started, 1)
	go func() {
		inst, err := e.b.Start(context.Background(), e.spec(t, `export default () => new Response("ok")`))
		got <- started{inst, err}
	}()
	for {
		e.b.mu.Lock()
		queued := e.b.queued
		e.b.mu.Unlock()
		if queued == 1 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	e.b.toPool(pooled)
	r := <-got
	if r.err != nil {
		t.Fatal(r.err)
	}
	if r.inst.ID != pooled.id {
		t.Fatalf("started %s, want the pooled %s", r.inst.ID, pooled.id)
	}
	if code, body := get(t, r.inst, "/"); code != 200 || body != "ok" {
		t.Fatalf("got %d %q", code, body)
	}
	for i := 0; i < held; i++ {
		<-e.b.spawns
	}
	e.waitPool(t, 1)
	e.b.mu.Lock()
	spare := e.b.pool[pooled.key][0]
	e.b.mu.Unlock()
	pw, err := spare.cmd.CPUWeight()
	if err != nil {
		t.Fatal(err)
	}
	iw, err := pooled.cmd.CPUWeight()
	if err != nil {
		t.Fatal(err)
	}
	if pw >= iw {
		t.Fatalf("the spare spawn's CPU weight %d, an instance's %d: want it below", pw, iw)
	}
}

// A boosted spawn whose request another sandbox served ends its start at
// the pool's weight: it would otherwise take 16 times an instance's share
// of the CPUs for nobody.
func TestGivenUpSpawnDropsItsBoost(t *testing.T) {
	e := newEnv(t, 0)
	key := poolKey{"deno", 128, runtime.NetworkNone, ""}
	givenUp := make(chan struct{})
	close(givenUp) // as soon as it has its slot
	p, err := e.b.spawn(context.Background(), key, startShares, givenUp)
	if err != nil {
		t.Fatal(err)
	}
	defer e.b.kill(p, backend.ExitStopped)
	w, err := p.cmd.CPUWeight()
	if err != nil {
		t.Fatal(err)
	}
	pooled, err := e.b.spawn(context.Background(), key, pooledShares, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer e.b.kill(pooled, backend.ExitStopped)
	want, err := pooled.cmd.CPUWeight()
	if err != nil {
		t.Fatal(err)
	}
	if w != want {
		t.Fatalf("the given-up spawn's CPU weight is %d, want the pool's %d", w, want)
	}
}

// A sandbox started for a waiting request runs at a boosted CPU weight
// until it is ready, then at an instance's; a pooled one below both.
func TestStartBoostsCPUWeightUntilReady(t *testing.T) {
	e := newEnv(t, 0)
	weight := func(p *proc) uint64 {
		w, err := p.cmd.CPUWeight()
		if err != nil {
			t.Error(err)
		}
		return w
	}
	var during uint64
	stop, seen := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(seen)
		for {
			select {
			case <-stop:
				return
			default:
			}
			e.b.mu.Lock()
			for _, p := range e.b.procs {
				if w := weight(p); w > during {
					during = w
				}
			}
			e.b.mu.Unlock()
			time.Sleep(time.Millisecond)
		}
	}()
	inst, err := e.b.Start(context.Background(), e.spec(t, `export default () => new Response("ok")`))
	close(stop)
	<-seen
	if err != nil {
		t.Fatal(err)
	}
	// The weight drops beside the import, off the cold start's path.
	e.b.mu.Lock()
	p := e.b.procs[inst.ID]
	e.b.mu.Unlock()
	after := weight(p)
	for deadline := time.Now().Add(5 * time.Second); after != activeShares && time.Now().Before(deadline); after = weight(p) {
		time.Sleep(time.Millisecond)
	}
	pooled, err := e.b.spawn(context.Background(), poolKey{"deno", 128, runtime.NetworkNone, ""}, pooledShares, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer e.b.kill(pooled, backend.ExitStopped)
	if p := weight(pooled); !(during > after && after > p) {
		t.Fatalf("CPU weight while starting %d, once ready %d, pooled %d: want them decreasing", during, after, p)
	}
}

// TestNetworkPolicy: an egress instance reaches public addresses and the
// private range the operator allows, through both layers (nftables and
// Deno's deny list); not other private ranges, cloud metadata or the
// host's loopback; and an instance without a network reaches nothing.
func TestNetworkPolicy(t *testing.T) {
	e := newEnvWith(t, 0, runtimetest.Options{EgressAllow: []netip.Prefix{netip.MustParsePrefix("10.213.0.0/16")}})
	pub := nettest.New(t, 8080, "198.51.100.20", "169.254.169.254", "10.213.0.1", "10.214.0.1")
	code := `export default { async fetch(req) {
		const target = new URL(req.url).searchParams.get("to");
		try {
			const res = await fetch("http://" + target + ":8080/", { signal: AbortSignal.timeout(3000) });
			return new Response("reached: " + await res.text());
		} catch (e) { return new Response("blocked: " + e.name + " " + e.message); }
	} }`
	tests := []struct {
		network, to string
		reached     bool
	}{
		{"egress", "198.51.100.20", true},
		{"egress", "169.254.169.254", false},
		{"egress", "10.213.0.1", true},
		{"egress", "10.214.0.1", false},
		{"egress", "127.0.0.1", false},
		{"none", "198.51.100.20", false},
	}
	insts := map[string]*backend.Instance{}
	for _, network := range []string{"egress", "none"} {
		spec := e.spec(t, code)
		spec.Network = network
		inst, err := e.b.Start(context.Background(), spec)
		if err != nil {
			t.Fatal(err)
		}
		insts[network] = inst
	}
	if !pub.Mounted() {
		t.Fatal("starting an egress sandbox unmounted a host network namespace (mount propagation leak)")
	}
	for _, tt := range tests {
		t.Run(tt.network+"-"+tt.to, func(t *testing.T) {
			before := pub.Hits.Load()
			_, body := get(t, insts[tt.network], "/?to="+tt.to)
			if got := strings.HasPrefix(body, "reached: hello from "+tt.to); got != tt.reached {
				t.Fatalf("got %q, reached=%v want %v", body, got, tt.reached)
			}
			if !tt.reached && pub.Hits.Load() != before {
				t.Fatal("a connection reached the test host although the function was told it was blocked")
			}
		})
	}
}

func TestGVisorIsolation(t *testing.T) {
	if _, err := exec.LookPath("runsc"); err != nil {
		t.Skip("runsc is not installed")
	}
	e := newEnv(t, 0)
	spec := e.spec(t, `export default { async fetch(req) {
		let passwd = "unreadable";
		try { passwd = await Deno.readTextFile("/etc/passwd"); } catch (e) { passwd = e.name; }
		return new Response("gvisor " + new URL(req.url).pathname + " " + passwd);
	} }`)
	spec.Isolation, spec.Network = "gvisor", "none"
	t0 := time.Now()
	inst, err := e.b.Start(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	code, body := get(t, inst, "/under")
	t.Logf("gVisor cold start (spawn included): %v", time.Since(t0))
	if code != 200 || body != "gvisor /under NotCapable" {
		t.Fatalf("got %d %q", code, body)
	}
	if err := e.b.Stop(context.Background(), inst.ID); err != nil {
		t.Fatal(err)
	}
	<-inst.Done()
}

// An idle instance's CPU is throttled, and given back.
func TestSetIdleThrottlesCPU(t *testing.T) {
	e := newEnv(t, 0)
	inst, err := e.b.Start(context.Background(), e.spec(t, `export default { fetch() { return new Response("ok"); } }`))
	if err != nil {
		t.Fatal(err)
	}
	defer e.b.Stop(context.Background(), inst.ID)
	if code, body := get(t, inst, "/"); code != 200 || body != "ok" {
		t.Fatalf("got %d %q", code, body)
	}
	e.b.mu.Lock()
	p := e.b.procs[inst.ID]
	e.b.mu.Unlock()
	before, err := p.cmd.CPUQuota()
	if err != nil {
		t.Fatal(err)
	}
	e.b.SetIdle(inst.ID, true)
	if q, err := p.cmd.CPUQuota(); err != nil || q != idleQuotaUs {
		t.Fatalf("idle quota %d, %v; want %d", q, err, idleQuotaUs)
	}
	e.b.SetIdle(inst.ID, false)
	if q, err := p.cmd.CPUQuota(); err != nil || q != before {
		t.Fatalf("quota after idle %d, %v; want %d as before", q, err, before)
	}
	if code, body := get(t, inst, "/"); code != 200 || body != "ok" {
		t.Fatalf("after idle: %d %q", code, body)
	}
}

func TestUserShares(t *testing.T) {
	for _, tc := range []struct {
		n    int
		want uint64
	}{{0, 16384}, {1, 16384}, {2, 8192}, {3, 4096}, {4, 4096}, {5, 2048}, {16, 1024}, {17, 512}, {8192, 2}, {8193, 2}, {100000, 2}} {
		if got := userShares(tc.n); got != tc.want {
			t.Errorf("userShares(%d) = %d, want %d", tc.n, got, tc.want)
		}
	}
}

// Each user's running instances share one instance's CPU weight: under
// contention a user with many busy instances gets no more of the CPUs
// than a user with one. When instances end, the rest get their part.
func TestInstancesOfAUserShareItsWeight(t *testing.T) {
	e := newEnv(t, 0)
	ctx := context.Background()
	start := func(owner string) *backend.Instance {
		spec := e.spec(t, `export default () => new Response("ok")`)
		spec.Owner = owner
		inst, err := e.b.Start(ctx, spec)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = e.b.Stop(ctx, inst.ID) })
		return inst
	}
	weightsAre := func(shares uint64, insts ...*backend.Instance) {
		t.Helper()
		want := shares
		if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil {
			want = 1 + ((shares-2)*9999)/262142 // v2's cpu.weight, as converted
		}
		var got []uint64
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
			got = got[:0]
			for _, inst := range insts {
				e.b.mu.Lock()
				p := e.b.procs[inst.ID]
				e.b.mu.Unlock()
				w, err := p.cmd.CPUWeight()
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, w)
			}
			if !slices.ContainsFunc(got, func(w uint64) bool { return w != want }) {
				return
			}
		}
		t.Fatalf("CPU weights %v, want %d each", got, want)
	}
	a1, a2, a3 := start("alice"), start("alice"), start("alice")
	b1 := start("bob")
	weightsAre(userShares(3), a1, a2, a3)
	weightsAre(userShares(1), b1)
	_ = e.b.Stop(ctx, a2.ID)
	_ = e.b.Stop(ctx, a3.ID)
	<-a2.Done()
	<-a3.Done()
	weightsAre(userShares(1), a1)
	weightsAre(userShares(1), b1)
}

// When the host's addresses change, the egress sandboxes waiting in the
// pool (whose runtimes hold the old addresses in their deny list) are
// replaced by new ones.
func TestHostChangeRenewsTheEgressPool(t *testing.T) {
	e := newEnv(t, 1)
	e.waitPool(t, 1)
	ids := func() []string {
		e.b.mu.Lock()
		defer e.b.mu.Unlock()
		var out []string
		for key, ps := range e.b.pool {
			for _, p := range ps {
				if key.network == runtime.NetworkEgress {
					out = append(out, p.id)
				}
			}
		}
		return out
	}
	before := ids()
	if len(before) != 1 {
		t.Fatalf("egress pool %v, want one sandbox", before)
	}
	e.b.recycleEgressPool()
	e.waitPool(t, 1)
	if after := ids(); len(after) != 1 || after[0] == before[0] {
		t.Fatalf("egress pool %v after the change, want one new sandbox (was %v)", after, before)
	}
}

// gatedLogs holds the instance output line holding hold until released:
// the reap, which reads the output to its end first, waits meanwhile.
type gatedLogs struct {
	*runtimetest.Lines
	hold             string
	reached, release chan struct{}
}

func (g *gatedLogs) InstanceOutput(spec *backend.Spec, instance, stream string, line []byte) {
	g.Lines.InstanceOutput(spec, instance, stream, line)
	if strings.Contains(string(line), g.hold) {
		close(g.reached)
		<-g.release
	}
}

// A runtime that ended on its own is reported by its exit, even when a
// kill came after its end but before its reap: the activator's probe of a
// suspect instance, or the router's dial, finds the runtime gone and
// kills it, and the kill's reason (a timeout, say) must not stand for a
// crash.
func TestKillAfterTheRuntimeEndedKeepsItsExit(t *testing.T) {
	re := runtimetest.New(t, "deno")
	logs := &gatedLogs{Lines: re.Logs, hold: "last words", reached: make(chan struct{}), release: make(chan struct{})}
	b, err := New(Config{
		RunDir: re.Dir, Sandbox: re.Sandbox, Runtimes: []Runtime{re.Deno}, Blobs: re.Blobs, Logs: logs,
		DefaultMemoryMiB: 128, UIDBase: 300000, Pids: 256, TmpBytes: 16 << 20, NoFiles: 1024,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	e := &env{b: b, blobs: re.Blobs, logs: re.Logs}
	inst, err := b.Start(context.Background(), e.spec(t, `export default { fetch() { console.error("last words"); Deno.exit(3); } }`))
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		if res, err := client(inst).Get("http://instance/"); err == nil {
			res.Body.Close()
		}
	}()
	<-logs.reached
	// The runtime exits; its reap waits for the output held above.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := inst.Responsive(ctx)
		cancel()
		if err != nil {
			b.Kill(inst.ID, backend.ExitTimeout) // as the activator does
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the runtime still answers")
		}
	}
	close(logs.release)
	<-inst.Done()
	if ex := inst.Exit(); ex.Reason != backend.ExitCrashed || ex.Code != 3 || ex.Detail != "the runtime exited unexpectedly: exit status 3" {
		t.Fatalf("exit = %+v, want the crash (exit status 3)", ex)
	}
}

// A sandbox that dies after its spawn returned but before it joins the
// pool (the filler's toPool, a request's adopt) stays out of it: reaped
// already, it would count as warm, and hold the refill back, until a
// start came to it.
func TestSandboxDeadBeforePoolingIsNotPooled(t *testing.T) {
	e := newEnv(t, 1)
	e.waitPool(t, 1)
	key := e.b.defaultKeys()[0]
	used := e.b.take(key) // as a start would, for the pool to refill
	defer e.b.kill(used, backend.ExitStopped)
	p, err := e.b.spawn(context.Background(), key, pooledShares, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-p.exited
	e.b.toPool(p)
	e.b.kick()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		live := 0
		e.b.mu.Lock()
		for _, q := range e.b.pool[key] {
			select {
			case <-q.exited:
			default:
				live++
			}
		}
		e.b.mu.Unlock()
		if n := e.b.PoolIdle()["deno"]; live == 1 && n == 1 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d live sandboxes in the pool, %d counted, want 1", live, e.b.PoolIdle()["deno"])
		}
	}
}

// The probe of a stuck runtime ends when its context does, deadline or
// not (Instance.Responsive: "before ctx ends").
func TestProbeEndsWithItsContext(t *testing.T) {
	e := newEnv(t, 1)
	e.waitPool(t, 1)
	inst, err := e.b.Start(context.Background(), e.spec(t, runtimetest.SpinningHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer e.b.Kill(inst.ID, backend.ExitTimeout)
	runtimetest.AwaitLoadedWhileSpinning(t, inst)
	// Until the request reaches the handler, the event loop answers.
	for deadline := time.Now().Add(5 * time.Second); ; {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		err := inst.Responsive(ctx)
		cancel()
		if err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the handler did not start spinning")
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(200*time.Millisecond, cancel)
	done := make(chan error, 1)
	go func() { done <- inst.Responsive(ctx) }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("a spinning runtime answered the probe")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the probe outlived its canceled context")
	}
}

// WaitLoaded tells, without a request sent to the function, whether its
// module loaded, and if not why: in the words of the instance's exit,
// which says it ended BeforeLoad (the activator's crash-loop backoff
// answers requests with it), and does not for one that had loaded.
func TestWaitLoadedWithoutARequest(t *testing.T) {
	for _, tc := range []struct {
		name, code, want string
		deadline         time.Duration
	}{
		{name: "loads", code: `const v = await new Promise((r) => setTimeout(() => r("loaded"), 200)); export default () => new Response(v)`},
		{name: "throws", code: `await new Promise((r) => setTimeout(r, 100)); throw new Error("boom")`, want: "the function failed to load: boom"},
		{name: "exits", code: `Deno.exit(3); export default () => new Response("never")`, want: "the runtime exited unexpectedly: exit status 3"},
		{name: "hangs", code: `await new Promise(() => {}); export default () => new Response("never")`, want: "did not load in time", deadline: 500 * time.Millisecond},
		{name: "runs out of memory", code: `const a = []; for (;;) a.push(new Array(1e6).fill(1));`, want: "out of memory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, 1)
			e.waitPool(t, 1)
			ctx := context.Background()
			if tc.deadline > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tc.deadline)
				defer cancel()
			}
			inst, err := e.b.Start(ctx, e.spec(t, tc.code))
			if err != nil {
				t.Fatal(err)
			}
			wctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			err = inst.WaitLoaded(wctx)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("WaitLoaded() = %v, want nil", err)
				}
				if inst.Loading() {
					t.Fatal("loaded, yet Loading")
				}
				if code, body := get(t, inst, "/"); code != 200 || body != "loaded" {
					t.Fatalf("got %d %q", code, body)
				}
				e.b.Kill(inst.ID, backend.ExitCrashed)
				<-inst.Done()
				if inst.Exit().BeforeLoad {
					t.Fatalf("an instance that had loaded ended BeforeLoad: %+v", inst.Exit())
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("WaitLoaded() = %v, want %q", err, tc.want)
			}
			select {
			case <-inst.Done():
			default:
				t.Fatal("WaitLoaded reported a failure before the instance ended")
			}
			if ex := inst.Exit(); !ex.BeforeLoad || !strings.HasPrefix(ex.LoadFailure(), "the function ") {
				t.Fatalf("exit %+v: not BeforeLoad, or says %q", ex, ex.LoadFailure())
			}
		})
	}
}
