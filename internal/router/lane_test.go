package router

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/spry-run/spry/internal/activator"
	"github.com/spry-run/spry/internal/backend"
	"github.com/spry-run/spry/internal/httpserve"
)

// The whole router suite runs through the lane (see viaLane); these tests
// are about what only the lane does: which requests it serves in place,
// and how it hands the others over.

func laneRouter(t *testing.T, h http.Handler) *testServer {
	t.Helper()
	if !*viaLane {
		t.Skip("the lane is off (-lane=false)")
	}
	srv := newTestRouter(t, h)
	return srv
}

func echo() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Header().Set("X-Path", r.URL.Path)
		_, _ = w.Write(b)
	})
}

// rawConn is a client connection to a test server: requests written
// raw, answers read with Go's parser.
type rawConn struct {
	net.Conn
	t  testing.TB
	br *bufio.Reader
}

func dialRaw(t testing.TB, url string) *rawConn {
	t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	return &rawConn{Conn: c, t: t, br: bufio.NewReader(c)}
}

func (c *rawConn) send(raw string) {
	if _, err := io.WriteString(c.Conn, raw); err != nil {
		c.t.Fatal(err)
	}
}

// ended checks that nothing follows on the connection but its end
// (what names the case in the error).
func (c *rawConn) ended(what string) {
	c.t.Helper()
	if rest, err := io.ReadAll(c.br); err != nil || len(rest) > 0 {
		c.t.Errorf("%s: then %q, %v; want the connection's end", what, rest, err)
	}
}

// refused reads the next answer and fails the test unless it is a 400
// whose body says why (holds because, "" for any) and that closes the
// connection.
func (c *rawConn) refused(what, because string) {
	c.t.Helper()
	c.refusedWith(what, 400, because)
}

// refusedWith is refused with another status than 400.
func (c *rawConn) refusedWith(what string, status int, because string) {
	c.t.Helper()
	res := c.response()
	b := body(res)
	if res.StatusCode != status || !strings.Contains(b, because) || !res.Close {
		c.t.Errorf("%s: %d %s (close %v); want %d for %q, and the connection closed", what, res.StatusCode, b, res.Close, status, because)
	}
}

// response reads the next answer; its body is left to read.
func (c *rawConn) response() *http.Response {
	c.t.Helper()
	res, err := http.ReadResponse(c.br, nil)
	if err != nil {
		c.t.Fatal(err)
	}
	return res
}

// get asks for /fn/alice/fn<path> and reads the answer.
func (c *rawConn) get(path string) *http.Response {
	c.send("GET /fn/alice/fn" + path + " HTTP/1.1\r\nHost: h\r\n\r\n")
	return c.response()
}

// exchange writes raw (in pieces, with a pause between) on a fresh
// connection and reads n responses.
func exchange(t *testing.T, url string, n int, raw ...string) []*http.Response {
	t.Helper()
	c := dialRaw(t, url)
	for i, p := range raw {
		if i > 0 {
			time.Sleep(50 * time.Millisecond)
		}
		c.send(p)
	}
	var out []*http.Response
	for i := 0; i < n; i++ {
		res := c.response()
		b, _ := io.ReadAll(res.Body)
		res.Body = io.NopCloser(strings.NewReader(string(b)))
		out = append(out, res)
	}
	return out
}

func body(res *http.Response) string {
	b, _ := io.ReadAll(res.Body)
	return string(b)
}

func TestLaneServesInPlaceOrHandsOver(t *testing.T) {
	big := strings.Repeat("x", laneMaxBody+1)
	tests := []struct {
		name    string
		raw     []string
		status  int
		body    string
		handoff string // "" when served in the loop
	}{
		{"GET", []string{"GET /fn/alice/fn/a?q=1 HTTP/1.1\r\nHost: h\r\n\r\n"}, 200, "", ""},
		{"small body", []string{"POST /fn/alice/fn/a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"}, 200, "hello", ""},
		{"body over the lane's limit", []string{"POST /fn/alice/fn/a HTTP/1.1\r\nHost: h\r\nContent-Length: 4097\r\n\r\n" + big}, 200, big, "body"},
		{"chunked body", []string{"POST /fn/alice/fn/a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"}, 200, "hi", "body"},
		{"HTTP/1.0", []string{"GET /fn/alice/fn/a HTTP/1.0\r\nHost: h\r\n\r\n"}, 200, "", ""},
		{"HTTP/1.0 body", []string{"POST /fn/alice/fn/a HTTP/1.0\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi"}, 200, "hi", ""},
		// (The slow path gives it the address it reached as its Host.)
		{"HTTP/1.0 without Host", []string{"GET /fn/alice/fn/a HTTP/1.0\r\n\r\n"}, 200, "", "protocol"},
		{"HTTP/1.1 without Host", []string{"GET /fn/alice/fn/a HTTP/1.1\r\n\r\n"}, 400, "", "malformed"},
		{"HTTP/1.1 with an empty Host", []string{"GET /fn/alice/fn/a HTTP/1.1\r\nHost: \r\n\r\n"}, 400, "", "malformed"},
		{"Connection: close", []string{"GET /fn/alice/fn/a HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"}, 200, "", ""},
		{"not a function", []string{"GET /api/v1/x HTTP/1.1\r\nHost: h\r\n\r\n"}, 404, "", "not_function"},
		{"head in two writes", []string{"GET /fn/alice/fn/a HTTP/1.1\r\n", "Host: h\r\n\r\n"}, 200, "", "head"},
		{"body in a second write", []string{"POST /fn/alice/fn/a HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n", "hi"}, 200, "hi", "body"},
		{"broken escape", []string{"GET /fn/alice/fn/% HTTP/1.1\r\nHost: h\r\n\r\n"}, 400, "", "malformed"},
		{"raw UTF-8 in the path", []string{"GET /fn/alice/fn/caf\xc3\xa9 HTTP/1.1\r\nHost: h\r\n\r\n"}, 200, "", ""},
		{"bytes that are not UTF-8 in the path", []string{"GET /fn/alice/fn/\xff HTTP/1.1\r\nHost: h\r\n\r\n"}, 400, "", "malformed"},
		{"a malformed chunk size", []string{"POST /fn/alice/fn/a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"}, 400, "", "body"},
		{"a chunk without its CRLF", []string{"POST /fn/alice/fn/a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhiX\r\n0\r\n\r\n"}, 400, "", "body"},
		{"Transfer-Encoding: identity", []string{"POST /fn/alice/fn/a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: identity\r\n\r\nGET /fn/alice/fn/smuggled HTTP/1.1\r\nHost: h\r\n\r\n"}, 400, "", "malformed"},
		{"too many header fields", []string{"GET /fn/alice/fn/a HTTP/1.1\r\nHost: h\r\n" + strings.Repeat("X-A: b\r\n", 100) + "\r\n"}, 431, "", "malformed"},
		{"as many header fields as allowed", []string{"GET /fn/alice/fn/a HTTP/1.1\r\nHost: h\r\n" + strings.Repeat("X-A: b\r\n", 99) + "\r\n"}, 200, "", ""},
		{"two Hosts", []string{"GET /fn/alice/fn/a HTTP/1.1\r\nHost: h\r\nhost: i\r\n\r\n"}, 400, "", "malformed"},
		{"a Host with a path", []string{"GET /fn/alice/fn/a HTTP/1.1\r\nHost: h/../../x\r\n\r\n"}, 400, "", "malformed"},
		{"a Host with a bad port", []string{"GET /fn/alice/fn/a HTTP/1.1\r\nHost: h:99999\r\n\r\n"}, 400, "", "malformed"},
	}
	srv := laneRouter(t, echo())
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			served0, _, handoffs0 := srv.lane.Counts()
			res := exchange(t, srv.URL, 1, tt.raw...)[0]
			if res.StatusCode != tt.status {
				t.Fatalf("status %d, want %d", res.StatusCode, tt.status)
			}
			if got := body(res); tt.status == 200 && got != tt.body {
				t.Fatalf("body %q, want %q", got, tt.body)
			} else if tt.status != 200 && !strings.HasPrefix(got, `{"error":`) {
				t.Fatalf("body %q, want the router's own error", got) // not the instance's
			}
			if res.Header.Get("Spry-Request-Id") == "" && tt.status == 200 {
				t.Fatal("no request id")
			}
			served1, _, handoffs1 := srv.lane.Counts()
			if got := served1 - served0; (got == 1) != (tt.handoff == "") {
				t.Fatalf("served in place: %d, want handed over for %q", got, tt.handoff)
			}
			for reason, n := range handoffs1 {
				want := int64(0)
				if reason == tt.handoff {
					want = 1
				}
				if n-handoffs0[reason] != want {
					t.Fatalf("handoffs for %s: %d, want %d", reason, n-handoffs0[reason], want)
				}
			}
		})
	}
}

