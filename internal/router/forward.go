package router

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"net/http/httputil"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/spry-run/spry/internal/backend"
)

// The hot path. Each request uses the serving goroutine alone: it takes a
// kept-alive connection to the instance from a small per-instance pool,
// writes the request head straight from the server's parsed header, reads
// the response head into the server's response, and hands the body to
// the server as a stream (or, when it has already arrived whole, as
// bytes, so the connection and the lease are free before the handler
// returns). Upgrades (WebSockets) get a connection of their own, spliced
// to the client's.

// upConn is one keep-alive connection to an instance.
type upConn struct {
	conn net.Conn
	br   *bufio.Reader
	bw   *bufio.Writer
}

// pool keeps idle connections per instance.
type pool struct {
	mu   sync.Mutex
	idle map[string][]*upConn // by instance id
}

// maxIdlePerInstance bounds idle connections kept per instance; more may
// be open while busy.
const maxIdlePerInstance = 128

func (p *pool) get(inst *backend.Instance) *upConn {
	p.mu.Lock()
	defer p.mu.Unlock()
	cs := p.idle[inst.ID]
	if len(cs) == 0 {
		return nil
	}
	c := cs[len(cs)-1]
	p.idle[inst.ID] = cs[:len(cs)-1]
	return c
}

func (p *pool) put(inst *backend.Instance, c *upConn) {
	select {
	case <-inst.Done():
		c.close()
		p.drop(inst.ID)
		return
	default:
	}
	p.mu.Lock()
	if len(p.idle[inst.ID]) >= maxIdlePerInstance {
		p.mu.Unlock()
		c.close()
		return
	}
	p.idle[inst.ID] = append(p.idle[inst.ID], c)
	p.mu.Unlock()
}

// drop closes an ended instance's idle connections.
func (p *pool) drop(id string) {
	p.mu.Lock()
	cs := p.idle[id]
	delete(p.idle, id)
	p.mu.Unlock()
	for _, c := range cs {
		c.close()
	}
}

var (
	// The reader holds a whole response head (fasthttp parses it in
	// place), so it is as large as the heads clients may send.
	readerPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 64<<10) }}
	writerPool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 16<<10) }}
	copyPool   = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}
)

func (rt *Router) dial(inst *backend.Instance, deadline time.Time) (*upConn, error) {
	d := net.Dialer{Deadline: deadline}
	conn, err := d.Dial(inst.Network, inst.Address)
	if err != nil {
		return nil, err
	}
	br := readerPool.Get().(*bufio.Reader)
	br.Reset(conn)
	bw := writerPool.Get().(*bufio.Writer)
	bw.Reset(conn)
	return &upConn{conn: conn, br: br, bw: bw}, nil
}

func (c *upConn) close() {
	c.conn.Close()
	c.br.Reset(nil)
	readerPool.Put(c.br)
	c.bw.Reset(nil)
	writerPool.Put(c.bw)
}

var (
	// errUndelivered marks a failure before the request reached the
	// instance: safe to send again.
	errUndelivered = errors.New("request not delivered")
	errTooLarge    = errors.New("request body too large")
	errClientGone  = errors.New("the client hung up")
)

// forward sends the request to the leased instance and sets the response.
// It returns an error only if no response was set; an error wrapping
// errUndelivered means the request may be sent elsewhere. streaming says
// the body streams after the handler returns (and the invocation ends
// when it does).
func (rt *Router) forward(ctx *fasthttp.RequestCtx, inv *invocation) (streaming bool, err error) {
	inst := inv.lease.Instance()
	h := &ctx.Response.Header
	hasBody := bodyLength(&ctx.Request.Header) != 0
	var c *upConn
	for attempt := 0; ; attempt++ {
		reused := true
		if c = rt.pool.get(inst); c == nil {
			reused = false
			if c, err = rt.dial(inst, inv.deadline); err != nil {
				return false, errors.Join(errUndelivered, err)
			}
		}
		inv.up.Store(c)
		// The deadline is left set when the connection goes back to the
		// pool: the next use sets its own before any I/O.
		_ = c.conn.SetDeadline(inv.deadline)
		if err = rt.writeRequest(c.bw, ctx, inv, false); err == nil {
			if err = c.bw.Flush(); err == nil {
				if hasBody {
					// The body is read now: the connection is free to watch.
					inv.watchClient(ctx)
				}
				err = readHead(c.br, h)
			}
		}
		if err == nil {
			break
		}
		c.close()
		// A kept-alive connection the instance had already closed fails
		// before any answer; with no body sent, trying a fresh connection
		// cannot replay anything.
		if reused && attempt == 0 && !hasBody && !isTimeout(err) && time.Now().Before(inv.deadline) && !inv.gone.Load() {
			continue
		}
		// The watch goes on (serve ends it): a retry on another instance
		// is watched too.
		return false, err
	}
	// After end, a hang-up closes nothing: c may go back to the pool,
	// unless the hang-up came first and closed it.
	inv.endWatch()
	if inv.gone.Load() {
		c.close()
		return false, errClientGone
	}
	upClose := rt.fixHeader(h, inv)
	return rt.respond(ctx, inv, c, !upClose), nil
}

