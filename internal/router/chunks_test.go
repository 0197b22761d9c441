package router

import (
	"bufio"
	"bytes"
	"io"
	"net/http/httputil"
	"testing"
)

func TestChunkRelay(t *testing.T) {
	tests := []struct {
		name, in, out string
		rest          int // bytes of in left after the body
		bad           bool
	}{
		{"one chunk", "5\r\nhello\r\n0\r\n\r\n", "5\r\nhello\r\n0\r\n\r\n", 0, false},
		{"extensions and upper hex", "A;x=y\r\n0123456789\r\n0\r\n\r\n", "a\r\n0123456789\r\n0\r\n\r\n", 0, false},
		{"trailers dropped", "1\r\na\r\n0\r\nX-T: 1\r\nY: 2\r\n\r\n", "1\r\na\r\n0\r\n\r\n", 0, false},
		{"bytes after the body", "0\r\n\r\nGET", "0\r\n\r\n", 3, false},
		{"empty size", "\r\n", "", 0, true},
		{"not hex", "g\r\n", "", 0, true},
		{"no CRLF after data", "1\r\naX", "", 0, true},
		{"bare LF", "1\n", "", 0, true},
		{"leading zeros", "0000000000000005\r\nhello\r\n0\r\n\r\n", "5\r\nhello\r\n0\r\n\r\n", 0, false},
		{"size overflow", "8000000000000000\r\n", "", 0, true},
		{"over 16 digits", "00000000000000005\r\n", "", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Byte by byte, as the worst split of the input.
			var r chunkRelay
			var out []byte
			took := 0
			var err error
			for i := 0; i < len(tt.in) && err == nil && !r.done(); i++ {
				var n int
				out, n, err = r.relay(out, []byte(tt.in[i:i+1]))
				took += n
			}
			if tt.bad {
				if err == nil {
					t.Fatalf("no error for %q", tt.in)
				}
				return
			}
			if err != nil || !r.done() {
				t.Fatalf("err %v, done %v", err, r.done())
			}
			if string(out) != tt.out || len(tt.in)-took != tt.rest {
				t.Fatalf("out %q (took %d), want %q leaving %d", out, took, tt.out, tt.rest)
			}
		})
	}
}

// FuzzChunkRelay checks the relay against Go's own chunked reader: the
// same data, and what the relay sends on is itself well-formed.
func FuzzChunkRelay(f *testing.F) {
	f.Add([]byte("5\r\nhello\r\n0\r\n\r\n"), 3)
	f.Add([]byte("3;a=b\r\nabc\r\n0\r\nT: 1\r\n\r\n"), 1)
	f.Fuzz(func(t *testing.T, in []byte, split int) {
		var r chunkRelay
		var out []byte
		var err error
		if split <= 0 || split > len(in) {
			split = len(in)
		}
		for p := in; len(p) > 0 && err == nil && !r.done(); {
			piece := p[:min(split, len(p))]
			var n int
			out, n, err = r.relay(out, piece)
			p = p[n:]
			if n < len(piece) && err == nil && !r.done() {
				t.Fatal("took less than given before the end")
			}
		}
		if err != nil || !r.done() {
			return
		}
		want, werr := io.ReadAll(httputil.NewChunkedReader(bufio.NewReader(bytes.NewReader(in))))
		got, gerr := io.ReadAll(httputil.NewChunkedReader(bufio.NewReader(bytes.NewReader(out))))
		if gerr != nil {
			t.Fatalf("relayed body %q is malformed: %v", out, gerr)
		}
		if werr == nil && !bytes.Equal(got, want) {
			t.Fatalf("relayed %q, Go reads %q", got, want)
		}
		// Raw, the same pieces give the data alone.
		raw := chunkRelay{raw: true}
		var data []byte
		for p := in; len(p) > 0 && !raw.done(); {
			var n int
			if data, n, err = raw.relay(data, p[:min(split, len(p))]); err != nil {
				t.Fatalf("raw relay failed where the framed one did not: %v", err)
			}
			p = p[n:]
		}
		if !raw.done() || !bytes.Equal(data, got) {
			t.Fatalf("raw relay gave %q (done %v), want %q", data, raw.done(), got)
		}
	})
}