// A pipelined batch is answered in order, though its second request
// sends the connection to the slow path.
func TestLanePipelinedHandOver(t *testing.T) {
	srv := newTestRouter(t, echo())
	big := strings.Repeat("y", laneMaxBody+10)
	raw := "GET /fn/alice/fn/one HTTP/1.1\r\nHost: h\r\n\r\n" +
		"POST /fn/alice/fn/two HTTP/1.1\r\nHost: h\r\nContent-Length: 4106\r\n\r\n" + big +
		"GET /fn/alice/fn/three HTTP/1.1\r\nHost: h\r\n\r\n"
	res := exchange(t, srv.URL, 3, raw)
	for i, want := range []string{"/one", "/two", "/three"} {
		if got := res[i].Header.Get("X-Path"); got != want {
			t.Fatalf("response %d is for %q, want %q", i, got, want)
		}
	}
	if body(res[1]) != big {
		t.Fatal("the second body is wrong")
	}
}

// An answer larger than the client's socket takes is held back, the
// instance unread meanwhile, and reaches a slow client whole; the
// connection then serves another request.
func TestLaneSlowClientGetsLargeAnswer(t *testing.T) {
	const size = 16 << 20
	srv := laneRouter(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		chunk := []byte(strings.Repeat("0123456789abcdef", 4096))
		for n := 0; n < size; n += len(chunk) {
			_, _ = w.Write(chunk)
		}
	}))
	c := dialRaw(t, srv.URL)
	for i := 0; i < 2; i++ {
		res := c.get("/big")
		if i == 0 {
			time.Sleep(200 * time.Millisecond) // let the buffers fill
		}
		n, err := io.Copy(io.Discard, res.Body)
		if err != nil || n != size {
			t.Fatalf("request %d: read %d bytes (%v), want %d", i, n, err, size)
		}
	}
}

// A client that half-closes after its request still gets the answer of a
// function that answers at once.
func TestLaneHalfClosedClientIsAnswered(t *testing.T) {
	srv := laneRouter(t, echo())
	c := dialRaw(t, srv.URL)
	c.send("GET /fn/alice/fn/x HTTP/1.1\r\nHost: h\r\n\r\n")
	_ = c.Conn.(*net.TCPConn).CloseWrite()
	if res := c.response(); res.StatusCode != 200 {
		t.Fatalf("%v", res)
	}
}

// Shutdown lets a request in flight finish, closing its connection after.
func TestLaneShutdownFinishesInFlight(t *testing.T) {
	started := make(chan struct{}, 2)
	srv := laneRouter(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		started <- struct{}{}
		time.Sleep(200 * time.Millisecond)
		_, _ = io.WriteString(w, "done")
	}))
	c := dialRaw(t, srv.URL)
	c.send("GET /fn/alice/fn/x HTTP/1.1\r\nHost: h\r\n\r\n")
	<-started
	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		shut <- srv.lane.Shutdown(ctx)
	}()
	res := c.response()
	if b := body(res); b != "done" || !res.Close {
		t.Fatalf("body %q, close %v; want done and close", b, res.Close)
	}
	if err := <-shut; err != nil {
		t.Fatal(err)
	}
	if _, err := c.br.ReadByte(); err != io.EOF {
		t.Fatalf("the connection stayed open: %v", err)
	}
}

// A connection that never sends a request is closed at the header
// timeout; one that had a request answered waits for the idle timeout.
func TestLaneIdleLimits(t *testing.T) {
	srv := laneRouter(t, echo())
	srv.lane.headerTimeout.Store(int64(300 * time.Millisecond))
	srv.lane.idleTimeout.Store(int64(time.Hour))
	silent, used := dialRaw(t, srv.URL), dialRaw(t, srv.URL)
	ask := func() { body(used.get("/a")) }
	ask()
	start := time.Now()
	if _, err := silent.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("the silent connection: %v, want EOF", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("closed after %v", d)
	}
	ask() // still open
}

