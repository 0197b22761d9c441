package router

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/spry-run/spry/internal/activator"
	"github.com/spry-run/spry/internal/backend"
	"github.com/spry-run/spry/internal/httpserve"
	"github.com/valyala/fasthttp"
	"golang.org/x/sys/unix"
)

// The router is tested against real HTTP servers on Unix sockets standing
// in for instances (the instances' runtimes have their own tests).

type upstreamBackend struct {
	addr   string
	mark   string // the instances' error mark
	starts atomic.Int32
	kills  atomic.Int32
	probe  func(context.Context) error // the instances' (none: taken for stuck)
}

func (b *upstreamBackend) Start(ctx context.Context, spec *backend.Spec) (*backend.Instance, error) {
	n := b.starts.Add(1)
	inst := backend.NewInstance(fmt.Sprintf("i-%d", n), spec, "unix", b.addr)
	inst.ErrorMark = b.mark
	if b.probe != nil {
		inst.SetProbe(b.probe)
	}
	return inst, nil
}
func (b *upstreamBackend) Stop(ctx context.Context, id string) error { return nil }

// waitKills waits for want kills (a timeout's probe, and the kill if it
// fails, run off the request's path), a few seconds at most, and returns
// how many there were.
func (b *upstreamBackend) waitKills(want int32) int32 {
	for deadline := time.Now().Add(5 * time.Second); b.kills.Load() < want && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	return b.kills.Load()
}
func (b *upstreamBackend) Kill(id, reason string)       { b.kills.Add(1) }
func (b *upstreamBackend) SetIdle(id string, idle bool) {}

type oneSpec struct{ spec *backend.Spec }

func (o oneSpec) Resolve(ctx context.Context, owner, name, tag string) (*backend.Spec, error) {
	return o.spec, nil
}
func (o oneSpec) Invoked(*backend.Spec) {}
func (o oneSpec) Cached(owner, name, tag string) *backend.Spec {
	return o.spec
}

// serveUnix serves h on a Unix socket and returns its path.
func serveUnix(t testing.TB, h http.Handler) string {
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

// viaLane serves the tests' routers as spry serve does, through the
// event loops (Lane) with the fasthttp server behind them; -lane=false
// tests the fasthttp path alone (spry serve --router-loops 0).
var viaLane = flag.Bool("lane", true, "serve test routers through the event loops")

// testServer serves a router on loopback, as the public listener does.
type testServer struct {
	URL  string
	srv  *fasthttp.Server
	lane *Lane
	ln   net.Listener
}

// dial opens a raw connection to the router, closed when the test ends,
// with a deadline d from now (none if d is 0).
func (s *testServer) dial(t testing.TB, d time.Duration) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(s.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if d > 0 {
		_ = c.SetDeadline(time.Now().Add(d))
	}
	return c
}

func (s *testServer) Close() {
	_ = s.srv.Shutdown()
	if s.lane != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = s.lane.Shutdown(ctx)
		s.ln.Close()
	}
}

func serveRouter(t testing.TB, rt *Router) *testServer {
	t.Helper()
	return serveRouterWatching(t, rt, time.Millisecond)
}

// serveRouterWatching is serveRouter with the client watch starting after
// watchAfter.
func serveRouterWatching(t testing.TB, rt *Router, watchAfter time.Duration) *testServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := httpserve.New(rt.Handle, nil)
	s := &testServer{URL: "http://" + ln.Addr().String(), srv: srv, ln: ln}
	if *viaLane {
		if s.lane, err = rt.NewLane(ln, LaneConfig{Loops: 1, Spin: DefaultSpin}); err != nil {
			t.Fatal(err)
		}
		// The lane serves instances already up: start the function's
		// first one now (no request reaches it), so that the tests'
		// requests take the lane rather than a cold start's slow path.
		if o, ok := rt.resolver.(oneSpec); ok {
			if lease, err := rt.leaser.Acquire(context.Background(), o.spec); err == nil {
				lease.Release()
			}
		}
		go srv.Serve(httpserve.Listener(s.lane.Handoff(), watchAfter, nil))
	} else {
		go srv.Serve(httpserve.Listener(ln, watchAfter, nil))
	}
	t.Cleanup(s.Close)
	return s
}

func newTestRouter(t *testing.T, upstream http.Handler) *testServer {
	t.Helper()
	return routerTo(t, serveUnix(t, upstream), time.Millisecond)
}

// routerTo serves a router whose one function's instance is at sock, with
// the client watch starting after watchAfter.
func routerTo(t testing.TB, sock string, watchAfter time.Duration) *testServer {
	t.Helper()
	spec := &backend.Spec{FunctionID: "f", Owner: "alice", Name: "fn", Version: 1, Concurrency: 100, Timeout: 5 * time.Second}
	act := activator.New(&upstreamBackend{addr: sock}, activator.Config{})
	return serveRouterWatching(t, New(oneSpec{spec}, act, Config{}), watchAfter)
}

// serveRawRequests serves a Unix socket with answer, called after each
// request on a connection is read (its body too), i counting them; for
// instances that answer below HTTP's rules.
func serveRawRequests(t testing.TB, answer func(i int, c net.Conn)) string {
	return serveRawUnix(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		for i := 0; ; i++ {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			_, _ = io.Copy(io.Discard, req.Body)
			answer(i, c)
		}
	})
}

// serveRawUnix runs handle on each connection to a Unix socket, for
// instances that misbehave below HTTP, and returns the socket's path.
func serveRawUnix(t testing.TB, handle func(net.Conn)) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "s.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				handle(c)
			}()
		}
	}()
	return sock
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

// A function is told of the client what the router saw: the peer's own
// address, the scheme and host of the request, whatever a client says in
// X-Forwarded-*; only a peer among the trusted proxies has its
// X-Forwarded-For kept (the peer's address after it) and its
// X-Forwarded-Proto and -Host (when well formed) stand.
func TestForwardingHeaders(t *testing.T) {
	sock := serveUnix(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%q %q %q", r.Header.Values("X-Forwarded-For"), r.Header.Get("X-Forwarded-Proto"), r.Header.Get("X-Forwarded-Host"))
		if f := r.Header.Values("Forwarded"); f != nil {
			fmt.Fprintf(w, " %q", f)
		}
	}))
	spec := &backend.Spec{FunctionID: "f", Owner: "alice", Name: "fn", Version: 1, Concurrency: 100, Timeout: 5 * time.Second}
	loopback := httpserve.Proxies{netip.MustParsePrefix("127.0.0.0/8")}
	other := httpserve.Proxies{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("::1/128")}
	for _, tt := range []struct {
		name    string
		trusted httpserve.Proxies
		headers map[string]string
		want    string
	}{
		{"nothing said", nil, nil, `["127.0.0.1"] "http" "h.test"`},
		{"untrusted client", nil, map[string]string{"X-Forwarded-For": "6.6.6.6", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "bank.test"},
			`["127.0.0.1"] "http" "h.test"`},
		{"peer not among the trusted", other, map[string]string{"X-Forwarded-For": "6.6.6.6", "X-Forwarded-Proto": "https"},
			`["127.0.0.1"] "http" "h.test"`},
		{"trusted proxy", loopback, map[string]string{"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "api.example.com"},
			`["203.0.113.9, 127.0.0.1"] "https" "api.example.com"`},
		{"trusted proxy, nothing said", loopback, nil, `["127.0.0.1"] "http" "h.test"`},
		// RFC 7239's Forwarded says the same as the X-Forwarded fields,
		// and is believed as far as they are.
		{"untrusted Forwarded", nil, map[string]string{"Forwarded": "for=6.6.6.6;proto=https"}, `["127.0.0.1"] "http" "h.test"`},
		{"Forwarded from a peer not among the trusted", other, map[string]string{"Forwarded": "for=6.6.6.6"}, `["127.0.0.1"] "http" "h.test"`},
		{"trusted proxy's Forwarded", loopback, map[string]string{"Forwarded": "for=203.0.113.9;proto=https"},
			`["127.0.0.1"] "http" "h.test" ["for=203.0.113.9;proto=https"]`},
		{"trusted proxy, malformed", loopback, map[string]string{"X-Forwarded-Proto": "javascript", "X-Forwarded-Host": "a b"},
			`["127.0.0.1"] "http" "h.test"`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			act := activator.New(&upstreamBackend{addr: sock}, activator.Config{})
			srv := serveRouter(t, New(oneSpec{spec}, act, Config{TrustedProxies: tt.trusted}))
			req, _ := http.NewRequest("GET", srv.URL+"/fn/alice/fn/", nil)
			req.Host = "h.test"
			for k, v := range tt.headers {
				req.Header.Set(k, v)
			}
			res, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(res.Body)
			res.Body.Close()
			if string(body) != tt.want {
				t.Fatalf("the function saw %s, want %s", body, tt.want)
			}
		})
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
	srv := serveRouter(t, rt)
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
			srv := serveRouter(t, New(oneSpec{spec}, activator.New(b, activator.Config{}), Config{}))
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

// accessRecorder keeps the status of each finished invocation.
type accessRecorder chan int

func (r accessRecorder) Access(a Access) { r <- a.Status }

// want fails t unless the next invocation to finish is logged with
// status within d (fail says what did not happen).
func (r accessRecorder) want(t *testing.T, status int, d time.Duration, fail string) {
	t.Helper()
	select {
	case st := <-r:
		if st != status {
			t.Fatalf("logged status %d, want %d", st, status)
		}
	case <-time.After(d):
		t.Fatal(fail)
	}
}

// dialRouter serves a router for b's function alice/fn (concurrency 100,
// the given timeout), recording each invocation's status, and dials it:
// the tests of hang-ups and timeouts write their requests by hand.
func dialRouter(t *testing.T, b *upstreamBackend, timeout time.Duration) (net.Conn, accessRecorder) {
	t.Helper()
	spec := &backend.Spec{FunctionID: "f", Owner: "alice", Name: "fn", Version: 1, Concurrency: 100, Timeout: timeout}
	access := make(accessRecorder, 4)
	srv := serveRouter(t, New(oneSpec{spec}, activator.New(b, activator.Config{}), Config{Access: access}))
	return srv.dial(t, 0), access
}

// A client that hangs up while the function computes ends the function's
// request (the instance connection closes, so its request context, or
// request.signal in a runtime, is aborted), and the invocation is logged
// as 499, not left running to its timeout. The instance lives on.
func TestClientHangUpAbortsTheRequest(t *testing.T) {
	for _, tc := range []struct{ name, request string }{
		{"no body", "GET /fn/alice/fn/ HTTP/1.1\r\nHost: x\r\n\r\n"},
		{"with a body", "POST /fn/alice/fn/ HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			started, aborted := make(chan struct{}, 1), make(chan struct{}, 1)
			b := &upstreamBackend{}
			b.addr = serveUnix(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				io.ReadAll(r.Body)
				started <- struct{}{}
				select {
				case <-r.Context().Done():
					aborted <- struct{}{}
				case <-time.After(10 * time.Second):
				}
			}))
			c, access := dialRouter(t, b, 30*time.Second)
			if _, err := io.WriteString(c, tc.request); err != nil {
				t.Fatal(err)
			}
			<-started
			c.Close()
			select {
			case <-aborted:
			case <-time.After(5 * time.Second):
				t.Fatal("the function's request was not aborted after the client hung up")
			}
			access.want(t, StatusClientClosed, 5*time.Second, "the invocation did not end")
			if n := b.kills.Load(); n != 0 {
				t.Fatalf("a hang-up killed the instance (%d kills)", n)
			}
		})
	}
}

