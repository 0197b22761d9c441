package runtime_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/spry-run/spry/internal/backend"
	"github.com/spry-run/spry/internal/backend/local"
	"github.com/spry-run/spry/internal/blob"
	"github.com/spry-run/spry/internal/kv"
	"github.com/spry-run/spry/internal/nettest"
	"github.com/spry-run/spry/internal/runtime"
	"github.com/spry-run/spry/internal/runtime/runtimetest"
	"github.com/spry-run/spry/internal/sandbox"
)

func TestMain(m *testing.M) {
	sandbox.MaybeExec()
	os.Exit(m.Run())
}

type nodeEnv struct {
	b       *local.Backend
	blobs   *blob.Store
	logs    *runtimetest.Lines
	runtime string
}

// functionEnv is every test function's environment.
var functionEnv = map[string]string{"FOO": "bar", "GREETING": "hi"}

func newNodeEnv(t *testing.T, poolSize int) *nodeEnv {
	t.Helper()
	return newRuntimeEnv(t, "node", poolSize, 310000)
}

// newRuntimeEnv is a local backend running only the named runtime, its
// instances' uids from uidBase.
func newRuntimeEnv(t *testing.T, name string, poolSize, uidBase int) *nodeEnv {
	t.Helper()
	re := runtimetest.New(t, name)
	var rt local.Runtime = re.Node
	if name == "deno" {
		rt = re.Deno
	}
	// ctx.kv, as the server gives it, in a SQLite file of the test's.
	store, err := kv.Open(context.Background(), filepath.Join(t.TempDir(), "kv.db"), kv.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	b, err := local.New(local.Config{
		RunDir:           re.Dir,
		Sandbox:          re.Sandbox,
		Runtimes:         []local.Runtime{rt},
		Blobs:            re.Blobs,
		Logs:             re.Logs,
		Logger:           slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		PoolSize:         poolSize,
		DefaultMemoryMiB: 128,
		// The runtime is the same whatever the network; TestNodeNetwork
		// asks for egress itself.
		DefaultNetwork: runtime.NetworkNone,
		UIDBase:        uidBase,
		Pids:           256,
		TmpBytes:       16 << 20,
		NoFiles:        1024,
		KV:             store,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return &nodeEnv{b: b, blobs: re.Blobs, logs: re.Logs, runtime: name}
}

// spec deploys code as a function of the env's runtime.
func (e *nodeEnv) spec(t *testing.T, code string) *backend.Spec {
	t.Helper()
	digest, err := e.blobs.Put([]byte(code))
	if err != nil {
		t.Fatal(err)
	}
	return &backend.Spec{FunctionID: "f1", Owner: "alice", Name: "hello", Version: 3, Runtime: e.runtime, Digest: digest, Env: functionEnv}
}

// start deploys code as a node function and starts an instance of it.
func (e *nodeEnv) start(t *testing.T, code string) *backend.Instance {
	t.Helper()
	return e.run(t, e.spec(t, code))
}

func (e *nodeEnv) run(t *testing.T, spec *backend.Spec) *backend.Instance {
	t.Helper()
	inst, err := e.b.Start(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.b.Stop(context.Background(), inst.ID) })
	return inst
}

func client(inst *backend.Instance) *http.Client { return runtimetest.Client(inst, 20*time.Second) }

type reply struct {
	status int
	header http.Header
	body   string
	// statusLine is the status line's code and reason phrase ("200 OK").
	statusLine string
}

func do(t *testing.T, inst *backend.Instance, method, path string, header http.Header, body io.Reader) reply {
	t.Helper()
	req, err := http.NewRequest(method, "http://instance.test"+path, body)
	if err != nil {
		t.Fatal(err)
	}
	for k, vs := range header {
		req.Header[k] = vs
	}
	res, err := client(inst).Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	return reply{res.StatusCode, res.Header, string(b), res.Status}
}

// raw sends a request by hand (head, then whatever body writes, ignoring
// write errors: the instance may answer and close before reading it all)
// and reads the response.
func raw(t *testing.T, inst *backend.Instance, head string, body func(w io.Writer)) reply {
	t.Helper()
	conn, err := net.Dial("unix", inst.Address)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	go func() {
		io.WriteString(conn, head)
		body(conn)
	}()
	res, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return reply{res.StatusCode, res.Header, string(b), res.Status}
}

func decode(t *testing.T, s string) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		t.Fatalf("not JSON: %q: %v", s, err)
	}
	return m
}

