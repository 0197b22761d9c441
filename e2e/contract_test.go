package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestResetContentEndsAtOnce: a 205, whose answer has no body (RFC 9110
// 15.3.6), reaches the client at once and whole on both runtimes and on
// both of the router's paths. Deno sends it with no length and keeps the
// connection, so read to the connection's end it would end only at the
// function's timeout.
func TestResetContentEndsAtOnce(t *testing.T) {
	for _, loops := range []string{"1", "0"} {
		t.Run("loops="+loops, func(t *testing.T) {
			s := startServer(t, "--router-loops", loops)
			const code = `export default { fetch() { return new Response(null, { status: 205, headers: { "x-reset": "yes" } }); } }`
			for _, rt := range []string{"deno", "node"} {
				t.Run(rt, func(t *testing.T) {
					name := "reset-" + rt
					s.deployCode(t, name, []byte(code), "runtime="+rt+"&timeout=20s")
					s.get("/fn/admin/" + name + "/") // the cold start
					for i := 0; i < 3; i++ {
						start := time.Now()
						r := s.get("/fn/admin/" + name + "/")
						if took := time.Since(start); r.status != http.StatusResetContent || len(r.body) != 0 || r.header.Get("X-Reset") != "yes" || took > 5*time.Second {
							t.Fatalf("got %d %q %v in %v, want an empty 205 at once", r.status, r.body, r.header, took)
						}
					}
				})
			}
		})
	}
}

// TestResponseContentLengthOfTheFunction: a Content-Length the function
// sets that its body does not match neither waits for bytes that never
// come nor passes extra bytes on as the answer to the next request on the
// instance's connection (another client's, maybe): a whole body goes with
// its own length, as Deno sends it, and a streamed one is cut at the
// length.
func TestResponseContentLengthOfTheFunction(t *testing.T) {
	s := startServer(t)
	const code = `export default { async fetch(req) {
		const u = new URL(req.url), enc = new TextEncoder();
		switch (u.searchParams.get("m")) {
		case "stream": {
			let i = 0;
			return new Response(new ReadableStream({ async pull(c) {
				await new Promise((r) => setTimeout(r, 100));
				if (i++ === 0) c.enqueue(enc.encode("abc"));
				else { c.enqueue(enc.encode("HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nleaked")); c.close(); }
			} }), { headers: { "content-length": "3" } });
		}
		case "long": return new Response("12345", { headers: { "content-length": "10" } });
		case "short": return new Response("12345", { headers: { "content-length": "3" } });
		case "null": return new Response(null, { headers: { "content-length": "1234" } });
		}
		await new Promise((r) => setTimeout(r, 200));
		return new Response("own-" + u.searchParams.get("n"));
	} }`
	// get does not stop the test at an answer cut short.
	get := func(path string) (int, string, error) {
		res, err := http.Get(s.url + path)
		if err != nil {
			return 0, "", err
		}
		defer res.Body.Close()
		b, err := io.ReadAll(res.Body)
		return res.StatusCode, string(b), err
	}
	for _, rt := range []string{"deno", "node"} {
		t.Run(rt, func(t *testing.T) {
			name := "length-" + rt
			s.deployCode(t, name, []byte(code), "runtime="+rt+"&timeout=20s&max=1")
			s.get("/fn/admin/" + name + "/?n=0") // the cold start
			get("/fn/admin/" + name + "/?m=stream")
			for i := 1; i <= 3; i++ {
				want := fmt.Sprintf("own-%d", i)
				if status, body, err := get(fmt.Sprintf("/fn/admin/%s/?n=%d", name, i)); status != 200 || body != want {
					t.Errorf("request %d after the stream: got %d %q (%v), want 200 %q", i, status, body, err, want)
				}
			}
			for _, tc := range []struct{ m, want string }{{"long", "12345"}, {"short", "12345"}, {"null", ""}} {
				start := time.Now()
				status, body, err := get("/fn/admin/" + name + "/?m=" + tc.m)
				if took := time.Since(start); status != 200 || body != tc.want || err != nil || took > 5*time.Second {
					t.Errorf("%s: got %d %q (%v) in %v, want 200 %q at once", tc.m, status, body, err, took, tc.want)
				}
			}
		})
	}
}

// contractCode is one function for TestRuntimesAgree: every path is one
// case of the contract where Deno and Node once differed.
const contractCode = `const enc = new TextEncoder();
const later = () => new Promise((r) => setTimeout(r, 50));
export default { async fetch(req) {
	const q = new URL(req.url).searchParams;
	switch (new URL(req.url).pathname) {
	case "/status": return new Response("x", { status: Number(q.get("s")), statusText: q.get("text") });
	case "/string": return new Response(new ReadableStream({ start(c) { c.enqueue("hello"); c.close(); } }));
	case "/string-later": return new Response(new ReadableStream({ async start(c) {
		c.enqueue(enc.encode("bytes, then ")); await later(); c.enqueue("a string"); c.close();
	} }));
	case "/fails": return new Response(new ReadableStream({ start(c) { c.error(new Error("failed at once")); } }));
	case "/fails-later": return new Response(new ReadableStream({ async pull() { await later(); throw new Error("failed later"); } }));
	case "/reject": Promise.reject(new Error("rejected late")); return new Response("ok");
	case "/timer": setTimeout(() => { throw new Error("thrown from a timer"); }, 10); return new Response("ok");
	case "/slow": await new Promise((r) => setTimeout(r, 1500)); return new Response("slow done");
	}
	return new Response("alive");
} }`

// TestRuntimesAgree: through the server and the router (both of its
// paths), a Deno function and the same function on Node give the client
// the same answers, and their logs the same lines, where the two
// runtimes once differed: a custom statusText (the standard reason
// phrase is sent), a body stream yielding strings (a TypeError), a body
// stream that fails (a 500 if it fails at once, an answer cut short
// later), and an error nothing handles (logged; the instance serves on,
// its other requests too).
func TestRuntimesAgree(t *testing.T) {
	for _, loops := range []string{"1", "0"} {
		t.Run("loops="+loops, func(t *testing.T) {
			s := startServer(t, "--router-loops", loops)
			for _, rt := range []string{"deno", "node"} {
				t.Run(rt, func(t *testing.T) {
					name := "agree-" + rt
					fn := "/fn/admin/" + name
					s.deployCode(t, name, []byte(contractCode), "runtime="+rt+"&timeout=20s&max=1")
					s.get(fn + "/") // the cold start

					// The status line, read as sent.
					for _, tc := range []struct{ query, want string }{
						{"s=200&text=Fine", "HTTP/1.1 200 OK\r\n"},
						{"s=404&text=Nope", "HTTP/1.1 404 Not Found\r\n"},
						{"s=418&text=Tea", "HTTP/1.1 418 I'm a teapot\r\n"},
						{"s=599&text=Odd", "HTTP/1.1 599 Unknown Status Code\r\n"},
					} {
						c := s.dial(t)
						c.SetDeadline(time.Now().Add(10 * time.Second))
						fmt.Fprintf(c, "GET %s/status?%s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", fn, tc.query)
						if line, err := bufio.NewReader(c).ReadString('\n'); line != tc.want {
							t.Errorf("statusText %s: status line %q (%v), want %q", tc.query, line, err, tc.want)
						}
					}

					// Body streams: a 500 for a failure at once, a 200 cut
					// short for one after the head.
					for _, path := range []string{"/string", "/fails"} {
						r := s.get(fn + path)
						if r.status != 500 || r.errorCode(t) != "function_error" {
							t.Errorf("%s: got %d %q, want a 500 function_error", path, r.status, r.body)
						}
					}
					for _, tc := range []struct{ path, body string }{{"/string-later", "bytes, then "}, {"/fails-later", ""}} {
						res, err := http.Get(s.url + fn + tc.path)
						if err != nil {
							t.Fatal(err)
						}
						b, err := io.ReadAll(res.Body)
						res.Body.Close()
						if res.StatusCode != 200 || string(b) != tc.body || err == nil {
							t.Errorf("%s: got %d %q (%v), want 200 %q cut short", tc.path, res.StatusCode, b, err, tc.body)
						}
					}

					// Errors nothing handles, beside a request in flight.
					slow := make(chan string, 1)
					go func() {
						res, err := http.Get(s.url + fn + "/slow")
						if err != nil {
							slow <- err.Error()
							return
						}
						b, _ := io.ReadAll(res.Body)
						res.Body.Close()
						slow <- fmt.Sprint(res.StatusCode, " ", string(b))
					}()
					time.Sleep(200 * time.Millisecond)
					for _, path := range []string{"/reject", "/timer"} {
						if r := s.get(fn + path); r.status != 200 || string(r.body) != "ok" {
							t.Errorf("%s: got %d %q", path, r.status, r.body)
						}
					}
					if got := <-slow; got != "200 slow done" {
						t.Errorf("the request in flight: got %q, want 200 slow done", got)
					}
					if r := s.get(fn + "/"); r.status != 200 || string(r.body) != "alive" || r.header.Get("Spry-Cold-Start") != "" {
						t.Errorf("after: got %d %q %v, want the same instance alive", r.status, r.body, r.header)
					}

					wants := []string{
						"stderr the function's response body failed: TypeError: a Response body stream must yield Uint8Array chunks, not a string",
						"stderr the function's response body failed: Error: failed at once",
						"stderr the function's response body failed: Error: failed later",
						"stderr unhandled rejection in function: Error: rejected late",
						"stderr uncaught exception in function: Error: thrown from a timer",
					}
					var out string
					eventually(t, 5*time.Second, "the error lines in the logs", func() bool {
						out, _, _ = s.spry("", "logs", name)
						for _, w := range wants {
							if !strings.Contains(out, w) {
								return false
							}
						}
						return true
					})
					if strings.Contains(out, "instance ended") || strings.Count(out, "uncaught exception") != 1 {
						t.Errorf("logs:\n%s", out)
					}
				})
			}
		})
	}
}

// The runtime's own error answers are the platform's, on Deno as on
// Node and on both of the router's paths: a handler that threw (500
// function_error) and a module that did not load (502 function_failed)
// carry Spry-Error, so that spry invoke fails with them; a function's
// own Spry-Error, with a mark it made up, is dropped, and no mark
// reaches the client.
func TestRuntimeErrorsArePlatformAnswers(t *testing.T) {
	for _, loops := range []string{"1", "0"} {
		t.Run("loops="+loops, func(t *testing.T) {
			s := startServer(t, "--router-loops", loops)
			for _, rt := range []string{"deno", "node"} {
				t.Run(rt, func(t *testing.T) {
					s.deployCode(t, "errs-"+rt, []byte(`export default { fetch(req) {
						if (new URL(req.url).pathname === "/throw") throw new Error("thrown");
						return new Response("mine", { status: 504, headers: { "spry-error": "timeout", "spry-error-mark": "ABCDEFGHIJKLMNOPQRSTUVWXYZ" } });
					} }`), "runtime="+rt)
					s.deployCode(t, "noload-"+rt, []byte(`throw new Error("at load"); export default { fetch: () => new Response("never") }`), "runtime="+rt)
					for _, tc := range []struct {
						path         string
						status       int
						code, invoke string // the Spry-Error; spry invoke's exit
					}{
						{"/fn/admin/errs-" + rt + "/throw", 500, "function_error", "6"},
						{"/fn/admin/noload-" + rt + "/", 502, "function_failed", "6"},
						{"/fn/admin/errs-" + rt + "/own", 504, "", "0"},
					} {
						r := s.get(tc.path)
						if r.status != tc.status || r.header.Get("Spry-Error") != tc.code || r.header.Get("Spry-Error-Mark") != "" {
							t.Errorf("%s: got %d, Spry-Error %q, Spry-Error-Mark %q; want %d, %q, none",
								tc.path, r.status, r.header.Get("Spry-Error"), r.header.Get("Spry-Error-Mark"), tc.status, tc.code)
						}
						fn, path, _ := strings.Cut(strings.TrimPrefix(tc.path, "/fn/admin/"), "/")
						if _, stderr, code := s.spry("", "invoke", fn, "--path", "/"+path); fmt.Sprint(code) != tc.invoke {
							t.Errorf("spry invoke %s --path /%s: exit %d (%s), want %s", fn, path, code, stderr, tc.invoke)
						}
					}
				})
			}
		})
	}
}

// TestRequestURLAgrees: a Deno function and the same function on Node
// see the same req.url, the URL as the client sent it (its Host as
// written, dot segments and characters a URL would escape as they came),
// and so the same new URL(req.url), on both of the router's paths; raw
// UTF-8 in the target (which Node's parser refused with a bare 400)
// arrives percent-encoded, as URL parsing would have it anyway.
func TestRequestURLAgrees(t *testing.T) {
	const code = `export default { fetch(req) {
		const u = new URL(req.url);
		return Response.json({ url: req.url, path: u.pathname, x: u.searchParams.getAll("x") });
	} }`
	tests := []struct {
		host, target string // target: after /fn/admin/<name>
		url, path    string
		x            []string
	}{
		{"h", "/a/b?x=1&x=2&x=", "http://h/a/b?x=1&x=2&x=", "/a/b", []string{"1", "2", ""}},
		{"h", "", "http://h/", "/", []string{}},
		{"h", "//a//b", "http://h//a//b", "//a//b", []string{}},
		{"h", "/a/../b", "http://h/a/../b", "/b", []string{}},
		{"h", "/a/%2e%2e/b/.", "http://h/a/%2e%2e/b/.", "/b/", []string{}},
		{"h", `/a\b`, `http://h/a\b`, "/a/b", []string{}},
		{"h", "/a%2Fb%20c", "http://h/a%2Fb%20c", "/a%2Fb%20c", []string{}},
		{"h", "/a<b>{c}?x='\"", "http://h/a<b>{c}?x='\"", "/a%3Cb%3E%7Bc%7D", []string{`'"`}},
		{"h", "/caf\xc3\xa9?x=\xc3\xa9", "http://h/caf%C3%A9?x=%C3%A9", "/caf%C3%A9", []string{"é"}},
		{"Example.COM:80", "/", "http://Example.COM:80/", "/", []string{}},
	}
	for _, loops := range []string{"1", "0"} {
		t.Run("loops="+loops, func(t *testing.T) {
			s := startServer(t, "--router-loops", loops)
			for _, rt := range []string{"deno", "node"} {
				t.Run(rt, func(t *testing.T) {
					name := "url-" + rt
					s.deployCode(t, name, []byte(code), "runtime="+rt)
					for _, tc := range tests {
						c := s.dial(t)
						c.SetDeadline(time.Now().Add(10 * time.Second))
						fmt.Fprintf(c, "GET /fn/admin/%s%s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", name, tc.target, tc.host)
						res, err := http.ReadResponse(bufio.NewReader(c), nil)
						if err != nil {
							t.Fatalf("%q: %v", tc.target, err)
						}
						var got struct {
							URL, Path string
							X         []string
						}
						err = json.NewDecoder(res.Body).Decode(&got)
						res.Body.Close()
						if res.StatusCode != 200 || err != nil || got.URL != tc.url || got.Path != tc.path || fmt.Sprint(got.X) != fmt.Sprint(tc.x) {
							t.Errorf("%q: got %d %+v (%v), want url %q, pathname %q, x %q", tc.target, res.StatusCode, got, err, tc.url, tc.path, tc.x)
						}
					}
				})
			}
		})
	}
}

// TestStreamEndsWithItsRequest: an answer still streaming when its
// client hangs up, or when the function's timeout is up, ends there on
// both runtimes: the client's answer is cut short (no last chunk), and
// the function hears it, its req.signal aborted and its stream
// cancelled, so that it can stop.
func TestStreamEndsWithItsRequest(t *testing.T) {
	s := startServer(t)
	const code = `export default { fetch(req, ctx) {
		const id = new URL(req.url).searchParams.get("id");
		req.signal.addEventListener("abort", () => console.log("aborted", id));
		let i = 0;
		return new Response(new ReadableStream({
			async pull(c) { await new Promise((r) => setTimeout(r, 100)); c.enqueue(new TextEncoder().encode("data: " + i++ + "\n\n")); },
			cancel() { console.log("cancelled", id); },
		}), { headers: { "content-type": "text/event-stream" } });
	} }`
	for _, rt := range []string{"deno", "node"} {
		t.Run(rt, func(t *testing.T) {
			name := "sse-" + rt
			s.deployCode(t, name, []byte(code), "runtime="+rt+"&timeout=2s")
			for _, id := range []string{"hangup", "timeout"} {
				c := s.dial(t)
				c.SetDeadline(time.Now().Add(10 * time.Second))
				fmt.Fprintf(c, "GET /fn/admin/%s/?id=%s HTTP/1.1\r\nHost: x\r\n\r\n", name, id)
				res, err := http.ReadResponse(bufio.NewReader(c), nil)
				if err != nil {
					t.Fatal(err)
				}
				if id == "hangup" {
					if line, err := bufio.NewReader(res.Body).ReadString('\n'); line != "data: 0\n" {
						t.Fatalf("%s: first line %q (%v)", id, line, err)
					}
					c.Close()
				} else {
					start := time.Now()
					b, err := io.ReadAll(res.Body)
					if took := time.Since(start); err == nil || !strings.HasPrefix(string(b), "data: 0\n\n") || took > 5*time.Second {
						t.Errorf("%s: got %q (%v) after %v, want the stream cut short at the 2s timeout", id, b, err, took)
					}
				}
				var out string
				deadline := time.Now().Add(5 * time.Second)
				for out, _, _ = s.spry("", "logs", name); !strings.Contains(out, "stdout aborted "+id) || !strings.Contains(out, "stdout cancelled "+id); out, _, _ = s.spry("", "logs", name) {
					if time.Now().After(deadline) {
						t.Fatalf("%s: no abort and cancel in the logs:\n%s", id, out)
					}
					time.Sleep(25 * time.Millisecond)
				}
			}
		})
	}
}
