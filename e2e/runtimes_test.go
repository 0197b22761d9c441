package e2e

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"net/http"
	"net/http/httputil"
	"strings"
	"testing"
	"time"

	"github.com/spry-run/spry/internal/httpserve"
)

// TestRuntimesAndContracts: the same platform runs Deno and Node, with the
// fetch contract on both, the Express contract on Node and the old
// Deno.RequestEvent style of the svrless seed on Deno.
func TestRuntimesAndContracts(t *testing.T) {
	s := startServer(t)
	tests := []struct {
		name, query, code string
		method, path      string
		body, ctype       string
		status            int
		want              string
	}{
		{
			name: "deno-fetch", code: `export default { fetch(req, ctx) { const u = new URL(req.url); return new Response("deno " + ctx.name + " " + u.protocol + " " + u.pathname); } }`,
			method: "GET", path: "/a/b", status: 200, want: "deno deno-fetch http: /a/b",
		},
		{
			name: "deno-svrless", code: `export default async function handler({ req }) {
				const url = new URL(req.request.url);
				await req.respondWith(new Response("svrless " + req.request.method + " " + url.searchParams.get("q")));
			}`,
			method: "GET", path: "/?q=old", status: 200, want: "svrless GET old",
		},
		{
			name: "node-fetch", query: "runtime=node", code: `export default { async fetch(req, ctx) {
				return Response.json({ rt: typeof process.versions.node, name: ctx.name, body: await req.text() }, { status: 202 });
			} }`,
			method: "POST", path: "/x", body: "hi", status: 202, want: `{"rt":"string","name":"node-fetch","body":"hi"}`,
		},
		{
			// The host's load, memory, uptime and CPU times are not the
			// function's to read: Node's os module sees the sandbox's.
			name: "node-host-view", query: "runtime=node", code: `import os from "node:os";
			export default { fetch() {
				const busy = os.cpus().reduce((n, c) => n + c.times.user + c.times.sys + c.times.idle, 0);
				return Response.json({ load: os.loadavg(), mem: os.totalmem(), free: os.freemem(), up: os.uptime(), cpus: os.cpus().length > 0, busy });
			} }`,
			method: "GET", path: "/", status: 200, want: `{"load":[0,0,0],"mem":134217728,"free":134217728,"up":0,"cpus":true,"busy":0}`,
		},
		{
			name: "node-express", query: "runtime=node&filename=fn.js", code: `module.exports = (req, res) => {
				res.status(201).json({ q: req.query, body: req.body, path: req.path });
			};`,
			method: "POST", path: "/items?color=red", body: `{"n":1}`, ctype: "application/json",
			status: 201, want: `{"q":{"color":"red"},"body":{"n":1},"path":"/items"}`,
		},
		{
			name: "node-express-send", query: "runtime=node&filename=fn.js", code: `module.exports = function (req, res) { res.set("x-kind", "express"); res.send("text " + req.method); };`,
			method: "PUT", path: "/", body: "x", status: 200, want: "text PUT",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if r := s.putCode(s.token, tt.name, []byte(tt.code), tt.query); r.status/100 != 2 {
				t.Fatalf("deploy: %d %s", r.status, r.body)
			}
			hdr := map[string]string{}
			if tt.ctype != "" {
				hdr["Content-Type"] = tt.ctype
			}
			r := s.do(tt.method, "/fn/admin/"+tt.name+tt.path, "", strings.NewReader(tt.body), hdr)
			if r.status != tt.status || strings.TrimSpace(string(r.body)) != tt.want {
				t.Fatalf("got %d %q, want %d %q", r.status, r.body, tt.status, tt.want)
			}
		})
	}
	if out := s.mustSpry("ls"); !strings.Contains(out, "node") {
		t.Fatalf("ls does not show the node runtime:\n%s", out)
	}
}