// respond sets the response body from c, whose response head is read:
// at once if it is all here, else as a stream. reuse says c may go back
// to the pool once the body is read.
func (rt *Router) respond(ctx *fasthttp.RequestCtx, inv *invocation, c *upConn, reuse bool) (streaming bool) {
	inst := inv.lease.Instance()
	h := &ctx.Response.Header
	status := h.StatusCode()
	if inv.method == fasthttp.MethodHead || status == fasthttp.StatusNoContent || status == fasthttp.StatusNotModified {
		rt.release(inst, c, reuse)
		return false
	}
	n := h.ContentLength()
	if n >= 0 && n <= c.br.Buffered() {
		b, _ := c.br.Peek(n)
		ctx.Response.SetBody(b)
		_, _ = c.br.Discard(n)
		rt.release(inst, c, reuse)
		return false
	}
	body := &respBody{rt: rt, inv: inv, c: c, reuse: reuse, status: status}
	switch {
	case n >= 0:
		body.r = &fixedReader{r: c.br, left: int64(n)}
	case n == -1:
		body.r = httputil.NewChunkedReader(c.br)
		body.chunked = true
	default: // no length: the body ends when the connection does
		body.r = c.br
		body.reuse = false
		n = -1
	}
	// A body of unknown length is sent chunked, each piece flushed as it
	// comes (a stream, such as server-sent events, reaches the client as
	// it is produced).
	ctx.SetBodyStream(body, n)
	return true
}

func (rt *Router) release(inst *backend.Instance, c *upConn, reuse bool) {
	if reuse {
		rt.pool.put(inst, c)
	} else {
		c.close()
	}
}

// respBody streams a response body from the instance to the server,
// which closes it when the response is written or failed.
type respBody struct {
	rt      *Router
	inv     *invocation
	c       *upConn
	r       io.Reader
	chunked bool
	reuse   bool
	status  int
	eof     bool
	err     error
	closed  bool
}

func (b *respBody) Read(p []byte) (int, error) {
	if b.eof {
		return 0, io.EOF
	}
	n, err := b.r.Read(p)
	if err == io.EOF {
		b.eof = true
		if b.chunked {
			// The chunked reader stops at the last chunk; trailers and
			// the final blank line are left.
			err = skipTrailer(b.c.br)
			if err == nil {
				err = io.EOF
			}
		}
	}
	if err != nil && err != io.EOF {
		b.err = err
	}
	return n, err
}

// CloseWithError ends the invocation; err is the server's error writing
// to the client, if any.
func (b *respBody) CloseWithError(err error) error {
	if b.closed {
		return nil
	}
	b.closed = true
	inv := b.inv
	b.rt.release(inv.lease.Instance(), b.c, b.eof && b.err == nil && b.reuse)
	if b.err != nil && !time.Now().Before(inv.deadline) {
		// The function's time ran out mid-response: it may be stuck. (A
		// client that went away also ends the copy, but says nothing
		// about the function.)
		inv.lease.Kill(backend.ExitTimeout)
	}
	inv.finish(b.status)
	return nil
}

func skipTrailer(br *bufio.Reader) error {
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return err
		}
		if len(bytes.TrimRight(line, "\r\n")) == 0 {
			return nil
		}
	}
}

// fixedReader reads a body of known length, failing if it ends early.
type fixedReader struct {
	r    io.Reader
	left int64
}

func (f *fixedReader) Read(p []byte) (int, error) {
	if f.left <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > f.left {
		p = p[:f.left]
	}
	n, err := f.r.Read(p)
	f.left -= int64(n)
	if err == io.EOF && f.left > 0 {
		err = io.ErrUnexpectedEOF
	} else if f.left == 0 {
		err = io.EOF
	}
	return n, err
}