// A loop that held nothing sleeps without a timeout; the first
// connection after a long sleep is timed from its arrival, not from
// before the sleep, so it is not closed at once as idle.
func TestLaneFirstConnectionAfterALongSleep(t *testing.T) {
	srv := laneRouter(t, echo())
	srv.lane.headerTimeout.Store(int64(300 * time.Millisecond))
	srv.lane.idleTimeout.Store(int64(300 * time.Millisecond))
	for i := 0; i < 2; i++ {
		// Longer than the limits, the first time with nothing held.
		time.Sleep(700 * time.Millisecond)
		c := dialRaw(t, srv.URL)
		if res := c.get("/a"); res.StatusCode != 200 {
			t.Fatalf("status %d", res.StatusCode)
		}
		if res := c.get("/b"); res.StatusCode != 200 {
			t.Fatalf("status %d", res.StatusCode)
		}
	}
}

// Several loops share one listener: every connection is served, by one
// loop or another.
func TestLaneSeveralLoops(t *testing.T) {
	if !*viaLane {
		t.Skip("the lane is off (-lane=false)")
	}
	sock := serveUnix(t, echo())
	spec := &backend.Spec{FunctionID: "f", Owner: "alice", Name: "fn", Version: 1, Concurrency: 100, Timeout: 5 * time.Second}
	act := activator.New(&upstreamBackend{addr: sock}, activator.Config{})
	rt := New(oneSpec{spec}, act, Config{})
	lease, err := act.Acquire(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	lease.Release()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	lane, err := rt.NewLane(ln, LaneConfig{Loops: 3, Spin: DefaultSpin})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := lane.Shutdown(ctx); err != nil {
			t.Error(err)
		}
	}()
	const conns, each = 24, 20
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	for i := 0; i < conns; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			br := bufio.NewReader(c)
			for j := 0; j < each; j++ {
				if _, err := io.WriteString(c, "POST /fn/alice/fn/ HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nok"); err != nil {
					errs <- err
					return
				}
				res, err := http.ReadResponse(br, nil)
				if err != nil {
					errs <- err
					return
				}
				if b := body(res); b != "ok" {
					errs <- fmt.Errorf("body %q", b)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if got := lane.served.Load(); got != conns*each {
		t.Fatalf("%d served in the loops, want %d", got, conns*each)
	}
}

// An instance that writes on a connection after its answer, once the
// connection is idle in the pool, cannot answer the next request with
// it: the loop sees the bytes and closes the connection.
func TestLaneDropsIdleConnectionThatSpeaks(t *testing.T) {
	if !*viaLane {
		t.Skip("the lane is off (-lane=false); the fasthttp path sees only bytes that came with the answer")
	}
	sock := serveRawRequests(t, func(i int, c net.Conn) {
		fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n%c", 'A'+i)
		time.Sleep(50 * time.Millisecond)
		fmt.Fprint(c, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nX")
	})
	srv := routerTo(t, sock, time.Millisecond)
	c := dialRaw(t, srv.URL)
	for i := 0; i < 3; i++ {
		if b := body(c.get("/")); b != "A" {
			t.Fatalf("request %d got %q, an answer meant for no request", i, b)
		}
		time.Sleep(150 * time.Millisecond) // the instance speaks meanwhile
	}
}

// A connection handed over because no instance was free comes back to
// the loops once the slow path has answered it.
func TestLaneTakesBackAfterColdStart(t *testing.T) {
	if !*viaLane {
		t.Skip("the lane is off (-lane=false)")
	}
	release := make(chan struct{})
	var calls atomic.Int32
	sock := serveUnix(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) == 1 {
			<-release
		}
		_, _ = io.WriteString(w, r.URL.Path)
	}))
	spec := &backend.Spec{FunctionID: "f", Owner: "alice", Name: "fn", Version: 1, Concurrency: 1, MaxScale: 1, Timeout: 5 * time.Second}
	act := activator.New(&upstreamBackend{addr: sock}, activator.Config{})
	srv := serveRouterWatching(t, New(oneSpec{spec}, act, Config{}), time.Minute)
	a := dialRaw(t, srv.URL)
	first := make(chan string, 1)
	go func() { first <- body(a.get("/a")) }()
	for calls.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	// The one instance is busy: b's request waits on the slow path.
	b := dialRaw(t, srv.URL)
	second := make(chan string, 1)
	go func() { second <- body(b.get("/b1")) }()
	for act.QueueDepth() == 0 {
		time.Sleep(time.Millisecond)
	}
	close(release)
	if got := <-first; got != "/a" {
		t.Fatalf("a got %q", got)
	}
	if got := <-second; got != "/b1" {
		t.Fatalf("b got %q", got)
	}
	served0, _, _ := srv.lane.Counts()
	// Pipelined, to check that bytes the server read ahead come along.
	b.send("GET /fn/alice/fn/b2 HTTP/1.1\r\nHost: h\r\n\r\nGET /fn/alice/fn/b3 HTTP/1.1\r\nHost: h\r\n\r\n")
	for _, want := range []string{"/b2", "/b3"} {
		if got := body(b.response()); got != want {
			t.Fatalf("got %q, want %q", got, want)
		}
	}
	if got := body(b.get("/b4")); got != "/b4" {
		t.Fatalf("got %q", got)
	}
	if n := srv.lane.adopted.Load(); n != 1 {
		t.Fatalf("%d connections taken back, want 1", n)
	}
	if served1, _, _ := srv.lane.Counts(); served1-served0 != 3 {
		t.Fatalf("the loops served %d of b's 3 later requests", served1-served0)
	}
}

// Invocations served in the loops are logged with their status.
func TestLaneLogsStatus(t *testing.T) {
	if !*viaLane {
		t.Skip("the lane is off (-lane=false)")
	}
	sock := serveUnix(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(201)
	}))
	spec := &backend.Spec{FunctionID: "f", Owner: "alice", Name: "fn", Version: 1, Concurrency: 100, Timeout: 5 * time.Second}
	access := make(accessRecorder, 4)
	srv := serveRouter(t, New(oneSpec{spec}, activator.New(&upstreamBackend{addr: sock}, activator.Config{}), Config{Access: access}))
	served0, _, _ := srv.lane.Counts()
	res := exchange(t, srv.URL, 1, "GET /fn/alice/fn/ HTTP/1.1\r\nHost: h\r\n\r\n")[0]
	if res.StatusCode != 201 {
		t.Fatalf("status %d", res.StatusCode)
	}
	if served1, _, _ := srv.lane.Counts(); served1 != served0+1 {
		t.Fatal("not served in the loop")
	}
	if got := <-access; got != 201 {
		t.Fatalf("logged status %d, want 201", got)
	}
}

