package httpserve

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/spry-run/spry/internal/errdefs"
)

func serve(t *testing.T, h fasthttp.RequestHandler, adjust ...func(*fasthttp.Server)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := New(h, nil)
	for _, f := range adjust {
		f(srv)
	}
	// As in production: connections are *Conn.
	go srv.Serve(Listener(ln, WatchAfter, nil))
	t.Cleanup(func() { _ = srv.Shutdown() })
	return "http://" + ln.Addr().String()
}

func TestAdaptBuffered(t *testing.T) {
	url := serve(t, Adapt(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Add("X-A", "1")
		w.Header().Add("X-A", "2")
		w.WriteHeader(201)
		fmt.Fprintf(w, "%s %s %s %s %d", r.Method, r.URL.RequestURI(), r.Header.Get("X-In"), body, r.ContentLength)
	}), nil))
	req, _ := http.NewRequest("PUT", url+"/a/b?c=d", strings.NewReader("hello"))
	req.Header.Set("X-In", "v")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	if res.StatusCode != 201 || string(b) != "PUT /a/b?c=d v hello 5" || len(res.Header.Values("X-A")) != 2 {
		t.Fatalf("%d %q %v", res.StatusCode, b, res.Header)
	}
	if ct := res.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Fatalf("sniffed Content-Type %q", ct)
	}
}

// A flushed response reaches the client while the handler runs on, and a
// client that goes away cancels the request's context (as `spry logs -f`
// needs).
func TestAdaptStreamsAndCancels(t *testing.T) {
	next := make(chan struct{})
	cancelled := make(chan struct{})
	url := serve(t, Adapt(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/x-ndjson")
		io.WriteString(w, "one\n")
		w.(http.Flusher).Flush()
		<-next
		io.WriteString(w, "two\n")
		http.NewResponseController(w).Flush()
		<-r.Context().Done()
		close(cancelled)
	}), nil))
	res, err := http.Get(url + "/follow")
	if err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(res.Body)
	for i, want := range []string{"one\n", "two\n"} {
		line, err := br.ReadString('\n')
		if line != want {
			t.Fatalf("line %d: %q, %v", i, line, err)
		}
		if i == 0 {
			close(next)
		}
	}
	res.Body.Close()
	select {
	case <-cancelled:
	case <-time.After(5 * time.Second):
		t.Fatal("the handler's context was not cancelled when the client went away")
	}
}

// A handler that flushes before it writes anything has answered: the head
// reaches the client at once, not with the first line.
func TestAdaptFlushedHeadGoesOut(t *testing.T) {
	release := make(chan struct{})
	url := serve(t, Adapt(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/x-ndjson")
		w.WriteHeader(200)
		http.NewResponseController(w).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}), nil))
	defer close(release)
	c := &http.Client{Transport: &http.Transport{ResponseHeaderTimeout: 5 * time.Second}}
	res, err := c.Get(url + "/follow")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 200 || res.Header.Get("Content-Type") != "application/x-ndjson" {
		t.Fatalf("%d %v", res.StatusCode, res.Header)
	}
}

