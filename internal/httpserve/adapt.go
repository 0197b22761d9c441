package httpserve

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/spry-run/spry/internal/errdefs"
)

// streamAfter is how much of a response Adapt buffers before it streams
// the rest (as net/http's server does once its buffer fills).
const streamAfter = 64 << 10

// sendTimeout bounds how long a client may take to accept each part of a
// streamed response, as nginx's send_timeout does: a client that stops
// reading but keeps its connection would otherwise hold the handler, and
// whatever the handler holds (a backup's hold on bundle collection and
// the one backup slot), for ever. A var so that tests can shorten it.
var sendTimeout = 60 * time.Second

// Adapt serves a net/http handler. The handler runs in its own goroutine,
// so that its response can stream: a response is buffered until the
// handler returns, flushes or writes more than streamAfter, and from then
// on each write reaches the client as it is made (fasthttp writes a
// response only after its handler returns, so the handler must outlive
// it). A streamed response ends its connection, because a read watches
// the connection to cancel the request's context when the client goes
// away, as net/http does. Fasthttp's own adaptor buffers every response
// whole and reads every request body into memory.
func Adapt(h http.Handler, log *slog.Logger) fasthttp.RequestHandler {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return func(ctx *fasthttp.RequestCtx) {
		rctx, cancel := context.WithCancel(context.Background())
		r, err := request(ctx, rctx)
		if err != nil {
			cancel()
			WriteError(ctx, errdefs.New(errdefs.ErrInvalidArgument, "malformed request URI"))
			LeaveBody(ctx)
			return
		}
		// Like net/http with only ReadHeaderTimeout: the body has no
		// deadline of its own; the handler bounds it (SetReadDeadline).
		_ = ctx.Conn().SetReadDeadline(time.Time{})
		w := &writer{conn: ctx.Conn(), header: http.Header{}, committed: make(chan struct{}), done: make(chan struct{})}
		go func() {
			defer close(w.done)
			defer cancel()
			defer func() {
				if p := recover(); p != nil && p != http.ErrAbortHandler {
					log.Error("panic serving "+r.URL.Path, "err", p)
					w.abort()
				}
				w.finish()
			}()
			h.ServeHTTP(w, r)
		}()
		select {
		case <-w.done:
		case <-w.committed:
		}
		w.mu.Lock()
		defer w.mu.Unlock()
		w.setHeader(ctx)
		if !w.streaming {
			ctx.SetBody(w.buf.Bytes())
			// fasthttp would read what the handler left of the body as the
			// next request.
			if r.Body.(*body).unread() {
				ctx.SetConnectionClose()
			}
			return
		}
		// The handler goes on after this returns: it must not read the
		// request (fasthttp reuses it), and the client going away must
		// reach it.
		r.Body.(*body).detach()
		ctx.SetConnectionClose()
		conn := ctx.Conn()
		go func() {
			var b [1]byte
			_, _ = conn.Read(b[:])
			cancel()
		}()
		// The head goes out now, not with the first chunk: a handler that
		// flushed before it has anything to say (a log follow) has still
		// answered.
		ctx.Response.ImmediateHeaderFlush = true
		ctx.SetBodyStream(&stream{w: w, cancel: cancel}, -1)
	}
}

// request builds the net/http request for ctx. Everything is copied, since
// a streaming handler outlives ctx.
func request(ctx *fasthttp.RequestCtx, rctx context.Context) (*http.Request, error) {
	uri := string(ctx.Request.Header.RequestURI())
	u, err := url.ParseRequestURI(uri)
	if err != nil {
		return nil, err
	}
	r := &http.Request{
		Method:     string(ctx.Method()),
		URL:        u,
		Proto:      "HTTP/1.1",
		ProtoMajor: 1,
		ProtoMinor: 1,
		Header:     http.Header{},
		Host:       string(ctx.Host()),
		RemoteAddr: ctx.RemoteAddr().String(),
		RequestURI: uri,
	}
	if ctx.IsTLS() {
		r.TLS = ctx.TLSConnectionState()
	}
	if !ctx.Request.Header.IsHTTP11() {
		r.Proto, r.ProtoMinor = "HTTP/1.0", 0
	}
	for k, v := range ctx.Request.Header.All() {
		switch string(k) {
		case fasthttp.HeaderHost, fasthttp.HeaderContentLength, fasthttp.HeaderTransferEncoding:
		default:
			r.Header.Add(string(k), string(v))
		}
	}
	r.ContentLength = int64(ctx.Request.Header.ContentLength())
	if r.ContentLength == -1 {
		r.TransferEncoding = []string{"chunked"}
	}
	if r.ContentLength < 0 && r.ContentLength != -1 {
		r.ContentLength = 0
	}
	b := &body{}
	if r.ContentLength != 0 {
		b.r = BodyStream(ctx)
	}
	r.Body = b
	return r.WithContext(rctx), nil
}

