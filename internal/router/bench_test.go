package router

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

// BenchmarkForwardUpload sends a 16 MiB body through the router's slow
// path to a function that reads it all: the cost of passing a body on as
// it comes (each short read is flushed to the instance).
func BenchmarkForwardUpload(b *testing.B) {
	srv := routerTo(b, serveUnix(b, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
	})), time.Millisecond)
	body := bytes.Repeat([]byte("x"), 16<<20)
	for _, chunked := range []bool{false, true} {
		name := "length"
		if chunked {
			name = "chunked"
		}
		b.Run(name, func(b *testing.B) {
			b.SetBytes(int64(len(body)))
			for b.Loop() {
				var r io.Reader = bytes.NewReader(body)
				if chunked {
					r = struct{ io.Reader }{r} // no length: sent chunked
				}
				res, err := http.Post(srv.URL+"/fn/alice/fn/up", "application/octet-stream", r)
				if err != nil {
					b.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, res.Body)
				res.Body.Close()
				if res.StatusCode != 200 {
					b.Fatalf("status %d", res.StatusCode)
				}
			}
		})
	}
}

// BenchmarkAnswerCodings is the look at every answer head for transfer
// codings besides chunked (Deno's answer to the bench's function).
func BenchmarkAnswerCodings(b *testing.B) {
	head := []byte("HTTP/1.1 200 OK\r\ncontent-type: text/plain;charset=UTF-8\r\nvary: Accept-Encoding\r\ncontent-length: 2\r\ndate: Tue, 24 Nov 2026 02:00:00 GMT\r\n\r\n")
	for b.Loop() {
		if c, ok := answerCodings(head); !ok || c != "" {
			b.Fatal(c, ok)
		}
	}
}

// BenchmarkRequestHead is the upstream head both paths write for every
// request (appendRequestHead), with the look for dot segments that climb
// out of the function (climbs), for a load generator's head and a
// browser's.
func BenchmarkRequestHead(b *testing.B) {
	for _, tc := range []struct{ name, head string }{
		{"wrk", "GET /fn/admin/triv/ HTTP/1.1\r\nHost: 127.0.0.1:18080\r\n\r\n"},
		{"browser", "GET /fn/admin/triv/static/app.js HTTP/1.1\r\nHost: example.com\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/120.0\r\nAccept: text/html,application/xhtml+xml\r\nAccept-Language: en-US,en;q=0.5\r\nAccept-Encoding: gzip, deflate, br\r\nConnection: keep-alive\r\nCookie: a=b; c=d\r\nUpgrade-Insecure-Requests: 1\r\nSec-Fetch-Dest: document\r\nSec-Fetch-Mode: navigate\r\n\r\n"},
	} {
		var h fasthttp.RequestHeader
		if err := h.Read(bufio.NewReader(strings.NewReader(tc.head))); err != nil {
			b.Fatal(err)
		}
		_, _, rest, err := SplitPath(string(h.RequestURI()))
		if err != nil {
			b.Fatal(err)
		}
		inv := &invocation{rest: rest, reqID: "0123456789abcdef"}
		var dst []byte
		b.Run(tc.name, func(b *testing.B) {
			for b.Loop() {
				if climbs(inv.rest) {
					b.Fatal("climbs")
				}
				dst = appendRequestHead(dst[:0], &h, inv, "127.0.0.1", false, false)
			}
		})
	}
}
