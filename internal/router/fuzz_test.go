package router

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

// FuzzInstanceResponse: a function is untrusted, so whatever bytes its
// instance answers with, the client gets one well-formed HTTP response
// (the instance's, or the router's 502) that carries the router's
// request id; never a panic, a hang, or a second response smuggled into
// the client's connection.
func FuzzInstanceResponse(f *testing.F) {
	for _, s := range []string{
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\nX-Trailer: 1\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nhi",
		"HTTP/1.1 200 OK\r\n\r\nuntil the end",
		"HTTP/1.1 204 No Content\r\n\r\n",
		"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
		"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx",
		"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\nraw",
		"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nxHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nsmugl",
		"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
		"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort",
		"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nX-A: a\rX-B: b\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 200 OK\nContent-Length: 0\n\n",
		"HTTP/1.0 200 OK\r\n\r\nold",
		"HTTP/1.1 999 Odd\r\nContent-Length: 0\r\n\r\n",
		"garbage\r\n\r\n",
		"",
	} {
		f.Add([]byte(s))
	}
	var answer atomic.Pointer[[]byte]
	sock := serveRawUnix(f, func(c net.Conn) {
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		br := bufio.NewReader(c)
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			if line == "\r\n" {
				break
			}
		}
		_, _ = c.Write(*answer.Load())
	})
	srv := routerTo(f, sock, time.Millisecond)
	addr := srv.URL[len("http://"):]

	f.Fuzz(func(t *testing.T, b []byte) {
		answer.Store(&b)
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		br := bufio.NewReader(c)
		var ids []string
		for i := 0; i < 2; i++ {
			if _, err := io.WriteString(c, "GET /fn/alice/fn/x HTTP/1.1\r\nHost: t\r\n\r\n"); err != nil {
				if i > 0 {
					return // the router closed after the first answer
				}
				t.Fatal(err)
			}
			req, _ := http.NewRequest("GET", "/fn/alice/fn/x", nil)
			res, err := http.ReadResponse(br, req)
			if err != nil {
				if i > 0 && (err == io.EOF || isReset(err)) {
					return
				}
				if strings.Contains(err.Error(), "unsupported transfer encoding") && bytes.Contains(bytes.ToLower(b), []byte("transfer-encoding")) {
					// The instance's codings besides chunked, passed on
					// (TestAnswerTransferCodings), which Go's client does
					// not take.
					return
				}
				t.Fatalf("request %d: unreadable response (%v) to instance answer %q", i, err, b)
			}
			if want := strconv.Itoa(res.StatusCode) + " " + fasthttp.StatusMessage(res.StatusCode); res.Status != want {
				t.Fatalf("request %d: status line %q, want the standard %q, to instance answer %q", i, res.Status, want, b)
			}
			id := res.Header.Get("Spry-Request-Id")
			if id == "" {
				t.Fatalf("request %d: a response without the router's request id (smuggled?) to instance answer %q: %+v", i, b, res)
			}
			ids = append(ids, id)
			_, err = io.Copy(io.Discard, res.Body)
			res.Body.Close()
			if err != nil || res.Close || res.StatusCode == http.StatusSwitchingProtocols {
				// A body cut short ends the connection; nothing follows.
				return
			}
		}
		if ids[0] == ids[1] {
			t.Fatalf("one request id twice: %q", ids)
		}
	})
}

func isReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.ErrUnexpectedEOF)
}

// FuzzClientRequest: whatever bytes a client sends, every request the
// instance gets is well-formed HTTP and answers a request the client sees
// answered (no request smuggled past the router inside another's body or
// headers), and the client gets well-formed responses.
func FuzzClientRequest(f *testing.F) {
	for _, s := range []string{
		"GET /fn/alice/fn/x HTTP/1.1\r\nHost: a\r\n\r\n",
		"POST /fn/alice/fn/ HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
		"POST /fn/alice/fn/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
		"POST /fn/alice/fn/ HTTP/1.1\r\nHost: a\r\nContent-Length: 36\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /fn/alice/fn/smuggled HTTP/1.1\r\n\r\n",
		"POST /fn/alice/fn/ HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 38\r\n\r\nGET /fn/alice/fn/smuggled HTTP/1.1\r\n\r\n",
		"GET /fn/alice/fn/a HTTP/1.1\r\nHost: a\r\n\r\nGET /fn/alice/fn/b HTTP/1.1\r\nHost: a\r\n\r\n",
		"POST /fn/alice/fn/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\nGET /fn/alice/fn/smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET /fn/alice/fn/ HTTP/1.1\r\nHost: a\r\nHost: b/../x\r\n\r\n",
		"GET /fn/alice/fn/ HTTP/1.1\r\nHost: a\r\nX-A: a\r\n b\r\n\r\n",
		"GET /fn/alice/fn/ HTTP/1.1\nHost: a\n\n",
		"GET /fn/alice/fn/ HTTP/1.0\r\n\r\n",
		"GET /fn/alice/fn/%0d%0aX: y HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET /fn/alice/fn/ HTTP/1.1\r\nHost: a\r\nConnection: close, X-Forwarded-For\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	// Each run dials from its own loopback address, which the instance
	// sees in X-Forwarded-For: a request of an earlier run that the
	// instance gets late (its client gone) is not counted against this one.
	var (
		mu     sync.Mutex
		issued map[string][]int // by client address
		bad    []string
		next   int
		run    int
	)
	sock := serveRawUnix(f, func(c net.Conn) {
		br := bufio.NewReader(c)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				if err != io.EOF && !errors.Is(err, net.ErrClosed) && !isReset(err) {
					mu.Lock()
					bad = append(bad, err.Error())
					mu.Unlock()
				}
				return
			}
			if _, err := io.Copy(io.Discard, req.Body); err != nil {
				return // the router gave up on the body (the client's was short)
			}
			mu.Lock()
			next++
			id := next
			from := req.Header.Get("X-Forwarded-For")
			issued[from] = append(issued[from], id)
			mu.Unlock()
			body := strconv.Itoa(id)
			if _, err := fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(body), body); err != nil {
				return
			}
		}
	})
	// The client half-closes once it has sent its bytes, which the client
	// watch would rightly take for a hang-up; this is not about the watch.
	srv := routerTo(f, sock, time.Minute)
	addr := srv.URL[len("http://"):]

	f.Fuzz(func(t *testing.T, in []byte) {
		mu.Lock()
		issued, bad = map[string][]int{}, nil
		run++
		from := fmt.Sprintf("127.0.%d.%d", run/250%250, 2+run%250)
		mu.Unlock()
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
		c, err := d.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write(in); err != nil {
			return
		}
		_ = c.(*net.TCPConn).CloseWrite()
		got := map[int]bool{}
		br := bufio.NewReader(c)
		for {
			res, err := http.ReadResponse(br, nil)
			if err != nil {
				if err == io.EOF || isReset(err) {
					break
				}
				t.Fatalf("unreadable response (%v) to client bytes %q", err, in)
			}
			b, err := io.ReadAll(res.Body)
			res.Body.Close()
			if res.StatusCode == 200 {
				id, _ := strconv.Atoi(string(b))
				got[id] = true
			}
			if err != nil || res.Close {
				break
			}
		}
		mu.Lock()
		defer mu.Unlock()
		if len(bad) > 0 {
			t.Fatalf("the instance got malformed requests %q from client bytes %q", bad, in)
		}
		for _, id := range issued[from] {
			if !got[id] {
				t.Fatalf("the instance answered a request the client never saw answered (smuggled?) from client bytes %q", in)
			}
		}
	})
}
