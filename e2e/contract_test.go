package e2e

import (
	"fmt"
	"io"
	"net/http"
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
