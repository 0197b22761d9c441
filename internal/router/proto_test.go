package router

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/textproto"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// An HTTP/1.0 client knows no chunks (RFC 9112 6.1: a server must not
// send Transfer-Encoding to it): an answer of unknown length reaches it
// as the data alone, to the connection's end, on either path. The
// goroutine path sent it chunked, which such a client takes for the data
// and, keeping the connection, waits on for an end that never comes.
// Without a Host the lane hands an HTTP/1.0 request over, so each case
// is tried on the goroutine path in both modes.
func TestHTTP10UnknownLengthAnswer(t *testing.T) {
	for _, tc := range []struct{ name, answer string }{
		{"chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"},
		{"close-delimited", "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhello"},
	} {
		srv := routerTo(t, serveRawRequests(t, func(i int, c net.Conn) {
			io.WriteString(c, tc.answer)
			if strings.Contains(tc.answer, "close") {
				c.Close()
			}
		}), time.Millisecond)
		for _, req := range []string{
			"GET /fn/alice/fn/ HTTP/1.0\r\nHost: h\r\nConnection: keep-alive\r\n\r\n",
			"GET /fn/alice/fn/ HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
			"GET /fn/alice/fn/ HTTP/1.0\r\n\r\n",
		} {
			c := dialRaw(t, srv.URL)
			_ = c.SetDeadline(time.Now().Add(3 * time.Second))
			c.send(req)
			a, err := io.ReadAll(c.br)
			if err != nil {
				t.Fatalf("%s, %q: %v after %q", tc.name, req, err, a)
			}
			head, b, _ := strings.Cut(string(a), "\r\n\r\n")
			if !strings.HasPrefix(head, "HTTP/1.1 200 ") || b != "hello" || strings.Contains(head, "Transfer-Encoding") || !strings.Contains(head, "Connection: close") {
				t.Errorf("%s, %q: answer %q; want 200, the data alone, no Transfer-Encoding, Connection: close", tc.name, req, a)
			}
		}
	}
}