// A head that does not all come in time is answered 408 with the JSON
// error, and the connection closed.
func TestHeaderTimeout(t *testing.T) {
	url := serve(t, func(ctx *fasthttp.RequestCtx) {}, func(s *fasthttp.Server) { s.ReadTimeout = 200 * time.Millisecond })
	c, err := net.Dial("tcp", strings.TrimPrefix(url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprint(c, "GET / HTTP/1.1\r\nHost: a\r\n")
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(res.Body)
	if res.StatusCode != 408 || !strings.Contains(string(b), `"code":"request_timeout"`) || !res.Close {
		t.Fatalf("%d %s (close %v)", res.StatusCode, b, res.Close)
	}
}

func TestHeaderTooLarge(t *testing.T) {
	url := serve(t, func(ctx *fasthttp.RequestCtx) {})
	req, _ := http.NewRequest("GET", url+"/", nil)
	req.Header.Set("X-Big", strings.Repeat("h", MaxHeaderBytes+1))
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	if res.StatusCode != 431 || !strings.Contains(string(b), `"code":"header_too_large"`) {
		t.Fatalf("%d %s", res.StatusCode, b)
	}
}

func TestAdaptPanic(t *testing.T) {
	url := serve(t, Adapt(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { panic("boom") }), nil))
	res, err := http.Get(url + "/")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 500 {
		t.Fatalf("%d", res.StatusCode)
	}
}

// A request refused before its body is read (too large) or with a head
// over the limit gets its answer, not a connection reset: the server
// closes lingering.
func TestRefusalReachesClient(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := New(func(ctx *fasthttp.RequestCtx) {
		ctx.SetConnectionClose()
		ctx.SetStatusCode(413)
	}, nil)
	go srv.Serve(Listener(ln, time.Second, nil))
	t.Cleanup(func() { _ = srv.Shutdown() })
	url := "http://" + ln.Addr().String()
	for i := range 20 {
		req, _ := http.NewRequest("POST", url, strings.NewReader(strings.Repeat("x", 4<<20)))
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("body %d: %v", i, err)
		}
		res.Body.Close()
		if res.StatusCode != 413 {
			t.Fatalf("body %d: status %d", i, res.StatusCode)
		}
		req, _ = http.NewRequest("GET", url, nil)
		req.Header.Set("X-Big", strings.Repeat("h", 2*MaxHeaderBytes))
		res, err = http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("head %d: %v", i, err)
		}
		res.Body.Close()
		if res.StatusCode != 431 {
			t.Fatalf("head %d: status %d", i, res.StatusCode)
		}
	}
}

// What a handler leaves of a body is never read as the next request: the
// connection closes after the answer.
func TestAdaptUnreadBodyEndsConnection(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := New(Adapt(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == "PUT" {
			_, _ = io.ReadFull(r.Body, make([]byte, 10))
			w.WriteHeader(413)
			return
		}
		io.WriteString(w, "ok")
	}), nil), nil)
	go srv.Serve(Listener(ln, time.Second, nil))
	t.Cleanup(func() { _ = srv.Shutdown() })
	url := "http://" + ln.Addr().String()
	// The leftover is a request of its own, as a smuggler would send it.
	smuggled := "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
	body := strings.Repeat("x", 64<<10) + smuggled
	for i := range 5 {
		req, _ := http.NewRequest("PUT", url, strings.NewReader(body))
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != 413 || !res.Close {
			t.Fatalf("put %d: status %d, close %v", i, res.StatusCode, res.Close)
		}
		res, err = http.Get(url + "/next")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != 200 || string(b) != "ok" {
			t.Fatalf("get %d: %d %q", i, res.StatusCode, b)
		}
	}
}

