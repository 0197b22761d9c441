package runtime_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spry-run/spry/internal/backend"
	"github.com/spry-run/spry/internal/kv"
	"github.com/spry-run/spry/internal/runtime"
	"github.com/spry-run/spry/internal/runtime/runtimetest"
	"github.com/spry-run/spry/internal/sandbox"
)

// runtimes are the runtimes every contract test runs on, with the first
// uid of each one's instances: Deno and Node must keep the same contract
// (docs/functions.md).
var runtimes = []struct {
	name    string
	uidBase int
}{{"deno", 320000}, {"node", 340000}}

// eachRuntime runs f once per runtime, each on a backend of its own.
func eachRuntime(t *testing.T, f func(t *testing.T, e *nodeEnv)) {
	for _, rt := range runtimes {
		t.Run(rt.name, func(t *testing.T) {
			f(t, newRuntimeEnv(t, rt.name, 0, rt.uidBase))
		})
	}
}

// req.url has the scheme the client used (X-Forwarded-Proto, which the
// router always sets), on Node as on Deno.
func TestContractURLScheme(t *testing.T) {
	eachRuntime(t, func(t *testing.T, e *nodeEnv) {
		inst := e.start(t, `export default { fetch: (req) => new Response(req.url + " " + new URL(req.url).protocol) }`)
		for _, tc := range []struct{ proto, want string }{
			{"https", "https://instance.test/p?q=1 https:"},
			{"http", "http://instance.test/p?q=1 http:"},
		} {
			if r := do(t, inst, "GET", "/p?q=1", http.Header{"X-Forwarded-Proto": {tc.proto}}, nil); r.body != tc.want {
				t.Errorf("X-Forwarded-Proto %s: got %d %q, want %q", tc.proto, r.status, r.body, tc.want)
			}
		}
	})
}

// A default export with a fetch method is served through it, whatever
// else it is: a class with a static fetch, a function carrying one.
func TestContractFetchMethodWins(t *testing.T) {
	eachRuntime(t, func(t *testing.T, e *nodeEnv) {
		for _, tc := range []struct{ name, code, want string }{
			{"static", `export default class { static fetch(req, ctx) { return new Response("static " + ctx.version) } }`, "static 3"},
			{"function-with-fetch", `const f = () => new Response("called as a function"); f.fetch = (req, ctx) => new Response("fetch " + ctx.name); export default f;`, "fetch hello"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				inst := e.start(t, tc.code)
				if r := do(t, inst, "GET", "/", nil, nil); r.status != 200 || r.body != tc.want {
					t.Fatalf("got %d %q, want %q\n%s", r.status, r.body, tc.want, e.logs)
				}
			})
		}
	})
}

// A client that hangs up while its request waits for the module to load
// has its request's signal aborted all the same.
func TestContractAbortWhileLoading(t *testing.T) {
	eachRuntime(t, func(t *testing.T, e *nodeEnv) {
		inst := e.start(t, `await new Promise((r) => setTimeout(r, 700));
		let seen = "none";
		export default { async fetch(req) {
			if (new URL(req.url).pathname === "/seen") return new Response(seen);
			seen = "running";
			const aborted = req.signal.aborted || await new Promise((r) => {
				req.signal.addEventListener("abort", () => r(true));
				setTimeout(() => r(false), 2000);
			});
			seen = "aborted: " + aborted;
			return new Response("x");
		} }`)
		c, err := net.Dial("unix", inst.Address)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(c, "GET /x HTTP/1.1\r\nHost: i\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond) // the request is in, waiting for the load
		c.Close()
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			r := do(t, inst, "GET", "/seen", nil, nil)
			if r.body == "aborted: true" {
				return
			}
			if r.body == "aborted: false" || time.Now().After(deadline) {
				t.Fatalf("got %q: the request's signal was not aborted", r.body)
			}
		}
	})
}

// req.signal says the client went away, not that the response was sent:
// work a function keeps doing after its response (ctx.waitUntil) is not
// aborted, and the runtime adds nothing of its own to the function's logs.
func TestContractSignalAfterResponse(t *testing.T) {
	eachRuntime(t, func(t *testing.T, e *nodeEnv) {
		inst := e.start(t, `let kept;
		export default { fetch(req) {
			if (new URL(req.url).pathname === "/kept") return new Response(String(kept.aborted));
			kept = req.signal;
			kept.addEventListener("abort", () => console.log("aborted after the response"));
			return new Response("kept");
		} }`)
		if r := do(t, inst, "GET", "/keep", nil, nil); r.body != "kept" {
			t.Fatalf("got %d %q", r.status, r.body)
		}
		time.Sleep(100 * time.Millisecond)
		if r := do(t, inst, "GET", "/kept", nil, nil); r.body != "false" {
			t.Errorf("the signal of a request answered in full is aborted: %q", r.body)
		}
		time.Sleep(100 * time.Millisecond)
		if logs := e.logs.String(); logs != "" {
			t.Errorf("the function's logs have lines it did not write:\n%s", logs)
		}
	})
}

