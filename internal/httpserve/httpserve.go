// Package httpserve is Spry's public HTTP server. It is fasthttp rather
// than net/http because the function hot path (/fn/...) is a proxy whose
// cost is mostly the server's own per-request work: net/http spends a
// goroutine wake-up, a background read and several allocations on each
// request, fasthttp a fraction of that (see docs/performance.md). New
// configures the server with the limits every listener needs and JSON
// errors for requests that cannot be parsed; Adapt serves net/http
// handlers (the management API, metrics, health) on it, with streaming.
package httpserve

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/spry-run/spry/internal/errdefs"
)

// Limits of every public listener.
const (
	// HeaderTimeout bounds reading a request's head, so slow clients
	// cannot hold connections open. Handlers that read a body move the
	// read deadline themselves.
	HeaderTimeout = 10 * time.Second
	// IdleTimeout closes keep-alive connections with no request.
	IdleTimeout = 120 * time.Second
	// MaxHeaderBytes bounds a request's head (431 beyond it): fasthttp
	// parses the head inside its read buffer, so this is also that
	// buffer's size. 63 KiB, not 64: the router adds up to ~450 bytes
	// of forwarding fields (a Host is at most MaxHostName), and Deno
	// refuses a head over 65,540 bytes with a bare 400 of its own.
	MaxHeaderBytes = 63 << 10
	// MaxHostName bounds a Host's name (DNS names are at most 253).
	MaxHostName = 255
	// WatchAfter is how long a handler waits on its client's connection
	// before the connection is watched for a hang-up (see Listener): fast
	// requests never pay for a watch.
	WatchAfter = 100 * time.Millisecond
	// MaxHeaderFields bounds a request's header fields. Deno refuses
	// more than 128 (the router adds four), Node more than 2000: one
	// limit for both runtimes, answered in Spry's own words.
	MaxHeaderFields = 100
)

// New returns a server for h.
func New(h fasthttp.RequestHandler, log *slog.Logger) *fasthttp.Server {
	return &fasthttp.Server{
		Handler:         refuseBadHead(h),
		ReadTimeout:     HeaderTimeout,
		IdleTimeout:     IdleTimeout,
		ReadBufferSize:  MaxHeaderBytes,
		WriteBufferSize: 16 << 10,
		// Bodies are streamed to the handler, never buffered whole; each
		// handler enforces its own size limit.
		StreamRequestBody:            true,
		MaxRequestBodySize:           1 << 62,
		DisablePreParseMultipartForm: true,
		// Responses carry what the handler set, nothing invented.
		NoDefaultServerHeader: true,
		NoDefaultContentType:  true,
		// Keep-alive connections end after the in-flight response once
		// shutdown begins.
		CloseOnShutdown: true,
		// A hijacking handler closes the connection itself, or keeps
		// it: the router hands some back to its event loops.
		KeepHijackedConns: true,
		// A connection's next head starts once an answer is written.
		ConnState: func(nc net.Conn, st fasthttp.ConnState) {
			if c, ok := ConnOf(nc); ok && st == fasthttp.StateIdle {
				c.headStarts()
			}
		},
		ErrorHandler: errorHandler,
		Logger:       logger{log},
	}
}

// refuseBadHead answers a request CheckHead refuses with its 4xx
// and closes its connection, so nothing it carries is read as a further
// request.
func refuseBadHead(h fasthttp.RequestHandler) fasthttp.RequestHandler {
	return func(ctx *fasthttp.RequestCtx) {
		if c, ok := ConnOf(ctx.Conn()); ok && c.headRead(ctx.Request.Header.ContentLength()) {
			WriteError(ctx, errdefs.New(errdefs.ErrInvalidArgument, "%v", errBareLF))
			ctx.SetConnectionClose()
			return
		}
		if err := CheckHead(&ctx.Request.Header); err != nil {
			WriteError(ctx, err)
			ctx.SetConnectionClose()
			return
		}
		h(ctx)
		if ctx.Request.Header.ConnectionClose() {
			// The server took the request's close from its parser, before
			// the handler, and that parser knows only "Connection: close"
			// exactly; CheckHead found one it did not.
			ctx.SetConnectionClose()
		}
	}
}