// A client that hangs up while its body is still on its way to a
// function that does not read it is noticed too: the router is then
// blocked writing to the instance and cannot read the client, so the
// watch asks the kernel instead. Without it the request would hold its
// instance until the function's timeout.
func TestClientHangUpWhileTheBodyIsBlocked(t *testing.T) {
	for _, rst := range []bool{false, true} {
		name := map[bool]string{false: "fin after the body it sent", true: "reset while sending"}[rst]
		t.Run(name, func(t *testing.T) {
			started := make(chan struct{}, 1)
			release := make(chan struct{})
			var inst atomic.Pointer[net.UnixConn] // the instance's end
			path := filepath.Join(t.TempDir(), "s.sock")
			ln, err := net.Listen("unix", path)
			if err != nil {
				t.Fatal(err)
			}
			us := &http.Server{
				Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					started <- struct{}{}
					<-release // never reads the body
				}),
				ConnState: func(c net.Conn, st http.ConnState) {
					if st == http.StateNew {
						inst.Store(c.(*net.UnixConn))
					}
				},
			}
			go us.Serve(ln)
			b := &upstreamBackend{addr: path}
			c, access := dialRouter(t, b, 60*time.Second)
			// Before the router's own cleanup, which waits for the request.
			t.Cleanup(func() { us.Close() })
			t.Cleanup(func() { close(release) })
			if _, err := io.WriteString(c, "POST /fn/alice/fn/ HTTP/1.1\r\nHost: x\r\nContent-Length: 67108864\r\n\r\n"); err != nil {
				t.Fatal(err)
			}
			// The router buffers what it sends: the function starts once
			// some of the body has gone.
			chunk := make([]byte, 8<<10)
			for len(started) == 0 {
				if _, err := c.Write(chunk); err != nil {
					t.Fatal(err)
				}
				time.Sleep(time.Millisecond)
			}
			if rst {
				// Every buffer on the way full: a FIN would queue behind
				// the data, but a reset goes through.
				go func() {
					for {
						if _, err := c.Write(chunk); err != nil {
							return
						}
					}
				}()
				// Full: neither queue moves in 100 ms.
				for out, in := -1, -1; ; time.Sleep(100 * time.Millisecond) {
					o, i := queued(t, c, unix.SIOCOUTQ), queued(t, inst.Load(), unix.SIOCINQ)
					if o == out && i == in {
						break
					}
					out, in = o, i
				}
				c.(*net.TCPConn).SetLinger(0)
			} else {
				// Send until the router holds body it cannot pass on (the
				// instance's queue stops growing while 64 KiB more, past
				// the router's own buffers, arrive, and stays put for
				// 100 ms), with all of it delivered, so that the FIN
				// reaches the router.
				for held, last := 0, -1; ; {
					if held >= 64<<10 {
						time.Sleep(100 * time.Millisecond)
						if queued(t, inst.Load(), unix.SIOCINQ) == last {
							break
						}
					}
					if _, err := c.Write(chunk); err != nil {
						t.Fatal(err)
					}
					for i := 0; queued(t, c, unix.SIOCOUTQ) > 0; i++ {
						if i == 2000 {
							t.Fatalf("the router's buffers filled (%d bytes held back)", held)
						}
						time.Sleep(time.Millisecond)
					}
					time.Sleep(10 * time.Millisecond)
					if n := queued(t, inst.Load(), unix.SIOCINQ); n != last {
						held, last = 0, n
					} else {
						held += len(chunk)
					}
				}
			}
			c.Close()
			access.want(t, StatusClientClosed, 10*time.Second, "the invocation did not end after the client hung up")
		})
	}
}

// A client that hangs up while its request waits in the queue for an
// instance leaves the queue at once, whatever the request: one with a
// body, or an upgrade, cannot be read for the hang-up (the connection
// holds the body, or the bytes after the upgrade), but it must not hold
// its place (spry_queue_depth, the queue's bound) until the timeout, nor
// reach the function once capacity frees.
func TestHangUpWhileQueuedLeavesTheQueue(t *testing.T) {
	for _, tc := range []struct{ name, request string }{
		{"no body", "GET /fn/alice/fn/ HTTP/1.1\r\nHost: x\r\n\r\n"},
		{"with a body", "POST /fn/alice/fn/ HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"},
		{"chunked body", "POST /fn/alice/fn/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"},
		{"upgrade", "GET /fn/alice/fn/ HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var calls atomic.Int32
			release := make(chan struct{})
			b := &upstreamBackend{}
			b.addr = serveUnix(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				calls.Add(1)
				io.ReadAll(r.Body)
				<-release
			}))
			// One instance taking one request at a time: the second waits.
			spec := &backend.Spec{FunctionID: "f", Owner: "alice", Name: "fn", Version: 1, Concurrency: 1, MaxScale: 1, Timeout: 30 * time.Second}
			act := activator.New(b, activator.Config{})
			access := make(accessRecorder, 4)
			srv := serveRouter(t, New(oneSpec{spec}, act, Config{Access: access}))
			t.Cleanup(func() { close(release) })
			busy := srv.dial(t, 0)
			if _, err := io.WriteString(busy, "GET /fn/alice/fn/ HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
				t.Fatal(err)
			}
			for calls.Load() == 0 {
				time.Sleep(time.Millisecond)
			}
			c := srv.dial(t, 0)
			if _, err := io.WriteString(c, tc.request); err != nil {
				t.Fatal(err)
			}
			for act.QueueDepth() != 1 {
				time.Sleep(time.Millisecond)
			}
			c.Close()
			access.want(t, StatusClientClosed, 5*time.Second, "the queued request did not end after its client hung up")
			if n := act.QueueDepth(); n != 0 {
				t.Fatalf("queue depth %d after the waiting client hung up", n)
			}
			if n := calls.Load(); n != 1 {
				t.Fatalf("the function ran %d times, want once (not for the client that left)", n)
			}
		})
	}
}

// A client that resets its connection while the router reads its body
// (the function reading along) is gone: the invocation ends as 499 at
// once, not as the instance's failure (502).
func TestClientResetMidBody(t *testing.T) {
	read := make(chan int64, 1)
	b := &upstreamBackend{}
	b.addr = serveUnix(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var n int64
		buf := make([]byte, 1024)
		for {
			m, err := r.Body.Read(buf)
			n += int64(m)
			if n >= 64<<10 {
				select {
				case read <- n:
				default:
				}
			}
			if err != nil {
				return
			}
		}
	}))
	c, access := dialRouter(t, b, 30*time.Second)
	io.WriteString(c, "POST /fn/alice/fn/ HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\n\r\n")
	chunk := make([]byte, 8<<10)
	for len(read) == 0 {
		if _, err := c.Write(chunk); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Millisecond)
	}
	// The function has read all that was sent: the router waits for more.
	c.(*net.TCPConn).SetLinger(0)
	c.Close()
	access.want(t, StatusClientClosed, 10*time.Second, "the invocation did not end after the client reset")
	if n := b.kills.Load(); n != 0 {
		t.Fatalf("a reset killed the instance (%d kills)", n)
	}
}