// readHead reads a response head into h, skipping informational answers
// (103 Early Hints) other than 101.
func readHead(br *bufio.Reader, h *fasthttp.ResponseHeader) error {
	for {
		if err := h.Read(br); err != nil {
			return err
		}
		if s := h.StatusCode(); s < 100 || s >= 200 || s == fasthttp.StatusSwitchingProtocols {
			return nil
		}
	}
}

// hopHeaders are connection-level; they never cross the proxy.
var hopHeaders = []string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

// fixHeader makes the instance's response head the client's: hop-by-hop
// headers go, the request id and cold start come. It reports whether the
// instance will close the connection.
func (rt *Router) fixHeader(h *fasthttp.ResponseHeader, inv *invocation) (upClose bool) {
	upClose = h.ConnectionClose()
	h.ResetConnectionClose()
	// One look for hop-by-hop headers first: responses rarely carry any,
	// and deleting each by name costs more than the look.
	hop := false
	for k := range h.All() {
		switch string(k) {
		case "Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
			"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade":
			hop = true
		}
	}
	if hop {
		if v := h.Peek("Connection"); len(v) > 0 {
			for _, f := range bytes.Split(bytes.Clone(v), []byte{','}) {
				if f = bytes.TrimSpace(f); len(f) > 0 {
					h.DelBytes(f)
				}
			}
		}
		for _, k := range hopHeaders {
			h.Del(k)
		}
	}
	h.Set("Spry-Request-Id", inv.reqID)
	rt.markCold(h, inv)
	return upClose
}

// skipRequestHeader says whether a client header stays behind: hop-by-hop
// ones (including those the client's Connection names), framing (set
// anew) and those the router sets itself.
func skipRequestHeader(k, connection []byte) bool {
	switch string(k) {
	case "Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
		"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
		"Content-Length", "Expect", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "Spry-Request-Id":
		return true
	}
	for len(connection) > 0 {
		var f []byte
		f, connection, _ = bytes.Cut(connection, []byte{','})
		if bytes.EqualFold(bytes.TrimSpace(f), k) {
			return true
		}
	}
	return false
}

// writeRequest writes the request the instance gets: the function's own
// path and query, the client's method, headers and body, plus forwarding
// headers.
func (rt *Router) writeRequest(bw *bufio.Writer, ctx *fasthttp.RequestCtx, inv *invocation, upgrade bool) error {
	rh := &ctx.Request.Header
	bw.Write(rh.Method())
	bw.WriteByte(' ')
	bw.WriteString(inv.rest)
	if inv.query != "" {
		bw.WriteByte('?')
		bw.WriteString(inv.query)
	}
	bw.WriteString(" HTTP/1.1\r\n")
	connection := rh.Peek("Connection")
	var xff []byte
	for k, v := range rh.All() {
		if string(k) == "X-Forwarded-For" {
			if len(xff) > 0 {
				xff = append(xff, ", "...)
			}
			xff = append(xff, v...)
		}
		if skipRequestHeader(k, connection) {
			continue
		}
		bw.Write(k)
		bw.WriteString(": ")
		bw.Write(v)
		bw.WriteString("\r\n")
	}
	bw.WriteString("X-Forwarded-For: ")
	if len(xff) > 0 {
		bw.Write(xff)
		bw.WriteString(", ")
	}
	bw.WriteString(ctx.RemoteIP().String())
	bw.WriteString("\r\nX-Forwarded-Host: ")
	bw.Write(rh.Host())
	if ctx.IsTLS() {
		bw.WriteString("\r\nX-Forwarded-Proto: https")
	} else {
		bw.WriteString("\r\nX-Forwarded-Proto: http")
	}
	bw.WriteString("\r\nSpry-Request-Id: ")
	bw.WriteString(inv.reqID)
	bw.WriteString("\r\n")
	if upgrade {
		bw.WriteString("Connection: Upgrade\r\nUpgrade: ")
		bw.Write(rh.Peek("Upgrade"))
		bw.WriteString("\r\n")
	}
	cl := bodyLength(rh)
	switch {
	case cl > 0:
		bw.WriteString("Content-Length: ")
		bw.WriteString(strconv.Itoa(cl))
		bw.WriteString("\r\n\r\n")
		if err := rt.copyBody(bw, ctx.RequestBodyStream(), int64(cl), false); err != nil {
			return err
		}
	case cl == -1:
		bw.WriteString("Transfer-Encoding: chunked\r\n\r\n")
		if err := rt.copyBody(bw, ctx.RequestBodyStream(), -1, true); err != nil {
			return err
		}
	default:
		switch string(rh.Method()) {
		case fasthttp.MethodPost, fasthttp.MethodPut, fasthttp.MethodPatch:
			bw.WriteString("Content-Length: 0\r\n")
		}
		_, err := bw.WriteString("\r\n")
		return err
	}
	inv.bodyPending = false
	return nil
}

