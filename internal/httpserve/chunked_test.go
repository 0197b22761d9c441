package httpserve

import (
	"bufio"
	"bytes"
	"io"
	"testing"

	"github.com/valyala/fasthttp"
)

// scanChunks follows b in pieces of size bytes (the last may be
// shorter) and returns where the body ended (-1: not yet; -2: given
// up; -3: refused) and whether a trailer line ended in LF alone.
func scanChunks(b []byte, size int) (end int, bare bool) {
	var s chunkScan
	s.start()
	off := 0
	for off < len(b) && s.following() {
		n := min(size, len(b)-off)
		off += s.scan(b[off : off+n])
	}
	return s.verdict(off)
}

// scanSplit follows b in two pieces, cut at i.
func scanSplit(b []byte, i int) (end int, bare bool) {
	var s chunkScan
	s.start()
	k := s.scan(b[:i])
	if s.following() {
		k += s.scan(b[i:])
	}
	return s.verdict(k)
}

// verdict is where the body ended (at off, the bytes taken), or -2 for
// malformed, -3 for refused, -1 for still following; and whether a
// trailer line ended in a bare LF.
func (s *chunkScan) verdict(off int) (end int, bare bool) {
	switch s.state {
	case chunkEnd:
		return off, s.bare
	case chunkBad:
		return -2, s.bare
	case chunkRefused:
		return -3, s.bare
	}
	return -1, s.bare
}

func TestChunkScan(t *testing.T) {
	const following, bad, refused = -1, -2, -3
	for _, tc := range []struct {
		body string // the body; its end is where the scan must end
		rest string // what follows it
		end  int    // if not len(body): following or bad
		bare bool
	}{
		{body: "0\r\n\r\n"},
		{body: "0\r\n\r\n", rest: "GET / HTTP/1.1\r\nHost: a\r\n\r\n"},
		{body: "3\r\nabc\r\n0\r\n\r\n", rest: "GET / HTTP/1.1\nHost: a\n\n"},
		{body: "3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n", rest: "0\r\n\r\n"},
		// The data is not looked at, whatever it holds.
		{body: "5\r\n0\r\n\r\n\r\n0\r\n\r\n", rest: "x"},
		{body: "8\r\nGET / \n\n\r\n0\r\n\r\n"},
		{body: "a\r\n0123456789\r\nA\r\n0123456789\r\n0\r\n\r\n"},
		{body: "0003\r\nabc\r\n000\r\n\r\n"},
		{body: "00000000000000f\r\n0123456789abcde\r\n0\r\n\r\n"},
		// Extensions, whatever they hold but an LF (fasthttp skips them).
		{body: "3;name=value\r\nabc\r\n0;last\r\n\r\n"},
		{body: "3;a=\"b;c\r\"\r\nabc\r\n0\r\n\r\n", end: bad},
		{body: "3;a=\"b;c\"\r\nabc\r\n0\r\n\r\n"},
		{body: "3 ;x\r\nabc\r\n0\t;y\r\n\r\n"},
		{body: "3x\r\nabc\r\n0\r\n\r\n"},
		// Trailers.
		{body: "0\r\nX: y\r\n\r\n", rest: "GET / HTTP/1.1\r\n\r\n"},
		{body: "3\r\nabc\r\n0\r\nX: y\r\nZ: w\r\n\r\n"},
		{body: "0\r\nX: y\r\n  folded\r\n\r\n"},
		{body: "0\r\nX: y\r\r\n\r\n"},
		// LF alone in the trailer section: a line's end, and an empty
		// line the section's, as fasthttp takes them.
		{body: "0\r\nX: y\n\r\n", bare: true},
		{body: "0\r\nX: y\r\n\n", rest: "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n", bare: true},
		{body: "0\r\nX: y\n\n", rest: "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n", bare: true},
		{body: "0\r\n\n", rest: "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n", bare: true},
		// Not all here yet.
		{body: "", end: following},
		{body: "3", end: following},
		{body: "3;ext", end: following},
		{body: "3\r\nab", end: following},
		{body: "3\r\nabc\r", end: following},
		{body: "0\r\n", end: following},
		{body: "0\r\nX: y\r\n", end: following},
		{body: "0\r\nX: y\n", end: following, bare: true},
		// Malformed, or read by fasthttp in a way of its own: given up.
		{body: "x\r\n", end: bad},
		{body: "\r\n0\r\n\r\n", end: bad},
		{body: " 3\r\nabc\r\n", end: bad},
		{body: "-1\r\n", end: bad},
		{body: "3\nabc\r\n0\r\n\r\n", end: bad},
		{body: "3;x\nabc\r\n", end: bad},
		{body: "3\r\r\nabc\r\n", end: bad},
		{body: "3\r\nabcd\r\n", end: bad},
		{body: "3\r\nabc\n0\r\n\r\n", end: bad},
		{body: "3\r\nabc\rx", end: bad},
		{body: "0000000000000003\r\nabc\r\n", end: bad},
		{body: "0\r\n X: y\r\n\r\n", end: bad},
		{body: "0\r\n\tX: y\r\n\r\n", end: bad},
		{body: "0\r\n\rX: y\r\n\r\n", end: bad},
		{body: "0\r\nX: y\r\n\rZ\r\n\r\n", end: bad},
		// A section that starts with "0", of which fasthttp skips three
		// bytes: refused.
		{body: "0\r\n0\r\n\r\n", end: refused},
		{body: "0\r\n0ab\r\n", rest: "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n", end: refused},
		{body: "3\r\nabc\r\n0\r\n0-x: y\r\n\r\n", end: refused},
	} {
		in := []byte(tc.body + tc.rest)
		want := tc.end
		if want == 0 {
			want = len(tc.body)
		}
		for size := 1; size <= len(in)+1; size++ {
			if end, bare := scanChunks(in, size); end != want || bare != tc.bare {
				t.Errorf("%q in pieces of %d: end %d, bare %v; want %d, %v", in, size, end, bare, want, tc.bare)
				break
			}
		}
		for i := 0; i <= len(in); i++ {
			if end, bare := scanSplit(in, i); end != want || bare != tc.bare {
				t.Errorf("%q cut at %d: end %d, bare %v; want %d, %v", in, i, end, bare, want, tc.bare)
				break
			}
		}
	}
}