// When the time is up while the body is still coming, the client was too
// slow: 408, and the instance, which was waiting for the body, lives on.
// When the function was not reading the body, it may be stuck: 504, and
// the instance is killed.
func TestTimeoutDuringTheBody(t *testing.T) {
	for _, tc := range []struct {
		name      string
		reads     bool // the function reads its body
		send      int  // bytes of the 64 MiB body the client sends
		status    int
		wantKills int32
	}{
		{"the client stalls", true, 16 << 10, http.StatusRequestTimeout, 0},
		{"the function does not read", false, 8 << 20, http.StatusGatewayTimeout, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			release := make(chan struct{})
			b := &upstreamBackend{}
			b.addr = serveUnix(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if tc.reads {
					io.Copy(io.Discard, r.Body)
				}
				<-release
			}))
			c, access := dialRouter(t, b, 300*time.Millisecond)
			t.Cleanup(func() { close(release) })
			io.WriteString(c, "POST /fn/alice/fn/ HTTP/1.1\r\nHost: x\r\nContent-Length: 67108864\r\n\r\n")
			go c.Write(make([]byte, tc.send)) // blocks once the buffers are full
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			res, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatal(err)
			}
			res.Body.Close()
			if res.StatusCode != tc.status {
				t.Fatalf("status %d, want %d", res.StatusCode, tc.status)
			}
			access.want(t, tc.status, 10*time.Second, "the invocation did not end")
			if n := b.waitKills(tc.wantKills); n != tc.wantKills {
				t.Fatalf("%d kills, want %d", n, tc.wantKills)
			}
		})
	}
}

// Which failure a sender reports when the answer's head could not be
// read. The client's read deadline is the head's, so the sender's timeout
// reading the client can come just after stop began: it is still the
// client's. So is a body the client cut short, though a hang-up's watch
// closed the instance's connection (and so failed the head) first.
func TestSenderFailed(t *testing.T) {
	timeout := fmt.Errorf("reading the head: %w", os.ErrDeadlineExceeded)
	clientTimeout := &clientBodyError{os.ErrDeadlineExceeded}
	cutShort := &clientBodyError{io.ErrUnexpectedEOF}
	instTimeout := fmt.Errorf("writing the body: %w", os.ErrDeadlineExceeded)
	const (
		slowClient = "the client was slow"
		client     = "the client's failure"
		instance   = "the instance's failure"
	)
	for _, tc := range []struct {
		name         string
		headErr      error
		senderErr    error
		clientFailed bool
		waiting      bool
		blame        string
	}{
		{"the sender waits on the client", timeout, nil, false, true, slowClient},
		{"the client's deadline first, seen as its failure", timeout, clientTimeout, true, false, slowClient},
		{"the client's deadline first, seen after stop began", timeout, clientTimeout, false, false, slowClient},
		{"the body was sent", timeout, nil, false, false, instance},
		{"the instance did not read the body", timeout, instTimeout, false, false, instance},
		{"the instance closed", io.ErrUnexpectedEOF, nil, false, false, instance},
		{"the body cut short, seen as the client's failure", net.ErrClosed, cutShort, true, false, client},
		{"the body cut short, seen after stop began", net.ErrClosed, cutShort, false, false, client},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &bodySender{done: make(chan struct{}), inv: &invocation{}, err: tc.senderErr, clientFailed: tc.clientFailed}
			close(s.done)
			s.inv.readingBody.Store(tc.waiting)
			err := s.failed(tc.headErr)
			blame := instance
			switch {
			case clientSide(err) && isTimeout(err):
				blame = slowClient
			case clientSide(err):
				blame = client
			}
			if blame != tc.blame {
				t.Fatalf("failed(%v) = %v: %s, want %s", tc.headErr, err, blame, tc.blame)
			}
		})
	}
}

// A client that reads a long answer so slowly that the function's time
// runs out while the router writes to it gets the answer cut short, but
// the instance, which was not stuck, is not killed.
func TestSlowReaderDoesNotKillTheInstance(t *testing.T) {
	b := &upstreamBackend{}
	b.addr = serveUnix(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(64<<20))
		w.Write(make([]byte, 64<<20))
	}))
	c, access := dialRouter(t, b, 300*time.Millisecond)
	io.WriteString(c, "GET /fn/alice/fn/ HTTP/1.1\r\nHost: x\r\n\r\n")
	buf := make([]byte, 16<<10)
	var got int
	for {
		time.Sleep(5 * time.Millisecond)
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, err := c.Read(buf)
		got += n
		if err != nil {
			break
		}
	}
	if got >= 64<<20 {
		t.Fatalf("read the whole answer (%d bytes); want it cut at the timeout", got)
	}
	<-access
	if n := b.kills.Load(); n != 0 {
		t.Fatalf("a slow reader got the instance killed (%d kills)", n)
	}
}

// queued is a socket's byte count that ioctl req reports.
func queued(t *testing.T, c net.Conn, req uint) int {
	t.Helper()
	rc, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var n int
	if cerr := rc.Control(func(fd uintptr) { n, err = unix.IoctlGetInt(int(fd), req) }); cerr != nil || err != nil {
		t.Fatal(cerr, err)
	}
	return n
}

// A request pipelined behind a watched one is served, whether the watch
// or the server reads its first byte.
func TestWatchKeepsPipelinedRequests(t *testing.T) {
	b := &upstreamBackend{}
	b.addr = serveUnix(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			time.Sleep(50 * time.Millisecond)
		}
		io.WriteString(w, r.URL.Path)
	}))
	spec := &backend.Spec{FunctionID: "f", Owner: "alice", Name: "fn", Version: 1, Concurrency: 100, Timeout: 30 * time.Second}
	srv := serveRouter(t, New(oneSpec{spec}, activator.New(b, activator.Config{}), Config{}))
	c := srv.dial(t, 0)
	br := bufio.NewReader(c)
	for i := 0; i < 5; i++ {
		io.WriteString(c, "GET /fn/alice/fn/slow HTTP/1.1\r\nHost: x\r\n\r\n")
		time.Sleep(time.Duration(i*5) * time.Millisecond) // the second request lands at different points of the wait
		io.WriteString(c, "GET /fn/alice/fn/next HTTP/1.1\r\nHost: x\r\n\r\n")
		for _, want := range []string{"/slow", "/next"} {
			res, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(res.Body)
			res.Body.Close()
			if res.StatusCode != 200 || string(body) != want {
				t.Fatalf("round %d: got %d %q, want 200 %q", i, res.StatusCode, body, want)
			}
		}
	}
}

// Past the function's own timeout its instance is probed, off the
// request's path, and killed if its runtime does not answer (it may be
// stuck; an instance the backend cannot probe is taken for stuck), kept
// if it does.
func TestTimeoutProbesInstance(t *testing.T) {
	for _, tc := range []struct {
		name  string
		probe func(context.Context) error
		kills int32
	}{
		{"no probe", nil, 1},
		{"no answer", func(context.Context) error { return errors.New("no answer") }, 1},
		{"answers", func(context.Context) error { return nil }, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := &upstreamBackend{probe: tc.probe}
			b.addr = serveUnix(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				time.Sleep(500 * time.Millisecond)
			}))
			spec := &backend.Spec{FunctionID: "f", Owner: "alice", Name: "fn", Version: 1, Concurrency: 100, Timeout: 100 * time.Millisecond}
			a := activator.New(b, activator.Config{})
			srv := serveRouter(t, New(oneSpec{spec}, a, Config{}))
			defer srv.Close()
			res, err := http.Get(srv.URL + "/fn/alice/fn/")
			if err != nil {
				t.Fatal(err)
			}
			res.Body.Close()
			if res.StatusCode != 504 || res.Header.Get("Spry-Error") != "timeout" {
				t.Fatalf("status %d, Spry-Error %q; want 504, timeout", res.StatusCode, res.Header.Get("Spry-Error"))
			}
			if n := b.waitKills(tc.kills); n != tc.kills {
				t.Fatalf("%d kills, want %d", n, tc.kills)
			}
		})
	}
}