// A pooled connection the instance stopped reading (so the loop saw no
// hang-up on it) fails the next request's write before anything reached
// the instance: the request goes on a fresh connection, once.
func TestLaneRetriesWriteOnStaleConnection(t *testing.T) {
	if !*viaLane {
		t.Skip("the lane is off (-lane=false)")
	}
	var conns atomic.Int32
	sock := serveRawRequests(t, func(i int, c net.Conn) {
		conns.Add(1) // one answer per connection: it stops reading after
		_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		// Stop reading but keep the connection: a write to it fails
		// (EPIPE) and no hang-up is reported to the loop.
		_ = c.(*net.UnixConn).CloseRead()
		time.Sleep(2 * time.Second)
	})
	srv := routerTo(t, sock, time.Millisecond)
	c := dialRaw(t, srv.URL)
	for i := 0; i < 2; i++ {
		res := c.get("/")
		if b := body(res); res.StatusCode != 200 || b != "ok" {
			t.Fatalf("request %d: %d %q", i, res.StatusCode, b)
		}
	}
	if n := conns.Load(); n != 2 {
		t.Fatalf("%d connections to the instance, want 2", n)
	}
}

// A function that stops mid-answer past its timeout is cut off and its
// instance killed; the client sees the answer end early.
func TestLaneTimeoutMidAnswer(t *testing.T) {
	if !*viaLane {
		t.Skip("the lane is off (-lane=false)")
	}
	stop := make(chan struct{})
	defer close(stop)
	sock := serveUnix(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "partial")
		w.(http.Flusher).Flush()
		<-stop
	}))
	b := &upstreamBackend{addr: sock}
	spec := &backend.Spec{FunctionID: "f", Owner: "alice", Name: "fn", Version: 1, Concurrency: 100, Timeout: 300 * time.Millisecond}
	srv := serveRouter(t, New(oneSpec{spec}, activator.New(b, activator.Config{}), Config{}))
	served0, _, _ := srv.lane.Counts()
	res, err := http.Get(srv.URL + "/fn/alice/fn/")
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(res.Body)
	res.Body.Close()
	if err == nil || string(got) != "partial" {
		t.Fatalf("read %q, %v; want the answer cut off after %q", got, err, "partial")
	}
	// The instance is probed (it has no probe here: taken for stuck) and
	// killed off the request's path.
	if n := b.waitKills(1); n != 1 {
		t.Fatalf("%d kills, want 1", n)
	}
	if served1, _, _ := srv.lane.Counts(); served1 != served0 {
		t.Fatal("counted as served whole")
	}
}

// A connection handed over for a large body stays with the slow path:
// moving it back and forth would cost each such request more than the
// slow path does.
func TestLaneKeepsLargeBodyConnectionsOnTheSlowPath(t *testing.T) {
	srv := laneRouter(t, echo())
	big := strings.Repeat("z", laneMaxBody+1)
	req := "POST /fn/alice/fn/ HTTP/1.1\r\nHost: h\r\nContent-Length: 4097\r\n\r\n" + big
	res := exchange(t, srv.URL, 3, req+req, "GET /fn/alice/fn/ HTTP/1.1\r\nHost: h\r\n\r\n")
	for i, r := range res {
		if r.StatusCode != 200 {
			t.Fatalf("response %d: %d", i, r.StatusCode)
		}
	}
	if n := srv.lane.adopted.Load(); n != 0 {
		t.Fatalf("%d connections taken back, want 0", n)
	}
}

// A request with "Connection: close" is served in the loop; the answer
// says so, and the connection ends after it, cleanly (the writing side
// first), though the client pipelined another request behind it.
func TestLaneConnectionClose(t *testing.T) {
	srv := laneRouter(t, echo())
	c := dialRaw(t, srv.URL)
	served0, _, _ := srv.lane.Counts()
	c.send("GET /fn/alice/fn/last HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n" +
		"GET /fn/alice/fn/ignored HTTP/1.1\r\nHost: h\r\n\r\n")
	res := c.response()
	if !res.Close || res.Header.Get("X-Path") != "/last" {
		t.Fatalf("close %v, path %q", res.Close, res.Header.Get("X-Path"))
	}
	body(res)
	if _, err := c.br.ReadByte(); err != io.EOF {
		t.Fatalf("after the answer: %v, want EOF", err)
	}
	if served1, _, _ := srv.lane.Counts(); served1-served0 != 1 {
		t.Fatalf("served %d in the loop, want 1", served1-served0)
	}
}

// pipeLoop is a bare loop whose epoll set holds a pipe: poke makes it
// readable, drain empties it.
func pipeLoop(t *testing.T) (lp *loop, poke, drain func()) {
	t.Helper()
	ep, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(ep) })
	var p [2]int
	if err := syscall.Pipe2(p[:], syscall.O_NONBLOCK|syscall.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(p[0]); syscall.Close(p[1]) })
	if err := syscall.EpollCtl(ep, syscall.EPOLL_CTL_ADD, p[0], &syscall.EpollEvent{Events: syscall.EPOLLIN, Fd: int32(p[0])}); err != nil {
		t.Fatal(err)
	}
	lp = &loop{ep: ep, events: make([]syscall.EpollEvent, 8)}
	poke = func() { _, _ = syscall.Write(p[1], []byte{1}) }
	drain = func() { _, _ = syscall.Read(p[0], make([]byte, 8)) }
	return lp, poke, drain
}

// A loop spins only while its waits are short: one short wait starts the
// spinning, a spin that finds nothing stops it, and an event that comes
// during a spin is taken.
func TestLaneSpinsOnlyWhileWaitsAreShort(t *testing.T) {
	lp, poke, drain := pipeLoop(t)
	lp.spin = time.Second

	poke()
	if n, err := lp.wait(1000); n != 1 || err != nil || !lp.spinning {
		t.Fatalf("a wait that found an event at once: n=%d err=%v spinning=%v, want 1, nil, true", n, err, lp.spinning)
	}
	drain()
	go poke()
	if n, err := lp.wait(1000); n != 1 || err != nil || !lp.spinning {
		t.Fatalf("an event during the spin: n=%d err=%v spinning=%v, want 1, nil, true", n, err, lp.spinning)
	}
	drain()
	lp.spin = time.Millisecond
	if n, err := lp.wait(1); n != 0 || err != nil || lp.spinning {
		t.Fatalf("nothing to find: n=%d err=%v spinning=%v, want 0, nil, false", n, err, lp.spinning)
	}
}