// A body known at once (a buffer or a string) goes out with its length,
// whatever its size, and so does the answer to a HEAD request.
func TestContractContentLength(t *testing.T) {
	eachRuntime(t, func(t *testing.T, e *nodeEnv) {
		inst := e.start(t, `export default { fetch(req) {
			const n = Number(new URL(req.url).searchParams.get("n"));
			return new Response(new Uint8Array(n).fill(97), { headers: { "content-type": "application/octet-stream" } });
		} }`)
		for _, n := range []int{10, 3 << 20} {
			for _, method := range []string{"GET", "HEAD"} {
				r := do(t, inst, method, "/?n="+strconv.Itoa(n), nil, nil)
				wantBody := n
				if method == "HEAD" {
					wantBody = 0
				}
				if r.status != 200 || len(r.body) != wantBody || r.header.Get("Content-Length") != strconv.Itoa(n) {
					t.Errorf("%s %d bytes: got %d, %d bytes, Content-Length %q", method, n, r.status, len(r.body), r.header.Get("Content-Length"))
				}
			}
		}
	})
}

// Every method reaches the function; but Node's HTTP parser knows only
// its own list of methods, and a Node function's instance answers any
// other with a 501 that says so (not Node's bare 400). Other malformed
// requests keep Node's answers.
func TestContractMethods(t *testing.T) {
	eachRuntime(t, func(t *testing.T, e *nodeEnv) {
		inst := e.start(t, `export default { fetch: (req) => new Response("method " + req.method) }`)
		for _, m := range []string{"GET", "PATCH", "OPTIONS", "PURGE", "QUERY", "PROPFIND", "TRACE", "FROB"} {
			r := raw(t, inst, m+" / HTTP/1.1\r\nHost: i\r\nConnection: close\r\n\r\n", func(io.Writer) {})
			if e.runtime == "node" && m == "FROB" {
				checkFunctionError(t, inst, r, 501, "not_implemented")
				continue
			}
			if r.status != 200 || r.body != "method "+m {
				t.Errorf("%s: got %d %q", m, r.status, r.body)
			}
		}
		if e.runtime == "node" {
			big := "GET / HTTP/1.1\r\nHost: i\r\nX-Big: " + strings.Repeat("x", 70<<10) + "\r\n\r\n"
			if r := raw(t, inst, big, func(io.Writer) {}); r.status != 431 {
				t.Errorf("a head over Node's limit: got %d %q, want 431", r.status, r.body)
			}
			if r := raw(t, inst, "GET / HTTP/1.1\r\nHost: i\r\nBad Header: x\r\n\r\n", func(io.Writer) {}); r.status != 400 {
				t.Errorf("a malformed head: got %d %q, want 400", r.status, r.body)
			}
		}
		if r := do(t, inst, "GET", "/", nil, nil); r.body != "method GET" {
			t.Fatalf("after: %d %q", r.status, r.body)
		}
	})
}