// Bodies stream both ways: a request body of known or unknown length, a
// response body larger than any buffer.
func TestForwardLargeBodies(t *testing.T) {
	const size = 16 << 20
	srv := newTestRouter(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, err := io.Copy(io.Discard, r.Body)
		if err != nil {
			w.WriteHeader(400)
			return
		}
		w.Header().Set("X-Got", fmt.Sprint(n))
		if r.URL.Query().Get("chunked") == "" {
			w.Header().Set("Content-Length", fmt.Sprint(size))
		}
		chunk := bytes.Repeat([]byte("x"), 1<<20)
		for i := 0; i < size>>20; i++ {
			w.Write(chunk)
		}
	}))
	for _, tt := range []struct {
		name string
		body io.Reader
		q    string
	}{
		{"known length", bytes.NewReader(make([]byte, size)), ""},
		{"chunked both ways", io.MultiReader(bytes.NewReader(make([]byte, size))), "?chunked=1"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			res, err := http.Post(srv.URL+"/fn/alice/fn/"+tt.q, "application/octet-stream", tt.body)
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			n, err := io.Copy(io.Discard, res.Body)
			if err != nil || n != size || res.StatusCode != 200 || res.Header.Get("X-Got") != fmt.Sprint(size) {
				t.Fatalf("status %d, got %s, read %d (%v)", res.StatusCode, res.Header.Get("X-Got"), n, err)
			}
		})
	}
}

func TestForwardBodyLimit(t *testing.T) {
	b := &upstreamBackend{}
	b.addr = serveUnix(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.Copy(io.Discard, r.Body) }))
	spec := &backend.Spec{FunctionID: "f", Owner: "alice", Name: "fn", Version: 1, Concurrency: 100, Timeout: 5 * time.Second}
	srv := serveRouter(t, New(oneSpec{spec}, activator.New(b, activator.Config{}), Config{MaxBodyBytes: 1000}))
	for _, body := range []io.Reader{bytes.NewReader(make([]byte, 1001)), io.MultiReader(bytes.NewReader(make([]byte, 1001)))} {
		res, err := http.Post(srv.URL+"/fn/alice/fn/", "text/plain", body)
		if err != nil {
			t.Fatal(err)
		}
		msg, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != 413 || !strings.Contains(string(msg), `"code":"too_large"`) {
			t.Fatalf("%d %s", res.StatusCode, msg)
		}
	}
	res, err := http.Post(srv.URL+"/fn/alice/fn/", "text/plain", strings.NewReader("small"))
	if err != nil || res.StatusCode != 200 {
		t.Fatalf("%v %v", res, err)
	}
	res.Body.Close()
}

// A request that never reached an instance (it was gone) goes to another.
func TestForwardRetriesUndelivered(t *testing.T) {
	good := serveUnix(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	b := &retryBackend{addrs: []string{filepath.Join(t.TempDir(), "gone.sock"), good}}
	spec := &backend.Spec{FunctionID: "f", Owner: "alice", Name: "fn", Version: 1, Concurrency: 100, Timeout: 5 * time.Second, MaxScale: 2}
	srv := serveRouter(t, New(oneSpec{spec}, activator.New(b, activator.Config{}), Config{}))
	res, err := http.Post(srv.URL+"/fn/alice/fn/", "text/plain", strings.NewReader("once"))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != 200 || string(body) != "ok" || b.kills.Load() != 1 {
		t.Fatalf("%d %q, %d kills", res.StatusCode, body, b.kills.Load())
	}
}

// retryBackend starts instances at the given addresses in turn.
type retryBackend struct {
	addrs []string
	n     atomic.Int32
	kills atomic.Int32
}

func (b *retryBackend) Start(ctx context.Context, spec *backend.Spec) (*backend.Instance, error) {
	n := int(b.n.Add(1)) - 1
	inst := backend.NewInstance(fmt.Sprintf("i-%d", n), spec, "unix", b.addrs[min(n, len(b.addrs)-1)])
	return inst, nil
}
func (b *retryBackend) Stop(ctx context.Context, id string) error { return nil }
func (b *retryBackend) Kill(id, reason string)                    { b.kills.Add(1) }
func (b *retryBackend) SetIdle(id string, idle bool)              {}

// switchProtocols answers an upgrade to the "echo" protocol with its 101
// and hands over the connection.
func switchProtocols(w http.ResponseWriter) (net.Conn, *bufio.ReadWriter, bool) {
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return nil, nil, false
	}
	brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
	brw.Flush()
	return conn, brw, true
}

// Upgrades (WebSockets) are spliced: after the 101, bytes flow both ways.
// echoUpgraded switches w's connection to the "echo" protocol and
// answers its first line with "echo: " and the line.
func echoUpgraded(w http.ResponseWriter) {
	conn, brw, ok := switchProtocols(w)
	if !ok {
		return
	}
	defer conn.Close()
	line, _ := brw.ReadString('\n')
	brw.WriteString("echo: " + line)
	brw.Flush()
}

func TestForwardUpgrade(t *testing.T) {
	srv := newTestRouter(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "echo" || r.URL.Path != "/ws" {
			w.WriteHeader(400)
			return
		}
		echoUpgraded(w)
	}))
	conn := srv.dial(t, 5*time.Second)
	fmt.Fprintf(conn, "GET /fn/alice/fn/ws HTTP/1.1\r\nHost: x\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
	br := bufio.NewReader(conn)
	res, err := http.ReadResponse(br, nil)
	if err != nil || res.StatusCode != 101 || res.Header.Get("Upgrade") != "echo" {
		t.Fatalf("%v %v", res, err)
	}
	fmt.Fprintf(conn, "hello\n")
	line, err := br.ReadString('\n')
	if line != "echo: hello\n" {
		t.Fatalf("%q %v", line, err)
	}
}

// An upgrade the server drops before its hijack handler runs (a client
// that pipelined it behind another request, then reset, so the first
// answer cannot be flushed) still gives back its lease and its
// connection to the instance.
func TestDroppedUpgradeReleasesItsLease(t *testing.T) {
	sock := serveUnix(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") == "" {
			io.WriteString(w, "ok")
			return
		}
		time.Sleep(100 * time.Millisecond) // the client resets meanwhile
		conn, brw, ok := switchProtocols(w)
		if !ok {
			return
		}
		defer conn.Close()
		_, _ = io.Copy(io.Discard, brw)
	}))
	spec := &backend.Spec{FunctionID: "f", Owner: "alice", Name: "fn", Version: 1, Concurrency: 100, Timeout: 5 * time.Second}
	act := activator.New(&upstreamBackend{addr: sock}, activator.Config{})
	srv := serveRouterWatching(t, New(oneSpec{spec}, act, Config{}), time.Millisecond)
	busy := func() int {
		n := 0
		for _, s := range act.States() {
			n += s.Busy
		}
		return n
	}
	for i := 0; i < 5; i++ {
		conn := srv.dial(t, 5*time.Second)
		// A chunked first request goes to the server's own path (the
		// event loops hand it over), which then reads the upgrade
		// behind it.
		fmt.Fprintf(conn, "POST /fn/alice/fn/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"+
			"GET /fn/alice/fn/ws HTTP/1.1\r\nHost: x\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
		time.Sleep(20 * time.Millisecond)
		conn.(*net.TCPConn).SetLinger(0)
		conn.Close()
	}
	deadline := time.Now().Add(5 * time.Second)
	for busy() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d instances still busy: the dropped upgrades kept their leases", busy())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A request target with control characters is refused here, not passed
// to the instance on a shared connection.
func TestRejectsMalformedTarget(t *testing.T) {
	srv := newTestRouter(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "reached") }))
	for _, target := range []string{"/fn/alice/fn/a\rb", "/fn/alice/fn/a b", "/fn/alice/fn/a\x01b", "/fn/alice/fn/?a\x7f"} {
		conn := srv.dial(t, 5*time.Second)
		fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", target)
		res, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatalf("%q: %v", target, err)
		}
		b, _ := io.ReadAll(res.Body)
		conn.Close()
		if res.StatusCode != 400 || !strings.Contains(string(b), "invalid_argument") {
			t.Fatalf("%q: %d %s", target, res.StatusCode, b)
		}
	}
}

// A function may answer before it reads the request's body (a 413 for an
// upload it will not take, say). The answer reaches the client even though
// the rest of the body is never delivered.
func TestForwardEarlyAnswerToLargeBody(t *testing.T) {
	srv := newTestRouter(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusRequestEntityTooLarge)
		io.WriteString(w, "too big for me")
	}))
	body := bytes.Repeat([]byte("x"), 16<<20)
	res, err := http.Post(srv.URL+"/fn/alice/fn/upload", "application/octet-stream", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	got, _ := io.ReadAll(res.Body)
	if res.StatusCode != http.StatusRequestEntityTooLarge || string(got) != "too big for me" || res.Header.Get("Spry-Error") != "" {
		t.Fatalf("got %d %q (Spry-Error %q), want the function's 413", res.StatusCode, got, res.Header.Get("Spry-Error"))
	}
}

// A function that streams its answer as it reads the body (an echo) gets
// the whole body, and the client the whole answer, though the answer's
// head comes first.
func TestForwardFullDuplexEcho(t *testing.T) {
	srv := newTestRouter(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := http.NewResponseController(w).EnableFullDuplex(); err != nil {
			t.Error(err)
		}
		w.WriteHeader(200)
		w.(http.Flusher).Flush()
		io.Copy(w, r.Body)
	}))
	for _, size := range []int{100, 1 << 20, 3 << 20} {
		body := bytes.Repeat([]byte("0123456789abcdef"), size/16)
		res, err := http.Post(srv.URL+"/fn/alice/fn/echo", "application/octet-stream", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(res.Body)
		res.Body.Close()
		if err != nil || res.StatusCode != 200 || !bytes.Equal(got, body) {
			t.Fatalf("%d bytes: status %d, echoed %d bytes (%v)", size, res.StatusCode, len(got), err)
		}
	}
}

