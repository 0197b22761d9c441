package httpserve

import "testing"

func TestBareLF(t *testing.T) {
	for head, want := range map[string]bool{
		"GET / HTTP/1.1\r\nHost: a\r\n\r\n":           false,
		"GET / HTTP/1.1\r\nHost: a\r\n\r\nx\ny\n\n":   false, // a body
		"\r\n\nGET / HTTP/1.1\r\nHost: a\r\n\r\n":     false, // empty lines first
		"GET / HTTP/1.1\r\nHost: a\r\n":               false, // not all here
		"GET / HTTP/1.1\r\n\r\n":                      false,
		"GET / HTTP/1.1\nHost: a\n\n":                 true,
		"GET / HTTP/1.1\nHost: a\r\n\r\n":             true,
		"GET / HTTP/1.1\r\nHost: a\n":                 true, // not all here, but already
		"GET / HTTP/1.1\r\nHost: a\r\n\n":             true,
		"GET / HTTP/1.1\r\nHost: a\n\r\n":             true,
		"GET / HTTP/1.1\r\n\n":                        true,
		"GET / HTTP/1.1\n\r\n":                        true,
		"x\ny\n\n":                                    false, // not a head's start
		"a b\nc: d\n\n":                               false,
		"GET /a\nb HTTP/1.1\r\n\r\n":                  false, // (the parser refuses it)
		"POST / HTTP/1.1\r\nContent-Length: 1\r\n\nx": true,
	} {
		if got := BareLF([]byte(head)); got != want {
			t.Errorf("BareLF(%q) = %v, want %v", head, got, want)
		}
		if got := scanPieces([]byte(head), 1); got != want {
			t.Errorf("headScan of %q a byte at a time: %v, want %v", head, got, want)
		}
	}
}

func scanPieces(b []byte, size int) bool {
	var s headScan
	for len(b) > 0 && !s.done() {
		n := min(size, len(b))
		s.scan(b[:n])
		b = b[n:]
	}
	return s.bare
}

// A head read in pieces is judged as it is read whole.
func FuzzBareLF(f *testing.F) {
	for _, s := range []string{"GET / HTTP/1.1\r\nHost: a\r\n\r\n", "GET / HTTP/1.1\nHost: a\n\n", "\r\nGET / HTTP/1.1\r\nA: b\n\r\n"} {
		f.Add([]byte(s), uint8(1))
	}
	f.Fuzz(func(t *testing.T, b []byte, size uint8) {
		if got, want := scanPieces(b, int(size)+1), BareLF(b); got != want {
			t.Fatalf("%q in pieces of %d: %v, whole: %v", b, int(size)+1, got, want)
		}
	})
}
