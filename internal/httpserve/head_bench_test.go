package httpserve

import (
	"bufio"
	"net"
	"strings"
	"testing"

	"github.com/valyala/fasthttp"
)

func BenchmarkCheckHead(b *testing.B) {
	for name, head := range map[string]string{
		"wrk":     "GET /fn/admin/triv/ HTTP/1.1\r\nHost: 127.0.0.1:18080\r\n\r\n",
		"browser": "GET /fn/admin/triv/ HTTP/1.1\r\nHost: example.com\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/120.0\r\nAccept: text/html,application/xhtml+xml\r\nAccept-Language: en-US,en;q=0.5\r\nAccept-Encoding: gzip, deflate, br\r\nConnection: keep-alive\r\nCookie: a=b; c=d\r\nUpgrade-Insecure-Requests: 1\r\nSec-Fetch-Dest: document\r\nSec-Fetch-Mode: navigate\r\n\r\n",
	} {
		var h fasthttp.RequestHeader
		if err := h.Read(bufio.NewReader(strings.NewReader(head))); err != nil {
			b.Fatal(err)
		}
		b.Run(name, func(b *testing.B) {
			for b.Loop() {
				if err := CheckHead(&h); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkBareLF is the lane's look at every request head for a line
// ended by LF alone.
func BenchmarkBareLF(b *testing.B) {
	for name, head := range map[string]string{
		"wrk":     "GET /fn/admin/triv/ HTTP/1.1\r\nHost: 127.0.0.1:18080\r\n\r\n",
		"browser": "GET /fn/admin/triv/ HTTP/1.1\r\nHost: example.com\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/120.0\r\nAccept: text/html,application/xhtml+xml\r\nAccept-Language: en-US,en;q=0.5\r\nAccept-Encoding: gzip, deflate, br\r\nConnection: keep-alive\r\nCookie: a=b; c=d\r\nUpgrade-Insecure-Requests: 1\r\nSec-Fetch-Dest: document\r\nSec-Fetch-Mode: navigate\r\n\r\n",
	} {
		h := []byte(head)
		b.Run(name, func(b *testing.B) {
			for b.Loop() {
				if BareLF(h) {
					b.Fatal("a CRLF head taken for bare LF")
				}
			}
		})
	}
}

// headConn gives one request in each read.
type headConn struct {
	net.Conn
	req []byte
}

func (h *headConn) Read(p []byte) (int, error) { return copy(p, h.req), nil }

// BenchmarkConnHead is the goroutine path's following of each request as
// it is read (Conn.Read, and the server's calls at the head's start and
// end), for a request without a body and one with a small one.
func BenchmarkConnHead(b *testing.B) {
	for _, tc := range []struct {
		name string
		req  string
		body int
	}{
		{"wrk", "GET /fn/admin/triv/ HTTP/1.1\r\nHost: 127.0.0.1:18080\r\n\r\n", -2},
		{"post", "POST /fn/admin/triv/ HTTP/1.1\r\nHost: 127.0.0.1:18080\r\nContent-Length: 5\r\n\r\nhello", 5},
	} {
		c := &Conn{Conn: &headConn{req: []byte(tc.req)}, inHead: true, headEnd: -1}
		buf := make([]byte, 4096)
		b.Run(tc.name, func(b *testing.B) {
			for b.Loop() {
				c.headStarts()
				if _, err := c.Read(buf); err != nil {
					b.Fatal(err)
				}
				if c.headRead(tc.body) {
					b.Fatal("a CRLF head taken for bare LF")
				}
			}
		})
	}
}