// A stream begun before the (small) body was read, such as events
// answering a POST, reaches the client as it comes: the router reads ahead
// only while the body is still being sent.
func TestForwardEarlyStreamFlows(t *testing.T) {
	hold := make(chan struct{})
	defer close(hold)
	srv := newTestRouter(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(200)
		io.WriteString(w, "data: first\n\n")
		w.(http.Flusher).Flush()
		<-hold
	}))
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", srv.URL+"/fn/alice/fn/events", strings.NewReader(`{"prompt":"hi"}`))
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	line, err := bufio.NewReader(res.Body).ReadString('\n')
	if err != nil || line != "data: first\n" {
		t.Fatalf("first event: %q (%v)", line, err)
	}
}

// A function that streams its answer while it reads the body, then pauses
// once the body has ended, has its first piece reach the client during the
// pause: the read-ahead of an early answer ends with the body, not with
// the function's next piece. (And the body's first piece reaches the
// function before the rest is sent, else it would never answer.)
func TestForwardEarlyStreamPausesAfterBody(t *testing.T) {
	hold := make(chan struct{})
	defer close(hold)
	first := make(chan struct{})
	srv := newTestRouter(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := http.NewResponseController(w).EnableFullDuplex(); err != nil {
			t.Error(err)
		}
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(200)
		line, _ := bufio.NewReader(r.Body).ReadString('\n')
		io.WriteString(w, "data: "+line+"\n")
		w.(http.Flusher).Flush()
		close(first)
		io.Copy(io.Discard, r.Body)
		<-hold
	}))
	// A raw connection, as Go's client holds a body's pieces until its end.
	c := srv.dial(t, 3*time.Second)
	io.WriteString(c, "POST /fn/alice/fn/events HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n4\r\none\n\r\n")
	go func() {
		// The body goes on past the answer's first piece, longer than the
		// router waits for a body's end before it takes an answer as
		// early; then it ends, and the function says nothing more.
		<-first
		time.Sleep(3 * senderGrace)
		io.WriteString(c, "0\r\n\r\n")
	}()
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(res.Body)
	for _, want := range []string{"data: one\n", "\n"} {
		line, err := br.ReadString('\n')
		if err != nil || line != want {
			t.Fatalf("got %q (%v), want %q", line, err, want)
		}
	}
}

// Full duplex: a function that answers each line of the body as it comes
// has each answer reach the client before the client sends the next line,
// whether its answer is chunked (a stream) or of a length it gave, and for
// an HTTP/1.0 client, which gets the stream ended by the connection's end.
// (A body of a given length reaches the function only once its first 8
// KiB, or all of it, came: fasthttp reads that much before the handler
// runs. Clients that stream use chunks.)
func TestForwardFullDuplexLines(t *testing.T) {
	long := strings.Repeat("x", 8<<10-1) + "\n"
	srv := newTestRouter(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := http.NewResponseController(w).EnableFullDuplex(); err != nil {
			t.Error(err)
		}
		if r.URL.Path == "/fn/alice/fn/fixed" {
			w.Header().Set("Content-Length", "16")
		}
		w.WriteHeader(200)
		w.(http.Flusher).Flush()
		br := bufio.NewReader(r.Body)
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			io.WriteString(w, "got "+line)
			w.(http.Flusher).Flush()
		}
	}))
	for _, tc := range []struct {
		name, path, proto string
		chunked           bool
		lines             []string
	}{
		{"a stream", "/fn/alice/fn/stream", "HTTP/1.1", true, []string{"one\n", "two\n"}},
		{"an answer of a given length", "/fn/alice/fn/fixed", "HTTP/1.1", true, []string{"one\n", "two\n"}},
		{"HTTP/1.0", "/fn/alice/fn/stream", "HTTP/1.0", false, []string{long, "two\n"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := srv.dial(t, 5*time.Second)
			piece := func(s string) string {
				if tc.chunked {
					return fmt.Sprintf("%x\r\n%s\r\n", len(s), s)
				}
				return s
			}
			framing := "Transfer-Encoding: chunked"
			if !tc.chunked {
				framing = fmt.Sprintf("Content-Length: %d", len(strings.Join(tc.lines, "")))
			}
			fmt.Fprintf(c, "POST %s %s\r\nHost: a\r\n%s\r\n\r\n%s", tc.path, tc.proto, framing, piece(tc.lines[0]))
			res, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatal(err)
			}
			if res.StatusCode != 200 || !res.Close {
				b, _ := io.ReadAll(res.Body)
				t.Fatalf("status %d, close %v (%s); want 200 and the connection's end after it", res.StatusCode, res.Close, b)
			}
			br := bufio.NewReader(res.Body)
			for i, line := range tc.lines {
				if i > 0 {
					// The next line only once the answer to the last came.
					io.WriteString(c, piece(line))
				}
				got, err := br.ReadString('\n')
				if err != nil || got != "got "+line {
					t.Fatalf("got %.40q (%v), want %.40q", got, err, "got "+line)
				}
			}
			if tc.chunked {
				io.WriteString(c, "0\r\n\r\n")
			}
			if rest, err := io.ReadAll(br); err != nil || len(rest) != 0 {
				t.Fatalf("after the body's end: %q (%v), want the answer's end", rest, err)
			}
		})
	}
}

// A request the function received is never sent again, even on a
// kept-alive connection: here the instance reads the second request and
// drops the connection without answering (as a crash mid-request does).
func TestForwardNeverReplaysDelivered(t *testing.T) {
	var calls atomic.Int32
	srv := newTestRouter(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) == 1 {
			io.WriteString(w, "first")
			return
		}
		c, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			c.Close()
		}
	}))
	for i, want := range []int{200, 502} {
		res, err := http.Post(srv.URL+"/fn/alice/fn/", "text/plain", nil)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if res.StatusCode != want {
			t.Fatalf("request %d: %d, want %d", i, res.StatusCode, want)
		}
	}
	if n := calls.Load(); n != 2 {
		t.Fatalf("the function ran %d times for 2 requests", n)
	}
}

// An instance that answers one request twice must not have its extra
// answer given to the next request (a desync): a connection with bytes
// left over after an answer is closed, not pooled.
func TestForwardDropsConnectionWithLeftovers(t *testing.T) {
	sock := serveRawRequests(t, func(i int, c net.Conn) {
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n%cHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nX", 'A'+i)
	})
	srv := routerTo(t, sock, time.Millisecond)
	for i := 0; i < 3; i++ {
		res, err := http.Get(srv.URL + "/fn/alice/fn/")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if string(b) != "A" {
			t.Fatalf("request %d got %q, an answer meant for another request", i, b)
		}
	}
}

// A chunked body cut off before its last chunk never reaches the function
// as a whole body: the client gets 400 and its connection closes.
func TestForwardTruncatedChunkedBody(t *testing.T) {
	srv := newTestRouter(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := io.ReadAll(r.Body); err == nil {
			t.Error("the function read a cut-off body as whole")
		}
	}))
	c := srv.dial(t, 5*time.Second)
	io.WriteString(c, "POST /fn/alice/fn/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
	_ = c.(*net.TCPConn).CloseWrite()
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 400 || !res.Close {
		t.Fatalf("status %d, close %v; want 400 and close", res.StatusCode, res.Close)
	}
}

// An instance whose listen queue is full is alive, only behind on
// accepting (a burst of new connections, or a function that blocks its
// event loop): a Unix socket then refuses a connection at once, where
// TCP would wait. The router waits for room, as a TCP connect would; it
// neither fails the request nor takes the instance for dead.
func TestFullListenQueueWaits(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "s.sock")
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Bind(fd, &syscall.SockaddrUnix{Name: sock}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 1); err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), sock)
	ln, err := net.FileListener(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	// Fill the queue.
	var fillers []int
	defer func() {
		for _, c := range fillers {
			syscall.Close(c)
		}
	}()
	for {
		c, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := syscall.Connect(c, &syscall.SockaddrUnix{Name: sock}); err != nil {
			syscall.Close(c)
			if err != syscall.EAGAIN {
				t.Fatal(err)
			}
			break
		}
		fillers = append(fillers, c)
	}

	b := &upstreamBackend{addr: sock}
	spec := &backend.Spec{FunctionID: "f", Owner: "alice", Name: "fn", Version: 1, Concurrency: 100, Timeout: 5 * time.Second}
	srv := serveRouter(t, New(oneSpec{spec}, activator.New(b, activator.Config{}), Config{}))
	defer srv.Close()
	type result struct {
		status int
		err    error
	}
	done := make(chan result, 1)
	go func() {
		res, err := http.Get(srv.URL + "/fn/alice/fn/")
		if err != nil {
			done <- result{err: err}
			return
		}
		res.Body.Close()
		done <- result{status: res.StatusCode}
	}()
	select {
	case r := <-done:
		t.Fatalf("answered (%d, %v) while the instance's queue was full", r.status, r.err)
	case <-time.After(300 * time.Millisecond):
	}
	// The instance catches up.
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "late") })}
	go hs.Serve(ln)
	defer hs.Close()
	r := <-done
	if r.err != nil || r.status != 200 || b.kills.Load() != 0 {
		t.Fatalf("status %d, err %v, %d kills; want 200 and no kill", r.status, r.err, b.kills.Load())
	}
}