// TestEarlyAnswersAndStreamedBodies: on both runtimes, a function that
// answers an upload before reading it (refusing it) is heard, not turned
// into a 502; and one that streams the request body back as it reads it
// (new Response(req.body)) echoes it whole.
func TestEarlyAnswersAndStreamedBodies(t *testing.T) {
	s := startServer(t)
	const code = `export default { fetch(req) {
		if (new URL(req.url).pathname === "/refuse") return new Response("no thanks", { status: 413 });
		return new Response(req.body);
	} }`
	body := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	big := bytes.Repeat([]byte("x"), 16<<20)
	for _, rt := range []string{"deno", "node"} {
		t.Run(rt, func(t *testing.T) {
			name := "duplex-" + rt
			if r := s.putCode(s.token, name, []byte(code), "runtime="+rt); r.status/100 != 2 {
				t.Fatalf("deploy: %d %s", r.status, r.body)
			}
			if r := s.do("POST", "/fn/admin/"+name+"/refuse", "", bytes.NewReader(big), nil); r.status != 413 || string(r.body) != "no thanks" {
				t.Fatalf("refused upload: %d %.200q", r.status, r.body)
			}
			if r := s.do("POST", "/fn/admin/"+name+"/echo", "", bytes.NewReader(body), nil); r.status != 200 || !bytes.Equal(r.body, body) {
				t.Fatalf("echo: %d, %d bytes back of %d", r.status, len(r.body), len(body))
			}
		})
	}
}

// TestFullDuplexStream: on both runtimes, a function that answers each
// line of a streamed upload as it reads it has each answer reach the
// client before the client sends the next line (a chat over one POST, a
// progress stream for an upload).
func TestFullDuplexStream(t *testing.T) {
	s := startServer(t)
	const code = `export default { fetch(req) {
		const enc = new TextEncoder(), dec = new TextDecoder();
		let buf = "";
		return new Response(req.body.pipeThrough(new TransformStream({
			transform(chunk, out) {
				buf += dec.decode(chunk, { stream: true });
				for (let i; (i = buf.indexOf("\n")) >= 0; buf = buf.slice(i + 1)) {
					out.enqueue(enc.encode("got " + buf.slice(0, i + 1)));
				}
			},
		})), { headers: { "Content-Type": "text/plain" } });
	} }`
	for _, rt := range []string{"deno", "node"} {
		t.Run(rt, func(t *testing.T) {
			name := "lines-" + rt
			if r := s.putCode(s.token, name, []byte(code), "runtime="+rt); r.status/100 != 2 {
				t.Fatalf("deploy: %d %s", r.status, r.body)
			}
			c := s.dial(t)
			c.SetDeadline(time.Now().Add(20 * time.Second))
			chunk := func(s string) string { return fmt.Sprintf("%x\r\n%s\r\n", len(s), s) }
			fmt.Fprintf(c, "POST /fn/admin/%s/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n%s", name, chunk("one\n"))
			res, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatal(err)
			}
			if res.StatusCode != 200 {
				t.Fatalf("status %d", res.StatusCode)
			}
			br := bufio.NewReader(res.Body)
			for i, line := range []string{"one\n", "two\n", "three\n"} {
				if i > 0 {
					// The next line only once the answer to the last came.
					io.WriteString(c, chunk(line))
				}
				if got, err := br.ReadString('\n'); err != nil || got != "got "+line {
					t.Fatalf("got %q (%v), want %q", got, err, "got "+line)
				}
			}
			io.WriteString(c, "0\r\n\r\n")
			if rest, err := io.ReadAll(br); err != nil || len(rest) != 0 {
				t.Fatalf("after the body's end: %q (%v), want the answer's end", rest, err)
			}
		})
	}
}

