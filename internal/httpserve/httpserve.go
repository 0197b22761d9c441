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
	// buffer's size.
	MaxHeaderBytes = 64 << 10
	// WatchAfter is how long a handler waits on its client's connection
	// before the connection is watched for a hang-up (see Listener): fast
	// requests never pay for a watch.
	WatchAfter = 100 * time.Millisecond
)

// New returns a server for h.
func New(h fasthttp.RequestHandler, log *slog.Logger) *fasthttp.Server {
	return &fasthttp.Server{
		Handler:         refuseAmbiguousFraming(h),
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
		ErrorHandler:      errorHandler,
		Logger:            logger{log},
	}
}

// refuseAmbiguousFraming refuses a request that has both
// Transfer-Encoding and Content-Length. fasthttp goes by the first and
// drops the second, but a proxy in front may go by the second, and the
// difference smuggles requests (RFC 9112, 6.1). Only chunked requests pay
// for the look.
func refuseAmbiguousFraming(h fasthttp.RequestHandler) fasthttp.RequestHandler {
	return func(ctx *fasthttp.RequestCtx) {
		if ctx.Request.Header.ContentLength() == -1 && hasContentLength(ctx.Request.Header.RawHeaders()) {
			WriteError(ctx, errdefs.New(errdefs.ErrInvalidArgument, "the request has both Transfer-Encoding and Content-Length"))
			ctx.SetConnectionClose()
			return
		}
		h(ctx)
	}
}

// hasContentLength says whether a raw header block has a Content-Length
// field.
func hasContentLength(raw []byte) bool {
	const name = "content-length:"
	for len(raw) > 0 {
		var line []byte
		line, raw, _ = bytes.Cut(raw, []byte{'\n'})
		if len(line) >= len(name) && bytes.EqualFold(line[:len(name)], []byte(name)) {
			return true
		}
	}
	return false
}

// errorHandler answers requests fasthttp could not read.
func errorHandler(ctx *fasthttp.RequestCtx, err error) {
	var small *fasthttp.ErrSmallBuffer
	var ne net.Error
	switch {
	case errors.As(err, &small):
		err = errdefs.New(errdefs.ErrRequestHeaderLarge, "request header is over the %d byte limit", MaxHeaderBytes)
	case errors.As(err, &ne) && ne.Timeout():
		ctx.SetConnectionClose()
		ctx.Response.Header.SetContentLength(0)
		ctx.SetStatusCode(fasthttp.StatusRequestTimeout)
		return
	default:
		err = errdefs.New(errdefs.ErrInvalidArgument, "malformed request")
	}
	WriteError(ctx, err)
}

// WriteError answers with err as Spry's JSON error.
func WriteError(ctx *fasthttp.RequestCtx, err error) {
	status, body := errdefs.Encode(err)
	ctx.Response.ResetBody()
	h := &ctx.Response.Header
	h.SetContentType("application/json")
	h.Set("X-Content-Type-Options", "nosniff")
	ctx.SetStatusCode(status)
	ctx.SetBody(body)
}

// logger sends fasthttp's own messages (connection errors) to slog.
type logger struct{ log *slog.Logger }

func (l logger) Printf(format string, args ...any) {
	if l.log != nil {
		l.log.Warn(fmt.Sprintf(format, args...))
	}
}

// BodyStream returns the request's body as a stream. fasthttp ends a
// chunked body cleanly when the connection ends at a chunk boundary
// before the last chunk, so a client cut off mid-upload would look done;
// such an end is reported as io.ErrUnexpectedEOF instead.
func BodyStream(ctx *fasthttp.RequestCtx) io.Reader {
	r := ctx.RequestBodyStream()
	c, ok := ctx.Conn().(*Conn)
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
	// The last chunk is parsed from bytes already read, so a connection
	// at its end when the body ends means the body ended with it.
	if err == io.EOF && b.c.eof.Load() {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}