// A request framed two ways (Transfer-Encoding and Content-Length), or
// with a coding other than one chunked, or with a Host that is doubled or
// not host[:port], is refused and its connection closed, so nothing it
// carries is read as a further request; the handler never sees it.
func TestRefusesAmbiguousFraming(t *testing.T) {
	called := 0
	url := serve(t, func(ctx *fasthttp.RequestCtx) { called++ })
	for _, head := range []string{
		"Host: a\r\nContent-Length: 44\r\nTransfer-Encoding: chunked",
		"Host: a\r\nTransfer-Encoding: chunked\r\ncontent-length: 44",
		"Host: a\r\nTransfer-Encoding: identity",
		"Host: a\r\nTransfer-Encoding: identity\r\nContent-Length: 5",
		"Host: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity",
		"Host: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
		"Host: a\r\nHost: b",
		"Host: x/../../admin",
		"Host: a b",
		"Host: x:99999",
		"Host: a\r\nTransfer-Encoding : chunked",
		"Host: a\r\nTransfer-Encoding: chunked\r\nContent-Length : 44",
	} {
		c, err := net.Dial("tcp", strings.TrimPrefix(url, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(c, "POST / HTTP/1.1\r\n%s\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n", head)
		br := bufio.NewReader(c)
		res, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != 400 {
			t.Fatalf("%q: status %d, want 400", head, res.StatusCode)
		}
		if _, err := http.ReadResponse(br, nil); err == nil {
			t.Fatalf("%q: a second response: the smuggled request was served", head)
		}
		c.Close()
	}
	if called != 0 {
		t.Fatalf("the handler ran %d times", called)
	}
}

// A chunked body whose connection ends before its last chunk is an error
// to the reader, not a complete body, even when it ends at a chunk
// boundary; a complete one followed by the client's half-close is not.
func TestTruncatedChunkedBody(t *testing.T) {
	got := make(chan string, 1)
	url := serve(t, Adapt(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		got <- fmt.Sprintf("%s|%v", b, err)
	}), nil))
	for _, tc := range []struct{ body, want string }{
		{"", "|unexpected EOF"},
		{"5\r\nhello\r\n", "hello|unexpected EOF"},
		{"5\r\nhel", "hel|unexpected EOF"},
		{"5\r\nhello\r\n0\r\n\r\n", "hello|<nil>"},
	} {
		c, err := net.Dial("tcp", strings.TrimPrefix(url, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(c, "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n%s", tc.body)
		_ = c.(*net.TCPConn).CloseWrite()
		select {
		case g := <-got:
			if g != tc.want {
				t.Errorf("body %q read as %q, want %q", tc.body, g, tc.want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("body %q: the handler did not finish", tc.body)
		}
		c.Close()
	}
}

func TestValidHost(t *testing.T) {
	for h, want := range map[string]bool{
		"":                   true, // missing: the caller's decision
		"example.com":        true,
		"example.com:8080":   true,
		"127.0.0.1:18080":    true,
		"x:":                 true,
		"[::1]":              true,
		"[::1]:443":          true,
		"a_b-c~d!$&'()*+,;=": true,
		"x:65535":            true,
		"x:65536":            false,
		"x:99999":            false,
		"x:abc":              false,
		"x:123456":           false,
		":80":                false,
		"a b":                false,
		"x/../admin":         false,
		"x/secret?":          false,
		"x%2F":               false,
		"x@y":                false,
		"x#y":                false,
		"[::1":               false,
		"[::1]x":             false,
		"[1.2.3.4]":          false,
		"[zz]":               false,
		"a:b:c":              false,
		"\x00":               false,
		"\xff":               false,
	} {
		if got := validHost([]byte(h)); got != want {
			t.Errorf("validHost(%q) = %v, want %v", h, got, want)
		}
	}
	// A name's length is bounded: the router repeats it to the function.
	long := strings.Repeat("a", MaxHostName)
	for h, want := range map[string]bool{long: true, long + ":65535": true, long + "a": false, long + "a:80": false} {
		if got := validHost([]byte(h)); got != want {
			t.Errorf("validHost(%d bytes) = %v, want %v", len(h), got, want)
		}
	}
}

// FuzzValidHost: a Host validHost accepts makes a URL that a standard
// parser reads back with that very host, so the function sees the URL
// the client asked for.
func FuzzValidHost(f *testing.F) {
	for _, s := range []string{"example.com:80", "[::1]:443", "x:", "a b", "x/../y", "[::1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, h string) {
		if h == "" || !validHost([]byte(h)) {
			return
		}
		u, err := url.Parse("http://" + h + "/p")
		if err != nil {
			t.Fatalf("validHost(%q) but the URL does not parse: %v", h, err)
		}
		if u.Host != h || u.Path != "/p" {
			t.Fatalf("validHost(%q) but the URL parses as host %q path %q", h, u.Host, u.Path)
		}
	})
}

// A request head with a line ended by LF alone is refused at once with
// 400, on a connection then closed (RFC 9112 2.2 lets a server reject
// it). fasthttp's parser took such lines for lines but waited for a
// CRLF blank line, so a head all in bare LFs got a 408 after the head
// timeout, and a head that mixed them was served: a proxy in front that
// does not take LF alone for a line's end would see another request
// ("\n\nGET /smuggled" below is one line of a field to it).
func TestBareLFHeadIsRefused(t *testing.T) {
	called := 0
	url := serve(t, func(ctx *fasthttp.RequestCtx) {
		called++
		if r := BodyStream(ctx); r != nil {
			b, _ := io.ReadAll(r)
			ctx.SetBody(b)
		}
	})
	dial := func() (net.Conn, *bufio.Reader) {
		c, err := net.Dial("tcp", strings.TrimPrefix(url, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		// Well under the head timeout (10 s): the answer must not wait
		// for it.
		_ = c.SetDeadline(time.Now().Add(3 * time.Second))
		return c, bufio.NewReader(c)
	}
	for _, tc := range []struct {
		name  string
		sends []string // written one by one, a moment apart
	}{
		{"all bare", []string{"GET / HTTP/1.1\nHost: a\n\n"}},
		{"bare then CRLF blank line", []string{"GET / HTTP/1.1\r\nHost: a\n\r\n"}},
		{"bare blank line", []string{"GET / HTTP/1.1\r\nHost: a\r\n\n"}},
		{"request line", []string{"GET / HTTP/1.1\nHost: a\r\n\r\n"}},
		{"a field", []string{"GET / HTTP/1.1\r\nX: 1\nHost: a\r\n\r\n"}},
		{"smuggled", []string{"GET / HTTP/1.1\r\nHost: a\r\n\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"}},
		{"line by line", []string{"GET / HTTP/1.1\n", "Host: a\n", "\n"}},
		{"after a good request", []string{"GET / HTTP/1.1\r\nHost: a\r\n\r\n", "GET / HTTP/1.1\nHost: a\n\n"}},
		{"with a body", []string{"POST / HTTP/1.1\nHost: a\nContent-Length: 20\n\n0123456789"}},
	} {
		called = 0
		c, br := dial()
		good := 0
		for i, s := range tc.sends {
			if i > 0 {
				time.Sleep(20 * time.Millisecond) // (separate reads, not policy)
			}
			fmt.Fprint(c, s)
			if s == "GET / HTTP/1.1\r\nHost: a\r\n\r\n" {
				res, err := http.ReadResponse(br, nil)
				if err != nil || res.StatusCode != 200 {
					t.Fatalf("%s: the good request got %v, %v", tc.name, res, err)
				}
				res.Body.Close()
				good++
			}
		}
		start := time.Now()
		res, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("%s: %v after %s", tc.name, err, time.Since(start))
		}
		b, _ := io.ReadAll(res.Body)
		if res.StatusCode != 400 || !strings.Contains(string(b), "bare LF") || !res.Close {
			t.Errorf("%s: %d %s (close %v); want 400 for a bare LF, and the connection closed", tc.name, res.StatusCode, b, res.Close)
		}
		if rest, err := io.ReadAll(br); err != nil || len(rest) > 0 {
			t.Errorf("%s: then %q, %v; want the connection's end", tc.name, rest, err)
		}
		if called != good {
			t.Errorf("%s: the handler ran %d times, want %d", tc.name, called, good)
		}
	}

	// LF alone is data in a body, and empty lines before a request line
	// are skipped, as before; a pipelined request whose head came with
	// the one before it and whose body comes after it is not a head.
	for _, tc := range []struct {
		name  string
		sends []string
		want  []string // bodies answered
	}{
		{"body", []string{"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 8\r\n\r\na\n\nb\r\n\r\n"}, []string{"a\n\nb\r\n\r\n"}},
		{"body in two parts", []string{"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\na\n", "\nb\n\n\n"}, []string{"a\n\nb\n\n"}},
		{"leading empty lines", []string{"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"}, []string{""}},
		{"pipelined head, then its body", []string{
			"GET / HTTP/1.1\r\nHost: a\r\n\r\nPOST / HTTP/1.1\r\nHost: a\r\nContent-Length: 17\r\n\r\n",
			"a b\nc: d\n\n", "1234567"}, []string{"", "a b\nc: d\n\n1234567"}},
	} {
		c, br := dial()
		for i, s := range tc.sends {
			if i > 0 {
				time.Sleep(20 * time.Millisecond)
			}
			fmt.Fprint(c, s)
		}
		for _, want := range tc.want {
			res, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("%s: %v", tc.name, err)
			}
			b, _ := io.ReadAll(res.Body)
			if res.StatusCode != 200 || string(b) != want {
				t.Errorf("%s: %d %q, want 200 %q", tc.name, res.StatusCode, b, want)
			}
		}
	}
}

// A pipelined head that came with the request before it is in the
// server's buffer before that request is answered: it is judged too. It
// was served with a bare LF after its request line, and one all in bare
// LFs waited for the head timeout. A body that looks like a head with
// bare LFs is still data.
func TestPipelinedBareLFHeadIsRefused(t *testing.T) {
	url := serve(t, func(ctx *fasthttp.RequestCtx) {
		var b []byte
		if r := BodyStream(ctx); r != nil {
			b, _ = io.ReadAll(r)
		}
		ctx.SetBodyString(string(ctx.Path()) + " " + string(b))
	})
	for _, tc := range []struct {
		send string
		want []string // status and body of each answer
	}{
		{"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\nHost: a\r\n\r\n", []string{"200 /a ", "400"}},
		{"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\nHost: a\n\n", []string{"200 /a ", "400"}},
		{"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET /b HTTP/1.1\nHost: a\r\n\r\n", []string{"200 /a abc", "400"}},
		{"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 9\r\n\r\na b\nc: d\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n", []string{"200 /a a b\nc: d\n", "200 /b "}},
		{"GET /a HTTP/1.1\r\nHost: a\r\n\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\nGET /c HTTP/1.1\r\nHost: a\r\n\r\n", []string{"200 /a ", "200 /b ", "200 /c "}},
	} {
		c, err := net.Dial("tcp", strings.TrimPrefix(url, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(3 * time.Second))
		br := bufio.NewReader(c)
		fmt.Fprint(c, tc.send)
		for _, want := range tc.want {
			res, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Errorf("%q: %v; want %s", tc.send, err, want)
				break
			}
			b, _ := io.ReadAll(res.Body)
			got := fmt.Sprintf("%d %s", res.StatusCode, b)
			if res.StatusCode == 400 {
				got = "400"
			}
			if got != want {
				t.Errorf("%q: %q, want %q", tc.send, got, want)
			}
		}
		c.Close()
	}
}

// A head pipelined behind a chunked body is judged too, placed where the
// body's framing ends it: one all in bare LFs waited for the head
// timeout (a 408 after 10 s) when it came in the same read as the body's
// end. A well-formed one is served, and a body that looks like a head is
// data.
func TestPipelinedHeadAfterChunkedBody(t *testing.T) {
	url := serve(t, func(ctx *fasthttp.RequestCtx) {
		var b []byte
		if r := BodyStream(ctx); r != nil {
			b, _ = io.ReadAll(r)
		}
		if len(b) > 64 {
			b = fmt.Appendf(nil, "%d bytes", len(b))
		}
		ctx.SetBodyString(string(ctx.Path()) + " " + string(b))
	})
	const (
		post    = "POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
		bare    = "GET /b HTTP/1.1\nHost: a\n\n"
		good    = "GET /b HTTP/1.1\r\nHost: a\r\n\r\n"
		refused = "400"
	)
	big := strings.Repeat("x", 200<<10) // more than one read
	for _, tc := range []struct {
		name  string
		sends []string // written one by one, a moment apart
		want  []string // status and body of each answer
	}{
		{"one write", []string{post + "3\r\nabc\r\n0\r\n\r\n" + bare}, []string{"200 /a abc", refused}},
		{"head apart", []string{post, "3\r\nabc\r\n0\r\n\r\n" + bare}, []string{"200 /a abc", refused}},
		{"body's end with the head", []string{post + "3\r\nab", "c\r\n0\r", "\n\r\n" + bare}, []string{"200 /a abc", refused}},
		{"head cut", []string{post + "3\r\nabc\r\n0\r\n\r\nGET /b HTTP/1.1\nHo", "st: a\n\n"}, []string{"200 /a abc", refused}},
		{"separate writes", []string{post + "3\r\nabc\r\n0\r\n\r\n", bare}, []string{"200 /a abc", refused}},
		{"extensions and trailers", []string{post + "3;x=y\r\nabc\r\n0;z\r\nX-T: 1\r\nX-U: 2\r\n\r\n" + bare}, []string{"200 /a abc", refused}},
		{"a large chunk", []string{post + fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(big), big) + bare}, []string{"200 /a 204800 bytes", refused}},
		{"well-formed", []string{post + "3\r\nabc\r\n0\r\n\r\n" + good}, []string{"200 /a abc", "200 /b "}},
		{"chunked twice", []string{post + "3\r\nabc\r\n0\r\n\r\n" + strings.Replace(post, "/a", "/c", 1) + "2\r\nde\r\n0\r\n\r\n" + bare},
			[]string{"200 /a abc", "200 /c de", refused}},
		{"a head in the data", []string{post + fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(bare), bare) + good}, []string{"200 /a " + bare, "200 /b "}},
		{"a last chunk in the data", []string{post + "5\r\n0\r\n\r\n\r\n0\r\n\r\n" + good}, []string{"200 /a 0\r\n\r\n", "200 /b "}},
	} {
		// Well under the head timeout (10 s): the answer must not wait
		// for it.
		c, br := sendPieces(t, url, tc.sends)
		for _, want := range tc.want {
			res, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Errorf("%s: %v; want %q", tc.name, err, want)
				break
			}
			b, _ := io.ReadAll(res.Body)
			got := fmt.Sprintf("%d %s", res.StatusCode, b)
			if res.StatusCode == 400 && strings.Contains(string(b), "bare LF") && res.Close {
				got = refused
			}
			if got != want {
				t.Errorf("%s: %q, want %q", tc.name, got, want)
			}
		}
		if tc.want[len(tc.want)-1] == refused {
			if rest, err := io.ReadAll(br); err != nil || len(rest) > 0 {
				t.Errorf("%s: then %q, %v; want the connection's end", tc.name, rest, err)
			}
		}
		c.Close()
	}
}