// A loop waits raw only while it is busy: its last wait found events
// within its busy time. A wait that finds nothing, or finds it later,
// makes it quiet, and its next wait an ordinary system call. (The busy
// time is long here, so that a loaded machine's stalls do not count.)
func TestLaneWaitsRawOnlyWhileBusy(t *testing.T) {
	lp, poke, drain := pipeLoop(t)
	lp.raw, lp.busyWait = true, 200*time.Millisecond
	for _, tc := range []struct {
		name  string
		event func() // before or during the wait
		msec  int
		want  bool
	}{
		{name: "an event at once", event: poke, msec: 1000, want: true},
		{name: "nothing", msec: 1, want: false},
		{name: "an event after the busy time", event: func() {
			go func() { time.Sleep(2 * lp.busyWait); poke() }()
		}, msec: 1000, want: false},
		{name: "an event at once again", event: poke, msec: 1000, want: true},
	} {
		if tc.event != nil {
			tc.event()
		}
		_, err := lp.wait(tc.msec)
		for err == syscall.EINTR {
			// A preemption signal ended the raw wait (as the loop allows).
			_, err = lp.wait(tc.msec)
		}
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		drain()
		if lp.busy != tc.want {
			t.Fatalf("%s: busy %v, want %v", tc.name, lp.busy, tc.want)
		}
	}
}

// servedConns opens n kept-alive connections to url, each with one
// request answered.
func servedConns(t *testing.T, url string, n int) []*rawConn {
	t.Helper()
	var conns []*rawConn
	for i := 0; i < n; i++ {
		c := dialRaw(t, url)
		if res := c.get("/"); res.StatusCode != 200 {
			t.Fatalf("status %d", res.StatusCode)
		}
		conns = append(conns, c)
	}
	return conns
}

// An idle kept-alive connection holds no read buffer: it has one only
// while it has bytes unread or a request in flight. Nor does a pooled
// connection to an instance.
func TestLaneIdleConnectionsHoldNoBuffer(t *testing.T) {
	srv := laneRouter(t, echo())
	conns := servedConns(t, srv.URL, 3)
	held, free, clients, pooled, upHeld, upFree := 0, 0, 0, 0, 0, 0
	lp := srv.lane.loops[0]
	lp.do(func() {
		for _, e := range lp.ents {
			if e.c != nil {
				clients++
				if e.c.in != nil {
					held++
				}
			}
		}
		for _, us := range lp.idle {
			for _, u := range us {
				pooled++
				if u.buf != nil {
					upHeld++
				}
			}
		}
		free, upFree = len(lp.bufs), len(lp.upBufs)
	})
	if clients != 3 || held != 0 || free == 0 {
		t.Fatalf("%d clients in the loop, %d holding a buffer, %d buffers free; want 3, 0, at least 1", clients, held, free)
	}
	// Likewise the instance connections in the pool.
	if pooled == 0 || upHeld != 0 || upFree == 0 {
		t.Fatalf("%d pooled instance connections, %d holding a buffer, %d buffers free; want some, 0, at least 1", pooled, upHeld, upFree)
	}
	// Each goes on serving with a buffer taken again.
	for _, c := range conns {
		if res := c.get("/x"); res.StatusCode != 200 || res.Header.Get("X-Path") != "/x" {
			t.Fatalf("status %d, path %q", res.StatusCode, res.Header.Get("X-Path"))
		}
	}
}

// A loop counts the connections it holds (an idle one, holding none,
// sleeps until a connection comes rather than sweep ten times a second):
// the count follows clients as they come and go, and the instance
// connections it pools.
func TestLaneCountsWhatItHolds(t *testing.T) {
	srv := laneRouter(t, echo())
	lp := srv.lane.loops[0]
	// count reads the loop's count and what its table holds.
	count := func() (held, clients, ups int) {
		lp.do(func() {
			held = lp.held
			for _, e := range lp.ents {
				if e.c != nil {
					clients++
				}
				if e.u != nil {
					ups++
				}
			}
		})
		return held, clients, ups
	}
	if held, _, _ := count(); held != 0 {
		t.Fatalf("a new loop holds %d, want 0", held)
	}
	conns := servedConns(t, srv.URL, 3)
	for _, wantClients := range []int{3, 1, 0} {
		for len(conns) > wantClients {
			conns[len(conns)-1].Close()
			conns = conns[:len(conns)-1]
		}
		deadline := time.Now().Add(5 * time.Second)
		for {
			held, clients, ups := count()
			if clients == wantClients {
				if held != clients+ups || ups == 0 {
					t.Fatalf("%d clients: the loop counts %d, its table holds %d clients and %d instance connections", wantClients, held, clients, ups)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d clients in the loop, want %d", clients, wantClients)
			}
			time.Sleep(time.Millisecond)
		}
	}
	// With nothing held it still takes a new connection at once.
	if res := dialRaw(t, srv.URL).get("/again"); res.StatusCode != 200 {
		t.Fatalf("status %d", res.StatusCode)
	}
}

// A loop that events have left alone sweeps when the earliest deadline
// its last sweep found is due, not every laneSweep; one that holds
// nothing waits with no limit; events (which may bring earlier
// deadlines) or a paused accept bring back the usual pace.
func TestLaneSweepWait(t *testing.T) {
	now := time.Unix(1000, 0)
	sweep := int(laneSweep / time.Millisecond)
	for _, tc := range []struct {
		name           string
		held           int
		dirty, resume  bool
		due, lastSweep time.Time
		want           int
	}{
		{name: "holds nothing", want: -1},
		{name: "holds nothing, events came", dirty: true, want: -1},
		{name: "holds nothing, accepting paused", resume: true, want: sweep},
		{name: "events came", held: 3, dirty: true, due: now.Add(time.Minute), lastSweep: now, want: sweep},
		{name: "accepting paused", held: 3, resume: true, due: now.Add(time.Minute), lastSweep: now, want: sweep},
		{name: "quiet, a deadline a minute away", held: 1, due: now.Add(time.Minute), lastSweep: now, want: 60000},
		{name: "quiet, rounded up", held: 1, due: now.Add(1500 * time.Microsecond), lastSweep: now.Add(-time.Second), want: 2},
		{name: "quiet, due before the pace allows", held: 1, due: now.Add(10 * time.Millisecond), lastSweep: now, want: sweep},
		{name: "quiet, due already", held: 1, due: now.Add(-time.Second), lastSweep: now.Add(-laneSweep / 2), want: sweep / 2},
		{name: "quiet, no deadline", held: 2, lastSweep: now, want: -1},
	} {
		lp := &loop{held: tc.held, dirty: tc.dirty, resumeAccept: tc.resume, due: tc.due, lastSweep: tc.lastSweep, now: now}
		if got := lp.sweepWait(); got != tc.want {
			t.Errorf("%s: waits %d ms, want %d", tc.name, got, tc.want)
		}
	}
}

// A loop that holds only a pooled instance connection, with nothing
// happening, does not sweep ten times a second: its next sweep is when
// that connection has been idle too long. It still closes an idle client
// on time (TestLaneHeaderTimeout and the keep-alive tests).
func TestLaneQuietLoopSleepsUntilDue(t *testing.T) {
	srv := laneRouter(t, echo())
	lp := srv.lane.loops[0]
	conns := servedConns(t, srv.URL, 1)
	conns[0].Close()
	state := func() (sweeps, clients, ups int, due time.Time) {
		lp.do(func() {
			sweeps, due = lp.sweeps, lp.due
			for _, e := range lp.ents {
				if e.c != nil {
					clients++
				}
				if e.u != nil {
					ups++
				}
			}
		})
		return sweeps, clients, ups, due
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, clients, ups, _ := state()
		if clients == 0 && ups == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the loop holds %d clients and %d instance connections, want 0 and 1", clients, ups)
		}
		time.Sleep(time.Millisecond)
	}
	before, _, _, _ := state()
	time.Sleep(time.Second)
	after, _, _, due := state()
	// The reads themselves are events: each brings one sweep at the
	// usual pace. A loop sweeping every laneSweep would have made ~10.
	if n := after - before; n > 3 {
		t.Errorf("%d sweeps in a quiet second, want at most 3", n)
	}
	if left := time.Until(due); left < maxIdleTime-10*time.Second || left > maxIdleTime {
		t.Errorf("the next sweep is due in %v, want about %v (the pooled connection's idle limit)", left, maxIdleTime)
	}
}