// Answers the Fetch standard does not allow, or that Deno and Node
// once sent differently, are the same on both runtimes: a 101 that is
// no WebSocket's upgrade is the RangeError Node's Response throws (on
// Deno it went out as an upgrade that never came, a 502), Response.error()
// is a 500 with Deno's words in the logs (on Node a RangeError about a
// status 0), and a Blob's or FormData's body goes with its length (Deno
// sent it chunked).
func TestContractOddResponses(t *testing.T) {
	eachRuntime(t, func(t *testing.T, e *nodeEnv) {
		inst := e.start(t, `export default { fetch(req) {
			switch (new URL(req.url).pathname) {
			case "/101": return new Response(null, { status: 101 });
			case "/json101": return Response.json({}, { status: 101 });
			case "/catch101": try { new Response(null, { status: 101 }); } catch (e) { return new Response(e.name); } return new Response("taken");
			case "/error": return Response.error();
			case "/blob": return new Response(new Blob(["<p>hi</p>"], { type: "text/html" }));
			case "/form": { const f = new FormData(); f.append("a", "1"); return new Response(f); }
			case "/trailer": return new Response("t", { headers: { trailer: "x-t", "x-kept": "yes" } });
			case "/trailer-stream": return new Response(new ReadableStream({ async pull(c) {
				await new Promise((r) => setTimeout(r, 10)); c.enqueue(new TextEncoder().encode("t")); c.close();
			} }), { headers: { trailer: "x-t", "x-kept": "yes" } });
			}
			return new Response("alive");
		} }`)
		for _, tc := range []struct{ path, log string }{
			{"/101", `RangeError: init["status"] must be in the range of 200 to 599, inclusive.`},
			{"/json101", `RangeError: init["status"] must be in the range of 200 to 599, inclusive.`},
			{"/error", "TypeError: Return value from serve handler must not be an error response (like Response.error())"},
		} {
			r, err := get(t, inst, tc.path)
			if err != nil {
				t.Fatalf("%s: %v", tc.path, err)
			}
			checkFunctionError(t, inst, r, 500, "function_error")
			if !e.logs.Await("stderr: uncaught exception in function: " + tc.log) {
				t.Errorf("%s: no log line:\n%s", tc.path, e.logs)
			}
		}
		if r := do(t, inst, "GET", "/catch101", nil, nil); r.body != "RangeError" {
			t.Errorf("/catch101: got %d %q, want the constructor's RangeError", r.status, r.body)
		}
		for _, tc := range []struct{ path, ctype, body string }{
			{"/blob", "text/html", "<p>hi</p>"},
			{"/form", "multipart/form-data; boundary=", `Content-Disposition: form-data; name="a"`},
		} {
			r := do(t, inst, "GET", tc.path, nil, nil)
			if r.status != 200 || !strings.HasPrefix(r.header.Get("Content-Type"), tc.ctype) || !strings.Contains(r.body, tc.body) ||
				r.header.Get("Content-Length") != strconv.Itoa(len(r.body)) {
				t.Errorf("%s: got %d %v %q, want a 200 of %q with its Content-Length", tc.path, r.status, r.header, r.body, tc.ctype)
			}
		}
		// A Response has no trailers to send: a Trailer field that
		// announces some does not fail the answer (Node failed it, and
		// the router took the instance for unreachable). The router
		// drops the field, as the hop-by-hop field it is.
		for _, path := range []string{"/trailer", "/trailer-stream"} {
			if r := do(t, inst, "GET", path, nil, nil); r.status != 200 || r.body != "t" || r.header.Get("X-Kept") != "yes" {
				t.Errorf("%s: got %d %v %q, want 200 \"t\"", path, r.status, r.header, r.body)
			}
		}
		if r := do(t, inst, "GET", "/", nil, nil); r.body != "alive" {
			t.Fatalf("after: got %d %q", r.status, r.body)
		}
	})
}

// process.env holds the function's env vars on Deno as on Node, where
// npm code looks for them (NODE_ENV, say); on Deno reading it threw, the
// sandbox giving no env permission. Each instance has its own copy.
func TestContractProcessEnv(t *testing.T) {
	eachRuntime(t, func(t *testing.T, e *nodeEnv) {
		inst := e.start(t, `import proc from "node:process";
		export default { fetch(req, ctx) {
			process.env.SET_HERE = "x";
			return Response.json({ env: { ...process.env }, same: proc.env === process.env, ctx: ctx.env.FOO });
		} }`)
		r := do(t, inst, "GET", "/", nil, nil)
		want := `{"env":{"FOO":"bar","GREETING":"hi","SET_HERE":"x"},"same":true,"ctx":"bar"}`
		if r.status != 200 || r.body != want {
			t.Fatalf("got %d %s, want %s", r.status, r.body, want)
		}
	})
}

// A streamed answer the platform stops reading (the client left, or the
// timeout came) is cancelled without a word in the function's logs: on
// Deno the bootstrap's own read then failed, and logged that the body
// had failed.
func TestContractStreamCancelledQuietly(t *testing.T) {
	eachRuntime(t, func(t *testing.T, e *nodeEnv) {
		inst := e.start(t, `let cancelled = false;
		export default { fetch(req) {
			if (new URL(req.url).pathname === "/cancelled") return new Response(String(cancelled));
			return new Response(new ReadableStream({
				start(c) { c.enqueue(new TextEncoder().encode("begin\n")); },
				cancel() { cancelled = true; },
			}));
		} }`)
		conn, err := net.Dial("unix", inst.Address)
		if err != nil {
			t.Fatal(err)
		}
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(conn, "GET /never HTTP/1.1\r\nHost: i\r\n\r\n")
		br := bufio.NewReader(conn)
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				t.Fatal(err)
			}
			if line == "begin\n" {
				break
			}
		}
		conn.Close()
		deadline := time.Now().Add(5 * time.Second)
		for do(t, inst, "GET", "/cancelled", nil, nil).body != "true" {
			if time.Now().After(deadline) {
				t.Fatal("the stream was not cancelled")
			}
			time.Sleep(20 * time.Millisecond)
		}
		if strings.Contains(e.logs.String(), "failed") {
			t.Errorf("logs:\n%s", e.logs)
		}
	})
}