// checkFunctionError checks a platform error reply.
func checkFunctionError(t *testing.T, inst *backend.Instance, r reply, status int, code string) {
	t.Helper()
	if r.status != status || r.header.Get("Spry-Error") != code || !strings.HasPrefix(r.header.Get("Content-Type"), "application/json") {
		t.Fatalf("got %d %v %q, want %d with spry-error %s", r.status, r.header, r.body, status, code)
	}
	// The mark that has the router keep its Spry-Error: the runtime's
	// own answer, not the function's.
	if inst.ErrorMark == "" || r.header.Get(backend.ErrorMarkHeader) != inst.ErrorMark {
		t.Fatalf("%s: Spry-Error-Mark %q, want the instance's %q", code, r.header.Get(backend.ErrorMarkHeader), inst.ErrorMark)
	}
	var e struct {
		Error struct{ Code, Message string }
	}
	if err := json.Unmarshal([]byte(r.body), &e); err != nil || e.Error.Code != code || e.Error.Message == "" {
		t.Fatalf("error body %q", r.body)
	}
}

func TestNodeFetchContract(t *testing.T) {
	e := newNodeEnv(t, 1)
	inst := e.start(t, `export default {
		async fetch(req, ctx) {
			const url = new URL(req.url);
			const body = req.body ? await req.text() : null;
			const headers = new Headers({ "content-type": "application/json", "x-answer": "42" });
			headers.append("set-cookie", "a=1; Path=/");
			headers.append("set-cookie", "b=2; HttpOnly");
			return new Response(JSON.stringify({
				method: req.method, url: req.url, path: url.pathname, search: url.search,
				custom: req.headers.get("x-custom"), body,
				ctx: { name: ctx.name, owner: ctx.owner, version: ctx.version, requestId: ctx.requestId, env: ctx.env, frozen: Object.isFrozen(ctx.env) },
			}), { status: 201, statusText: "Made", headers });
		},
	}`)

	r := do(t, inst, "GET", "/a/b//c?x=1&y=2", http.Header{"X-Custom": {"yes"}, "Spry-Request-Id": {"req-123"}}, nil)
	if r.status != 201 || r.header.Get("X-Answer") != "42" {
		t.Fatalf("got %d %v %q", r.status, r.header, r.body)
	}
	if c := r.header.Values("Set-Cookie"); !reflect.DeepEqual(c, []string{"a=1; Path=/", "b=2; HttpOnly"}) {
		t.Fatalf("set-cookie %q", c)
	}
	if r.header.Get("Content-Length") == "" {
		t.Errorf("a body known at once went out without a Content-Length: %v", r.header)
	}
	got := decode(t, r.body)
	want := map[string]any{
		"method": "GET", "url": "http://instance.test/a/b//c?x=1&y=2", "path": "/a/b//c", "search": "?x=1&y=2",
		"custom": "yes", "body": nil,
		"ctx": map[string]any{"name": "hello", "owner": "alice", "version": 3.0, "requestId": "req-123", "env": map[string]any{"FOO": "bar", "GREETING": "hi"}, "frozen": true},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got  %v\nwant %v", got, want)
	}

	// A Host header with a path in it does not move the request's path.
	r = raw(t, inst, "GET /real?q=1 HTTP/1.1\r\nHost: evil.test/fake?\r\nConnection: close\r\n\r\n", func(io.Writer) {})
	if got := decode(t, r.body); got["url"] != "http://localhost/real?q=1" || got["path"] != "/real" {
		t.Fatalf("odd Host: %d %q", r.status, r.body)
	}
	if r := do(t, inst, "HEAD", "/h", nil, nil); r.status != 201 || r.body != "" || r.header.Get("X-Answer") != "42" {
		t.Fatalf("HEAD: %d %v %q", r.status, r.header, r.body)
	}

	// A POST body, streamed in pieces (chunked) from the client.
	pr, pw := io.Pipe()
	go func() {
		for i := 0; i < 3; i++ {
			pw.Write([]byte("part" + string(rune('1'+i)) + ";"))
			time.Sleep(20 * time.Millisecond)
		}
		pw.Close()
	}()
	r = do(t, inst, "POST", "/upload", nil, pr)
	if got := decode(t, r.body); got["method"] != "POST" || got["body"] != "part1;part2;part3;" || got["path"] != "/upload" {
		t.Fatalf("got %d %q", r.status, r.body)
	}
	// A large body, both ways.
	big := bytes.Repeat([]byte("0123456789abcdef"), 256<<10) // 4 MiB
	r = do(t, inst, "PUT", "/big", http.Header{"Content-Type": {"application/octet-stream"}}, bytes.NewReader(big))
	if got := decode(t, r.body); got["body"] != string(big) {
		t.Fatalf("big body: got %d, %d bytes", r.status, len(r.body))
	}
}