// Out of descriptors, a loop stops accepting until its next sweep rather
// than spin on a listener that stays readable, and accepts again once
// descriptors are free.
func TestLanePausesAcceptingWhenOutOfDescriptors(t *testing.T) {
	srv := laneRouter(t, echo())
	addr, err := netip.ParseAddrPort(strings.TrimPrefix(srv.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	sa := &syscall.SockaddrInet4{Port: int(addr.Port()), Addr: addr.Addr().As4()}
	// The clients' sockets are made first, so that connecting them
	// takes no descriptor: once the process has none left, only the
	// server's accepts need one. (Dialing after the limit is lowered
	// races the accepts for the last few descriptors.)
	var held []int
	defer func() {
		for _, fd := range held {
			syscall.Close(fd)
		}
	}()
	var clients []int
	for range 4 {
		fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, fd)
		clients = append(clients, fd)
	}
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	low := lim
	low.Cur = uint64(len(fds) + 8)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
		t.Fatal(err)
	}
	restored := false
	restore := func() {
		if !restored {
			restored = true
			if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
				t.Fatal(err)
			}
		}
	}
	defer restore()
	// Take every descriptor left below the limit.
	for {
		fd, err := syscall.Dup(clients[0])
		if err != nil {
			break
		}
		held = append(held, fd)
	}
	for _, fd := range clients {
		if err := syscall.Connect(fd, sa); err != nil {
			restore()
			t.Fatal(err)
		}
	}
	// Any loop may have been woken for the listener; each that tried to
	// accept pauses until its next sweep, and tries again then.
	paused := false
	for deadline := time.Now().Add(5 * time.Second); !paused && time.Now().Before(deadline); {
		for _, lp := range srv.lane.loops {
			lp.do(func() { paused = paused || lp.resumeAccept && !lp.listen })
		}
		if !paused {
			time.Sleep(time.Millisecond)
		}
	}
	restore()
	if !paused {
		t.Fatal("no loop paused accepting when out of descriptors")
	}
	for _, fd := range held {
		syscall.Close(fd)
	}
	held = nil
	c := dialRaw(t, srv.URL)
	if res := c.get("/again"); res.StatusCode != 200 || res.Header.Get("X-Path") != "/again" {
		t.Fatalf("after descriptors freed: status %d, path %q", res.StatusCode, res.Header.Get("X-Path"))
	}
}

// HTTP/1.0 clients are served in the loop: without "keep-alive" the
// connection ends after the answer; with it, the answer says so and the
// connection carries the next request; a chunked answer reaches them as
// plain data, ended by the connection's end.
func TestLaneHTTP10(t *testing.T) {
	srv := laneRouter(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/chunked" {
			io.WriteString(w, "part one, ")
			w.(http.Flusher).Flush() // (the answer is chunked from here)
			io.WriteString(w, "part two")
			return
		}
		io.WriteString(w, "plain")
	}))
	rawAnswer := func(c *rawConn) string {
		b, err := io.ReadAll(c.br)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}

	c := dialRaw(t, srv.URL)
	c.send("GET /fn/alice/fn/ HTTP/1.0\r\nHost: h\r\n\r\n")
	if a := rawAnswer(c); !strings.HasSuffix(a, "\r\n\r\nplain") || !strings.Contains(a, "Connection: close\r\n") {
		t.Fatalf("answer %q: want the body, then the connection's end, and Connection: close", a)
	}

	c = dialRaw(t, srv.URL)
	for i := 0; i < 2; i++ {
		c.send("GET /fn/alice/fn/ HTTP/1.0\r\nHost: h\r\nConnection: keep-alive\r\n\r\n")
		res := c.response()
		if b := body(res); b != "plain" || res.Header.Get("Connection") != "keep-alive" {
			t.Fatalf("answer %d: body %q, Connection %q; want plain, keep-alive", i, b, res.Header.Get("Connection"))
		}
	}

	c = dialRaw(t, srv.URL)
	c.send("GET /fn/alice/fn/chunked HTTP/1.0\r\nHost: h\r\nConnection: keep-alive\r\n\r\n")
	a := rawAnswer(c)
	head, b, _ := strings.Cut(a, "\r\n\r\n")
	if b != "part one, part two" || strings.Contains(head, "Transfer-Encoding") || !strings.Contains(head, "Connection: close") {
		t.Fatalf("answer %q: want the data alone, no Transfer-Encoding, Connection: close", a)
	}
	if served, _, handoffs := srv.lane.Counts(); served < 4 || handoffs["protocol"] != 0 {
		t.Fatalf("%d served in the loop, %d handed over for the protocol; want 4, 0", served, handoffs["protocol"])
	}
}