// CONNECT is refused (400) before it reaches the function, on either
// path, and the connection closes. A function that answers every method
// 200 passed the 200 on, which the client, or a proxy in front, takes for
// a tunnel opened (RFC 9110 9.3.6), while the router went on reading what
// came next on the connection as requests.
func TestConnectIsRefused(t *testing.T) {
	srv, got := countingRouter(t, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
	for _, target := range []string{"/fn/alice/fn/", "http://h/fn/alice/fn/"} {
		c := dialRaw(t, srv.URL)
		_ = c.SetDeadline(time.Now().Add(3 * time.Second))
		c.send("CONNECT " + target + " HTTP/1.1\r\nHost: h\r\n\r\nGET /fn/alice/fn/ HTTP/1.1\r\nHost: h\r\n\r\n")
		c.refused("CONNECT "+target, "")
		c.ended("CONNECT " + target)
	}
	if n := got.Load(); n != 0 {
		t.Fatalf("the function got %d requests", n)
	}
}

// A function request whose head has a line ended by LF alone is refused
// at once (400, and the connection closes) on either path, and never
// reaches the function: such a head waited for the head timeout (408
// after 10 s), or, mixed with CRLF lines, was served ended where a proxy
// in front that does not take LF alone for a line's end would not end
// it (the smuggled request below).
func TestBareLFHeadIsRefused(t *testing.T) {
	srv, got := countingRouter(t, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	for _, req := range []string{
		"GET /fn/alice/fn/ HTTP/1.1\nHost: h\n\n",
		"GET /fn/alice/fn/ HTTP/1.1\r\nHost: h\n\r\n",
		"GET /fn/alice/fn/ HTTP/1.1\nHost: h\r\n\r\n",
		"GET /fn/alice/fn/ HTTP/1.1\r\nX: 1\nHost: h\r\n\r\n",
		"GET /fn/alice/fn/ HTTP/1.1\r\nHost: h\r\n\nGET /fn/alice/fn/smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
		"POST /fn/alice/fn/ HTTP/1.1\nHost: h\nContent-Length: 2\n\nab",
		// (These were served, ended at the bare LF, before.)
		"POST /fn/alice/fn/a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\n\nhello\r\n\r\nXXXXX",
		"GET /fn/alice/fn/a HTTP/1.1\nHost: h\n\nGET /fn/alice/fn/b HTTP/1.1\r\nHost: h\r\n\r\n",
	} {
		refusedAndEnded(t, srv.URL, req, "bare LF")
	}
	if n := got.Load(); n != 0 {
		t.Fatalf("the function got %d requests", n)
	}
}

// An answer's transfer codings other than chunked reach an HTTP/1.1
// client, on either path: the router de-chunks the body and chunks it
// again, and the client is told the rest ("gzip, chunked"). It was told
// "chunked" alone, and got gzip bytes that nothing said were gzip. An
// HTTP/1.0 client can take no transfer coding (RFC 9112 6.1), and a list
// that does not end in one chunked cannot be re-framed (6.3: the body
// would run to the connection's end, and chunked must not be applied
// twice): those get 502. The instance was sent no TE, so only chunked
// was its to use (RFC 9110 10.1.4).
func TestAnswerTransferCodings(t *testing.T) {
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	io.WriteString(zw, "hello, gzip")
	zw.Close()
	chunked := fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", gz.Len(), gz.Bytes())
	for _, tc := range []struct {
		name, te, body, req string
		status              int
		wantTE              string // the client's, on a 200
	}{
		{"gzip, chunked", "gzip, chunked", chunked, "GET /fn/alice/fn/ HTTP/1.1\r\nHost: h\r\n\r\n", 200, "gzip, chunked"},
		{"in two fields", "gzip\r\nTransfer-Encoding: chunked", chunked, "GET /fn/alice/fn/ HTTP/1.1\r\nHost: h\r\n\r\n", 200, "gzip, chunked"},
		{"HEAD", "gzip, chunked", "", "HEAD /fn/alice/fn/ HTTP/1.1\r\nHost: h\r\n\r\n", 200, ""},
		{"HTTP/1.0", "gzip, chunked", chunked, "GET /fn/alice/fn/ HTTP/1.0\r\nHost: h\r\n\r\n", 502, ""},
		{"HTTP/1.0 without Host", "gzip, chunked", chunked, "GET /fn/alice/fn/ HTTP/1.0\r\n\r\n", 502, ""},
		{"gzip alone", "gzip", gz.String(), "GET /fn/alice/fn/ HTTP/1.1\r\nHost: h\r\n\r\n", 502, ""},
		{"chunked first", "chunked, gzip", chunked, "GET /fn/alice/fn/ HTTP/1.1\r\nHost: h\r\n\r\n", 502, ""},
		{"chunked twice", "chunked, chunked", chunked, "GET /fn/alice/fn/ HTTP/1.1\r\nHost: h\r\n\r\n", 502, ""},
		// No body to frame: the codings do not matter.
		{"HEAD, gzip alone", "gzip", "", "HEAD /fn/alice/fn/ HTTP/1.1\r\nHost: h\r\n\r\n", 200, ""},
		{"HEAD, chunked twice", "chunked, chunked", "", "HEAD /fn/alice/fn/ HTTP/1.1\r\nHost: h\r\n\r\n", 200, ""},
	} {
		srv := routerTo(t, serveRawRequests(t, func(i int, c net.Conn) {
			io.WriteString(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: "+tc.te+"\r\n\r\n"+tc.body)
			if !strings.HasSuffix(tc.te, "chunked") {
				c.Close()
			}
		}), time.Millisecond)
		c := dialRaw(t, srv.URL)
		_ = c.SetDeadline(time.Now().Add(3 * time.Second))
		c.send(tc.req)
		tp := textproto.NewReader(c.br)
		line, err := tp.ReadLine()
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		h, err := tp.ReadMIMEHeader()
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if !strings.HasPrefix(line, fmt.Sprintf("HTTP/1.1 %d ", tc.status)) {
			t.Errorf("%s: %q %v; want %d", tc.name, line, h, tc.status)
			continue
		}
		if tc.status != 200 {
			continue
		}
		if got := strings.Join(h.Values("Transfer-Encoding"), ", "); got != tc.wantTE {
			t.Errorf("%s: Transfer-Encoding %q, want %q", tc.name, got, tc.wantTE)
		}
		if tc.wantTE == "" {
			continue
		}
		zr, err := gzip.NewReader(httputil.NewChunkedReader(c.br))
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if b, err := io.ReadAll(zr); err != nil || string(b) != "hello, gzip" {
			t.Errorf("%s: body %q, %v; want it gzipped", tc.name, b, err)
		}
	}
}

// A pipelined head with a bare LF, in the server's buffer with the
// request before it, is refused too, on either path (the lane hands a
// chunked body to the goroutine path).
func TestPipelinedBareLFHeadIsRefused(t *testing.T) {
	srv, got := countingRouter(t, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	for _, req := range []string{
		"GET /fn/alice/fn/a HTTP/1.1\r\nHost: h\r\n\r\nGET /fn/alice/fn/b HTTP/1.1\nHost: h\r\n\r\n",
		"POST /fn/alice/fn/a HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nabGET /fn/alice/fn/b HTTP/1.1\nHost: h\n\n",
		"POST /fn/alice/fn/a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2;x\r\nab\r\n0\r\nT: 1\r\n\r\nGET /fn/alice/fn/b HTTP/1.1\nHost: h\n\n",
	} {
		got.Store(0)
		c := dialRaw(t, srv.URL)
		_ = c.SetDeadline(time.Now().Add(3 * time.Second))
		c.send(req)
		if res := c.response(); res.StatusCode != 200 {
			t.Fatalf("%q: the first request got %d", req, res.StatusCode)
		} else {
			body(res)
		}
		c.refused(fmt.Sprintf("%q", req), "bare LF")
		if n := got.Load(); n != 1 {
			t.Errorf("%q: the function got %d requests, want 1", req, n)
		}
	}
}

// A chunked body whose trailer section has a line ended by LF alone, or
// starts with "0", is refused (400, and the connection closes), on either path: fasthttp
// ended the section at an empty line of LF alone and served what came
// after as a request, where a proxy in front saw trailer lines.
func TestBareLFTrailerIsRefused(t *testing.T) {
	var smuggled atomic.Int32
	srv := newTestRouter(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "smuggled") {
			smuggled.Add(1)
		}
		io.Copy(io.Discard, r.Body)
	}))
	const next = "GET /fn/alice/fn/smuggled HTTP/1.1\r\nHost: h\r\n\r\n"
	// (Without a CRLF blank line after them, the parser waited for one.)
	for _, trailers := range []string{"X: y\n\n" + next, "\n" + next, "X: y\r\n\n" + next, "X: y\n\r\n" + next, "X: y\n\n",
		// fasthttp skips three bytes of a section that starts with "0"
		// and reads the rest as the section.
		"0\r\nX: y\n\n" + next, "0\r\n\n" + next, "0ab\r\n" + next} {
		c := dialRaw(t, srv.URL)
		// Well under the function's timeout (5 s).
		_ = c.SetDeadline(time.Now().Add(3 * time.Second))
		c.send("POST /fn/alice/fn/a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n" + trailers)
		c.refused(fmt.Sprintf("%q", trailers), "trailer section")
		c.ended(fmt.Sprintf("%q", trailers))
	}
	if n := smuggled.Load(); n != 0 {
		t.Fatalf("the function got %d smuggled requests", n)
	}
}

// A request whose Connection field names "close" ends its connection
// after its answer (RFC 9112 9.6), whatever the case and whatever else
// the field lists, on either path; and every field a Connection field
// names stays behind, not only those the first one names (RFC 9110
// 7.6.1). fasthttp's parser took only "Connection: close" exactly (and
// a later "Connection: keep-alive" undid it): the others were served as
// keep-alive, and the request pipelined behind them answered, where a
// proxy in front had taken the connection for closed. Nor did the
// router see past the first Connection field, or past "close".
func TestConnectionOptions(t *testing.T) {
	seen := make(chan http.Header, 4)
	srv := newTestRouter(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen <- r.Header.Clone()
	}))
	for _, tc := range []struct {
		fields string
		close  bool
		gone   []string // fields the function must not get
	}{
		{"Connection: close\r\n", true, nil},
		{"Connection: Close\r\n", true, nil},
		{"Connection: CLOSE\r\n", true, nil},
		{"Connection: close, X-A\r\nX-A: 1\r\n", true, []string{"X-A"}},
		{"Connection: X-A ,\tclose \r\nX-A: 1\r\n", true, []string{"X-A"}},
		{"Connection: close\r\nConnection: keep-alive\r\n", true, nil},
		{"Connection: X-A\r\nConnection: X-B\r\nX-A: 1\r\nX-B: 2\r\n", false, []string{"X-A", "X-B"}},
		{"Connection: X-A\r\nX-A: 1\r\nX-B: 2\r\nConnection: close, X-B\r\n", true, []string{"X-A", "X-B"}},
		{"Connection: keep-alive\r\n", false, nil},
		{"Connection: closed, x-close\r\n", false, nil},
	} {
		c := dialRaw(t, srv.URL)
		_ = c.SetDeadline(time.Now().Add(3 * time.Second))
		c.send("GET /fn/alice/fn/ HTTP/1.1\r\nHost: h\r\n" + tc.fields + "\r\nGET /fn/alice/fn/next HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
		res := c.response()
		body(res)
		if res.StatusCode != 200 || res.Close != tc.close {
			t.Errorf("%q: %d, close %v; want 200, close %v", tc.fields, res.StatusCode, res.Close, tc.close)
		}
		h := <-seen
		for _, f := range tc.gone {
			if v, ok := h[f]; ok {
				t.Errorf("%q: the function got %s: %q", tc.fields, f, v)
			}
		}
		if tc.close {
			c.ended(fmt.Sprintf("%q", tc.fields))
			continue
		}
		if res := c.response(); res.StatusCode != 200 {
			t.Errorf("%q: the next request's answer is %d", tc.fields, res.StatusCode)
		}
		<-seen
	}
}