func TestNodeFetchFunctionAndStreaming(t *testing.T) {
	e := newNodeEnv(t, 0)
	inst := e.start(t, `export default async function (req, ctx) {
		const url = new URL(req.url);
		if (url.pathname === "/stream") {
			let i = 0;
			const body = new ReadableStream({
				async pull(c) {
					if (i === 3) return c.close();
					await new Promise((r) => setTimeout(r, 30));
					c.enqueue(new TextEncoder().encode("tick" + i++ + "\n"));
				},
			});
			return new Response(body, { headers: { "content-type": "text/event-stream" } });
		}
		if (url.pathname === "/empty") return new Response(null, { status: 204 });
		return Response.json({ env: { ...process.env }, ctx: ctx.env, greeting: ctx.env.GREETING });
	}`)
	r := do(t, inst, "GET", "/", nil, nil)
	got := decode(t, r.body)
	want := map[string]any{"FOO": "bar", "GREETING": "hi"}
	if !reflect.DeepEqual(got["env"], want) || !reflect.DeepEqual(got["ctx"], want) || got["greeting"] != "hi" {
		t.Fatalf("process.env and ctx.env must be exactly the function's env: %q", r.body)
	}
	r = do(t, inst, "GET", "/stream", nil, nil)
	if r.status != 200 || r.body != "tick0\ntick1\ntick2\n" || r.header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("stream: %d %v %q", r.status, r.header, r.body)
	}
	if r = do(t, inst, "GET", "/empty", nil, nil); r.status != 204 || r.body != "" {
		t.Fatalf("empty: %d %q", r.status, r.body)
	}
}

const expressCode = `export default function (req, res) {
	switch (req.path) {
	case "/str": return res.send("hello");
	case "/buf": return res.send(Buffer.from("bin"));
	case "/obj": return res.status(202).send({ a: 1 });
	case "/status": return res.sendStatus(404);
	case "/set": res.set("x-one", "1").set({ "x-two": "2" }); res.setHeader("set-cookie", ["c=1", "d=2"]); return res.status(200).end("done");
	case "/throw": throw new Error("express boom");
	case "/reject": return Promise.reject(new Error("async boom"));
	case "/later": setTimeout(() => res.json({ late: true }), 20); return;
	case "/twice": res.send("once"); res.write("again"); return; // logged, not a crash
	case "/code": return res.status(req.query.s).send("x");
	case "/raw-code": res.statusCode = Number(req.query.s); return res.send("x");
	}
	res.status(201).json({
		method: req.method, path: req.path, q: req.query, body: req.body,
		isBuffer: Buffer.isBuffer(req.body), env: process.env.FOO, host: req.get("host"),
	});
}`