// withFileLimit runs f with exactly extra descriptors left to open. The
// limit bounds descriptor numbers, and a new one takes the lowest free
// number, so the gaps below the highest open one are filled first.
func withFileLimit(t *testing.T, extra int, f func()) {
	t.Helper()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	top := 0
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range fds {
		if n, err := strconv.Atoi(e.Name()); err == nil && n > top {
			top = n
		}
	}
	var fillers []int
	defer func() {
		for _, fd := range fillers {
			syscall.Close(fd)
		}
	}()
	for {
		fd, err := syscall.Open("/dev/null", syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		if fd > top {
			syscall.Close(fd) // the lowest free number is past every open one
			break
		}
		fillers = append(fillers, fd)
	}
	low := lim
	low.Cur = uint64(top + 1 + extra)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			t.Fatal(err)
		}
	}()
	f()
}

// When the router itself is out of descriptors, a request it cannot send
// on gets 503 with Retry-After, and the instance is not taken for dead.
func TestOutOfDescriptorsAnswers503(t *testing.T) {
	b := &upstreamBackend{addr: serveUnix(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))}
	spec := &backend.Spec{FunctionID: "f", Owner: "alice", Name: "fn", Version: 1, Concurrency: 100, Timeout: 5 * time.Second}
	srv := serveRouter(t, New(oneSpec{spec}, activator.New(b, activator.Config{}), Config{}))
	defer srv.Close()
	var res *http.Response
	// One descriptor for the client's end and one for the server's: none
	// is left to reach the instance with.
	withFileLimit(t, 2, func() {
		c := dialRaw(t, srv.URL)
		res = c.get("/")
		c.Close()
	})
	if res.StatusCode != 503 || res.Header.Get("Retry-After") == "" || b.kills.Load() != 0 {
		t.Fatalf("status %d, Retry-After %q, %d kills; want 503, set, 0", res.StatusCode, res.Header.Get("Retry-After"), b.kills.Load())
	}
	// With descriptors back, it serves.
	c := dialRaw(t, srv.URL)
	if res := c.get("/"); res.StatusCode != 200 {
		t.Fatalf("afterwards: status %d", res.StatusCode)
	}
}

// Some of a response head is the router's to say: a function's own
// Spry-Cold-Start goes (only the router knows what was a cold start), as
// does its Spry-Error (which marks the platform's errors), and
// so does a length on a 204, which would have a proxy in front read the
// next response as its body.
func TestForwardHeadFieldsTheRouterOwns(t *testing.T) {
	sock := serveRawRequests(t, func(i int, c net.Conn) {
		if i == 0 {
			fmt.Fprint(c, "HTTP/1.1 204 No Content\r\nContent-Length: 40\r\nSpry-Cold-Start: 12345\r\nSpry-Error: timeout\r\n\r\n")
			return
		}
		fmt.Fprint(c, "HTTP/1.1 200 OK\r\nSpry-Cold-Start: 1\r\nSpry-Error: timeout\r\nContent-Length: 2\r\n\r\nok")
	})
	srv := routerTo(t, sock, time.Millisecond)
	c := srv.dial(t, 5*time.Second)
	br := bufio.NewReader(c)
	for i := range 2 {
		fmt.Fprint(c, "GET /fn/alice/fn/ HTTP/1.1\r\nHost: a\r\n\r\n")
		var head strings.Builder
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				t.Fatalf("response %d: %v after %q", i, err, head.String())
			}
			head.WriteString(line)
			if line == "\r\n" {
				break
			}
		}
		h := strings.ToLower(head.String())
		// (A cold start's own header, from the router, may come.)
		if strings.Contains(h, "spry-cold-start: 12345\r\n") || strings.Contains(h, "spry-cold-start: 1\r\n") {
			t.Errorf("response %d kept the function's Spry-Cold-Start:\n%s", i, head.String())
		}
		if strings.Contains(h, "spry-error") {
			t.Errorf("response %d kept the function's Spry-Error:\n%s", i, head.String())
		}
		if i == 0 {
			if !strings.HasPrefix(h, "http/1.1 204") || strings.Contains(h, "content-length: 40") {
				t.Errorf("the 204 is:\n%s", head.String())
			}
			continue
		}
		if body := make([]byte, 2); !strings.HasPrefix(h, "http/1.1 200") {
			t.Errorf("response %d is:\n%s", i, head.String())
		} else if _, err := io.ReadFull(br, body); err != nil || string(body) != "ok" {
			t.Errorf("response %d body %q, %v", i, body, err)
		}
	}
}

// The runtime's own error answers (a handler that threw, a module that
// did not load) carry the instance's error mark: their Spry-Error stays,
// so that clients (spry invoke, asynchronous invocations) take them for
// the platform's; a Spry-Error with another mark, or none, is the
// function's and goes. The mark never reaches the client.
func TestForwardKeepsRuntimeErrors(t *testing.T) {
	const mark = "MARK0123456789ABCDEFGHIJKL"
	for _, tc := range []struct {
		name, fields string
		want         string // the Spry-Error the client gets
	}{
		{"marked", "Spry-Error: function_error\r\nSpry-Error-Mark: " + mark + "\r\n", "function_error"},
		{"mark first", "Spry-Error-Mark: " + mark + "\r\nSpry-Error: function_failed\r\n", "function_failed"},
		{"another mark", "Spry-Error: function_error\r\nSpry-Error-Mark: " + mark[:25] + "X\r\n", ""},
		{"empty mark", "Spry-Error: function_error\r\nSpry-Error-Mark: \r\n", ""},
		{"no mark", "Spry-Error: function_error\r\n", ""},
		{"a mark alone", "Spry-Error-Mark: " + mark + "\r\n", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sock := serveRawRequests(t, func(i int, c net.Conn) {
				fmt.Fprintf(c, "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\n%sContent-Length: 2\r\n\r\n{}", tc.fields)
			})
			spec := &backend.Spec{FunctionID: "f", Owner: "alice", Name: "fn", Version: 1, Concurrency: 100, Timeout: 5 * time.Second}
			act := activator.New(&upstreamBackend{addr: sock, mark: mark}, activator.Config{})
			srv := serveRouter(t, New(oneSpec{spec}, act, Config{}))
			for i := range 2 { // a cold start, then a warm request
				res, err := http.Get(srv.URL + "/fn/alice/fn/")
				if err != nil {
					t.Fatal(err)
				}
				res.Body.Close()
				if res.StatusCode != 500 || res.Header.Get("Spry-Error") != tc.want || res.Header.Get("Spry-Error-Mark") != "" {
					t.Fatalf("request %d: got %d, Spry-Error %q, Spry-Error-Mark %q; want 500, %q, none",
						i, res.StatusCode, res.Header.Get("Spry-Error"), res.Header.Get("Spry-Error-Mark"), tc.want)
				}
			}
		})
	}
}

// The client's status line has the standard reason phrase for the
// status, whatever the instance wrote there: Deno and Node write
// different ones (Node a function's statusText, or "unknown" for a code
// it has none for), and a function may write any bytes in it (a bare CR,
// obs-text), which must not reach the client.
func TestStandardReasonPhrase(t *testing.T) {
	for _, tc := range []struct{ name, line, want string }{
		{"custom", "HTTP/1.1 200 Fine", "HTTP/1.1 200 OK"},
		{"bare CR", "HTTP/1.1 200 Fi\rne: x", "HTTP/1.1 200 OK"},
		{"obs-text and a control byte", "HTTP/1.1 404 Nope\xff\x01", "HTTP/1.1 404 Not Found"},
		{"another case", "HTTP/1.1 418 I'm a Teapot", "HTTP/1.1 418 I'm a teapot"},
		{"none", "HTTP/1.1 201", "HTTP/1.1 201 Created"},
		{"empty", "HTTP/1.1 503 ", "HTTP/1.1 503 Service Unavailable"},
		{"a code with none", "HTTP/1.1 599 unknown", "HTTP/1.1 599 Unknown Status Code"},
	} {
		for _, body := range []struct{ name, head, body string }{
			{"length", "Content-Length: 2\r\n", "ok"},
			{"chunked", "Transfer-Encoding: chunked\r\n", "2\r\nok\r\n0\r\n\r\n"},
		} {
			t.Run(tc.name+"/"+body.name, func(t *testing.T) {
				sock := serveRawRequests(t, func(i int, c net.Conn) {
					io.WriteString(c, tc.line+"\r\n"+body.head+"\r\n"+body.body)
				})
				srv := routerTo(t, sock, time.Millisecond)
				c, err := net.Dial("tcp", strings.TrimPrefix(srv.URL, "http://"))
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				io.WriteString(c, "GET /fn/alice/fn/ HTTP/1.1\r\nHost: t\r\n\r\n")
				br := bufio.NewReader(c)
				line, err := br.ReadString('\n')
				if err != nil || line != tc.want+"\r\n" {
					t.Fatalf("status line %q (%v), want %q", line, err, tc.want+"\r\n")
				}
				res, err := http.ReadResponse(bufio.NewReader(io.MultiReader(strings.NewReader(line), br)), nil)
				if err != nil {
					t.Fatal(err)
				}
				if b, err := io.ReadAll(res.Body); err != nil || string(b) != "ok" {
					t.Fatalf("body %q (%v)", b, err)
				}
			})
		}
	}
}