// A chunked body whose trailer section has a line ended by LF alone is
// an error to its reader, who refuses it (400) and closes the
// connection, as the router does. fasthttp ended the section at an
// empty line of LF alone, so what followed was served as a request where
// a proxy in front saw trailer lines.
func TestBareLFTrailerIsRefused(t *testing.T) {
	var mu sync.Mutex
	var served []string
	url := serve(t, func(ctx *fasthttp.RequestCtx) {
		mu.Lock()
		served = append(served, string(ctx.Path()))
		mu.Unlock()
		var b []byte
		if r := BodyStream(ctx); r != nil {
			var err error
			if b, err = io.ReadAll(r); err != nil {
				WriteError(ctx, errdefs.New(errdefs.ErrInvalidArgument, "malformed request body: %v", err))
				ctx.SetConnectionClose()
				return
			}
		}
		ctx.SetBodyString(string(ctx.Path()) + " " + string(b))
	})
	const (
		post     = "POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n"
		smuggled = "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"
	)
	for _, tc := range []struct {
		name  string
		sends []string
		want  string // the first answer: "400", or status and body
	}{
		{"a field", []string{post + "X: y\n\r\n" + smuggled}, "400"},
		{"the section's end", []string{post + "X: y\r\n\n" + smuggled}, "400"},
		{"both", []string{post + "X: y\n\n" + smuggled}, "400"},
		{"no fields", []string{post + "\n" + smuggled}, "400"},
		{"in pieces", []string{post + "X: y\n", "\n" + smuggled}, "400"},
		// (fasthttp waited for a CRLF blank line.)
		{"nothing after", []string{post + "X: y\n\n"}, "400"},
		{"nothing after the field", []string{post + "X: y\n"}, "400"},
		// fasthttp skips three bytes of a section that starts with "0".
		{"a section from 0", []string{post + "0ab\r\n" + smuggled}, "400 zero"},
		{"a second last chunk", []string{post + "0\r\n\n" + smuggled}, "400 zero"},
		{"a field from 0", []string{post + "0-x: y\r\n\r\n" + smuggled}, "400 zero"},
		{"0 in pieces", []string{post, "0\r\n\r\n"}, "400 zero"},
		// (Well-formed: the GET is a request of its own.)
		{"CRLF", []string{post + "X: y\r\n\r\n" + smuggled}, "200 /a abc"},
	} {
		served = nil
		c, br := sendPieces(t, url, tc.sends)
		res, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		b, _ := io.ReadAll(res.Body)
		got := fmt.Sprintf("%d %s", res.StatusCode, b)
		switch {
		case res.StatusCode != 400 || !res.Close:
		case strings.Contains(string(b), "trailer section ends in a bare LF"):
			got = "400"
		case strings.Contains(string(b), `trailer section starts with \"0\"`):
			got = "400 zero"
		}
		if got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
		wantServed := "/a"
		if strings.HasPrefix(tc.want, "400") {
			if rest, err := io.ReadAll(br); err != nil || len(rest) > 0 {
				t.Errorf("%s: then %q, %v; want the connection's end", tc.name, rest, err)
			}
		} else {
			if res, err := http.ReadResponse(br, nil); err != nil || res.StatusCode != 200 {
				t.Errorf("%s: the next request got %v, %v", tc.name, res, err)
			}
			wantServed = "/a /smuggled"
		}
		mu.Lock()
		if s := strings.Join(served, " "); s != wantServed {
			t.Errorf("%s: served %s, want %s", tc.name, s, wantServed)
		}
		mu.Unlock()
		c.Close()
	}
}