// A cold start the loop handed over is timed from when the loop had the
// request; one that comes after another request the connection's slow
// path served (an error answer, which does not take the connection back)
// is timed from its own arrival, not the first request's.
func TestHandedOverColdStartIsTimedFromArrival(t *testing.T) {
	if !*viaLane {
		t.Skip("the lane is off (-lane=false)")
	}
	sock := serveUnix(t, echo())
	spec := &backend.Spec{FunctionID: "f", Owner: "alice", Name: "fn", Version: 1, Concurrency: 1, MaxScale: 1, Timeout: 5 * time.Second}
	act := activator.New(&upstreamBackend{addr: sock}, activator.Config{})
	colds := make(chan time.Duration, 1)
	// (Not a oneSpec, which has the test server start an instance first.)
	type noneStarted struct{ oneSpec }
	srv := serveRouterWatching(t, New(noneStarted{oneSpec{spec}}, act, Config{OnColdStart: func(_ *backend.Spec, d time.Duration) { colds <- d }}), time.Minute)
	c := dialRaw(t, srv.URL)
	c.send("GET /nothing HTTP/1.1\r\nHost: h\r\n\r\n")
	if res := c.response(); res.StatusCode != http.StatusNotFound {
		t.Fatalf("/nothing: %d", res.StatusCode)
	} else {
		body(res)
	}
	time.Sleep(300 * time.Millisecond) // (time between the two requests, not a wait for anything)
	start := time.Now()
	if res := c.get("/x"); res.StatusCode != http.StatusOK || res.Header.Get("Spry-Cold-Start") == "" {
		t.Fatalf("got %d, Spry-Cold-Start %q; want a cold 200", res.StatusCode, res.Header.Get("Spry-Cold-Start"))
	}
	took := time.Since(start)
	if d := <-colds; d > took {
		t.Fatalf("the cold start took %s by the router's count, longer than the client's %s: timed from the connection's first request", d, took)
	}
}

// An answer's head ends at its first blank line, bare LF or not, for the
// lane as for the slow path: the body is what follows it.
func TestAnswerHeadEndedByBareLF(t *testing.T) {
	for _, answer := range []string{
		"HTTP/1.1 200 OK\r\nContent-Length: 2\n\nhiXX\r\n\r\nYY",
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\nhiXX\r\n\r\nYY",
		"HTTP/1.1 103 Early Hints\nLink: </a>\n\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhiXX\r\n\r\nYY",
	} {
		sock := serveRawRequests(t, func(i int, c net.Conn) { io.WriteString(c, answer) })
		srv := routerTo(t, sock, time.Millisecond)
		c := dialRaw(t, srv.URL)
		res := c.get("/")
		if b := body(res); res.StatusCode != 200 || b != "hi" {
			t.Errorf("answer %q: the client got %d %q, want 200 \"hi\"", answer, res.StatusCode, b)
		}
	}
}

