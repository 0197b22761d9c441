package router

import (
	"bytes"
	"io"
	"net/http"
	"testing"
	"time"
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
