package httpserve

import (
	"bufio"
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
