package router

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spry-run/spry/internal/activator"
	"github.com/spry-run/spry/internal/backend"
	"github.com/spry-run/spry/internal/errdefs"
)

func TestHostFunction(t *testing.T) {
	rt := New(nil, nil, Config{Domain: "Fn.Test."})
	tests := []struct {
		host        string
		owner, name string
		under       bool
	}{
		{"hello.alice.fn.test", "alice", "hello", true},
		{"hello.alice.fn.test:8080", "alice", "hello", true},
		{"Hello.ALICE.Fn.TEST", "alice", "hello", true},
		{"hello.alice.fn.test.", "alice", "hello", true},
		{"a--b.c--d.fn.test", "c--d", "a--b", true},
		{"alice.fn.test", "", "", true},
		{"canary.hello.alice.fn.test", "alice", "hello@canary", true},
		{"2.Hello.alice.fn.test:80", "alice", "hello@2", true},
		{"x_y.hello.alice.fn.test", "", "", true},
		{"a.b.hello.alice.fn.test", "", "", true},
		{".alice.fn.test", "", "", true},
		{"hello..fn.test", "", "", true},
		{"-x.alice.fn.test", "", "", true},
		{"a_b.alice.fn.test", "", "", true},
		{strings.Repeat("a", 64) + ".alice.fn.test", "", "", true},
		{"fn.test", "", "", false},
		{"fn.test:80", "", "", false},
		{".fn.test", "", "", false},
		{"hello.alicefn.test", "", "", false},
		{"hello.alice.fn.test.evil", "", "", false},
		{"hello.alice.fn.test:80:80", "", "", false},
		{"[::1]:8080", "", "", false},
		{"127.0.0.1:8080", "", "", false},
		{"", "", "", false},
	}
	for _, tt := range tests {
		owner, name, under := rt.hostFunction([]byte(tt.host))
		if owner != tt.owner || name != tt.name || under != tt.under {
			t.Errorf("hostFunction(%q) = %q, %q, %v; want %q, %q, %v", tt.host, owner, name, under, tt.owner, tt.name, tt.under)
		}
	}
	if _, _, under := New(nil, nil, Config{}).hostFunction([]byte("hello.alice.fn.test")); under {
		t.Error("a router without a domain took a host for a function's")
	}
}

func TestValidDomain(t *testing.T) {
	for d, ok := range map[string]bool{
		"fn.example.com": true, "localhost": true, "Fn.Example.COM.": true, "a-b.c": true,
		"": false, ".": false, "fn..com": false, "-fn.com": false, "fn.com:8080": false,
		"http://fn.com": false, "fn_x.com": false, "*.fn.com": false,
		// An address, or a name below an all-numeric top-level label, would
		// take addresses' hosts for functions' ("10.0.0.1" below "0.1").
		"127.0.0.1": false, "0.1": false, "fn.123": false, "fn.x1": true, "1.fn.com": true, strings.Repeat("a.", 127) + "a": false,
	} {
		if err := ValidDomain(d); (err == nil) != ok {
			t.Errorf("ValidDomain(%q) = %v, want ok %v", d, err, ok)
		}
	}
}

func FuzzHostFunction(f *testing.F) {
	for _, s := range []string{"hello.alice.fn.test", "HELLO.alice.fn.test.:1", "x.fn.test", "[::1]:1", "a.b.c.fn.test"} {
		f.Add(s)
	}
	rt := New(nil, nil, Config{Domain: "fn.test"})
	f.Fuzz(func(t *testing.T, host string) {
		owner, name, under := rt.hostFunction([]byte(host))
		if owner == "" != (name == "") || owner != "" && !under {
			t.Fatalf("hostFunction(%q) = %q, %q, %v", host, owner, name, under)
		}
		if owner == "" {
			return
		}
		// What it names is there, in the host, in its place.
		h := strings.ToLower(host)
		if fn, tag, ok := strings.Cut(name, "@"); ok {
			name = tag + "." + fn
		}
		if !strings.HasPrefix(h, name+"."+owner+".fn.test") {
			t.Fatalf("hostFunction(%q) = %q, %q", host, owner, name)
		}
	})
}

// specsByName resolves the functions it holds by owner/name.
type specsByName map[string]*backend.Spec

func (s specsByName) Resolve(ctx context.Context, owner, name, tag string) (*backend.Spec, error) {
	if spec := s.Cached(owner, name, tag); spec != nil {
		return spec, nil
	}
	return nil, errdefs.ErrNotFound
}
func (s specsByName) Invoked(*backend.Spec) {}
func (s specsByName) Cached(owner, name, tag string) *backend.Spec {
	if tag != "" {
		name += "@" + tag
	}
	return s[owner+"/"+name]
}