// A request Adapt refuses before its handler runs (a target net/http
// cannot parse) leaves its body unread: the connection closes, so the
// rest of the body is never read as the next request.
func TestAdaptRefusedBodyIsNoRequest(t *testing.T) {
	var mu sync.Mutex
	var served []string
	url := serve(t, Adapt(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		served = append(served, r.URL.Path)
		mu.Unlock()
	}), nil))
	const next = "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"
	// fasthttp reads 8 KiB of a body before the handler runs, none of a
	// chunked one.
	pad := strings.Repeat("x", 8<<10)
	for _, framing := range []string{fmt.Sprintf("Content-Length: %d\r\n\r\n%s", len(pad)+len(next), pad), "Transfer-Encoding: chunked\r\n\r\n"} {
		c, err := net.Dial("tcp", strings.TrimPrefix(url, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(3 * time.Second))
		br := bufio.NewReader(c)
		fmt.Fprintf(c, "POST /%%zz HTTP/1.1\r\nHost: a\r\n%s", framing)
		res, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(res.Body)
		fmt.Fprint(c, next)
		if res.StatusCode != 400 || !res.Close {
			t.Errorf("%d %s (close %v); want 400 and the connection closed", res.StatusCode, b, res.Close)
		}
		if rest, err := io.ReadAll(br); err != nil || len(rest) > 0 {
			t.Errorf("then %q, %v; want the connection's end", rest, err)
		}
		c.Close()
	}
	mu.Lock()
	defer mu.Unlock()
	if len(served) > 0 {
		t.Fatalf("served %v", served)
	}
}