// The answer to a HEAD request ends with its head, even when the
// function's body is an endless stream, which is cancelled: the
// connection carries the next request.
func TestContractHeadOfAStream(t *testing.T) {
	eachRuntime(t, func(t *testing.T, e *nodeEnv) {
		inst := e.start(t, `let cancelled = false;
		export default { fetch(req) {
			if (new URL(req.url).pathname === "/cancelled") return new Response(String(cancelled));
			return new Response(new ReadableStream({
				async pull(c) { await new Promise((r) => setTimeout(r, 10)); c.enqueue(new TextEncoder().encode("data: x\n\n")); },
				cancel() { cancelled = true; },
			}), { headers: { "content-type": "text/event-stream" } });
		} }`)
		c := runtimetest.Client(inst, 5*time.Second) // one connection for both
		for _, tc := range []struct{ method, path, want string }{{"HEAD", "/events", ""}, {"GET", "/cancelled", "true"}} {
			req, err := http.NewRequest(tc.method, "http://instance.test"+tc.path, nil)
			if err != nil {
				t.Fatal(err)
			}
			res, err := c.Do(req)
			if err != nil {
				t.Fatalf("%s %s: %v", tc.method, tc.path, err)
			}
			b, err := io.ReadAll(res.Body)
			res.Body.Close()
			if err != nil || res.StatusCode != 200 || string(b) != tc.want {
				t.Fatalf("%s %s: got %d %q (%v), want %q", tc.method, tc.path, res.StatusCode, b, err, tc.want)
			}
		}
	})
}

