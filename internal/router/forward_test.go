package router

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spry-run/spry/internal/activator"
	"github.com/spry-run/spry/internal/backend"
)

// The router is tested against real HTTP servers on Unix sockets standing
// in for instances (the instances' runtimes have their own tests).

type upstreamBackend struct {
	addr   string
	starts atomic.Int32
	kills  atomic.Int32
}

func (b *upstreamBackend) Start(ctx context.Context, spec *backend.Spec) (*backend.Instance, error) {
	n := b.starts.Add(1)
	return backend.NewInstance(fmt.Sprintf("i-%d", n), spec, "unix", b.addr), nil
}
func (b *upstreamBackend) Stop(ctx context.Context, id string) error { return nil }
func (b *upstreamBackend) Kill(id, reason string)                    { b.kills.Add(1) }

type oneSpec struct{ spec *backend.Spec }

func (o oneSpec) Resolve(ctx context.Context, owner, name, tag string) (*backend.Spec, error) {
	return o.spec, nil
}
func (o oneSpec) Invoked(*backend.Spec) {}

// serveUnix serves h on a Unix socket and returns its path.
func serveUnix(t *testing.T, h http.Handler) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "s.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return path
}

func newTestRouter(t *testing.T, upstream http.Handler) *httptest.Server {
	t.Helper()
	spec := &backend.Spec{FunctionID: "f", Owner: "alice", Name: "fn", Version: 1, Concurrency: 100, Timeout: 5 * time.Second}
	act := activator.New(&upstreamBackend{addr: serveUnix(t, upstream)}, activator.Config{})
	rt := New(oneSpec{spec}, act, Config{})
	srv := httptest.NewServer(rt)
	t.Cleanup(srv.Close)
	return srv
}

func TestForwardRequestAndResponse(t *testing.T) {
	srv := newTestRouter(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Add("Set-Cookie", "a=1")
		w.Header().Add("Set-Cookie", "b=2")
		w.Header().Set("Connection", "X-Hop")
		w.Header().Set("X-Hop", "must not pass")
		w.WriteHeader(201)
		fmt.Fprintf(w, "%s %s %s|%s|%s|%s|%v|%s", r.Method, r.URL.EscapedPath(), r.URL.RawQuery, body,
			r.Header.Get("X-Custom"), r.Header.Get("X-Forwarded-For"), r.Header.Get("Spry-Request-Id") != "", r.Header.Get("Proxy-Authorization"))
	}))
	req, _ := http.NewRequest("POST", srv.URL+"/fn/alice/fn/a%2Fb/c?x=1&y=%20", strings.NewReader("payload"))
	req.Header.Set("X-Custom", "v")
	req.Header.Set("Proxy-Authorization", "secret")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	want := "POST /a%2Fb/c x=1&y=%20|payload|v|127.0.0.1|true|"
	if res.StatusCode != 201 || string(body) != want {
		t.Fatalf("got %d %q, want 201 %q", res.StatusCode, body, want)
	}
	if got := res.Header.Values("Set-Cookie"); len(got) != 2 {
		t.Fatalf("Set-Cookie = %v", got)
	}
	if res.Header.Get("X-Hop") != "" || res.Header.Get("Spry-Request-Id") == "" {
		t.Fatalf("headers: %v", res.Header)
	}
}

func TestForwardStreamsResponses(t *testing.T) {
	release := make(chan struct{})
	srv := newTestRouter(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "data: first\n\n")
		w.(http.Flusher).Flush()
		<-release
		fmt.Fprint(w, "data: second\n\n")
	}))
	res, err := http.Get(srv.URL + "/fn/alice/fn/events")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	br := bufio.NewReader(res.Body)
	line, err := br.ReadString('\n')
	if err != nil || line != "data: first\n" {
		t.Fatalf("first event: %q, %v (a stream must arrive as it is written)", line, err)
	}
	close(release)
	rest, _ := io.ReadAll(br)
	if string(rest) != "\ndata: second\n\n" {
		t.Fatalf("rest %q", rest)
	}
}