func TestNodeExpressContract(t *testing.T) {
	e := newNodeEnv(t, 1)
	inst := e.start(t, expressCode)
	post := func(path, ctype, body string) map[string]any {
		t.Helper()
		r := do(t, inst, "POST", path, http.Header{"Content-Type": {ctype}}, strings.NewReader(body))
		if r.status != 201 || !strings.HasPrefix(r.header.Get("Content-Type"), "application/json") {
			t.Fatalf("POST %s: %d %v %q", path, r.status, r.header, r.body)
		}
		return decode(t, r.body)
	}

	r := do(t, inst, "GET", "/items?a=1&b=x&b=y", nil, nil)
	if r.status != 201 {
		t.Fatalf("GET: %d %q", r.status, r.body)
	}
	got := decode(t, r.body)
	want := map[string]any{
		"method": "GET", "path": "/items", "q": map[string]any{"a": "1", "b": []any{"x", "y"}},
		"body": map[string]any{}, "isBuffer": false, "env": "bar", "host": "instance.test",
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got  %v\nwant %v", got, want)
	}
	if got := post("/j?z=9", "application/json; charset=utf-8", `{"n":1,"list":[true]}`); !reflect.DeepEqual(got["body"], map[string]any{"n": 1.0, "list": []any{true}}) || !reflect.DeepEqual(got["q"], map[string]any{"z": "9"}) {
		t.Fatalf("json body: %v", got)
	}
	if got := post("/f", "application/x-www-form-urlencoded", "name=Ada+L&x=1&x=2"); !reflect.DeepEqual(got["body"], map[string]any{"name": "Ada L", "x": []any{"1", "2"}}) {
		t.Fatalf("form body: %v", got)
	}
	if got := post("/t", "text/plain", "just text"); got["body"] != "just text" {
		t.Fatalf("text body: %v", got)
	}
	if got := post("/b", "application/octet-stream", "raw"); got["isBuffer"] != true {
		t.Fatalf("binary body: %v", got)
	}
	r = do(t, inst, "POST", "/bad", http.Header{"Content-Type": {"application/json"}}, strings.NewReader("{nope"))
	checkFunctionError(t, inst, r, 400, "invalid_argument")

	for _, tc := range []struct {
		path, ctype, body string
		status            int
	}{
		{"/str", "text/html; charset=utf-8", "hello", 200},
		{"/buf", "application/octet-stream", "bin", 200},
		{"/obj", "application/json; charset=utf-8", `{"a":1}`, 202},
		{"/status", "text/plain; charset=utf-8", "Not Found", 404},
		{"/later", "application/json; charset=utf-8", `{"late":true}`, 200},
		{"/twice", "text/html; charset=utf-8", "once", 200},
	} {
		r := do(t, inst, "GET", tc.path, nil, nil)
		if r.status != tc.status || r.header.Get("Content-Type") != tc.ctype || r.body != tc.body {
			t.Errorf("%s: got %d %q %q, want %d %q %q", tc.path, r.status, r.header.Get("Content-Type"), r.body, tc.status, tc.ctype, tc.body)
		}
	}
	r = do(t, inst, "GET", "/set", nil, nil)
	if r.body != "done" || r.header.Get("X-One") != "1" || r.header.Get("X-Two") != "2" || !reflect.DeepEqual(r.header.Values("Set-Cookie"), []string{"c=1", "d=2"}) {
		t.Fatalf("/set: %d %v %q", r.status, r.header, r.body)
	}
	// A status a Response could not have is the function's error, as on
	// the fetch contract: Node sent a 1xx, with the body after it, and
	// failed the whole answer for a 0 (each a 502 at the router).
	for _, path := range []string{"/code?s=101", "/code?s=0", "/code?s=600", "/code?s=x", "/raw-code?s=0", "/raw-code?s=101", "/raw-code?s=700"} {
		checkFunctionError(t, inst, do(t, inst, "GET", path, nil, nil), 500, "function_error")
	}
	if r := do(t, inst, "GET", "/code?s=418", nil, nil); r.status != 418 || r.body != "x" {
		t.Errorf("/code?s=418: got %d %q", r.status, r.body)
	}
	checkFunctionError(t, inst, do(t, inst, "GET", "/throw", nil, nil), 500, "function_error")
	checkFunctionError(t, inst, do(t, inst, "GET", "/reject", nil, nil), 500, "function_error")
	if !e.logs.Await("express boom") {
		t.Errorf("the handler's error is not in the logs:\n%s", e.logs)
	}

	// Bodies are bounded: 413, whether announced or streamed.
	big := bytes.Repeat([]byte("x"), 10<<20+1)
	checkFunctionError(t, inst, raw(t, inst, "POST / HTTP/1.1\r\nHost: i\r\nContent-Type: text/plain\r\nContent-Length: 10485761\r\n\r\n", func(w io.Writer) {
		w.Write(big)
	}), 413, "too_large")
	checkFunctionError(t, inst, raw(t, inst, "POST / HTTP/1.1\r\nHost: i\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n", func(w io.Writer) {
		for i := 0; i < 11; i++ {
			fmt.Fprintf(w, "%x\r\n%s\r\n", 1<<20, big[:1<<20])
		}
		io.WriteString(w, "0\r\n\r\n")
	}), 413, "too_large")
	// The instance still serves.
	if r := do(t, inst, "GET", "/str", nil, nil); r.body != "hello" {
		t.Fatalf("after 413: %d %q", r.status, r.body)
	}
}