// CheckHead refuses what fasthttp's parser lets through but a server
// behind which functions run must not (RFC 9112):
//   - Transfer-Encoding and Content-Length together: fasthttp goes by the
//     first and drops the second, but a proxy in front may go by the
//     second (6.1);
//   - a Transfer-Encoding other than one "chunked": fasthttp drops
//     "identity", and the body would then be read as the next request;
//   - a Transfer-Encoding in an HTTP/1.0 request (6.1), which fasthttp
//     reads chunked and keeps the connection of;
//   - whitespace between a field's name and its colon (5.1): fasthttp
//     keeps "Content-Length : 5" as a field of another name;
//   - more than one Host, or one that is not host[:port] (3.2): a Host
//     such as "x/../admin" would change the URL the function sees;
//   - more than MaxHeaderFields fields (431), which Deno would refuse
//     with a bare 400 of its own;
//   - a line ended by LF alone (2.2; see lf.go), which a proxy in front
//     may not take for a line's end;
//   - a request line of a major version other than 1, such as HTTP/2.0
//     or HTTP/0.9 (505, RFC 9110 15.6.6): fasthttp serves any HTTP/d.d
//     as HTTP/1.0.
//
// These differences smuggle requests past a proxy in front, or confuse
// the function. The event loops make the same check.
//
// CheckHead also marks h to close its connection (SetConnectionClose)
// when a Connection field names "close" among other options, in other
// case, or before a "keep-alive" (RFC 9110 7.6.1, 9112 9.6: the server
// MUST close after its answer): fasthttp's parser takes only a field
// that is "close" exactly, and a later Connection field undoes it.
func CheckHead(h *fasthttp.RequestHeader) error {
	hosts, codings, lengths, fields := 0, 0, 0, 0
	bad, spaced, bare, closing := false, false, false, false
	raw := h.RawHeaders()
	for len(raw) > 0 {
		var line []byte
		var more bool
		line, raw, more = bytes.Cut(raw, []byte{'\n'})
		// (The parser takes LF alone for a line's end; see lf.go.)
		bare = bare || more && (len(line) == 0 || line[len(line)-1] != '\r')
		if len(line) > 0 && line[0] != ' ' && line[0] != '\t' && line[0] != '\r' {
			fields++
			// fasthttp takes "Transfer-Encoding : chunked" for a field of
			// another name (kept, and passed on), where a lenient proxy in
			// front may frame by it.
			if i := bytes.IndexByte(line, ':'); i > 0 && bytes.IndexByte(line[:i], ' ') >= 0 {
				spaced = true
			}
		}
		switch {
		case len(line) == 0:
		case line[0]|0x20 == 'h' && hasName(line, "host:"):
			hosts++
		case line[0]|0x20 == 'c' && hasName(line, "content-length:"):
			lengths++
		case line[0]|0x20 == 'c' && hasName(line, "connection:"):
			closing = closing || hasClose(line[len("connection:"):])
		case line[0]|0x20 == 't' && hasName(line, "transfer-encoding:"):
			codings++
			v := bytes.TrimSpace(line[len("transfer-encoding:"):])
			bad = bad || !bytes.EqualFold(v, []byte("chunked"))
		}
	}
	if closing && !h.ConnectionClose() {
		h.SetConnectionClose()
	}
	switch {
	case bare:
		return errdefs.New(errdefs.ErrInvalidArgument, "%v", errBareLF)
	case !majorOne(h.Protocol()):
		return errdefs.New(errdefs.ErrVersionNotSupported, "%s is not served: only HTTP/1.x here", h.Protocol())
	case spaced:
		return errdefs.New(errdefs.ErrInvalidArgument, "whitespace in a header field name")
	case fields > MaxHeaderFields:
		return errdefs.New(errdefs.ErrRequestHeaderLarge, "the request has %d header fields; the limit is %d", fields, MaxHeaderFields)
	case codings > 0 && lengths > 0:
		return errdefs.New(errdefs.ErrInvalidArgument, "the request has both Transfer-Encoding and Content-Length")
	case bad || codings > 1:
		return errdefs.New(errdefs.ErrInvalidArgument, "unsupported Transfer-Encoding: only a single chunked is accepted")
	case codings > 0 && !h.IsHTTP11():
		// HTTP/1.0 has no transfer codings: a proxy in front may frame
		// the body without it, and RFC 9112 6.1 has the message's
		// framing taken for faulty (nginx answers 400 too).
		return errdefs.New(errdefs.ErrInvalidArgument, "Transfer-Encoding in an HTTP/1.0 request")
	case hosts > 1:
		return errdefs.New(errdefs.ErrInvalidArgument, "more than one Host header")
	case !validHost(h.Host()):
		return errdefs.New(errdefs.ErrInvalidArgument, "malformed Host header: want host or host:port")
	}
	return nil
}