// endReader reads r, then says whether it was asked for more.
type endReader struct {
	r   *bytes.Reader
	hit bool
}

func (e *endReader) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	e.hit = e.hit || err == io.EOF
	return n, err
}

// fasthttpEnd reads b as a chunked request body as the server does (a
// streamed body) and returns where fasthttp ended it: ok is false where
// it refused the body, or looked past b to decide (at the stream's end it
// takes a trailer section cut short for an ended one, which on a
// connection is its end or a read timeout).
func fasthttpEnd(t *testing.T, b []byte) (end int, ok bool) {
	const head = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
	r := &endReader{r: bytes.NewReader(append([]byte(head), b...))}
	br := bufio.NewReaderSize(r, MaxHeaderBytes)
	var req fasthttp.Request
	if err := req.Header.Read(br); err != nil {
		t.Fatal(err)
	}
	if err := req.ContinueReadBodyStream(br, 1<<62, false); err != nil {
		return 0, false
	}
	if _, err := io.Copy(io.Discard, req.BodyStream()); err != nil || r.hit {
		return 0, false
	}
	return len(b) - r.r.Len() - br.Buffered(), true
}

// The scan ends a body where fasthttp's parser does, in whatever pieces
// it is read, or gives up.
func FuzzChunkScan(f *testing.F) {
	for _, s := range []string{
		"3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\nHost: a\n\n",
		"3;a=b\r\nabc\r\n0;c\r\nX: y\r\n\r\n",
		"0\r\nX: y\n\nGET / HTTP/1.1\r\n\r\n",
		"0\r\n\n\r\n\r\n",
		"a\r\n0123456789\r\n0\r\n\r\n",
		"0\r\n0\r\n\r\n",
	} {
		f.Add([]byte(s), uint8(1))
	}
	f.Fuzz(func(t *testing.T, b []byte, size uint8) {
		end, bare := scanChunks(b, int(size)+1)
		if wend, wbare := scanChunks(b, len(b)+1); end != wend || bare != wbare {
			t.Fatalf("%q in pieces of %d: end %d, bare %v; whole: %d, %v", b, int(size)+1, end, bare, wend, wbare)
		}
		fend, ok := fasthttpEnd(t, b)
		switch {
		case !ok:
			// Refused, or not all here: the server closes the connection
			// (or waits), and the scan's end does not matter.
		case end >= 0 && end != fend:
			t.Fatalf("%q: the scan ends the body at %d, fasthttp at %d", b, end, fend)
		case end == -1:
			t.Fatalf("%q: fasthttp ends the body at %d; the scan goes on", b, fend)
		case end == -2:
			// (-3 is no failure: Spry refuses what fasthttp misreads.)
			t.Fatalf("%q: fasthttp ends the body at %d; the scan gave up", b, fend)
		}
	})
}
