package httpserve

import "strconv"

// After a chunked request body, the next request's head starts where the
// body ends, which only its framing tells (RFC 9112 7.1): Conn follows
// it (chunkScan), so that a pipelined head behind it is judged for bare
// LFs as one behind a Content-Length body is. The scan reads the framing
// as fasthttp's parser does (parseChunkSize, readCrLf and ReadTrailer),
// so that both end the body at the same byte. Where that parser would
// refuse the body, the scan gives up (no opinion): a body that cannot be
// read ends its connection (the router and Adapt close it), so no head
// follows it. Where the parser reads a body its own way, a trailer
// section that starts with "0" (it skips three bytes, whatever they
// are, and reads what follows as the section: "0ab\r\nGET /x ..." ended
// the section before the GET, served as a request, where a proxy in
// front saw trailer lines), the body is refused. This is not the router's
// chunkRelay: that one reads an instance's answers, by other rules, and
// httpserve cannot import the router.

// chunkScan follows a chunked body read in pieces, without holding any
// of it.
type chunkScan struct {
	state  uint8
	digits uint8 // of the chunk size
	// bare: a line of the trailer section ended in LF alone, which
	// fasthttp takes for a line's end (a lone LF for the section's);
	// Spry refuses it (see lf.go).
	bare bool
	// zero: the trailer section starts with "0" (see above).
	zero bool
	size int64 // the chunk size read so far, then the data left
}

// refused is why the body is refused, if it is: its trailer section is
// one the parser would end elsewhere than a proxy in front may.
func (s *chunkScan) refused() error {
	switch {
	case s.bare:
		return errBareLFTrailer
	case s.zero:
		return errZeroTrailer
	}
	return nil
}

const (
	chunkOff       = iota // not following a body
	chunkSize             // in the chunk size's hex digits
	chunkExt              // past them, up to the CR: extensions
	chunkSizeLF           // the size line's CR was read
	chunkData             // in the chunk's data
	chunkDataCR           // the data's CR is next
	chunkDataLF           // the data's LF is next
	chunkTrailers         // at the trailer section's first byte
	chunkLineStart        // at a trailer line's first byte
	chunkLine             // in a trailer line
	chunkLineCR           // in a trailer line, after a CR
	chunkBlankLF          // after a CR that starts a line
	chunkEnd              // the body ended
	chunkBad              // not followed: the parser refuses the body
	chunkRefused          // not followed: Spry refuses the body (zero)
)

// maxSizeDigits is how many hex digits fasthttp takes in a chunk size
// (its maxHexIntChars: 15 where an int has 64 bits, 7 where 32).
const maxSizeDigits = 7 + 8*(strconv.IntSize/64)

// start starts following a body whose first byte is the next scanned.
func (s *chunkScan) start() { *s = chunkScan{state: chunkSize} }

// following says whether the scan is in a body, not yet decided.
func (s *chunkScan) following() bool { return s.state != chunkOff && s.state < chunkEnd }

// scan follows p, the next bytes of the body, and returns how many of
// them are the body's: all of them unless it ended within p (chunkEnd).
// Once it gave up (chunkBad) the count means nothing.
func (s *chunkScan) scan(p []byte) int {
	i := 0
	for i < len(p) && s.following() {
		b := p[i]
		switch s.state {
		case chunkData:
			// The data is skipped, not looked at.
			n := min(int64(len(p)-i), s.size)
			s.size -= n
			i += int(n)
			if s.size == 0 {
				s.state = chunkDataCR
			}
			continue
		case chunkSize:
			if v := Unhex(b); v >= 0 {
				if s.digits == maxSizeDigits {
					s.state = chunkBad
					break
				}
				s.size = s.size<<4 | int64(v)
				s.digits++
				break
			}
			if s.digits == 0 {
				s.state = chunkBad
				break
			}
			s.state = chunkExt
			fallthrough
		case chunkExt:
			// fasthttp skips whatever comes up to the CR but an LF (a
			// line's end to some, a smuggler's tool).
			switch b {
			case '\r':
				s.state = chunkSizeLF
			case '\n':
				s.state = chunkBad
			}
		case chunkSizeLF:
			switch {
			case b != '\n':
				s.state = chunkBad
			case s.size == 0:
				s.state = chunkTrailers
			default:
				s.state, s.digits = chunkData, 0
			}
		case chunkDataCR:
			s.state = chunkDataLF
			if b != '\r' {
				s.state = chunkBad
			}
		case chunkDataLF:
			s.state = chunkSize
			if b != '\n' {
				s.state = chunkBad
			}
		case chunkTrailers:
			// fasthttp refuses a section that starts with a space or tab,
			// and skips three bytes of one that starts with "0".
			if b == ' ' || b == '\t' {
				s.state = chunkBad
				break
			}
			if b == '0' {
				s.state, s.zero = chunkRefused, true
				break
			}
			fallthrough
		case chunkLineStart:
			// The section ends at its first empty line, CRLF or LF alone:
			// fasthttp waits for a CRLF blank line to be read, but ends
			// the section at the first empty line before it.
			switch b {
			case '\r':
				s.state = chunkBlankLF
			case '\n':
				s.state, s.bare = chunkEnd, true
			default:
				s.state = chunkLine
			}
		case chunkLine, chunkLineCR:
			switch {
			case b == '\n':
				s.bare = s.bare || s.state != chunkLineCR
				s.state = chunkLineStart
			case b == '\r':
				s.state = chunkLineCR
			default:
				s.state = chunkLine
			}
		case chunkBlankLF:
			// A line that starts with CR and goes on is no field: refused.
			s.state = chunkEnd
			if b != '\n' {
				s.state = chunkBad
			}
		}
		i++
	}
	return i
}

// Unhex is the value of hex digit b, or -1 (the router's chunk reader
// and target check use it too).
func Unhex(b byte) int {
	switch {
	case '0' <= b && b <= '9':
		return int(b - '0')
	case 'a' <= b && b <= 'f':
		return int(b-'a') + 10
	case 'A' <= b && b <= 'F':
		return int(b-'A') + 10
	}
	return -1
}