// majorOne says whether a request line's version (fasthttp takes only
// "HTTP/d.d") is of major version 1.
func majorOne(proto []byte) bool { return len(proto) > 5 && proto[5] == '1' }

func hasName(line []byte, name string) bool {
	return len(line) >= len(name) && bytes.EqualFold(line[:len(name)], []byte(name))
}

// hasClose says whether a Connection field's value (its CR included)
// lists the option "close", in any case.
func hasClose(v []byte) bool {
	for len(v) > 0 {
		var opt []byte
		opt, v, _ = bytes.Cut(v, []byte{','})
		if bytes.EqualFold(bytes.Trim(opt, " \t\r"), []byte("close")) {
			return true
		}
	}
	return false
}

// ValidHost says whether h is host[:port] as CheckHead takes a Host.
func ValidHost(h []byte) bool { return len(h) > 0 && validHost(h) }

// validHost says whether h is empty (the caller decides whether a Host
// may be missing) or host[:port]: a name of up to MaxHostName letters,
// digits and
// "-._~!$&'()*+,;=" (RFC 3986's reg-name less percent-encoding, which
// URL parsers such as Deno's refuse in a host), or an IPv6 address in
// brackets; the port, if any, 0 to 65535.
func validHost(h []byte) bool {
	if len(h) == 0 {
		return true
	}
	name, port := h, []byte(nil)
	if h[0] == '[' {
		end := bytes.IndexByte(h, ']')
		if end < 0 || bytes.IndexByte(h[1:end], ':') < 0 {
			return false
		}
		// (No zone: "%" would need escaping in a URL.)
		if a, err := netip.ParseAddr(string(h[1:end])); err != nil || a.Zone() != "" {
			return false
		}
		name, port = nil, h[end+1:]
		if len(port) > 0 && port[0] != ':' {
			return false
		}
	} else if i := bytes.IndexByte(h, ':'); i >= 0 {
		name, port = h[:i], h[i:]
	}
	if len(port) > 0 {
		port = port[1:] // the colon; an empty port is allowed
	}
	if len(name) > MaxHostName {
		return false
	}
	for _, c := range name {
		if !hostByte[c] {
			return false
		}
	}
	if len(port) > 5 {
		return false
	}
	n := 0
	for _, c := range port {
		if c < '0' || c > '9' {
			return false
		}
		n = n*10 + int(c-'0')
	}
	return n <= 65535 && (name == nil || len(name) > 0)
}

var hostByte = func() (t [256]bool) {
	for c := 'a'; c <= 'z'; c++ {
		t[c], t[c-'a'+'A'] = true, true
	}
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for _, c := range "-._~!$&'()*+,;=" {
		t[c] = true
	}
	return t
}()