// body is a request body that stops being readable once the fasthttp
// handler has returned.
type body struct {
	mu  sync.Mutex
	r   io.Reader
	eof bool
}

func (b *body) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.r == nil {
		return 0, io.EOF
	}
	n, err := b.r.Read(p)
	if err == io.EOF {
		b.eof = true
	}
	return n, err
}

// unread says whether the body was not read to its end.
func (b *body) unread() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.r != nil && !b.eof
}

func (b *body) Close() error { return nil }

func (b *body) detach() {
	b.mu.Lock()
	b.r = nil
	b.mu.Unlock()
}

// writer is the handler's http.ResponseWriter.
type writer struct {
	conn      net.Conn
	mu        sync.Mutex
	cond      *sync.Cond // signals chunks and the end, once streaming
	header    http.Header
	status    int
	buf       bytes.Buffer
	streaming bool
	ended     bool  // the handler returned
	gone      error // the client went away
	committed chan struct{}
	done      chan struct{}
}

func (w *writer) Header() http.Header { return w.header }

func (w *writer) WriteHeader(code int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.status == 0 && code >= 200 {
		w.status = code
	}
}

func (w *writer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.status == 0 {
		w.status = http.StatusOK
	}
	if w.gone != nil {
		return 0, w.gone
	}
	w.buf.Write(p)
	if !w.streaming && w.buf.Len() > streamAfter {
		w.commitLocked()
	}
	if w.streaming {
		w.cond.Signal()
		// Back-pressure: wait until the client took this write.
		for w.buf.Len() > streamAfter && w.gone == nil {
			w.cond.Wait()
		}
	}
	return len(p), nil
}

// Flush starts streaming: what was written goes out now.
func (w *writer) Flush() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.status == 0 {
		w.status = http.StatusOK
	}
	if !w.streaming {
		w.commitLocked()
	}
	w.cond.Signal()
}

// FlushError is Flush for http.ResponseController.
func (w *writer) FlushError() error {
	w.Flush()
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.gone
}

// SetReadDeadline sets the connection's read deadline, for
// http.ResponseController: a handler bounds the time its body may take,
// as on net/http. Not once the response streams: the connection is then
// read for the client's hang-up, and the body is no longer the
// handler's.
func (w *writer) SetReadDeadline(t time.Time) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.streaming {
		return errors.New("the response streams: the request body is no longer read")
	}
	return w.conn.SetReadDeadline(t)
}

func (w *writer) commitLocked() {
	w.streaming = true
	w.cond = sync.NewCond(&w.mu)
	close(w.committed)
}

// abort answers a handler's panic with a 500 if nothing was sent yet.
func (w *writer) abort() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.streaming {
		w.header = http.Header{}
		w.status = 0
		w.buf.Reset()
		status, b := errdefs.Encode(errors.New("panic"))
		w.header.Set("Content-Type", "application/json")
		w.status = status
		w.buf.Write(b)
	}
}

func (w *writer) finish() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.ended = true
	if w.cond != nil {
		w.cond.Signal()
	}
}

// setHeader copies the status and header to ctx; w.mu is held.
func (w *writer) setHeader(ctx *fasthttp.RequestCtx) {
	status := w.status
	if status == 0 {
		status = http.StatusOK
	}
	ctx.SetStatusCode(status)
	rh := &ctx.Response.Header
	for k, vv := range w.header {
		switch k {
		case "Content-Length", "Transfer-Encoding", "Connection":
			continue
		}
		for _, v := range vv {
			rh.Add(k, v)
		}
	}
	if _, ok := w.header["Content-Type"]; !ok && w.buf.Len() > 0 {
		b := w.buf.Bytes()
		rh.SetContentType(http.DetectContentType(b[:min(len(b), 512)]))
	}
}

// stream is the streamed response body fasthttp reads; every read is sent
// to the client as one flushed chunk.
type stream struct {
	w      *writer
	cancel context.CancelFunc
}

func (s *stream) Read(p []byte) (int, error) {
	w := s.w
	w.mu.Lock()
	defer w.mu.Unlock()
	for w.buf.Len() == 0 && !w.ended {
		w.cond.Wait()
	}
	if w.buf.Len() == 0 {
		return 0, io.EOF
	}
	n, _ := w.buf.Read(p)
	w.cond.Broadcast()
	// Set per part, just before fasthttp writes it, so that a follow's
	// idle minutes between parts are not counted.
	_ = w.conn.SetWriteDeadline(time.Now().Add(sendTimeout))
	return n, nil
}

// CloseWithError is called once the response is written or failed.
func (s *stream) CloseWithError(err error) error {
	w := s.w
	w.mu.Lock()
	if w.gone == nil {
		w.gone = errors.New("client went away")
		if err != nil {
			w.gone = err
		}
	}
	w.cond.Broadcast()
	w.mu.Unlock()
	s.cancel()
	return nil
}