// get sends a GET to inst and reads the whole answer; err is the error
// reading its body (an answer cut short), which do would fail on.
func get(t *testing.T, inst *backend.Instance, path string) (r reply, err error) {
	t.Helper()
	res, err := client(inst).Get("http://instance.test" + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	return reply{res.StatusCode, res.Header, string(b), res.Status}, err
}

// A custom statusText is not sent: the status line has the standard
// reason phrase, on Node as on Deno (which never sends statusText), as
// over HTTP/2 and HTTP/3, which have no reason phrase at all.
func TestContractStatusText(t *testing.T) {
	eachRuntime(t, func(t *testing.T, e *nodeEnv) {
		inst := e.start(t, `export default { fetch(req) {
			const q = new URL(req.url).searchParams;
			return new Response("x", { status: Number(q.get("status")), statusText: q.get("text") });
		} }`)
		for _, tc := range []struct{ status, text, want string }{
			{"200", "Fine", "200 OK"},
			{"404", "Nope, not here", "404 Not Found"},
			{"201", "Caf\u00e9", "201 Created"},
			{"200", "", "200 OK"},
		} {
			r := do(t, inst, "GET", "/?status="+tc.status+"&text="+url.QueryEscape(tc.text), nil, nil)
			if r.statusLine != tc.want || r.body != "x" {
				t.Errorf("status %s, statusText %q: got %q %q, want %q", tc.status, tc.text, r.statusLine, r.body, tc.want)
			}
		}
	})
}

// A body stream must yield bytes (ArrayBufferViews, as Deno takes them);
// a string chunk is a TypeError, as on Deno and Workers, with the same
// words in the logs on both runtimes. One the stream yields at once fails
// the answer with a 500 before its head goes out; one that comes after
// the head cuts the answer short.
func TestContractBodyStreamChunks(t *testing.T) {
	eachRuntime(t, func(t *testing.T, e *nodeEnv) {
		inst := e.start(t, `const enc = new TextEncoder();
		const later = () => new Promise((r) => setTimeout(r, 50));
		export default { fetch(req) {
			switch (new URL(req.url).pathname) {
			case "/string": return new Response(new ReadableStream({ start(c) { c.enqueue("hello"); c.close(); } }));
			case "/string-later": return new Response(new ReadableStream({ async start(c) {
				await later(); c.enqueue(enc.encode("bytes, then ")); await later(); c.enqueue("a string"); c.close();
			} }));
			case "/views": return new Response(new ReadableStream({ start(c) {
				c.enqueue(enc.encode("u8 ")); c.enqueue(new DataView(enc.encode("dataview ").buffer)); c.enqueue(new Uint16Array([0x6f6b])); c.close();
			} }));
			case "/arraybuffer": return new Response(new ReadableStream({ start(c) { c.enqueue(enc.encode("ab").buffer); c.close(); } }));
			case "/encoded": return new Response(new ReadableStream({ start(c) { c.enqueue("text "); c.enqueue("encoded"); c.close(); } }).pipeThrough(new TextEncoderStream()));
			}
			return new Response("alive");
		} }`)
		r, err := get(t, inst, "/string")
		checkFunctionError(t, inst, r, 500, "function_error")
		if err != nil {
			t.Fatalf("the 500 came cut short: %v", err)
		}
		if !e.logs.Await("stderr: the function's response body failed: TypeError: a Response body stream must yield Uint8Array chunks, not a string") {
			t.Fatalf("no log line for the string chunk:\n%s", e.logs)
		}
		r, err = get(t, inst, "/string-later")
		if r.status != 200 || r.body != "bytes, then " || err == nil {
			t.Errorf("a string after the head: got %d %q (%v), want 200 %q cut short", r.status, r.body, err, "bytes, then ")
		}
		if r := do(t, inst, "GET", "/views", nil, nil); r.status != 200 || r.body != "u8 dataview ko" {
			t.Errorf("typed arrays and DataViews: got %d %q", r.status, r.body)
		}
		r, _ = get(t, inst, "/arraybuffer")
		checkFunctionError(t, inst, r, 500, "function_error")
		if !e.logs.Await("not an ArrayBuffer") {
			t.Errorf("no log line for the ArrayBuffer chunk:\n%s", e.logs)
		}
		if r := do(t, inst, "GET", "/encoded", nil, nil); r.status != 200 || r.body != "text encoded" {
			t.Errorf("through a TextEncoderStream: got %d %q", r.status, r.body)
		}
		if r := do(t, inst, "GET", "/", nil, nil); r.body != "alive" {
			t.Fatalf("after: got %d %q", r.status, r.body)
		}
	})
}

// A body stream that fails: at once (before the answer's head went out)
// the answer is a 500 function_error; later, before or after its first
// byte, the head is gone and the answer is cut short. Either way the
// logs say why, in the same words on both runtimes, and the instance
// serves on.
func TestContractBodyStreamFails(t *testing.T) {
	eachRuntime(t, func(t *testing.T, e *nodeEnv) {
		inst := e.start(t, `const enc = new TextEncoder();
		const later = () => new Promise((r) => setTimeout(r, 50));
		export default { fetch(req) {
			switch (new URL(req.url).pathname) {
			case "/start": return new Response(new ReadableStream({ start(c) { c.error(new Error("failed in start")); } }));
			case "/pull": return new Response(new ReadableStream({ pull() { throw new Error("failed in pull"); } }), { headers: { "x-kept": "no" } });
			case "/later": return new Response(new ReadableStream({ async pull() { await later(); throw new Error("failed later"); } }));
			case "/midway": return new Response(new ReadableStream({ async start(c) { c.enqueue(enc.encode("some ")); await later(); c.error(new Error("failed midway")); } }));
			}
			return new Response("alive");
		} }`)
		for _, tc := range []struct{ path, log string }{{"/start", "Error: failed in start"}, {"/pull", "Error: failed in pull"}} {
			r, err := get(t, inst, tc.path)
			checkFunctionError(t, inst, r, 500, "function_error")
			if err != nil || r.header.Get("X-Kept") != "" {
				t.Errorf("%s: the 500 came cut short (%v) or with the function's headers: %v", tc.path, err, r.header)
			}
			if !e.logs.Await("stderr: the function's response body failed: " + tc.log) {
				t.Errorf("%s: no log line:\n%s", tc.path, e.logs)
			}
		}
		for _, tc := range []struct{ path, body, log string }{{"/later", "", "Error: failed later"}, {"/midway", "some ", "Error: failed midway"}} {
			r, err := get(t, inst, tc.path)
			if r.status != 200 || r.body != tc.body || err == nil {
				t.Errorf("%s: got %d %q (%v), want 200 %q cut short", tc.path, r.status, r.body, err, tc.body)
			}
			if !e.logs.Await("stderr: the function's response body failed: " + tc.log) {
				t.Errorf("%s: no log line:\n%s", tc.path, e.logs)
			}
		}
		if strings.Contains(e.logs.String(), "uncaught exception") {
			t.Errorf("a body's failure logged as an uncaught exception:\n%s", e.logs)
		}
		if r := do(t, inst, "GET", "/", nil, nil); r.body != "alive" {
			t.Fatalf("after: got %d %q", r.status, r.body)
		}
	})
}

// An unhandled rejection, or an exception thrown from a timer, after the
// response (or beside it) is logged, with its stack, and the instance
// serves on: its other requests in flight finish, and later ones are
// served, as on Cloudflare Workers.
func TestContractUnhandledErrors(t *testing.T) {
	eachRuntime(t, func(t *testing.T, e *nodeEnv) {
		inst := e.start(t, `export default { async fetch(req, ctx) {
			switch (new URL(req.url).pathname) {
			case "/reject": Promise.reject(new Error("late")); return new Response("ok");
			case "/reject-string": Promise.reject("a plain string"); return new Response("ok");
			case "/timer": setTimeout(() => { throw new Error("thrown from a timer"); }, 10); return new Response("ok");
			case "/microtask": queueMicrotask(() => { throw new Error("thrown from a microtask"); }); return new Response("ok");
			case "/slow": await new Promise((r) => setTimeout(r, 1000)); return new Response("slow done");
			}
			return new Response("alive");
		} }`)
		slow := make(chan string, 1)
		go func() {
			res, err := client(inst).Get("http://instance.test/slow")
			if err != nil {
				slow <- err.Error()
				return
			}
			defer res.Body.Close()
			b, err := io.ReadAll(res.Body)
			slow <- fmt.Sprintf("%d %s %v", res.StatusCode, b, err)
		}()
		time.Sleep(100 * time.Millisecond) // /slow is in flight
		for _, p := range []string{"/reject", "/reject-string", "/timer", "/microtask"} {
			if r := do(t, inst, "GET", p, nil, nil); r.status != 200 || r.body != "ok" {
				t.Errorf("%s: got %d %q", p, r.status, r.body)
			}
		}
		if got := <-slow; got != "200 slow done <nil>" {
			t.Errorf("the request in flight beside them: got %q", got)
		}
		if !e.logs.Await(
			"stderr: unhandled rejection in function: Error: late",
			"stderr: unhandled rejection in function: a plain string",
			"stderr: uncaught exception in function: Error: thrown from a timer",
			"stderr: uncaught exception in function: Error: thrown from a microtask",
		) {
			t.Fatalf("the errors are not all in the logs:\n%s", e.logs)
		}
		if !regexp.MustCompile(`in function: Error: late\nstderr: +at `).MatchString(e.logs.String()) {
			t.Errorf("no stack under the error's line:\n%s", e.logs)
		}
		if r := do(t, inst, "GET", "/", nil, nil); r.body != "alive" {
			t.Fatalf("after: got %d %q", r.status, r.body)
		}
		select {
		case <-inst.Done():
			t.Fatalf("the instance ended: %+v", inst.Exit())
		default:
		}
	})
}

// An instance that is really broken still ends, as before: one out of
// memory (its cgroup's, or V8's heap) is not kept serving by the
// handlers of uncaught errors.
func TestContractOutOfMemoryEnds(t *testing.T) {
	eachRuntime(t, func(t *testing.T, e *nodeEnv) {
		for _, tc := range []struct{ name, code string }{
			{"memory", `const keep = []; export default { fetch() { for (;;) keep.push(new Uint8Array(1 << 20).fill(7)); } }`},
			{"heap", `const keep = []; export default { fetch() { for (let i = 0; ; i++) keep.push({ i, s: "x" + i }); } }`},
		} {
			t.Run(tc.name, func(t *testing.T) {
				spec := e.spec(t, tc.code)
				spec.MemoryMiB = 64
				inst := e.run(t, spec)
				if _, err := runtimetest.Client(inst, 30*time.Second).Get("http://instance/"); err == nil {
					t.Fatal("a request to an instance that ran out of memory succeeded")
				}
				select {
				case <-inst.Done():
				case <-time.After(10 * time.Second):
					t.Fatal("the instance did not end")
				}
				if ex := inst.Exit(); ex.Reason != backend.ExitOOM && ex.Reason != backend.ExitCrashed {
					t.Fatalf("exit = %+v", ex)
				}
			})
		}
	})
}

// ctx.kv keeps one connection to the server per instance: calls made at
// once share it and are answered in any order; a request past the
// server's bound is refused with its error and the connection kept; a
// connection the server ends (here refused, past an instance's bound on
// connections, which the code's own connections took) fails the calls
// on it, and the next call connects again. The open connection changes
// nothing else: an unhandled rejection beside it is logged and the
// instance serves on, and a stop ends it as before.
func TestContractKV(t *testing.T) {
	eachRuntime(t, func(t *testing.T, e *nodeEnv) {
		inst := e.start(t, `import net from "node:net";
		const name = (p) => p.then((v) => v, (err) => err.code ?? err.message);
		let held = [];
		export default { async fetch(req, ctx) {
			const kv = ctx.kv;
			switch (new URL(req.url).pathname) {
			case "/hold": {
				// Connections of the code's own, up to the instance's bound,
				// before ctx.kv makes its first.
				held = await Promise.all(Array.from({ length: 8 }, () => new Promise((resolve, reject) => {
					const c = net.createConnection("/run/spry-kv.sock", () => resolve(c));
					c.on("error", reject);
				})));
				const refused = await name(kv.get("a"));
				for (const c of held) c.destroy();
				// The server sees them end soon after: until then ctx.kv's
				// new connections are refused too.
				let again;
				for (let i = 0; i < 100; i++) {
					again = await name(kv.get("a"));
					if (again !== "rate_limited") break;
					await new Promise((r) => setTimeout(r, 20));
				}
				return Response.json({ refused, again });
			}
			case "/seq": {
				const set = await kv.set("a", { n: 1 });
				const e = await kv.getEntry("a");
				return Response.json({ ok: set.ok, same: e.version === set.version, value: await kv.get("a"), deleted: await kv.delete("none") });
			}
			case "/par": {
				const adds = await Promise.all(Array.from({ length: 40 }, () => kv.add("n")));
				const sets = await Promise.all(Array.from({ length: 20 }, (_, i) => kv.set("k" + i, i)));
				const gets = await Promise.all(Array.from({ length: 20 }, (_, i) => kv.get("k" + i)));
				const page = await kv.list({ prefix: "k1", limit: 3 });
				return Response.json({ adds: [...new Set(adds)].sort((a, b) => a - b).join(), sets: sets.every((s) => s.ok), gets: gets.join(), listed: page.entries.map((e) => e.key).join() });
			}
			case "/big": {
				const big = "x".repeat(500000);
				const alone = await name(kv.set("big", big));
				const beside = await Promise.all([name(kv.set("big", big)), name(kv.get("a")), name(kv.set("big", "é".repeat(140000)))]);
				return Response.json({ alone, beside, after: await kv.get("a") });
			}
			case "/reject": Promise.reject(new Error("late")); return new Response("ok");
			}
			return new Response("alive");
		} }`)
		for _, tc := range []struct{ path, want string }{
			{"/hold", `{"refused":"rate_limited","again":null}`},
			{"/seq", `{"ok":true,"same":true,"value":{"n":1},"deleted":{"ok":true}}`},
			{"/par", `{"adds":"` + seq(1, 40) + `","sets":true,"gets":"` + seq(0, 19) + `","listed":"k1,k10,k11"}`},
			{"/big", `{"alone":"too_large","beside":["too_large",{"n":1},"too_large"],"after":{"n":1}}`},
			// The connection is open and idle: an unhandled rejection is
			// the function's, and the instance serves on, ctx.kv too.
			{"/reject", "ok"},
			{"/seq", `{"ok":true,"same":true,"value":{"n":1},"deleted":{"ok":true}}`},
		} {
			if r := do(t, inst, "GET", tc.path, nil, nil); r.status != 200 || r.body != tc.want {
				t.Errorf("%s: got %d %s\nwant %s", tc.path, r.status, r.body, tc.want)
			}
		}
		if !e.logs.Await("stderr: unhandled rejection in function: Error: late") {
			t.Errorf("the rejection is not in the logs:\n%s", e.logs)
		}
		if strings.Contains(e.logs.String(), "ctx.kv") {
			t.Errorf("ctx.kv logged:\n%s", e.logs)
		}
		if err := e.b.Stop(context.Background(), inst.ID); err != nil {
			t.Fatal(err)
		}
		<-inst.Done()
		if ex := inst.Exit(); ex.Reason != backend.ExitStopped {
			t.Errorf("exit = %+v", ex)
		}
	})
}

// ctx.kv works under either isolation, gVisor's too, through the same
// socket bound read-only at runtime.KVSocket: code that speaks its
// protocol itself, half-closing its connection, is answered to the end,
// and the code can neither remove, replace nor listen on the socket.
// (Node's permission model refuses the file system calls before the
// sandbox sees them; Deno's allows them, so there the mount refuses.)
func TestContractKVIsolation(t *testing.T) {
	_, runscErr := exec.LookPath("runsc")
	eachRuntime(t, func(t *testing.T, e *nodeEnv) {
		for _, isolation := range []string{sandbox.IsolationStandard, sandbox.IsolationGVisor} {
			t.Run(isolation, func(t *testing.T) {
				if isolation == sandbox.IsolationGVisor && runscErr != nil {
					t.Skip("runsc is not installed")
				}
				spec := e.spec(t, `import fs from "node:fs";
				import net from "node:net";
				const SOCK = "`+runtime.KVSocket+`";
				const refused = (f) => { try { f(); return ""; } catch (err) { return err.code ?? err.name; } };
				const listen = () => new Promise((resolve) => {
					const s = net.createServer();
					s.on("error", (err) => resolve(err.code ?? err.name));
					s.listen(SOCK, () => { s.close(); resolve(""); });
				});
				const raw = (text) => new Promise((resolve, reject) => {
					const c = net.createConnection(SOCK, () => c.end(text));
					let got = "";
					c.setEncoding("utf8");
					c.on("data", (d) => { got += d; });
					c.on("end", () => resolve(got));
					c.on("error", reject);
				});
				export default { async fetch(req, ctx) {
					await ctx.kv.set("k", { n: 1 });
					return Response.json({
						remove: refused(() => fs.unlinkSync(SOCK)),
						replace: refused(() => { fs.writeFileSync("/tmp/x", ""); fs.renameSync("/tmp/x", SOCK); }),
						listen: await listen(),
						raw: await raw('{"id":1,"op":"get","key":"k"}\n'),
						after: await ctx.kv.get("k"),
					});
				} }`)
				spec.Isolation = isolation
				if isolation == sandbox.IsolationGVisor {
					spec.Network = runtime.NetworkNone
				}
				inst := e.run(t, spec)
				r := do(t, inst, "GET", "/", nil, nil)
				var got struct {
					Remove, Replace, Listen, Raw string
					After                        struct{ N int }
				}
				if r.status != 200 || json.Unmarshal([]byte(r.body), &got) != nil {
					t.Fatalf("got %d %s\n%s", r.status, r.body, e.logs)
				}
				if got.Remove == "" || got.Replace == "" || got.Listen == "" {
					t.Errorf("the code changed its kv socket: %s", r.body)
				}
				if !regexp.MustCompile(`^\{"id":1,"value":\{"n":1\},"version":"[0-9a-f]{16}"\}\n$`).MatchString(got.Raw) || got.After.N != 1 {
					t.Errorf("ctx.kv: %s", r.body)
				}
				t.Logf("%s", r.body)
			})
		}
	})
}

// seq is the numbers from to through, joined by commas.
func seq(from, through int) string {
	var s []string
	for i := from; i <= through; i++ {
		s = append(s, strconv.Itoa(i))
	}
	return strings.Join(s, ",")
}

// The client refuses a request past the server's bound itself; the two
// bounds must be one.
func TestKVClientBound(t *testing.T) {
	js, err := os.ReadFile("kv_client.js")
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("const KV_MAX_REQUEST = %d;", kv.MaxRequest); !strings.Contains(string(js), want) {
		t.Errorf("kv_client.js has no %q", want)
	}
}

// ctx.kv's client does not reuse a connection idle for KV_REUSE_IDLE_MS,
// well before the server closes it (kv.ConnIdleTimeout): a call sent as
// the server closed it would fail. The client's own code runs in Deno,
// its connection faked and its clock set by the test.
func TestKVClientLeavesIdleConnections(t *testing.T) {
	js, err := os.ReadFile("kv_client.js")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`const KV_REUSE_IDLE_MS = (\d+);`).FindSubmatch(js)
	if m == nil {
		t.Fatal("kv_client.js has no KV_REUSE_IDLE_MS")
	}
	if ms, _ := strconv.Atoi(string(m[1])); time.Duration(ms)*time.Millisecond > kv.ConnIdleTimeout-5*time.Second {
		t.Fatalf("KV_REUSE_IDLE_MS %d ms is not well under the server's %s", ms, kv.ConnIdleTimeout)
	}
	deno, err := runtime.FindDeno("")
	if err != nil {
		t.Skip(err)
	}
	script := `
const conns = [];
function kvDial(on) {
  const c = {
    closed: false,
    send(line) {
      const req = JSON.parse(line);
      queueMicrotask(() => on.data(JSON.stringify({ id: req.id, value: conns.indexOf(c) }) + "\n"));
    },
    busy() {},
    close() { c.closed = true; },
  };
  conns.push(c);
  return c;
}
` + string(js) + `
let t = 1000;
kvNow = () => t;
const got = [];
for (const dt of [0, 30000, KV_REUSE_IDLE_MS - 1, KV_REUSE_IDLE_MS, 10]) {
  t += dt;
  got.push((await kvCall({ op: "get", key: "k" })).value);
}
console.log(JSON.stringify({ got, closed: conns.map((c) => c.closed) }));
`
	f := filepath.Join(t.TempDir(), "client.mjs")
	if err := os.WriteFile(f, []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(deno, "run", "--quiet", "--no-config", f).CombinedOutput()
	if err != nil {
		t.Fatalf("deno: %v\n%s", err, out)
	}
	// The first three calls share the first connection; the fourth comes
	// after it was idle KV_REUSE_IDLE_MS, which is closed, and the fifth
	// goes on the second.
	if want := `{"got":[0,0,0,1,1],"closed":[true,false]}`; strings.TrimSpace(string(out)) != want {
		t.Fatalf("got %s, want %s", out, want)
	}
}