// TestLargestHeadReachesTheFunction: a request head at the router's limit,
// with the longest Host it takes, still reaches the function on either
// runtime once the router has added its forwarding fields; one byte more
// is the router's 431, in Spry's words, never the runtime's bare 400.
func TestLargestHeadReachesTheFunction(t *testing.T) {
	s := startServer(t)
	code := []byte(`export default { fetch(req) { return new Response(String(req.headers.get("x-big").length)); } }`)
	s.deployCode(t, "head-deno", code, "")
	s.deployCode(t, "head-node", code, "runtime=node")
	host := strings.Repeat("h", httpserve.MaxHostName) + ":65535"
	head := func(name string, size int) string {
		h := "GET /fn/admin/" + name + "/ HTTP/1.1\r\nHost: " + host + "\r\nX-Forwarded-For: 2001:db8::1234:5678:9abc\r\nX-Big: "
		return h + strings.Repeat("b", size-len(h)-len("\r\n\r\n")) + "\r\n\r\n"
	}
	for _, name := range []string{"head-deno", "head-node"} {
		for _, tt := range []struct {
			size   int
			status int
		}{{httpserve.MaxHeaderBytes, 200}, {httpserve.MaxHeaderBytes + 1, 431}} {
			t.Run(fmt.Sprintf("%s-%d", name, tt.size), func(t *testing.T) {
				c := s.dial(t)
				req := head(name, tt.size)
				if _, err := io.WriteString(c, req); err != nil {
					t.Fatal(err)
				}
				res, err := http.ReadResponse(bufio.NewReader(c), nil)
				if err != nil {
					t.Fatal(err)
				}
				body, _ := io.ReadAll(res.Body)
				res.Body.Close()
				if res.StatusCode != tt.status {
					t.Fatalf("%d-byte head: %d %s", tt.size, res.StatusCode, body)
				}
				big := strings.Index(req, "X-Big: ") + len("X-Big: ")
				if want := fmt.Sprint(len(req) - big - len("\r\n\r\n")); tt.status == 200 && string(body) != want {
					t.Fatalf("the function saw X-Big of %s bytes, want %s", body, want)
				}
				if tt.status == 431 && !strings.Contains(string(body), `"header_too_large"`) {
					t.Fatalf("431 without Spry's error: %s", body)
				}
			})
		}
	}
}

// TestAnswerTransferCodingsReachTheClient: a Node function may answer
// with a transfer coding besides chunked (Node sends the field as the
// function set it; Deno replaces it with its own chunked). An HTTP/1.1
// client gets the coding named on the re-chunked body; an HTTP/1.0
// client, which can take no transfer coding, gets a 502.
func TestAnswerTransferCodingsReachTheClient(t *testing.T) {
	s := startServer(t)
	s.deployCode(t, "te-node", []byte(`export default { fetch() {
	const body = new Blob(["hello, gzip"]).stream().pipeThrough(new CompressionStream("gzip"));
	return new Response(body, { headers: { "transfer-encoding": "gzip, chunked" } });
} }`), "runtime=node")
	for _, proto := range []string{"HTTP/1.1", "HTTP/1.0"} {
		t.Run(proto, func(t *testing.T) {
			c := s.dial(t)
			if _, err := io.WriteString(c, "GET /fn/admin/te-node/ "+proto+"\r\nHost: x\r\nConnection: close\r\n\r\n"); err != nil {
				t.Fatal(err)
			}
			br := bufio.NewReader(c)
			status, err := br.ReadString('\n')
			if err != nil {
				t.Fatal(err)
			}
			var te string
			for {
				line, err := br.ReadString('\n')
				if err != nil {
					t.Fatal(err)
				}
				if line == "\r\n" {
					break
				}
				if name, v, ok := strings.Cut(line, ":"); ok && strings.EqualFold(name, "transfer-encoding") {
					te = strings.TrimSpace(v)
				}
			}
			if proto == "HTTP/1.0" {
				if !strings.Contains(status, " 502 ") {
					t.Fatalf("HTTP/1.0 client: %q, want a 502", status)
				}
				return
			}
			if !strings.Contains(status, " 200 ") || te != "gzip, chunked" {
				t.Fatalf("%q with Transfer-Encoding %q, want 200 and \"gzip, chunked\"", status, te)
			}
			zr, err := gzip.NewReader(httputil.NewChunkedReader(br))
			if err != nil {
				t.Fatal(err)
			}
			body, err := io.ReadAll(zr)
			if err != nil || string(body) != "hello, gzip" {
				t.Fatalf("body %q, %v; want the function's gzip of \"hello, gzip\"", body, err)
			}
		})
	}
}