// An HTTP/1.0 request with a Transfer-Encoding is refused (400, and the
// connection closes) on either path, as nginx refuses it: HTTP/1.0 has
// no transfer codings, so a proxy in front may frame its body without
// one (RFC 9112 6.1 has such framing taken for faulty), and see the
// request below in it where the router read it as chunks. The router
// read the body chunked, and, asked to keep the connection, served the
// request after it.
func TestHTTP10TransferEncodingIsRefused(t *testing.T) {
	srv, got := countingRouter(t, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	for _, req := range []string{
		"POST /fn/alice/fn/ HTTP/1.0\r\nHost: h\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n" +
			"2f\r\nGET /fn/alice/fn/smuggled HTTP/1.0\r\nHost: h\r\n\r\n\r\n0\r\n\r\n",
		"POST /fn/alice/fn/ HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
	} {
		refusedAndEnded(t, srv.URL, req, "HTTP/1.0")
	}
	if n := got.Load(); n != 0 {
		t.Fatalf("the function got %d requests", n)
	}
}

// A request line of a major version other than 1 gets 505 and its
// connection closed, on either path (the loops hand it over); a minor
// version past 1 is served (RFC 9110 2.5).
func TestOtherHTTPVersions(t *testing.T) {
	srv, got := countingRouter(t, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	for _, proto := range []string{"HTTP/2.0", "HTTP/3.0", "HTTP/0.9"} {
		req := "GET /fn/alice/fn/ " + proto + "\r\nHost: h\r\n\r\nGET /fn/alice/fn/next HTTP/1.1\r\nHost: h\r\n\r\n"
		c := dialRaw(t, srv.URL)
		_ = c.SetDeadline(time.Now().Add(3 * time.Second))
		c.send(req)
		c.refusedWith(proto, 505, "only HTTP/1.x")
		c.ended(proto)
	}
	if n := got.Load(); n != 0 {
		t.Fatalf("the function got %d requests", n)
	}
	c := dialRaw(t, srv.URL)
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	c.send("GET /fn/alice/fn/ HTTP/1.2\r\nHost: h\r\n\r\n")
	if res := c.response(); res.StatusCode != 200 {
		t.Fatalf("HTTP/1.2: %d", res.StatusCode)
	}
}

// countingRouter is a router to a function that gives every request
// answer, and the count of the requests it got.
func countingRouter(t *testing.T, answer string) (*testServer, *atomic.Int32) {
	got := new(atomic.Int32)
	srv := routerTo(t, serveRawRequests(t, func(i int, c net.Conn) {
		got.Add(1)
		io.WriteString(c, answer)
	}), time.Millisecond)
	return srv, got
}

// refusedAndEnded sends req on a connection of its own and wants it
// refused with a 400 whose message holds want, and the connection ended,
// all well under the head timeout.
func refusedAndEnded(t *testing.T, url, req, want string) {
	t.Helper()
	c := dialRaw(t, url)
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	c.send(req)
	c.refused(fmt.Sprintf("%q", req), want)
	c.ended(fmt.Sprintf("%q", req))
}
