package runtime_test

import (
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spry-run/spry/internal/runtime/runtimetest"
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
		for _, m := range []string{"GET", "PATCH", "OPTIONS", "PURGE", "QUERY", "PROPFIND", "FROB"} {
			r := raw(t, inst, m+" / HTTP/1.1\r\nHost: i\r\nConnection: close\r\n\r\n", func(io.Writer) {})
			if e.runtime == "node" && m == "FROB" {
				checkFunctionError(t, r, 501, "not_implemented")
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