// sendPieces dials url and sends each piece in a write of its own,
// apart enough to arrive in separate reads; the connection has a 3 s
// deadline, well under the head timeout.
func sendPieces(t *testing.T, url string, pieces []string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	for i, s := range pieces {
		if i > 0 {
			time.Sleep(20 * time.Millisecond) // (separate reads, not policy)
		}
		fmt.Fprint(c, s)
	}
	return c, bufio.NewReader(c)
}

// A client that stops reading a streamed response but keeps its
// connection does not hold the handler for ever: once a part waits past
// sendTimeout, the handler's writes fail and its context ends.
func TestAdaptStalledReaderEndsStream(t *testing.T) {
	old := sendTimeout
	sendTimeout = 200 * time.Millisecond
	t.Cleanup(func() { sendTimeout = old })
	ended := make(chan error, 1)
	url := serve(t, Adapt(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		chunk := make([]byte, 32<<10)
		for range 4096 { // 128 MiB: more than any socket buffers
			if _, err := w.Write(chunk); err != nil {
				ended <- err
				return
			}
		}
		ended <- nil
	}), nil))
	c, err := net.Dial("tcp", strings.TrimPrefix(url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, "GET /backup HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-ended:
		if err == nil {
			t.Fatal("the handler wrote all of it to a client that reads nothing")
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the handler is still held by a client that stopped reading")
	}
}

// A request line of another major version than 1 gets 505 and its
// connection closed (fasthttp would serve any HTTP/d.d as HTTP/1.0);
// HTTP/1.x's minor versions are served (RFC 9110 2.5).
func TestVersions(t *testing.T) {
	called := 0
	url := serve(t, func(ctx *fasthttp.RequestCtx) { called++ })
	for _, tc := range []struct {
		proto  string
		status int
	}{
		{"HTTP/1.1", 200},
		{"HTTP/1.0", 200},
		{"HTTP/1.2", 200},
		{"HTTP/1.9", 200},
		{"HTTP/2.0", 505},
		{"HTTP/3.0", 505},
		{"HTTP/0.9", 505},
	} {
		c, err := net.Dial("tcp", strings.TrimPrefix(url, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(c, "GET / %s\r\nHost: a\r\n\r\nGET /second HTTP/1.1\r\nHost: a\r\n\r\n", tc.proto)
		br := bufio.NewReader(c)
		res, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != tc.status {
			t.Errorf("%s: status %d %s, want %d", tc.proto, res.StatusCode, b, tc.status)
		}
		if tc.status == 505 {
			if !strings.Contains(string(b), "http_version_not_supported") {
				t.Errorf("%s: %s", tc.proto, b)
			}
			if _, err := http.ReadResponse(br, nil); err == nil {
				t.Errorf("%s: a second response on the connection", tc.proto)
			}
		}
		c.Close()
	}
	if called < 4 {
		t.Fatalf("the handler ran %d times, want 4 or more", called)
	}
}

// A request the server cannot read is the client's doing: it is logged
// at debug, not as a warning, so a client sending garbage in a loop does
// not fill the server's log with a line per request.
func TestMalformedRequestsAreNotWarnings(t *testing.T) {
	var mu sync.Mutex
	var out bytes.Buffer
	log := slog.New(slog.NewTextHandler(writerFunc(func(p []byte) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		return out.Write(p)
	}), &slog.HandlerOptions{Level: slog.LevelDebug}))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := New(func(ctx *fasthttp.RequestCtx) {}, log)
	go srv.Serve(Listener(ln, WatchAfter, nil))
	t.Cleanup(func() { _ = srv.Shutdown() })
	for _, garbage := range []string{"GARBAGE\r\n\r\n", "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n"} {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, garbage)
		if res, err := http.ReadResponse(bufio.NewReader(c), nil); err != nil || res.StatusCode != 400 {
			t.Fatalf("%q: %v %v", garbage, res, err)
		}
		c.Close()
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		mu.Lock()
		logged := out.String()
		mu.Unlock()
		if strings.Contains(logged, "level=WARN") {
			t.Fatalf("a malformed request logged a warning:\n%s", logged)
		}
		if strings.Count(logged, "error when serving connection") >= 2 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