// An answer with Content-Length twice, at different values, is refused
// (502): the router and a proxy in front would frame its body
// differently. The same value repeated is one length.
func TestConflictingContentLengths(t *testing.T) {
	for _, tc := range []struct {
		name, answer string
		status       int
		body         string
	}{
		{"differing", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\ncontent-length: 5\r\n\r\nhello", 502, ""},
		{"differing, apart", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\nContent-Length:2\r\n\r\nhello", 502, ""},
		{"repeated", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length:  2\r\n\r\nok", 200, "ok"},
		{"one", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 200, "ok"},
		// (Passed on as they are, a proxy in front may frame by them.)
		{"a space before the colon", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length : 5\r\n\r\nok", 502, ""},
		{"a spaced Transfer-Encoding", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding : chunked\r\n\r\nok", 502, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sock := serveRawRequests(t, func(i int, c net.Conn) { fmt.Fprint(c, tc.answer) })
			srv := routerTo(t, sock, time.Millisecond)
			res, err := http.Get(srv.URL + "/fn/alice/fn/")
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			b, _ := io.ReadAll(res.Body)
			if res.StatusCode != tc.status || (tc.body != "" && string(b) != tc.body) {
				t.Fatalf("got %d %q, want %d %q", res.StatusCode, b, tc.status, tc.body)
			}
		})
	}
}

func TestAmbiguousHeads(t *testing.T) {
	for head, want := range map[string]bool{
		"HTTP/1.1 200 OK\r\n\r\n":                                            false,
		"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n":                       false,
		"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n":  false,
		"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nCONTENT-LENGTH: 2\r\n\r\n":  true,
		"HTTP/1.1 200 OK\nContent-Length: 1\nContent-Length: 3\n\n":          true,
		"HTTP/1.1 200 OK\r\nContent-Type: 1\r\nContent-Length: 2\r\n\r\n":    false,
		"HTTP/1.1 200 OK\r\nContent-Lengthy: 1\r\nContent-Length: 2\r\n\r\n": false,
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length : 5\r\n\r\n": true,
		"HTTP/1.1 200 OK\r\nTransfer-Encoding : chunked\r\n\r\n":             true,
		"HTTP/1.1 200 OK\r\nX A: b\r\n\r\n":                                  true,
		"HTTP/1.1 200 OK: yes\r\nX-A: b c: d\r\nX-B: a\r\n e : f\r\n\r\n":    false,
		"\r\nHTTP/1.1 200 OK: yes\r\nContent-Length: 1\r\n\r\n":              false,
	} {
		if got := ambiguousHead([]byte(head)); got != want {
			t.Errorf("ambiguousHead(%q) = %v, want %v", head, got, want)
		}
	}
}

// BenchmarkConflictingLengths: the look every answer's head gets.
func BenchmarkConflictingLengths(b *testing.B) {
	head := []byte("HTTP/1.1 200 OK\r\ncontent-type: text/plain;charset=UTF-8\r\nvary: Accept-Encoding\r\ncontent-length: 2\r\ndate: Mon, 23 Nov 2026 18:00:00 GMT\r\n\r\n")
	for b.Loop() {
		if ambiguousHead(head) {
			b.Fatal("conflict")
		}
	}
}

// An answer whose first line is not a status line is refused at once
// (502), though the instance holds its connection open: the look for
// differing Content-Lengths must not wait for a head that never ends
// (that made it a 504 at the function's timeout).
func TestGarbageAnswerHeldOpenIs502(t *testing.T) {
	hold := make(chan struct{})
	sock := serveRawRequests(t, func(i int, c net.Conn) {
		fmt.Fprint(c, "garbage\r\n")
		<-hold
	})
	t.Cleanup(func() { close(hold) })
	srv := routerTo(t, sock, time.Millisecond)
	res, err := http.Get(srv.URL + "/fn/alice/fn/")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 502 {
		t.Fatalf("got %d, want 502", res.StatusCode)
	}
}

// lateLeaser leases from the activator once the request's time is up when
// late is set: as when a request waited in the queue to its deadline and
// capacity freed just then.
type lateLeaser struct {
	*activator.Activator
	late atomic.Bool
}

func (l *lateLeaser) Acquire(ctx context.Context, spec *backend.Spec) (*activator.Lease, error) {
	if done := ctx.Done(); done != nil && l.late.Load() {
		<-done
	}
	return l.Activator.Acquire(context.Background(), spec)
}

// A request whose time ran out before it reached the instance (it waited
// that long for one) gets 504, and the instance, which never saw it, is
// not killed for stuck: that would fail every other request it serves.
func TestTimeoutBeforeDeliveryKeepsTheInstance(t *testing.T) {
	for _, tc := range []struct {
		name, request string
		warm          bool // a kept-alive connection to the instance waits in the pool
	}{
		{"no body", "GET /fn/alice/fn/ HTTP/1.1\r\nHost: x\r\n\r\n", false},
		{"no body, kept-alive connection", "GET /fn/alice/fn/ HTTP/1.1\r\nHost: x\r\n\r\n", true},
		{"with a body", "POST /fn/alice/fn/ HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var calls atomic.Int32
			b := &upstreamBackend{addr: serveUnix(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				calls.Add(1)
				io.ReadAll(r.Body)
				io.WriteString(w, "ok")
			}))}
			spec := &backend.Spec{FunctionID: "f", Owner: "alice", Name: "fn", Version: 1, Concurrency: 100, Timeout: 50 * time.Millisecond}
			leaser := &lateLeaser{Activator: activator.New(b, activator.Config{})}
			rt := New(oneSpec{spec}, leaser, Config{})
			// The path under test is the serving goroutine's, with no
			// event loop in front.
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			srv := httpserve.New(rt.Handle, nil)
			go srv.Serve(httpserve.Listener(ln, time.Millisecond, nil))
			t.Cleanup(func() { _ = srv.Shutdown() })
			url := "http://" + ln.Addr().String()
			if tc.warm {
				c := dialRaw(t, url)
				if res := c.get("/"); res.StatusCode != 200 {
					t.Fatalf("warm-up: status %d", res.StatusCode)
				}
				c.Close()
			}
			n := calls.Load()
			leaser.late.Store(true)
			c := dialRaw(t, url)
			c.send(tc.request)
			if res := c.response(); res.StatusCode != 504 {
				t.Fatalf("status %d, want 504", res.StatusCode)
			}
			if k := b.kills.Load(); k != 0 || calls.Load() != n {
				t.Fatalf("%d kills, the function ran %d times; want the instance untouched", k, calls.Load()-n)
			}
		})
	}
}

// An instance whose listen queue stays full until the request's time is
// up is alive, only behind (a burst of connections, or a function
// blocking its event loop): the request gets 504, and the instance is not
// killed as crashed nor the request sent to another; it is probed, as
// after any timeout, and kept when its runtime answers.
func TestFullListenQueueUntilTheTimeoutIs504(t *testing.T) {
	path := filepath.Join(t.TempDir(), "full.sock")
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	// A backlog of 0 holds one connection; nothing accepts it.
	if err := unix.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	for {
		c, err := net.Dial("unix", path)
		if errors.Is(err, syscall.EAGAIN) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
	}
	probed := make(chan struct{}, 1)
	b := &upstreamBackend{addr: path, probe: func(context.Context) error { probed <- struct{}{}; return nil }}
	spec := &backend.Spec{FunctionID: "f", Owner: "alice", Name: "fn", Version: 1, Concurrency: 100, Timeout: 300 * time.Millisecond}
	a := activator.New(b, activator.Config{})
	rt := New(oneSpec{spec}, a, Config{})
	s := serveRouter(t, rt)
	res, err := http.Get(s.URL + "/fn/alice/fn/")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 504 {
		t.Fatalf("status %d, want 504", res.StatusCode)
	}
	select {
	case <-probed:
	case <-time.After(5 * time.Second):
		t.Fatal("the instance was not probed after the timeout")
	}
	if k, n := b.kills.Load(), b.starts.Load(); k != 0 || n != 1 {
		t.Fatalf("%d kills, %d starts: want the one instance kept", k, n)
	}
}

// Headers the client's Connection names stay behind, as hop-by-hop ones,
// but never Host: the function is promised the client's Host.
func TestConnectionCannotDropHost(t *testing.T) {
	srv := newTestRouter(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s|%s", r.Host, r.Header.Get("X-Hop"))
	}))
	c := dialRaw(t, srv.URL)
	c.send("GET /fn/alice/fn/ HTTP/1.1\r\nHost: example.test\r\nConnection: keep-alive, Host, X-Hop\r\nX-Hop: gone\r\n\r\n")
	res := c.response()
	body, _ := io.ReadAll(res.Body)
	if res.StatusCode != 200 || string(body) != "example.test|" {
		t.Fatalf("got %d %q, want 200 %q", res.StatusCode, body, "example.test|")
	}
}