// A client that goes away mid-stream cancels the function's body stream
// and leaves the instance serving.
func TestNodeClientGone(t *testing.T) {
	e := newNodeEnv(t, 0)
	inst := e.start(t, `let cancelled = false;
	export default { fetch(req) {
		if (new URL(req.url).pathname === "/cancelled") return new Response(String(cancelled));
		const body = new ReadableStream({
			async pull(c) { await new Promise((r) => setTimeout(r, 10)); c.enqueue(new TextEncoder().encode("tick\n")); },
			cancel() { cancelled = true; },
		});
		return new Response(body, { headers: { "content-type": "text/event-stream" } });
	} }`)
	res, err := client(inst).Get("http://instance/stream")
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(res.Body, buf); err != nil || string(buf) != "tick\n" {
		t.Fatalf("first chunk %q: %v", buf, err)
	}
	res.Body.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		r := do(t, inst, "GET", "/cancelled", nil, nil)
		if r.body == "true" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the body stream was not cancelled: %d %q", r.status, r.body)
		}
		time.Sleep(20 * time.Millisecond)
	}
	select {
	case <-inst.Done():
		t.Fatalf("instance ended: %+v\n%s", inst.Exit(), e.logs)
	default:
	}
}

func TestNodeContractDetection(t *testing.T) {
	e := newNodeEnv(t, 0)
	for _, tc := range []struct{ name, code, want string }{
		// CommonJS, as Node itself loads it (no ESM syntax).
		{"commonjs", `module.exports = (req, res) => { res.send("cjs " + req.method); };`, "cjs GET"},
		// What esbuild makes of module.exports = fn when bundling to ESM.
		{"esbuild-cjs", `var __commonJS = (cb, mod) => function __require() { return mod || (0, cb[Object.keys(cb)[0]])((mod = { exports: {} }).exports, mod), mod.exports; };
			var require_fn = __commonJS({ "fn.js"(exports, module) { module.exports = function handler(req, res) { res.json({ via: "bundle" }); }; } });
			export default require_fn();`, `{"via":"bundle"}`},
		{"express-3-params", `export default (req, res, next) => res.send("three")`, "three"},
		{"express-renamed", `export default function (request, response) { response.status(200).send("renamed") }`, "renamed"},
		{"fetch-ctx", `export default async function (req, ctx) { return new Response("fetch " + ctx.name) }`, "fetch hello"},
		{"fetch-context", `export default (request, context) => new Response("ctx " + context.owner)`, "ctx alice"},
		{"fetch-three-params", `export default function (req, ctx, more) { return new Response("three " + ctx.env.FOO) }`, "three bar"},
		{"fetch-destructured", `export default (req, { env }) => new Response("env " + env.FOO)`, "env bar"},
		{"fetch-one-param", `export default (req) => new Response(req.method)`, "GET"},
		{"fetch-no-params", `export default () => new Response("none")`, "none"},
		{"override-fetch", `export const contract = "fetch"; export default function (request, response) { return new Response("forced fetch") }`, "forced fetch"},
		{"override-express", `export const contract = "express"; export default function (req) { arguments[1].send("forced express") }`, "forced express"},
		{"override-commonjs", `module.exports = function (a, b) { return new Response("cjs fetch") }; module.exports.contract = "fetch";`, "cjs fetch"},
		{"static-fetch", `export default class { static fetch(req, ctx) { return new Response("static " + ctx.version) } }`, "static 3"},
		{"nested-default", `module.exports = { __esModule: true, default: { fetch() { return new Response("nested") } } };`, "nested"},
		{"require-builtin", `const { createHash } = require("node:crypto"); export default () => new Response(createHash("sha1").update("x").digest("hex"))`, "11f6ad8ec52a2984abaafd7c3b516503785c2072"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			inst := e.start(t, tc.code)
			if r := do(t, inst, "GET", "/", nil, nil); r.status != 200 || r.body != tc.want {
				t.Fatalf("got %d %q, want %q\n%s", r.status, r.body, tc.want, e.logs)
			}
		})
	}
}

