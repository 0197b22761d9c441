package router

import (
	"errors"
	"strconv"

	"github.com/spry-run/spry/internal/httpserve"
)

// chunkRelay re-frames a chunked body as it passes through in pieces: each
// piece of input gives the bytes to send on, the data chunks with fresh
// framing, without extensions or trailers (as fasthttp sends a streamed
// body), so what the client gets is well-formed whatever the instance
// sent. With raw set it sends the data alone, for an HTTP/1.0 client,
// which knows no chunks (the body then ends with the connection).
type chunkRelay struct {
	raw     bool
	state   int
	size    int64 // of the chunk being read
	line    int   // bytes of the current size or trailer line
	digits  int
	inExt   bool
	trailer int // bytes of trailers so far
}

const (
	chunkSize = iota
	chunkSizeLF
	chunkData
	chunkDataCR
	chunkDataLF
	chunkTrailer
	chunkTrailerLF
	chunkDone
)

// Limits on what the relay holds no data for: a size line (with its
// extensions) and the trailers.
const (
	maxChunkLine    = 4 << 10
	maxChunkTrailer = 64 << 10
)

var errBadChunk = errors.New("malformed chunked body")

// done says whether the body ended.
func (r *chunkRelay) done() bool { return r.state == chunkDone }

// relay appends to dst what to send for in and reports how many bytes of
// in it took: all of it, unless the body ended before in did.
func (r *chunkRelay) relay(dst, in []byte) ([]byte, int, error) {
	i := 0
	for i < len(in) && r.state != chunkDone {
		b := in[i]
		switch r.state {
		case chunkSize:
			r.line++
			if r.line > maxChunkLine {
				return dst, i, errBadChunk
			}
			switch {
			case b == '\r':
				r.state = chunkSizeLF
			case r.inExt:
			case b == ';' || b == ' ' || b == '\t':
				if r.digits == 0 {
					return dst, i, errBadChunk
				}
				r.inExt = true
			default:
				// Up to 16 digits, as Go's reader on the slow path takes
				// (leading zeros included), while the size fits an int64.
				v := httpserve.Unhex(b)
				if v < 0 || r.digits >= 16 || r.size >= 1<<59 {
					return dst, i, errBadChunk
				}
				r.size = r.size<<4 | int64(v)
				r.digits++
			}
		case chunkSizeLF:
			if b != '\n' || r.digits == 0 {
				return dst, i, errBadChunk
			}
			r.line, r.digits, r.inExt = 0, 0, false
			if r.size == 0 {
				r.state = chunkTrailer
			} else {
				if !r.raw {
					dst = strconv.AppendInt(dst, r.size, 16)
					dst = append(dst, '\r', '\n')
				}
				r.state = chunkData
			}
		case chunkData:
			n := min(int64(len(in)-i), r.size)
			dst = append(dst, in[i:i+int(n)]...)
			r.size -= n
			i += int(n)
			if r.size == 0 {
				r.state = chunkDataCR
			}
			continue
		case chunkDataCR:
			if b != '\r' {
				return dst, i, errBadChunk
			}
			r.state = chunkDataLF
		case chunkDataLF:
			if b != '\n' {
				return dst, i, errBadChunk
			}
			if !r.raw {
				dst = append(dst, '\r', '\n')
			}
			r.state = chunkSize
		case chunkTrailer:
			r.trailer++
			if r.trailer > maxChunkTrailer {
				return dst, i, errBadChunk
			}
			if b == '\r' {
				r.state = chunkTrailerLF
			} else {
				r.line++
			}
		case chunkTrailerLF:
			if b != '\n' {
				return dst, i, errBadChunk
			}
			if r.line == 0 {
				// The blank line after the trailers (if any) ends the body.
				if !r.raw {
					dst = append(dst, "0\r\n\r\n"...)
				}
				r.state = chunkDone
			} else {
				r.line = 0
				r.state = chunkTrailer
			}
		}
		i++
	}
	return dst, i, nil
}