// errorHandler answers requests fasthttp could not read.
func errorHandler(ctx *fasthttp.RequestCtx, err error) {
	var small *fasthttp.ErrSmallBuffer
	var ne net.Error
	switch {
	case errors.As(err, &small):
		err = errdefs.New(errdefs.ErrRequestHeaderLarge, "request header is over the %d byte limit", MaxHeaderBytes)
	case errors.Is(err, errBareLF):
		err = errdefs.New(errdefs.ErrInvalidArgument, "%v", errBareLF)
	case errors.Is(err, errBareLFTrailer), errors.Is(err, errZeroTrailer):
		err = errdefs.New(errdefs.ErrInvalidArgument, "%v", err)
	case errors.As(err, &ne) && ne.Timeout():
		ctx.SetConnectionClose()
		err = errdefs.New(errdefs.ErrRequestTimeout, "the request did not arrive within %s", HeaderTimeout)
	default:
		err = errdefs.New(errdefs.ErrInvalidArgument, "malformed request")
	}
	WriteError(ctx, err)
}

// WriteError answers with err as Spry's JSON error, its code in the
// Spry-Error header too: the platform's answer, which a function's (whose
// own Spry-Error the router drops) cannot pass for.
func WriteError(ctx *fasthttp.RequestCtx, err error) {
	status, body := errdefs.Encode(err)
	ctx.Response.ResetBody()
	h := &ctx.Response.Header
	h.SetContentType("application/json")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Spry-Error", errdefs.Code(err))
	ctx.SetStatusCode(status)
	ctx.SetBody(body)
}

// LeaveBody has ctx's connection close after its answer if the request
// has a body, for a handler that answers without reading it: fasthttp
// reads at most 8 KiB of a body (none of a chunked one) before the
// handler runs, and would read what is left as the next request.
func LeaveBody(ctx *fasthttp.RequestCtx) {
	if n := ctx.Request.Header.ContentLength(); n != 0 && n != -2 {
		ctx.SetConnectionClose()
	}
}

// logger sends fasthttp's own messages (connection errors) to slog.
type logger struct{ log *slog.Logger }

func (l logger) Printf(format string, args ...any) {
	if l.log == nil {
		return
	}
	msg := fmt.Sprintf(format, args...)
	if strings.Contains(msg, handshakeFailed) || strings.HasPrefix(msg, servingFailed) {
		l.log.Debug(msg)
		return
	}
	l.log.Warn(msg)
}

// servingFailed starts what fasthttp logs when a connection's request
// could not be read: a malformed head, a body cut short. It is the
// client's doing, answered with a 4xx where one can be, so it goes to
// debug (nginx logs "client sent invalid request" at info, below its
// default error_log level): at warn, a client sending garbage in a loop
// wrote a line per request to the server's log. Accept errors, the
// server's own trouble, stay warnings.
const servingFailed = "error when serving connection"

// BodyStream returns the request's body as a stream. fasthttp ends a
// chunked body cleanly when the connection ends at a chunk boundary
// before the last chunk, so a client cut off mid-upload would look done;
// such an end is reported as io.ErrUnexpectedEOF instead. A chunked body
// whose trailer section has a line ended by LF alone ends in an error
// too (see chunked.go): its readers, the router and Adapt, then close
// the connection, as for any body they could not read.
func BodyStream(ctx *fasthttp.RequestCtx) io.Reader {
	r := ctx.RequestBodyStream()
	c, ok := ConnOf(ctx.Conn())
	if r == nil || !ok || ctx.Request.Header.ContentLength() != -1 {
		return r
	}
	return &chunkedBody{r: r, c: c}
}

type chunkedBody struct {
	r io.Reader
	c *Conn
}

func (b *chunkedBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	switch {
	case err == nil:
	case err == io.EOF && b.c.eof.Load():
		// The last chunk is parsed from bytes already read, so a
		// connection at its end when the body ends means the body ended
		// with it.
		err = io.ErrUnexpectedEOF
	case b.c.body.refused() != nil:
		// The trailers were read, so Conn followed them; or the parser
		// asked for more and Conn.Read refused (the parser's words
		// around it quote the client's bytes).
		err = b.c.body.refused()
	}
	return n, err
}