// copyBody copies the client's body: n bytes, or (n < 0) until it ends,
// re-chunked, up to the body limit.
func (rt *Router) copyBody(bw *bufio.Writer, body io.Reader, n int64, chunked bool) error {
	if body == nil {
		return io.ErrUnexpectedEOF
	}
	bufp := copyPool.Get().(*[]byte)
	defer copyPool.Put(bufp)
	buf := *bufp
	if !chunked {
		m, err := io.CopyBuffer(writerOnly{bw}, io.LimitReader(body, n), buf)
		if err == nil && m < n {
			err = io.ErrUnexpectedEOF
		}
		return err
	}
	var total int64
	for {
		m, err := body.Read(buf)
		if m > 0 {
			if total += int64(m); total > rt.cfg.MaxBodyBytes {
				return errTooLarge
			}
			bw.WriteString(strconv.FormatInt(int64(m), 16))
			bw.WriteString("\r\n")
			bw.Write(buf[:m])
			if _, werr := bw.WriteString("\r\n"); werr != nil {
				return werr
			}
		}
		if err == io.EOF {
			_, err = bw.WriteString("0\r\n\r\n")
			return err
		}
		if err != nil {
			return err
		}
	}
}

// writerOnly hides ReadFrom, so io.CopyBuffer uses the pooled buffer.
type writerOnly struct{ io.Writer }

func isTimeout(err error) bool {
	return errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, fasthttp.ErrTimeout)
}

// bodyLength is the request body's length: -1 when chunked, 0 when there
// is none (fasthttp says -2 for a GET or HEAD without one).
func bodyLength(h *fasthttp.RequestHeader) int {
	if n := h.ContentLength(); n >= -1 {
		return n
	}
	return 0
}

func isUpgrade(h *fasthttp.RequestHeader) bool {
	return len(h.Peek("Upgrade")) > 0
}

// upgrade forwards a protocol upgrade (WebSocket) on a connection of its
// own; if the instance switches protocols, the client's connection is
// spliced to it until either side closes or the function's time is up.
func (rt *Router) upgrade(ctx *fasthttp.RequestCtx, inv *invocation) (streaming bool, err error) {
	inst := inv.lease.Instance()
	c, err := rt.dial(inst, inv.deadline)
	if err != nil {
		return false, errors.Join(errUndelivered, err)
	}
	_ = c.conn.SetDeadline(inv.deadline)
	h := &ctx.Response.Header
	if err = rt.writeRequest(c.bw, ctx, inv, true); err == nil {
		if err = c.bw.Flush(); err == nil {
			err = readHead(c.br, h)
		}
	}
	if err != nil {
		c.close()
		return false, err
	}
	if h.StatusCode() != fasthttp.StatusSwitchingProtocols {
		rt.fixHeader(h, inv)
		return rt.respond(ctx, inv, c, false), nil
	}
	h.Set("Spry-Request-Id", inv.reqID)
	rt.markCold(h, inv)
	head := h.AppendBytes(nil)
	ctx.HijackSetNoResponse(true)
	ctx.Hijack(func(client net.Conn) {
		defer inv.finish(fasthttp.StatusSwitchingProtocols)
		defer c.close()
		_ = client.SetDeadline(inv.deadline)
		if _, err := client.Write(head); err != nil {
			return
		}
		done := make(chan struct{}, 2)
		go func() { _, _ = io.Copy(c.conn, client); done <- struct{}{} }()
		go func() { _, _ = io.Copy(client, c.br); done <- struct{}{} }()
		<-done
		// One side ended: end the other.
		client.Close()
		c.conn.Close()
		<-done
	})
	return true, nil
}

func (rt *Router) markCold(h *fasthttp.ResponseHeader, inv *invocation) {
	if !inv.lease.Cold {
		return
	}
	d := time.Since(inv.start)
	h.Set("Spry-Cold-Start", strconv.FormatFloat(float64(d.Microseconds())/1000, 'f', 2, 64))
	spec := inv.lease.Instance().Spec
	rt.log.Info("cold start", "owner", spec.Owner, "function", spec.Name, "version", spec.Version,
		"instance", inv.lease.Instance().ID, "request_id", inv.reqID, "duration", d)
	if rt.cfg.OnColdStart != nil {
		rt.cfg.OnColdStart(spec, d)
	}
}