func TestForwardReusesConnectionsAndSurvivesStaleOnes(t *testing.T) {
	var conns atomic.Int32
	upstream := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }),
		ConnState: func(c net.Conn, s http.ConnState) {
			if s == http.StateNew {
				conns.Add(1)
			}
		},
	}
	path := filepath.Join(t.TempDir(), "s.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	go upstream.Serve(ln)
	defer upstream.Close()
	spec := &backend.Spec{FunctionID: "f", Owner: "alice", Name: "fn", Version: 1, Concurrency: 100, Timeout: 5 * time.Second}
	rt := New(oneSpec{spec}, activator.New(&upstreamBackend{addr: path}, activator.Config{}), Config{})
	srv := httptest.NewServer(rt)
	defer srv.Close()
	get := func() {
		t.Helper()
		res, err := http.Get(srv.URL + "/fn/alice/fn/")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != 200 || string(b) != "ok" {
			t.Fatalf("%d %q", res.StatusCode, b)
		}
	}
	for i := 0; i < 20; i++ {
		get()
	}
	if n := conns.Load(); n != 1 {
		t.Fatalf("20 sequential requests used %d upstream connections, want 1", n)
	}
	// The instance closes its idle connections (as servers do after a
	// keep-alive timeout); the next request must not fail for it.
	upstream.SetKeepAlivesEnabled(false)
	time.Sleep(50 * time.Millisecond)
	upstream.SetKeepAlivesEnabled(true)
	get()
}

func TestForwardHead(t *testing.T) {
	srv := newTestRouter(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "5")
		if r.Method != "HEAD" {
			io.WriteString(w, "hello")
		}
	}))
	for i := 0; i < 3; i++ {
		res, err := http.Head(srv.URL + "/fn/alice/fn/")
		if err != nil || res.StatusCode != 200 || res.ContentLength != 5 {
			t.Fatalf("HEAD: %v %v", res, err)
		}
		res.Body.Close()
	}
}

// A client that hangs up says nothing about the function: its instance
// must live on (only the function's own timeout kills it).
func TestClientDisconnectKeepsInstance(t *testing.T) {
	for _, phase := range []string{"before headers", "mid-body"} {
		t.Run(phase, func(t *testing.T) {
			b := &upstreamBackend{}
			b.addr = serveUnix(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if phase == "mid-body" {
					w.Write([]byte("partial"))
					w.(http.Flusher).Flush()
				}
				time.Sleep(300 * time.Millisecond)
				w.Write([]byte("late"))
			}))
			spec := &backend.Spec{FunctionID: "f", Owner: "alice", Name: "fn", Version: 1, Concurrency: 100, Timeout: 5 * time.Second}
			srv := httptest.NewServer(New(oneSpec{spec}, activator.New(b, activator.Config{}), Config{}))
			defer srv.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, "GET", srv.URL+"/fn/alice/fn/", nil)
			if res, err := http.DefaultClient.Do(req); err == nil {
				io.ReadAll(res.Body)
				res.Body.Close()
			}
			time.Sleep(400 * time.Millisecond)
			if n := b.kills.Load(); n != 0 {
				t.Fatalf("a client disconnect killed the instance (%d kills)", n)
			}
		})
	}
}

// The function's own timeout does kill it: it may be stuck.
func TestTimeoutKillsInstance(t *testing.T) {
	b := &upstreamBackend{}
	b.addr = serveUnix(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(500 * time.Millisecond)
	}))
	spec := &backend.Spec{FunctionID: "f", Owner: "alice", Name: "fn", Version: 1, Concurrency: 100, Timeout: 100 * time.Millisecond}
	srv := httptest.NewServer(New(oneSpec{spec}, activator.New(b, activator.Config{}), Config{}))
	defer srv.Close()
	res, err := http.Get(srv.URL + "/fn/alice/fn/")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 504 || b.kills.Load() != 1 {
		t.Fatalf("status %d, %d kills; want 504 and 1", res.StatusCode, b.kills.Load())
	}
}