func TestNodeErrors(t *testing.T) {
	e := newNodeEnv(t, 0)
	inst := e.start(t, `export default { fetch(req) {
		const p = new URL(req.url).pathname;
		if (p === "/throw") throw new Error("fetch boom");
		if (p === "/nothing") return;
		if (p === "/string") return "not a response";
		return new Response("fine");
	} }`)
	checkFunctionError(t, inst, do(t, inst, "GET", "/throw", nil, nil), 500, "function_error")
	checkFunctionError(t, inst, do(t, inst, "GET", "/nothing", nil, nil), 500, "function_error")
	checkFunctionError(t, inst, do(t, inst, "GET", "/string", nil, nil), 500, "function_error")
	if r := do(t, inst, "GET", "/", nil, nil); r.body != "fine" {
		t.Fatalf("after errors: %d %q", r.status, r.body)
	}
	if !e.logs.Await("stderr: uncaught exception in function: Error: fetch boom", "not a Response") {
		t.Fatalf("logs:\n%s", e.logs)
	}
}

// An Express-style handler's errors nothing handles (an event emitter's
// 'error' with no listener among them) are logged, and the instance
// serves on, as a fetch handler's are (TestContractUnhandledErrors).
func TestNodeExpressUnhandledErrors(t *testing.T) {
	e := newNodeEnv(t, 0)
	inst := e.start(t, `import { EventEmitter } from "node:events";
	export default function (req, res) {
		if (req.path === "/timer") setTimeout(() => { throw new Error("express timer"); }, 5);
		if (req.path === "/emitter") setTimeout(() => new EventEmitter().emit("error", new Error("no listener")), 5);
		res.send("ok " + req.path);
	}`)
	for _, p := range []string{"/timer", "/emitter", "/"} {
		if r := do(t, inst, "GET", p, nil, nil); r.body != "ok "+p {
			t.Fatalf("%s: got %d %q", p, r.status, r.body)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !e.logs.Await("stderr: uncaught exception in function: Error: express timer", "stderr: uncaught exception in function: Error: no listener") {
		t.Fatalf("logs:\n%s", e.logs)
	}
	select {
	case <-inst.Done():
		t.Fatalf("the instance ended: %+v", inst.Exit())
	default:
	}
}

func TestNodeImportFailure(t *testing.T) {
	e := newNodeEnv(t, 1)
	// The start does not wait for the import: the request waits in the
	// runtime, which answers it with the failure and exits.
	inst, err := e.b.Start(context.Background(), e.spec(t, `await new Promise((r) => setTimeout(r, 100)); throw new Error("boom at import"); export default () => new Response("never")`))
	if err != nil {
		t.Fatal(err)
	}
	const want = "the function failed to load: boom at import"
	r := do(t, inst, "GET", "/", nil, nil)
	checkFunctionError(t, inst, r, 502, "function_failed")
	if !strings.Contains(r.body, want) {
		t.Fatalf("got %d %s, want 502 function_failed naming the cause", r.status, r.body)
	}
	select {
	case <-inst.Done():
	case <-time.After(10 * time.Second):
		t.Fatalf("the instance did not exit after its import failed; logs:\n%s", e.logs)
	}
	if ex := inst.Exit(); ex.Reason != backend.ExitCrashed || ex.Detail != want {
		t.Fatalf("exit = %+v", ex)
	}
	if !strings.Contains(e.logs.String(), "boom at import") {
		t.Fatalf("logs:\n%s", e.logs)
	}
}

// The instance stops counting as loading before the function's code runs
// a request, even one that blocks the event loop for good.
func TestNodeLoadedBeforeTheHandlerRuns(t *testing.T) {
	e := newNodeEnv(t, 1)
	inst := e.start(t, runtimetest.SpinningHandler)
	runtimetest.AwaitLoadedWhileSpinning(t, inst)
	if strings.Contains(e.logs.String(), runtime.LoadedLine) {
		t.Fatalf("the runtime's %s is in the function's logs:\n%s", runtime.LoadedLine, e.logs)
	}
}

func TestNodeWaitsForImport(t *testing.T) {
	e := newNodeEnv(t, 1)
	inst := e.start(t, `const ready = await new Promise((r) => setTimeout(() => r("loaded"), 300)); export default { fetch: () => new Response(ready) }`)
	if r := do(t, inst, "GET", "/", nil, nil); r.body != "loaded" {
		t.Fatalf("got %d %q", r.status, r.body)
	}
}

func TestNodeSandbox(t *testing.T) {
	e := newNodeEnv(t, 0)
	inst := e.start(t, `import fs from "node:fs";
	import cp from "node:child_process";
	import { Worker } from "node:worker_threads";
	import v8, { setFlagsFromString } from "node:v8";
	export default { async fetch(req) {
		const q = new URL(req.url).searchParams;
		try {
			switch (q.get("what")) {
			case "read": return new Response(fs.readFileSync(q.get("path"), "utf8"));
			case "write": fs.writeFileSync(q.get("path"), "x"); return new Response("wrote");
			case "tmp": fs.writeFileSync("/tmp/x", "ok"); return new Response(fs.readFileSync("/tmp/x", "utf8"));
			case "self": return new Response(String(fs.readFileSync(new URL(import.meta.url), "utf8").includes("node:worker_threads")));
			case "exec": return await new Promise((resolve) => cp.exec("id", (err, out) => resolve(new Response(err ? "denied: " + err.code : out))));
			case "spawn": cp.spawnSync("/spry/node", ["-e", "1"]); return new Response("spawned");
			case "worker": new Worker("1", { eval: true }); return new Response("worker");
			case "addon": process.dlopen({ exports: {} }, "/tmp/x.node"); return new Response("loaded");
			case "v8flags":
				// V8's natives syntax: its internal functions, unchecked.
				v8.setFlagsFromString("--allow-natives-syntax");
				return new Response("natives: " + new Function("return %GetOptimizationStatus(function () {})")());
			case "v8flags-named": setFlagsFromString("--no-wasm-bounds-checks"); return new Response("set");
			}
		} catch (e) { return new Response("denied: " + e.code, { status: 403 }); }
		return new Response("?", { status: 400 });
	} }`)
	for _, tc := range []struct{ q, want string }{
		{"what=read&path=/etc/passwd", "denied: ERR_ACCESS_DENIED"},
		{"what=read&path=/proc/1/environ", "denied: ERR_ACCESS_DENIED"},
		{"what=read&path=/proc/self/environ", "denied: ERR_ACCESS_DENIED"},
		{"what=read&path=/spry/node", "denied: ERR_ACCESS_DENIED"},
		{"what=write&path=/x", "denied: ERR_ACCESS_DENIED"},
		{"what=write&path=/code/x", "denied: ERR_ACCESS_DENIED"},
		{"what=write&path=/run/spry/x", "denied: ERR_ACCESS_DENIED"},
		{"what=write&path=/spry/node-bootstrap.mjs", "denied: ERR_ACCESS_DENIED"},
		{"what=tmp", "ok"},
		{"what=self", "true"},
		{"what=exec", "denied: ERR_ACCESS_DENIED"},
		{"what=spawn", "denied: ERR_ACCESS_DENIED"},
		{"what=worker", "denied: ERR_ACCESS_DENIED"},
		{"what=addon", "denied: ERR_"},
		{"what=v8flags", "denied: ERR_ACCESS_DENIED"},
		{"what=v8flags-named", "denied: ERR_ACCESS_DENIED"},
		{"what=tmp", "ok"}, // (the instance lives on)
	} {
		if r := do(t, inst, "GET", "/?"+tc.q, nil, nil); !strings.HasPrefix(r.body, tc.want) {
			t.Errorf("%s: got %q, want prefix %q", tc.q, r.body, tc.want)
		}
	}
}

// Node 22's permission model has no network scope, so the sandbox alone
// keeps an egress instance off the host, link-local and private ranges.
func TestNodeNetwork(t *testing.T) {
	e := newNodeEnv(t, 0)
	pub := nettest.New(t, 8080, "198.51.100.20", "169.254.169.254", "10.213.0.1")
	code := `export default { async fetch(req) {
		const target = new URL(req.url).searchParams.get("to");
		try {
			const res = await fetch("http://" + target + ":8080/", { signal: AbortSignal.timeout(3000) });
			return new Response("reached: " + await res.text());
		} catch (e) { return new Response("blocked: " + e.name + " " + (e.cause?.code ?? e.message)); }
	} }`
	insts := map[string]*backend.Instance{}
	for _, network := range []string{runtime.NetworkEgress, runtime.NetworkNone} {
		spec := e.spec(t, code)
		spec.Network = network
		insts[network] = e.run(t, spec)
	}
	for _, tt := range []struct {
		network, to string
		reached     bool
	}{
		{"egress", "198.51.100.20", true},
		{"egress", "169.254.169.254", false},
		{"egress", "10.213.0.1", false},
		{"egress", "127.0.0.1", false},
		{"none", "198.51.100.20", false},
	} {
		t.Run(tt.network+"-"+tt.to, func(t *testing.T) {
			before := pub.Hits.Load()
			r := do(t, insts[tt.network], "GET", "/?to="+tt.to, nil, nil)
			if got := strings.HasPrefix(r.body, "reached: hello from "+tt.to); got != tt.reached {
				t.Fatalf("got %q, reached=%v want %v", r.body, got, tt.reached)
			}
			if !tt.reached && pub.Hits.Load() != before {
				t.Fatal("a connection reached the test host although the function was told it was blocked")
			}
		})
	}
}

func TestNodePoolColdStart(t *testing.T) {
	e := newNodeEnv(t, 1)
	deadline := time.Now().Add(20 * time.Second)
	for e.b.PoolIdle()["node"] < 1 {
		if time.Now().After(deadline) {
			t.Fatal("pool did not fill")
		}
		time.Sleep(10 * time.Millisecond)
	}
	start := time.Now()
	inst := e.start(t, `export default () => new Response("warm")`)
	if r := do(t, inst, "GET", "/", nil, nil); r.body != "warm" {
		t.Fatalf("got %d %q", r.status, r.body)
	}
	t.Logf("cold start from pool: %v", time.Since(start))
}

func TestNodeLaunch(t *testing.T) {
	dir := t.TempDir()
	bin, err := runtime.FindNode("")
	if err != nil {
		t.Skip(err)
	}
	n, err := runtime.NewNode(bin, dir)
	if err != nil {
		t.Fatal(err)
	}
	if n.Name() != "node" || n.Version == "" {
		t.Fatalf("name %q version %q", n.Name(), n.Version)
	}
	l := n.Launch(runtime.LaunchOptions{MemoryMiB: 256})
	args := strings.Join(l.Args, " ")
	for _, want := range []string{"--max-old-space-size=192", "--permission", "--allow-fs-read=/code/*", "--allow-fs-write=/tmp/*", "--freeze-flags-after-init"} {
		if !strings.Contains(args, want) {
			t.Errorf("args %q lack %q", args, want)
		}
	}
	for _, bad := range []string{"--allow-child-process", "--allow-worker", "--allow-addons", "--allow-wasi"} {
		if strings.Contains(args, bad) {
			t.Errorf("args %q have %q", args, bad)
		}
	}
	if l.Program != "/spry/node" || l.Args[len(l.Args)-1] != "/spry/node-bootstrap.mjs" {
		t.Fatalf("launch %+v", l)
	}
	for _, kv := range l.Env {
		if strings.HasPrefix(kv, "NODE_OPTIONS=") {
			t.Fatalf("env %q", l.Env)
		}
	}
	if _, err := runtime.FindNode(dir + "/missing"); err == nil {
		t.Fatal("FindNode accepted a missing explicit path")
	}
}