func TestServeByHost(t *testing.T) {
	sock := serveUnix(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s %s %s %s", r.Method, r.RequestURI, r.Host, r.Header.Get("X-Forwarded-Host"))
	}))
	spec := &backend.Spec{FunctionID: "f", Owner: "alice", Name: "hello", Version: 1, Concurrency: 100, Timeout: 5 * time.Second}
	act := activator.New(&upstreamBackend{addr: sock}, activator.Config{})
	rt := New(specsByName{"alice/hello": spec, "alice/hello@canary": spec}, act, Config{Domain: "fn.test"})
	// Up before the requests, so that the lane may serve them.
	if lease, err := act.Acquire(context.Background(), spec); err == nil {
		lease.Release()
	}
	srv := serveRouter(t, rt)
	tests := []struct {
		name, target, host string
		status             int
		body               string
	}{
		{"root", "/", "hello.alice.fn.test", 200, "GET / hello.alice.fn.test hello.alice.fn.test"},
		{"path and query", "/a/b%2Fc?x=1", "Hello.Alice.fn.test:8080", 200, "GET /a/b%2Fc?x=1 Hello.Alice.fn.test:8080 Hello.Alice.fn.test:8080"},
		// The whole path is the function's, /fn/ too.
		{"path under the prefix", "/fn/bob/other/x", "hello.alice.fn.test", 200, "GET /fn/bob/other/x hello.alice.fn.test hello.alice.fn.test"},
		{"absolute target", "http://hello.alice.fn.test/p", "elsewhere", 200, "GET /p hello.alice.fn.test hello.alice.fn.test"},
		{"no such function", "/", "nope.alice.fn.test", 404, `function alice/nope not found`},
		{"not a function's host", "/", "alice.fn.test", 404, `no function at host \"alice.fn.test\"`},
		{"a tag", "/t", "canary.hello.alice.fn.test", 200, "GET /t canary.hello.alice.fn.test canary.hello.alice.fn.test"},
		{"no such tag", "/", "nope.hello.alice.fn.test", 404, `function alice/hello@nope not found`},
		{"too deep", "/", "a.b.hello.alice.fn.test", 404, `functions are at \u003cname\u003e.\u003cowner\u003e.fn.test`},
		{"the path form elsewhere", "/fn/alice/hello/y", "api.example", 200, "GET /y api.example api.example"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := srv.dial(t, 5*time.Second)
			fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", tt.target, tt.host)
			res, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(res.Body)
			res.Body.Close()
			if res.StatusCode != tt.status || !strings.Contains(string(body), tt.body) {
				t.Fatalf("got %d %q, want %d with %q", res.StatusCode, body, tt.status, tt.body)
			}
		})
	}
	if srv.lane != nil {
		// The hosts' requests in origin form, and the path form's, took
		// the event loop's fast path.
		if served, _, _ := srv.lane.Counts(); served != 5 {
			t.Errorf("the loop served %d requests, want 5", served)
		}
	}
}

// An answer given without reading the request's body (no function at a
// host, or at a path) closes the connection: the body is never read as
// the next request.
func TestUnreadBodyIsNoRequest(t *testing.T) {
	var smuggled atomic.Int32
	sock := serveUnix(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/smuggled" {
			smuggled.Add(1)
		}
	}))
	spec := &backend.Spec{FunctionID: "f", Owner: "alice", Name: "hello", Version: 1, Concurrency: 100, Timeout: 5 * time.Second}
	act := activator.New(&upstreamBackend{addr: sock}, activator.Config{})
	rt := New(specsByName{"alice/hello": spec}, act, Config{Domain: "fn.test"})
	srv := serveRouter(t, rt)
	const next = "GET /smuggled HTTP/1.1\r\nHost: hello.alice.fn.test\r\n\r\n"
	// fasthttp reads 8 KiB of a body before the handler runs, none of a
	// chunked one: the rest, sent after the answer, would be the next
	// request.
	pad := strings.Repeat("x", 8<<10)
	for _, tt := range []struct{ target, host string }{
		{"/", "alice.fn.test"},
		{"/", "a.b.hello.alice.fn.test"},
		{"/fn/alice", "api.example"},
	} {
		for _, framing := range []string{fmt.Sprintf("Content-Length: %d\r\n\r\n%s", len(pad)+len(next), pad), "Transfer-Encoding: chunked\r\n\r\n"} {
			c := dialRaw(t, srv.URL)
			_ = c.SetDeadline(time.Now().Add(3 * time.Second))
			c.send(fmt.Sprintf("POST %s HTTP/1.1\r\nHost: %s\r\n%s", tt.target, tt.host, framing))
			res := c.response()
			b := body(res)
			c.send(next)
			if res.StatusCode != 404 || !res.Close {
				t.Errorf("%s at %s: %d %s (close %v), want 404 and the connection closed", tt.target, tt.host, res.StatusCode, b, res.Close)
			}
			c.ended(tt.target + " at " + tt.host)
		}
	}
	if n := smuggled.Load(); n != 0 {
		t.Fatalf("the body was served as %d requests", n)
	}
}
