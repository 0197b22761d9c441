package httpserve

import (
	"bytes"
	"errors"
)

// A request head's lines end in CRLF. fasthttp's parser takes LF alone
// for a line's end too, but finds a head's end only at a CRLF blank line
// ("\r\n\r\n") somewhere in what it has read: a head all in bare LFs
// waits for the head timeout (a 408 after 10 s), and one that mixes them
// is served, ended at its first blank line, whatever a proxy in front
// made of it. RFC 9112 2.2 lets a server either take LF alone for a
// line's end or refuse the message; Spry refuses it (400, and the
// connection closes), promptly, on either path: taking it would need a
// parser of its own, and a proxy in front that does not take it so would
// frame the connection otherwise (see docs/functions.md).

// The same goes for a chunked body's trailer section (RFC 9112 7.1.2),
// which fasthttp ends at its first empty line, LF alone or CRLF, once a
// CRLF blank line has been read: "X: y\n\nGET /smuggled HTTP/1.1\r\n
// Host: h\r\n\r\n" ended before the GET, which was served as a request
// of its own where a proxy in front saw trailer lines. Such a body is
// refused, promptly: an error to its reader (the router's 400, and the
// connection closes).

// errBareLF is a request head with a line ended by LF alone.
var errBareLF = errors.New("a line of the request head ends in a bare LF, not CRLF")

// errBareLFTrailer is a chunked body with such a trailer line.
var errBareLFTrailer = errors.New("a line of the chunked body's trailer section ends in a bare LF, not CRLF")

// errZeroTrailer is a chunked body whose trailer section starts with
// "0", which the parser skips three bytes of (see chunked.go).
var errZeroTrailer = errors.New(`the chunked body's trailer section starts with "0": a second last chunk, or a field the parser misreads`)

// BareLF says whether head, the bytes of a request head from its start
// (empty lines before the request line are skipped, as the parser skips
// them), has a line ended by LF alone before its first CRLF blank line.
// (headScan says the same of the head read in pieces.)
func BareLF(head []byte) bool {
	head = bytes.TrimLeft(head, "\r\n")
	i := bytes.IndexByte(head, '\n')
	if i < 0 || !requestLine(bytes.TrimSuffix(head[:i], []byte{'\r'})) {
		return false
	}
	for {
		if i == 0 || head[i-1] != '\r' {
			return true
		}
		if i+2 < len(head) && head[i+1] == '\r' && head[i+2] == '\n' {
			return false // the blank line
		}
		j := bytes.IndexByte(head[i+1:], '\n')
		if j < 0 {
			return false
		}
		i += j + 1
	}
}

// headScan follows a request head as it is read, in pieces, for a line
// ended by LF alone.
type headScan struct {
	state uint8
	bare  bool
	whole bool   // decided at the head's CRLF blank line
	tail  uint32 // the last four bytes seen
	// line is the request line so far: what is read is taken for a head
	// only if it starts with one (see Conn.Read).
	line []byte
}

const (
	scanLead   = iota // before the request line: CR and LF are skipped
	scanLine          // in the request line
	scanFields        // in the fields, up to the blank line
	scanDone          // decided
)

func (s *headScan) reset() {
	s.state, s.bare, s.whole, s.tail, s.line = scanLead, false, false, 0, s.line[:0]
}

// done says whether the scan has decided.
func (s *headScan) done() bool { return s.state == scanDone }

// scan follows p, the next bytes of the head, and returns how many of
// them it took: all, unless it decided within p.
func (s *headScan) scan(p []byte) int {
	n := len(p)
	for s.state != scanDone && len(p) > 0 {
		switch s.state {
		case scanLead:
			i := 0
			for i < len(p) && (p[i] == '\r' || p[i] == '\n') {
				i++
			}
			if p = p[i:]; len(p) > 0 {
				s.state, s.tail = scanLine, 0
			}
		case scanLine:
			i := bytes.IndexByte(p, '\n')
			if i < 0 {
				s.keep(p)
				s.tail = s.tail<<8 | uint32(p[len(p)-1])
				return n
			}
			s.keep(p[:i])
			prev := s.tail & 0xff
			if i > 0 {
				prev = uint32(p[i-1])
			}
			line := bytes.TrimSuffix(s.line, []byte{'\r'})
			switch {
			case !requestLine(line):
				// Not a head's start (the server has the start already
				// and this is a body): no opinion; the parser decides.
				s.state = scanDone
			case prev != '\r':
				s.bare, s.state = true, scanDone
			default:
				s.state, s.tail = scanFields, '\r'<<8|'\n'
			}
			p = p[i+1:]
		case scanFields:
			for i, c := range p {
				prev := s.tail & 0xff
				s.tail = s.tail<<8 | uint32(c)
				switch {
				case c == '\n' && prev != '\r':
					s.bare, s.state = true, scanDone
				case s.tail == '\r'<<24|'\n'<<16|'\r'<<8|'\n':
					s.state, s.whole = scanDone, true
				}
				if s.state == scanDone {
					p = p[i+1:]
					break
				}
			}
			if s.state != scanDone {
				return n
			}
		}
	}
	return n - len(p)
}

// keep adds p to the request line, up to the head's limit (a longer one
// is refused as too large anyway).
func (s *headScan) keep(p []byte) {
	if len(s.line)+len(p) <= MaxHeaderBytes {
		s.line = append(s.line, p...)
	}
}

// requestLine says whether line has a request line's shape, "METHOD
// target HTTP/...".
func requestLine(line []byte) bool {
	sp, last := bytes.IndexByte(line, ' '), bytes.LastIndexByte(line, ' ')
	return sp > 0 && last > sp && bytes.HasPrefix(line[last+1:], []byte("HTTP/"))
}