// An absolute-form target's host is the one the function sees, not the
// Host field's (RFC 9112 §3.2.2); a target whose host a Host could not be
// is refused.
func TestAbsoluteFormTargetsHost(t *testing.T) {
	srv := newTestRouter(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s|%s|%s", r.Host, r.Header.Get("X-Forwarded-Host"), r.URL.Path)
	}))
	for _, tt := range []struct {
		target string
		status int
		want   string
	}{
		{"http://target.test/fn/alice/fn/x", 200, "target.test|target.test|/x"},
		{"http://target.test:8080/fn/alice/fn/x?q=1", 200, "target.test:8080|target.test:8080|/x"},
		{"http://user@target.test/fn/alice/fn/x", 400, ""},
		{"http:///fn/alice/fn/x", 400, ""},
	} {
		c := dialRaw(t, srv.URL)
		c.send("GET " + tt.target + " HTTP/1.1\r\nHost: field.test\r\n\r\n")
		res := c.response()
		body, _ := io.ReadAll(res.Body)
		if res.StatusCode != tt.status || tt.status == 200 && string(body) != tt.want {
			t.Errorf("%s: got %d %q, want %d %q", tt.target, res.StatusCode, body, tt.status, tt.want)
		}
	}
}

// staleOnce resolves to old once, as a resolver would just before a
// deploy, and to cur from then on.
type staleOnce struct {
	old, cur *backend.Spec
	used     atomic.Bool
}

func (s *staleOnce) Resolve(ctx context.Context, owner, name, tag string) (*backend.Spec, error) {
	if s.used.CompareAndSwap(false, true) {
		return s.old, nil
	}
	return s.cur, nil
}
func (s *staleOnce) Invoked(*backend.Spec)                        {}
func (s *staleOnce) Cached(owner, name, tag string) *backend.Spec { return nil }

type accessVersions chan int64

func (a accessVersions) Access(x Access) { a <- x.Spec.Version }

// A request whose version a deploy retired between its resolving and its
// lease is served by the version now live, and logged as served by it.
func TestRetiredVersionLogsTheVersionThatServed(t *testing.T) {
	sock := serveUnix(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	v1 := &backend.Spec{FunctionID: "f", Owner: "alice", Name: "fn", Version: 1, Concurrency: 100, Timeout: 5 * time.Second}
	v2 := *v1
	v2.Version = 2
	act := activator.New(&upstreamBackend{addr: sock}, activator.Config{})
	act.RetireExcept(v1.FunctionID, v2.Key())
	versions := make(accessVersions, 1)
	srv := serveRouter(t, New(&staleOnce{old: v1, cur: &v2}, act, Config{Access: versions}))
	res, err := http.Get(srv.URL + "/fn/alice/fn/")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 200 {
		t.Fatalf("status %d", res.StatusCode)
	}
	if v := <-versions; v != 2 {
		t.Fatalf("access line names version %d, want 2 (the one that served)", v)
	}
}

// A client that never reads its answer has it cut at the function's
// timeout, on either path, of a known length or not: the invocation ends
// (logged, its lease and the instance's connection let go). On the
// goroutine path the server wrote the
// body with no deadline, so once the client's socket was full the write
// blocked for as long as the client kept its connection: the instance's
// slot, its connection and the function's request held for good, by
// a client that did nothing.
func TestClientThatNeverReadsIsCutAtTheTimeout(t *testing.T) {
	for _, known := range []bool{false, true} {
		ended := make(chan struct{}, 1)
		b := &upstreamBackend{}
		b.addr = serveUnix(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			defer func() { ended <- struct{}{} }()
			if known {
				w.Header().Set("Content-Length", strconv.Itoa(1<<40))
			}
			piece := make([]byte, 64<<10)
			for {
				if _, err := w.Write(piece); err != nil {
					return
				}
				w.(http.Flusher).Flush()
			}
		}))
		c, access := dialRouter(t, b, 300*time.Millisecond)
		_ = c.(*net.TCPConn).SetReadBuffer(4 << 10)
		io.WriteString(c, "GET /fn/alice/fn/ HTTP/1.1\r\nHost: x\r\n\r\n")
		select {
		case <-access:
		case <-time.After(5 * time.Second):
			t.Fatalf("known length %v: the invocation did not end at its timeout", known)
		}
		select {
		case <-ended:
		case <-time.After(5 * time.Second):
			t.Fatalf("known length %v: the function's request did not end", known)
		}
		// And the router lets the client go: it closes its side, rather
		// than keep the connection while the client reads what is left
		// at its pace (the kernel sends what it holds, then the end).
		for deadline := time.Now().Add(5 * time.Second); routerSideOpen(t, c); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("known length %v: the router keeps the client's connection after its answer was cut", known)
			}
		}
	}
}

// routerSideOpen says whether the router's end of c is still open: its
// socket (the one whose local address is c's remote one) is ESTABLISHED
// in /proc/net/tcp, not closed and in FIN-WAIT.
func routerSideOpen(t *testing.T, c net.Conn) bool {
	t.Helper()
	hexAddr := func(a net.Addr) string {
		ta := a.(*net.TCPAddr)
		ip := ta.IP.To4()
		return fmt.Sprintf("%02X%02X%02X%02X:%04X", ip[3], ip[2], ip[1], ip[0], ta.Port)
	}
	local, remote := hexAddr(c.RemoteAddr()), hexAddr(c.LocalAddr())
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n")[1:] {
		if f := strings.Fields(line); len(f) > 3 && f[1] == local && f[2] == remote {
			return f[3] == "01"
		}
	}
	return false
}

// An instance that ends with connections idle in the pool (it served a
// request, then scaled to zero or was deleted) has them closed, and its
// entry dropped, though no request for it ever comes again: they were
// kept for good, an fd and two buffers each per instance ever served.
func TestPoolClosesAnEndedInstancesIdleConnections(t *testing.T) {
	for _, n := range []int{1, 3} {
		t.Run(fmt.Sprint(n, " idle"), func(t *testing.T) {
			p := pool{idle: map[string][]*upConn{}}
			inst := backend.NewInstance("i-1", &backend.Spec{FunctionID: "f"}, "unix", "")
			var peers []net.Conn
			for range n {
				a, b := net.Pipe()
				peers = append(peers, b)
				p.put(inst, &upConn{conn: a, br: readerPool.Get().(*bufio.Reader), bw: writerPool.Get().(*bufio.Writer)})
			}
			inst.Finish(backend.Exit{})
			for i, b := range peers {
				_ = b.SetReadDeadline(time.Now().Add(5 * time.Second))
				if _, err := b.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
					t.Fatalf("idle connection %d: read %v, want EOF (closed once its instance ended)", i, err)
				}
			}
			p.mu.Lock()
			defer p.mu.Unlock()
			if cs, ok := p.idle[inst.ID]; ok {
				t.Fatalf("the ended instance still has an entry in the pool (%d connections)", len(cs))
			}
		})
	}
}

// A public function never sees a Spry token in Authorization, whoever
// sent it (spry invoke sends one to a function the API said was private,
// which may be public by the time of the call); its own tokens, of
// another shape, reach it as they came.
func TestSpryTokenNeverReachesAFunction(t *testing.T) {
	srv := newTestRouter(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, strings.Join(r.Header.Values("Authorization"), "|"))
	}))
	spry := "spry_0123456789abcdef_" + strings.Repeat("Ab-_", 10) + "xyz"
	for _, c := range []struct{ sent, want string }{
		{"Bearer " + spry, ""},
		{"bearer " + spry, ""},
		{"Bearer my-own-token", "Bearer my-own-token"},
		{"Basic " + spry, "Basic " + spry},
	} {
		conn := dialRaw(t, srv.URL)
		conn.send("GET /fn/alice/fn/ HTTP/1.1\r\nHost: h\r\nAuthorization: " + c.sent + "\r\n\r\n")
		if got := body(conn.response()); got != c.want {
			t.Errorf("sent %q: the function saw %q, want %q", c.sent, got, c.want)
		}
	}
}

// A target's bytes past ASCII reach the instance percent-encoded, as
// URL parsing encodes them (Node's parser refuses them raw); the rest of
// it as sent.
func TestAppendTarget(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"/a/b", "/a/b"},
		{"", ""},
		{"/caf\xc3\xa9", "/caf%C3%A9"},
		{"x=\xc3\xa9&y=%C3%A9", "x=%C3%A9&y=%C3%A9"},
		{"/a/../b\\c<\"'>", "/a/../b\\c<\"'>"},
		{"\xf0\x9f\x98\x80", "%F0%9F%98%80"},
	} {
		if got := string(appendTarget([]byte("GET "), tc.in)); got != "GET "+tc.want {
			t.Errorf("%q: got %q, want %q", tc.in, got, "GET "+tc.want)
		}
	}
}