// A field name with whitespace before its colon is refused (400), on
// either path, and never reaches the function: the parser keeps
// "Spry-Request-Id : x" as a field of another name, which the router
// passed on beside its own, and a proxy in front may frame a request by
// "Transfer-Encoding : chunked".
func TestSpaceBeforeColonIsRefused(t *testing.T) {
	srv, got := countingRouter(t, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
	for _, field := range []string{
		"Spry-Request-Id : forged",
		"X-Forwarded-For : 6.6.6.6",
		"Transfer-Encoding : chunked",
		"Content-Length : 5",
	} {
		c := dialRaw(t, srv.URL)
		c.send("GET /fn/alice/fn/ HTTP/1.1\r\nHost: h\r\n" + field + "\r\n\r\n")
		if res := c.response(); res.StatusCode != 400 {
			t.Errorf("%q: status %d, want 400", field, res.StatusCode)
		}
	}
	if n := got.Load(); n != 0 {
		t.Fatalf("the function got %d of the requests", n)
	}
}

// The router's own error answer to a HEAD request has no body, on either
// path: the lane wrote one, which the client (or a proxy in front) read
// as the start of the next answer on the connection.
func TestErrorAnswerToHEADHasNoBody(t *testing.T) {
	for _, tc := range []struct {
		name   string
		answer func(c net.Conn)
	}{
		{"malformed answer", func(c net.Conn) { io.WriteString(c, "garbage\r\n\r\n") }},
		{"closed without an answer", func(c net.Conn) { c.Close() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := routerTo(t, serveRawRequests(t, func(i int, c net.Conn) { tc.answer(c) }), time.Millisecond)
			c := dialRaw(t, srv.URL)
			for _, method := range []string{"HEAD", "GET"} {
				c.send(method + " /fn/alice/fn/ HTTP/1.1\r\nHost: h\r\n\r\n")
				req, _ := http.NewRequest(method, "/", nil)
				res, err := http.ReadResponse(c.br, req)
				if err != nil {
					t.Fatalf("%s: %v", method, err)
				}
				if b := body(res); res.StatusCode != 502 || method == "HEAD" && b != "" {
					t.Fatalf("%s: %d %q, want a 502 (with no body to HEAD)", method, res.StatusCode, b)
				}
			}
		})
	}
}

// Work handed to a loop that has ended (a failed request's answer, or a
// connection the server gives back, late in a shutdown) must not write
// to its wake-up pipe: the number is closed, and may be another file's
// by then.
func TestLanePostAfterTheLoopEnded(t *testing.T) {
	srv := laneRouter(t, echo())
	lp := srv.lane.loops[0]
	wakeW := lp.wakeW
	srv.Close()
	<-lp.dead
	// Open files until one gets the pipe's old number.
	dir := t.TempDir()
	var f *os.File
	for i := 0; i < 256 && f == nil; i++ {
		g, err := os.Create(fmt.Sprintf("%s/%d", dir, i))
		if err != nil {
			t.Fatal(err)
		}
		defer g.Close()
		if int(g.Fd()) == wakeW {
			f = g
		}
	}
	if f == nil {
		t.Skip("the pipe's number was not reused")
	}
	lp.post(func() {})
	if st, err := f.Stat(); err != nil || st.Size() != 0 {
		t.Fatalf("a file that reused the wake-up pipe's number was written to (%v)", err)
	}
}

// A chunk size may have leading zeros: one of 16 digits, which Go's
// reader takes on the slow path, is relayed by the lane too (it cut the
// answer off at the 16th digit).
func TestAnswerChunkSizeWithLeadingZeros(t *testing.T) {
	sock := serveRawRequests(t, func(i int, c net.Conn) {
		io.WriteString(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0000000000000002\r\nhi\r\n0\r\n\r\n")
	})
	srv := routerTo(t, sock, time.Millisecond)
	c := dialRaw(t, srv.URL)
	for i := range 2 {
		res := c.get("/")
		if b, err := io.ReadAll(res.Body); err != nil || string(b) != "hi" {
			t.Fatalf("answer %d: %q, %v; want \"hi\"", i, b, err)
		}
	}
}

// An instance that switches protocols on a request that asked for no
// upgrade gets the client a 502, on either path. The goroutine path
// passed the 101 on (with a stray CRLF after its head) and kept the
// connection's requests going; a proxy in front that takes a 101 for a
// switch would then tunnel what the client sends next past its own
// rules. A function holds its raw connection when its runtime lets it
// (Node's http module can be patched from the function's top level).
func TestUnaskedSwitchingProtocolsIsRefused(t *testing.T) {
	srv := routerTo(t, serveRawRequests(t, func(i int, c net.Conn) {
		io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\n")
	}), time.Millisecond)
	for _, req := range []string{
		"GET /fn/alice/fn/ HTTP/1.1\r\nHost: h\r\n\r\n",
		// A chunked body takes the goroutine path.
		"POST /fn/alice/fn/ HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
	} {
		c := dialRaw(t, srv.URL)
		c.send(req)
		if res := c.response(); res.StatusCode != 502 {
			t.Errorf("%q: status %d, want 502", req, res.StatusCode)
		}
	}
}

// TestLaneBoundsConnectionsPerClient: past its client's bound a
// connection is closed before anything is read; a connection counts
// once whether the loops serve it or hand it to the slow path, and
// gives its place back when it ends on either.
func TestLaneBoundsConnectionsPerClient(t *testing.T) {
	if !*viaLane {
		t.Skip("the lane is off (-lane=false)")
	}
	lane, srv, url := laneWithLimit(t, echo(), httpserve.NewConnLimit(2, 0, nil))
	// chunked answers a chunked request on the slow path, where it stays.
	chunked := func(c *rawConn) {
		t.Helper()
		c.send("POST /fn/alice/fn/c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n")
		if res := c.response(); res.StatusCode != 200 || body(res) != "hi" {
			t.Fatalf("on the slow path: %d", res.StatusCode)
		}
	}
	// admitted is a connection that got an answer in the loop: a place
	// given back on the slow path comes once its lingering close ends,
	// just after fasthttp counts the connection closed.
	admitted := func() *rawConn {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
			c := dialRaw(t, url)
			c.send("GET /fn/alice/fn/a HTTP/1.1\r\nHost: h\r\n\r\n")
			if res, err := http.ReadResponse(c.br, nil); err == nil && res.StatusCode == 200 {
				body(res)
				return c
			}
			c.Close()
		}
		t.Fatal("no connection admitted within 5 s")
		return nil
	}
	for round := range 3 {
		inLoop, slow := admitted(), admitted()
		chunked(slow)
		over := dialRaw(t, url)
		over.ended(fmt.Sprintf("round %d: a third connection", round))
		// Both end, one in the loop and one on the slow path: the next
		// round has both places again, and no more.
		inLoop.Close()
		slow.Close()
		deadline := time.Now().Add(5 * time.Second)
		for lane.conns.Load() > 0 || srv.GetOpenConnectionsCount() > 0 {
			if time.Now().After(deadline) {
				t.Fatalf("round %d: connections still held", round)
			}
			time.Sleep(time.Millisecond)
		}
	}
}

// At the server's bound on connections the loops close their longest
// idle ones to make room for a new one, never one with a request in
// flight; with none idle, the new one is closed at once.
func TestLaneDrainsIdleAtTheBound(t *testing.T) {
	if !*viaLane {
		t.Skip("the lane is off (-lane=false)")
	}
	release := make(chan struct{})
	var slow atomic.Int32 // requests waiting for release
	upstream := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			slow.Add(1)
			<-release
		}
		_, _ = io.WriteString(w, r.URL.Path)
	})
	_, _, url := laneWithLimit(t, upstream, httpserve.NewConnLimit(0, 3, nil))

	busy := dialRaw(t, url)
	busy.send("GET /fn/alice/fn/slow HTTP/1.1\r\nHost: h\r\n\r\n")
	idle1, idle2 := dialRaw(t, url), dialRaw(t, url)
	for _, c := range []*rawConn{idle1, idle2} {
		if got := body(c.get("/a")); got != "/a" {
			t.Fatalf("got %q", got)
		}
	}
	// The bound is reached: the new connection is served, and the
	// longest idle one is closed to make room; the other is kept.
	fresh := dialRaw(t, url)
	if got := body(fresh.get("/b")); got != "/b" {
		t.Fatalf("a new connection at the bound: %q", got)
	}
	idle1.ended("the longest idle connection")
	if got := body(idle2.get("/c")); got != "/c" {
		t.Fatalf("the newer idle connection: %q", got)
	}

	// With every connection's request in flight, none is idle: a new
	// connection is closed at once, and those in flight are answered.
	for _, c := range []*rawConn{idle2, fresh} {
		c.send("GET /fn/alice/fn/slow HTTP/1.1\r\nHost: h\r\n\r\n")
	}
	for deadline := time.Now().Add(5 * time.Second); slow.Load() < 3; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d requests in flight, want 3", slow.Load())
		}
	}
	dialRaw(t, url).ended("a connection at the bound with none idle")
	close(release)
	for _, c := range []*rawConn{busy, idle2, fresh} {
		if got := body(c.response()); got != "/slow" {
			t.Errorf("a request in flight at the bound: %q", got)
		}
	}
}

// laneWithLimit serves a router with one function, its instance serving
// upstream and warm, through one event loop bounded by limit, and the
// slow path behind it; it returns the lane, the slow path's server and
// the URL.
func laneWithLimit(t *testing.T, upstream http.Handler, limit *httpserve.ConnLimit) (*Lane, *fasthttp.Server, string) {
	t.Helper()
	spec := &backend.Spec{FunctionID: "f", Owner: "alice", Name: "fn", Version: 1, Concurrency: 100, Timeout: 10 * time.Second}
	act := activator.New(&upstreamBackend{addr: serveUnix(t, upstream)}, activator.Config{})
	rt := New(oneSpec{spec}, act, Config{})
	if lease, err := act.Acquire(context.Background(), spec); err == nil {
		lease.Release()
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lane, err := rt.NewLane(ln, LaneConfig{Loops: 1, Limit: limit})
	if err != nil {
		t.Fatal(err)
	}
	srv := httpserve.New(rt.Handle, nil)
	go srv.Serve(httpserve.Listener(lane.Handoff(), time.Millisecond, nil))
	t.Cleanup(func() {
		_ = srv.Shutdown()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = lane.Shutdown(ctx)
		ln.Close()
	})
	return lane, srv, "http://" + ln.Addr().String()
}
