package router

import (
	"bufio"
	"bytes"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http/httputil"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/spry-run/spry/internal/auth"
	"github.com/spry-run/spry/internal/backend"
	"github.com/spry-run/spry/internal/httpserve"
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
	// idleSince is when the connection went back to the pool.
	idleSince time.Time
}

// pool keeps idle connections per instance.
type pool struct {
	mu   sync.Mutex
	idle map[string][]*upConn // by instance id
}

// maxIdlePerInstance bounds idle connections kept per instance; more may
// be open while busy.
const maxIdlePerInstance = 128

// maxIdleTime is how long an idle connection is kept: well under the
// runtimes' own keep-alive timeout (120 s), so an instance does not close
// a connection just as a request is written to it (a request answered by
// a close is not sent again: it may have been delivered).
const maxIdleTime = 60 * time.Second

func (p *pool) get(inst *backend.Instance) *upConn {
	p.mu.Lock()
	cs := p.idle[inst.ID]
	if len(cs) == 0 {
		p.mu.Unlock()
		return nil
	}
	c := cs[len(cs)-1]
	p.idle[inst.ID] = cs[:len(cs)-1]
	var stale []*upConn
	if time.Since(c.idleSince) > maxIdleTime {
		// The most recently used is too old, so are the rest.
		stale = append(p.idle[inst.ID], c)
		p.idle[inst.ID] = nil
		c = nil
	}
	p.mu.Unlock()
	for _, s := range stale {
		s.close()
	}
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
	cs, known := p.idle[inst.ID]
	if len(cs) >= maxIdlePerInstance {
		p.mu.Unlock()
		c.close()
		return
	}
	c.idleSince = time.Now()
	p.idle[inst.ID] = append(cs, c)
	p.mu.Unlock()
	if !known {
		// An instance's entry stays until it ends (get leaves it empty),
		// so this runs once per instance. Nothing else would close its
		// idle connections once it ends (scaled to zero, deleted, crashed)
		// and no request for it comes again: each kept an fd and two
		// 64 KiB buffers for good. A put that raced the drop makes the
		// entry again, and a watch that ends at once.
		go func() {
			<-inst.Done()
			p.drop(inst.ID)
		}()
	}
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
	// A Unix socket whose listen queue is full refuses a connection at
	// once (EAGAIN), where TCP would wait: the instance is alive, only
	// behind on accepting (a burst of new connections, or a function
	// that blocks its event loop). So wait for room as TCP would, until
	// the request's deadline or the instance's end, rather than fail the
	// request and take the instance for dead.
	for wait := time.Millisecond; errors.Is(err, syscall.EAGAIN) && time.Until(deadline) > wait; wait = min(2*wait, 50*time.Millisecond) {
		select {
		case <-inst.Done():
			return nil, err
		case <-time.After(wait):
		}
		conn, err = d.Dial(inst.Network, inst.Address)
	}
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
	var (
		c      *upConn
		sender *bodySender
	)
	if !time.Now().Before(inv.deadline) {
		// The wait for an instance took all the time.
		return false, errors.Join(errUndelivered, os.ErrDeadlineExceeded)
	}
	for attempt := 0; ; attempt++ {
		reused, sent := true, false
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
		if hasBody {
			sender = rt.sendRequest(ctx, inv, c)
			if err = readAnswerHead(ctx, inv, c.br, false); err != nil {
				err = sender.failed(err)
			}
		} else if err = rt.writeRequest(c.bw, ctx, inv, false); err == nil {
			if err = c.bw.Flush(); err == nil {
				sent = true
				err = readAnswerHead(ctx, inv, c.br, false)
			}
		}
		if err == nil {
			break
		}
		c.close()
		// Writing to a kept-alive connection the instance had already
		// closed fails (EPIPE) before anything reached it: trying a fresh
		// connection cannot replay anything. Once the request is written,
		// a failure may come after the function ran, so it is not sent
		// again.
		if reused && attempt == 0 && !hasBody && !sent && !isTimeout(err) && time.Now().Before(inv.deadline) && !inv.gone.Load() {
			continue
		}
		if !hasBody && !sent && isTimeout(err) {
			// The time ran out before the request was written whole.
			err = errors.Join(errUndelivered, err)
		}
		// The watch goes on (serve ends it): a retry on another instance
		// is watched too.
		return false, err
	}
	bodySent := true
	if sender != nil {
		// An answer that comes as the body's last bytes go (a function
		// that reads it all first, as Go's server does) can beat the
		// sender's own end by a scheduling delay: give it a moment, so
		// such an answer takes the common path.
		if sender.running() && hasAnswerBody(inv, h) && sender.wait(senderGrace) {
			// The function answered before it had the whole body. It may
			// be refusing it, or streaming its answer as it reads.
			return false, rt.duplex(ctx, inv, c, sender)
		}
		bodySent = sender.stop()
	}
	// After end, a hang-up closes nothing: c may go back to the pool,
	// unless the hang-up came first and closed it.
	inv.endWatch()
	if inv.gone.Load() {
		c.close()
		return false, errClientGone
	}
	upClose := rt.fixHeader(h, inv)
	return rt.respond(ctx, inv, c, !upClose && bodySent), nil
}

// duplex passes on an answer that began before the request's body was all
// sent while the body still goes: full duplex, as an echo or events
// answering an upload as it comes need. fasthttp writes a response only
// once its handler returns, and reads no more of the request then, so the
// answer is written here, straight to the client's connection, which
// closes after it (the server is told to write nothing of its own). A
// body left unsent when the answer ends is not sent.
func (rt *Router) duplex(ctx *fasthttp.RequestCtx, inv *invocation, c *upConn, sender *bodySender) error {
	h := &ctx.Response.Header
	upClose := rt.fixHeader(h, inv)
	body := rt.answerBody(inv, c, h)
	werr := writeDirect(ctx, inv, body)
	clientsFault := false
	if body.err != nil {
		// The time ran out, say: on a client slow to send, not on a stuck
		// function, when the body was still coming.
		clientsFault = clientSide(sender.failed(body.err))
	}
	bodySent := sender.stop()
	// After end, a hang-up closes nothing; one that came first closed c.
	inv.endWatch()
	gone := inv.gone.Load()
	body.late = body.late || clientsFault
	body.end(!upClose && bodySent && werr == nil && !gone)
	if gone && (!body.eof || werr != nil) {
		return errClientGone
	}
	return nil
}

// writeDirect writes the answer whose head is in the response and whose
// body is body straight to the client's connection, which closes after
// it (the server is told to write nothing of its own); it returns the
// error writing to the client, if any. A body of unknown length goes
// chunked to an HTTP/1.1 client, and as the data alone, ended by the
// connection's end, to an HTTP/1.0 one, which knows no chunks (RFC 9112
// 6.1): fasthttp would send it chunked.
func writeDirect(ctx *fasthttp.RequestCtx, inv *invocation, body *respBody) error {
	h := &ctx.Response.Header
	chunked := body.length < 0 && ctx.Request.Header.IsHTTP11()
	switch {
	case chunked:
		h.SetContentLength(-1)
	case body.length < 0:
		// HTTP/1.0: the connection's end ends the body.
		h.Del(fasthttp.HeaderTransferEncoding)
		h.SetContentLength(-2)
	}
	h.SetConnectionClose()
	ctx.HijackSetNoResponse(true)
	// The server keeps hijacked connections (KeepHijackedConns): closing
	// it lingers, so the client reads the answer though it still sends.
	ctx.Hijack(func(client net.Conn) { client.Close() })
	client := ctx.Conn()
	_ = client.SetWriteDeadline(inv.deadline)
	bw := writerPool.Get().(*bufio.Writer)
	bw.Reset(client)
	defer func() { bw.Reset(nil); writerPool.Put(bw) }()
	bufp := copyPool.Get().(*[]byte)
	defer copyPool.Put(bufp)
	// The head goes at once, as respond's streams do.
	head := h.AppendBytes((*bufp)[:0])
	if chunked {
		head = withCodings(head, inv.codings)
	}
	_, werr := bw.Write(head)
	if werr == nil {
		werr = bw.Flush()
	}
	for werr == nil {
		n, err := body.Read(*bufp)
		if n > 0 {
			if werr = writePiece(bw, (*bufp)[:n], chunked); werr == nil {
				werr = bw.Flush()
			}
		}
		if err != nil {
			break
		}
	}
	if werr == nil && body.eof && chunked {
		_, _ = bw.WriteString("0\r\n\r\n")
		_ = bw.Flush()
	}
	return werr
}

// hasAnswerBody says whether the response whose head is h has a body.
func hasAnswerBody(inv *invocation, h *fasthttp.ResponseHeader) bool {
	status := h.StatusCode()
	return inv.method != fasthttp.MethodHead && status != fasthttp.StatusNoContent && status != fasthttp.StatusNotModified
}

// answerBody prepares to read the body of the response whose head h was
// read from c.
func (rt *Router) answerBody(inv *invocation, c *upConn, h *fasthttp.ResponseHeader) *respBody {
	n := h.ContentLength()
	body := &respBody{rt: rt, inv: inv, c: c, reuse: true, status: h.StatusCode(), length: n}
	switch {
	case n >= 0:
		body.r = &fixedReader{r: c.br, left: int64(n)}
	case n == -1:
		body.r = httputil.NewChunkedReader(c.br)
		body.chunked = true
	default: // no length: the body ends when the connection does
		body.r = c.br
		body.reuse = false
		body.length = -1
	}
	return body
}

// respond sets the response body from c, whose response head is read:
// at once if it is all here, else as a stream. reuse says c may go back
// to the pool once the body is read.
func (rt *Router) respond(ctx *fasthttp.RequestCtx, inv *invocation, c *upConn, reuse bool) (streaming bool) {
	inst := inv.lease.Instance()
	h := &ctx.Response.Header
	if !hasAnswerBody(inv, h) {
		rt.release(inst, c, reuse)
		return false
	}
	if n := h.ContentLength(); n >= 0 && n <= c.br.Buffered() {
		b, _ := c.br.Peek(n)
		ctx.Response.SetBody(b)
		_, _ = c.br.Discard(n)
		rt.release(inst, c, reuse)
		return false
	}
	body := rt.answerBody(inv, c, h)
	body.reuse = body.reuse && reuse
	if body.length < 0 && (!ctx.Request.Header.IsHTTP11() || inv.codings != "") {
		// fasthttp sends a body of unknown length chunked, which an
		// HTTP/1.0 client does not know: it is written here instead, as
		// the data alone, and the connection's end ends it. So is one
		// with transfer codings besides chunked, which the server would
		// not name.
		werr := writeDirect(ctx, inv, body)
		body.late = body.late || werr != nil
		body.end(werr == nil)
		body.closed = true
		inv.finish(body.status)
		return true
	}
	// A body of unknown length is sent chunked, each piece flushed as it
	// comes (a stream, such as server-sent events, reaches the client as
	// it is produced). The head goes at once: the client learns the answer
	// has begun, and a body the instance cuts short reaches the client
	// cut short (as through any proxy) rather than as a connection closed
	// with nothing on it.
	ctx.Response.ImmediateHeaderFlush = true
	// The server writes with no deadline of its own: a client that never
	// reads would block it, and hold the instance's slot and connection,
	// for as long as it keeps its connection. The function's time covers
	// the answer (the answer is cut), and CloseWithError lifts it.
	body.client = ctx.Conn()
	_ = body.client.SetWriteDeadline(inv.deadline)
	ctx.SetBodyStream(body, body.length)
	return true
}

func (rt *Router) release(inst *backend.Instance, c *upConn, reuse bool) {
	// Bytes past the answer are not an answer to anything sent yet: an
	// instance that says more than it was asked would hand them to the
	// next request.
	if reuse && c.br.Buffered() == 0 {
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
	length  int // as fasthttp's SetBodyStream takes it: -1 unknown
	chunked bool
	reuse   bool
	status  int
	eof     bool
	err     error
	closed  bool
	client  net.Conn // with the write deadline set for the body
	// late: the failure is not the function's. The read that failed
	// began after the deadline (the time went on writing to a slow
	// client), or, in a duplex exchange, the client failed its body.
	late bool
}

func (b *respBody) Read(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	if b.eof {
		return 0, io.EOF
	}
	b.late = !time.Now().Before(b.inv.deadline)
	n, err := b.r.Read(p)
	if err == io.EOF && b.chunked {
		// The chunked reader stops at the last chunk; trailers and the
		// final blank line are left.
		if err = skipTrailer(b.c.br); err == nil {
			err = io.EOF
		}
	}
	switch {
	case err == io.EOF:
		b.eof = true
	case err != nil:
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
	if b.client != nil {
		// The connection's next answer has a time of its own.
		_ = b.client.SetWriteDeadline(time.Time{})
	}
	b.end(true)
	b.inv.finish(b.status)
	return nil
}

// end lets go of the instance's connection once the body was read, or
// failed; reuse says it may otherwise go back to the pool.
func (b *respBody) end(reuse bool) {
	inv := b.inv
	b.rt.release(inv.lease.Instance(), b.c, b.eof && b.err == nil && b.reuse && reuse)
	if b.err != nil && !b.late && !time.Now().Before(inv.deadline) {
		// The function's time ran out mid-response while the router
		// waited on it: it may be stuck. (A client that went away, or
		// that read so slowly that the time went on writing to it, also
		// ends the copy, but says nothing about the function; the event
		// loops draw the same line.)
		inv.lease.TimedOut()
	}
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

// errBadAnswer is a response head that cannot be passed on.
var errBadAnswer = errors.New("malformed response from the instance")

// readHead reads a response head into h, skipping informational answers
// (103 Early Hints) other than 101. The parser is lenient, and a function
// is untrusted: a status that is not three digits is refused rather than
// passed on to the client malformed, and so is a 101 to a request that
// asked for no upgrade (upgrade false), as the event loops refuse it: a
// proxy in front could take it for a switch and tunnel what the client
// sends next past its own rules.
func readHead(br *bufio.Reader, h *fasthttp.ResponseHeader, upgrade bool) (codings string, err error) {
	for {
		head := peekHead(br)
		if ambiguousHead(head) {
			return "", errBadAnswer
		}
		var ok bool
		codings, ok = answerCodings(head)
		if err := h.Read(br); err != nil {
			var ne net.Error
			if errors.Is(err, io.EOF) || errors.As(err, &ne) || errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.ECONNRESET) {
				return "", err
			}
			// The instance answered, with something not HTTP.
			return "", fmt.Errorf("%w: %w", errBadAnswer, err)
		}
		s := h.StatusCode()
		if s < 100 || s > 999 {
			return "", errBadAnswer
		}
		if s == fasthttp.StatusSwitchingProtocols && !upgrade {
			return "", errBadAnswer
		}
		if !ok {
			return "", errCodings
		}
		if s >= 200 || s == fasthttp.StatusSwitchingProtocols {
			return codings, nil
		}
	}
}

// errCodings is an answer whose transfer codings cannot be re-framed; it
// passes (without them) only when it has no body to frame.
var errCodings = fmt.Errorf("%w: transfer codings that cannot be re-framed", errBadAnswer)

// readAnswerHead reads the instance's answer head into the response,
// and notes its transfer codings but chunked in inv (see codings.go):
// an HTTP/1.0 client can take none, so an answer with a body and such
// codings is refused.
func readAnswerHead(ctx *fasthttp.RequestCtx, inv *invocation, br *bufio.Reader, upgrade bool) error {
	h := &ctx.Response.Header
	codings, err := readHead(br, h, upgrade)
	if errors.Is(err, errCodings) && h.StatusCode() >= 200 && !hasAnswerBody(inv, h) {
		// Nothing to frame (HEAD, 204, 304): the head passes, as a
		// HEAD's does whatever its codings.
		codings, err = "", nil
	}
	inv.codings = codings
	if err == nil && codings != "" && !ctx.Request.Header.IsHTTP11() && hasAnswerBody(inv, h) {
		return fmt.Errorf("%w: transfer codings %q for an HTTP/1.0 client", errBadAnswer, codings)
	}
	return err
}

// peekHead returns the response head waiting in br, reading until it is
// all there as the header parser would; nil if it does not come whole,
// or if its first line is not a status line (the parser refuses that at
// once, and waiting for the rest would turn a prompt 502 into a
// timeout).
func peekHead(br *bufio.Reader) []byte {
	for n := 1; ; n = br.Buffered() + 1 {
		if b, err := br.Peek(n); len(b) < n || err != nil {
			return nil
		}
		b, _ := br.Peek(br.Buffered())
		// The parser skips empty lines before the status line.
		b = bytes.TrimLeft(b, "\r\n")
		if i := bytes.IndexByte(b, '\n'); i >= 0 && !statusLine(b[:i]) {
			return nil
		}
		if i := bytes.Index(b, []byte("\r\n\r\n")); i >= 0 {
			return b[:i+4]
		}
		if i := bytes.Index(b, []byte("\n\n")); i >= 0 {
			return b[:i+2]
		}
		if br.Buffered() == br.Size() {
			return nil
		}
	}
}

// statusLine says whether line looks like "HTTP/x.y NNN ...".
func statusLine(line []byte) bool {
	_, rest, ok := bytes.Cut(line, []byte{' '})
	if !ok || !bytes.HasPrefix(line, []byte("HTTP/")) || len(rest) < 3 {
		return false
	}
	for _, c := range rest[:3] {
		if c < '0' || c > '9' {
			return false
		}
	}
	return len(rest) == 3 || rest[3] == ' ' || rest[3] == '\r'
}

// ambiguousHead says whether a response head may be framed one way here
// and another by a proxy in front. Content-Length more than once with
// different values: the header parser keeps the last, while a proxy may
// take the first; RFC 9110 asks for such an answer to be refused, and
// repeats of one value are one length. A field name with whitespace
// before its colon: the parser keeps "Transfer-Encoding : chunked" as a
// field of another name and passes it on, where a lenient proxy may
// frame the body by it (RFC 9112 5.1).
func ambiguousHead(head []byte) bool {
	// The status line (after the empty lines the parser skips) may hold
	// anything in its reason phrase.
	head = bytes.TrimLeft(head, "\r\n")
	if i := bytes.IndexByte(head, '\n'); i >= 0 {
		head = head[i+1:]
	} else {
		head = nil
	}
	var first []byte
	for len(head) > 0 {
		line := head
		if i := bytes.IndexByte(head, '\n'); i >= 0 {
			line, head = head[:i], head[i+1:]
		} else {
			head = nil
		}
		if i := bytes.IndexByte(line, ':'); i > 0 && line[0] != ' ' && line[0] != '\t' && bytes.IndexByte(line[:i], ' ') >= 0 {
			return true
		}
		const name = "Content-Length"
		if len(line) <= len(name) || line[len(name)] != ':' || line[0]|0x20 != 'c' || !bytes.EqualFold(line[:len(name)], []byte(name)) {
			continue
		}
		v := bytes.TrimSpace(line[len(name)+1:])
		if first != nil && !bytes.Equal(v, first) {
			return true
		}
		first = v
	}
	return false
}

// hopHeaders are connection-level; they never cross the proxy.
var hopHeaders = []string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

// fixHeader makes the instance's response head the client's: hop-by-hop
// headers go, and so do a Spry-Cold-Start and a Spry-Error of the
// function's own (only the router says what was a cold start, and which
// answers are the platform's errors: the runtime's own, a handler that
// threw or a module that did not load, carry the instance's error mark,
// which never goes on); the request id and cold start come. It reports
// whether the instance will close the connection.
func (rt *Router) fixHeader(h *fasthttp.ResponseHeader, inv *invocation) (upClose bool) {
	// The status line gets the standard reason phrase for its code, not
	// the instance's: Deno and Node write different ones (Node a
	// function's statusText), and any bytes a function wrote there (a
	// bare CR) would reach the client.
	h.SetStatusMessage(nil)
	upClose = h.ConnectionClose()
	h.ResetConnectionClose()
	if h.StatusCode() == fasthttp.StatusNoContent {
		// A 204 has no body: a length on it would have a proxy in front
		// read the start of the next response as its body.
		h.Del(fasthttp.HeaderContentLength)
	}
	if h.StatusCode() == fasthttp.StatusResetContent && h.ContentLength() == -2 {
		// A 205 has no body either (RFC 9110 15.3.6), but Deno sends it
		// with no length and keeps the connection: read to its end, the
		// body would end only at the timeout. It is empty, and the
		// connection is not used again.
		h.SetContentLength(0)
		upClose = true
	}
	// One look for hop-by-hop headers first: responses rarely carry any,
	// and deleting each by name costs more than the look.
	hop := false
	for k := range h.All() {
		switch string(k) {
		case "Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
			"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade", "Spry-Cold-Start", "Spry-Error",
			backend.ErrorMarkHeader:
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
		h.Del("Spry-Cold-Start")
		if !runtimeError(h, inv) {
			h.Del("Spry-Error")
		}
		h.Del(backend.ErrorMarkHeader)
	}
	h.Set("Spry-Request-Id", inv.reqID)
	rt.markCold(h, inv)
	return upClose
}

// runtimeError says whether the answer in h is the instance runtime's own
// error, marked with the instance's error mark: a platform's answer,
// whose Spry-Error stays.
func runtimeError(h *fasthttp.ResponseHeader, inv *invocation) bool {
	if inv.lease == nil {
		return false
	}
	mark := inv.lease.Instance().ErrorMark
	return mark != "" && len(h.Peek("Spry-Error")) > 0 &&
		subtle.ConstantTimeCompare(h.Peek(backend.ErrorMarkHeader), []byte(mark)) == 1
}

// skipRequestHeader says whether a client header (k: v) stays behind:
// hop-by-hop ones (including those the client's Connection names, but
// never Host, which the function contract promises), framing (set anew),
// those the router sets itself, and an Authorization that carries a
// Spry token. A private function's caller's is taken out before (admit);
// a public function gets none either, whoever sent it: spry invoke sends
// the caller's token to a function the API said was private, which its
// owner may have made public since, and the function would have read an
// admin's token.
func skipRequestHeader(k, v, connection []byte) bool {
	switch string(k) {
	case "Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
		"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
		"Content-Length", "Expect", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "Spry-Request-Id":
		return true
	case "Host":
		return false
	case "Authorization":
		if auth.IsSpryBearer(v) {
			return true
		}
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
	bufp := headPool.Get().(*[]byte)
	ip := ctx.RemoteIP().String()
	head := appendRequestHead((*bufp)[:0], rh, inv, ip, ctx.IsTLS(), rt.trusts(ip))
	bw.Write(head)
	*bufp = head
	headPool.Put(bufp)
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
		if err := rt.copyBody(bw, clientBody{httpserve.BodyStream(ctx), &inv.readingBody}, int64(cl), false); err != nil {
			return err
		}
	case cl == -1:
		bw.WriteString("Transfer-Encoding: chunked\r\n\r\n")
		if err := rt.copyBody(bw, clientBody{httpserve.BodyStream(ctx), &inv.readingBody}, -1, true); err != nil {
			return err
		}
	default:
		if zeroLength(rh) {
			bw.WriteString("Content-Length: 0\r\n")
		}
		_, err := bw.WriteString("\r\n")
		return err
	}
	inv.bodyPending = false
	return nil
}

// zeroLength says whether a request without a body says so with
// "Content-Length: 0" (methods that usually carry one).
func zeroLength(rh *fasthttp.RequestHeader) bool {
	switch string(rh.Method()) {
	case fasthttp.MethodPost, fasthttp.MethodPut, fasthttp.MethodPatch:
		return true
	}
	return false
}

// methodString is m as a string, without allocating for the standard
// methods (every request's invocation keeps its method).
func methodString(m []byte) string {
	for _, s := range standardMethods {
		if string(m) == s {
			return s
		}
	}
	return string(m)
}

var standardMethods = [...]string{fasthttp.MethodGet, fasthttp.MethodPost, fasthttp.MethodHead, fasthttp.MethodPut,
	fasthttp.MethodPatch, fasthttp.MethodDelete, fasthttp.MethodOptions}

var headPool = sync.Pool{New: func() any { b := make([]byte, 0, 4<<10); return &b }}

// appendRequestHead appends the head of the request the instance gets,
// all but its framing (Content-Length or Transfer-Encoding) and the blank
// line: the function's own path and query, the client's method and
// headers, and forwarding headers. A trusted peer's (a proxy's) Forwarded
// is kept, anyone else's dropped; its X-Forwarded-For is kept, with
// the peer's address after it, and its X-Forwarded-Proto and -Host stand
// when they are well formed; anyone else's are replaced, as Traefik and
// Envoy do by default: what the function is told of the client is what
// the router saw, or what a proxy it trusts saw.
func appendRequestHead(dst []byte, rh *fasthttp.RequestHeader, inv *invocation, remoteIP string, tls, trusted bool) []byte {
	dst = append(dst, rh.Method()...)
	dst = append(dst, ' ')
	dst = appendTarget(dst, inv.rest)
	if inv.query != "" {
		dst = append(dst, '?')
		dst = appendTarget(dst, inv.query)
	}
	dst = append(dst, " HTTP/1.1\r\n"...)
	connection := connectionOptions(rh)
	xff := false
	for k, v := range rh.All() {
		xff = xff || string(k) == "X-Forwarded-For"
		// RFC 7239's Forwarded says what the X-Forwarded fields say, and
		// is believed as far as they are: a client's own is dropped.
		if skipRequestHeader(k, v, connection) || (!trusted && string(k) == "Forwarded") {
			continue
		}
		dst = append(dst, k...)
		dst = append(dst, ": "...)
		dst = append(dst, v...)
		dst = append(dst, "\r\n"...)
	}
	dst = append(dst, "X-Forwarded-For: "...)
	if xff && trusted {
		first := true
		for k, v := range rh.All() {
			if string(k) == "X-Forwarded-For" {
				if !first {
					dst = append(dst, ", "...)
				}
				dst = append(dst, v...)
				first = false
			}
		}
		dst = append(dst, ", "...)
	}
	dst = append(dst, remoteIP...)
	host, proto := rh.Host(), []byte(nil)
	if trusted {
		if h := rh.Peek("X-Forwarded-Host"); httpserve.ValidHost(h) {
			host = h
		}
		if p := rh.Peek("X-Forwarded-Proto"); httpserve.ForwardedProto(p) {
			proto = p
		}
	}
	dst = append(dst, "\r\nX-Forwarded-Host: "...)
	dst = append(dst, host...)
	switch {
	case proto != nil:
		dst = append(dst, "\r\nX-Forwarded-Proto: "...)
		dst = append(dst, proto...)
	case tls:
		dst = append(dst, "\r\nX-Forwarded-Proto: https"...)
	default:
		dst = append(dst, "\r\nX-Forwarded-Proto: http"...)
	}
	dst = append(dst, "\r\nSpry-Request-Id: "...)
	dst = append(dst, inv.reqID...)
	return append(dst, "\r\n"...)
}

// appendTarget appends s, a part of the request target, with its bytes
// past ASCII (raw UTF-8, which validTarget let through) percent-encoded:
// Node's HTTP parser refuses them with a bare 400, and the URL a function
// reads (new URL(req.url)) encodes them so anyway, on Deno as on Node.
func appendTarget(dst []byte, s string) []byte {
	const hex = "0123456789ABCDEF"
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= 0x80 {
			dst = append(dst, s[:i]...)
			for ; i < len(s); i++ {
				if c = s[i]; c < 0x80 {
					dst = append(dst, c)
				} else {
					dst = append(dst, '%', hex[c>>4], hex[c&15])
				}
			}
			return dst
		}
	}
	return append(dst, s...)
}

// connectionOptions is what the request's Connection fields list, all
// of them (RFC 9110 7.6.1: the fields they name stay behind too).
// fasthttp's Peek gives the first field only, and just "close" once the
// connection is to close.
func connectionOptions(rh *fasthttp.RequestHeader) []byte {
	if !rh.ConnectionClose() {
		switch all := rh.PeekAll("Connection"); len(all) {
		case 0:
			return nil
		case 1:
			return all[0]
		}
	}
	return joinConnectionFields(rh)
}

// joinConnectionFields joins the values of every Connection field of rh
// (rare: a closing request, or one with several such fields).
func joinConnectionFields(rh *fasthttp.RequestHeader) []byte {
	var opts []byte
	for k, v := range rh.All() {
		if string(k) == "Connection" {
			opts = append(append(opts, v...), ',')
		}
	}
	return opts
}

// copyBody copies the client's body: n bytes, or (n < 0) until it ends,
// re-chunked, up to the body limit. A failure of the client's side is a
// *clientBodyError (or errTooLarge).
func (rt *Router) copyBody(bw *bufio.Writer, body clientBody, n int64, chunked bool) error {
	if body.r == nil {
		return &clientBodyError{io.ErrUnexpectedEOF}
	}
	bufp := copyPool.Get().(*[]byte)
	defer copyPool.Put(bufp)
	buf := *bufp
	r := io.Reader(body)
	if !chunked {
		r = io.LimitReader(body, n)
	}
	var total int64
	for {
		m, err := r.Read(buf)
		if m > 0 {
			if total += int64(m); chunked && total > rt.cfg.MaxBodyBytes {
				return errTooLarge
			}
			werr := writePiece(bw, buf[:m], chunked)
			// A short read is all the client has sent for now: pass it
			// on, so a function that reads the body as it comes (a
			// stream of messages, a full-duplex echo) gets each piece
			// when the client sends it, not when more fills the buffer.
			if werr == nil && m < len(buf) {
				werr = bw.Flush()
			}
			if werr != nil {
				return werr
			}
		}
		switch {
		case err == io.EOF && chunked:
			_, err = bw.WriteString("0\r\n\r\n")
			return err
		case err == io.EOF && total < n:
			return &clientBodyError{io.ErrUnexpectedEOF}
		case err == io.EOF:
			return nil
		case err != nil:
			return err
		}
	}
}

// writePiece writes p as it is, or as one chunk.
func writePiece(bw *bufio.Writer, p []byte, chunked bool) error {
	if !chunked {
		_, err := bw.Write(p)
		return err
	}
	bw.WriteString(strconv.FormatInt(int64(len(p)), 16))
	bw.WriteString("\r\n")
	bw.Write(p)
	_, err := bw.WriteString("\r\n")
	return err
}

// clientBodyError is a failure reading the client's body, as against
// writing to the instance.
type clientBodyError struct{ err error }

func (e *clientBodyError) Error() string { return "reading the request body: " + e.err.Error() }
func (e *clientBodyError) Unwrap() error { return e.err }

// clientBody marks the client's read errors, and while it reads, that
// the sender waits on the client.
type clientBody struct {
	r       io.Reader
	reading *atomic.Bool
}

func (b clientBody) Read(p []byte) (int, error) {
	b.reading.Store(true)
	n, err := b.r.Read(p)
	b.reading.Store(false)
	if err != nil && err != io.EOF {
		err = &clientBodyError{err}
	}
	return n, err
}

// malformedBody says whether a failure reading the client's body is in
// the bytes it sent (a bad chunk size or trailer, which fasthttp reports
// as errors of several kinds) rather than in the connection (a reset, a
// timeout, an early end) or the size limit.
func malformedBody(err error) bool {
	var ne net.Error
	var errno syscall.Errno
	return !errors.As(err, &ne) && !errors.As(err, &errno) && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) &&
		!errors.Is(err, net.ErrClosed) && !errors.Is(err, errTooLarge) && !isTimeout(err)
}

func clientSide(err error) bool {
	var ce *clientBodyError
	return errors.As(err, &ce) || errors.Is(err, errTooLarge)
}

// bodySender sends a request with a body to the instance on a goroutine
// of its own while forward reads the answer: a function may answer before
// it has read the whole body (refusing an upload, say), and must not wait
// on a router that sends all of the body first. forward always stops it
// (stop) before it lets go of the connection or the request.
type bodySender struct {
	done chan struct{}
	err  error
	// clientFailed: err is the client's failure (not one stop caused),
	// which ended the exchange.
	clientFailed bool
	stopped      atomic.Bool
	c            *upConn
	ctx          *fasthttp.RequestCtx
	inv          *invocation
	// finished is set, under mu, as the sending ends: a late hang-up
	// (sendingGoner) closes the instance's connection only before, while
	// it is this request's alone.
	mu       sync.Mutex
	finished bool
}

func (rt *Router) sendRequest(ctx *fasthttp.RequestCtx, inv *invocation, c *upConn) *bodySender {
	s := &bodySender{done: make(chan struct{}), c: c, ctx: ctx, inv: inv}
	go func() {
		defer func() {
			s.mu.Lock()
			s.finished = true
			s.mu.Unlock()
			close(s.done)
		}()
		// While the body goes, the client's connection cannot be read for
		// a hang-up (it holds the body), and a write to an instance that
		// does not read the body blocks: watch without reading.
		hc, _ := httpserve.ConnOf(ctx.Conn())
		if hc != nil {
			hc.AwaitHangUp(&httpserve.Wait{}, inv.start, sendingGoner{s})
		}
		err := rt.writeRequest(c.bw, ctx, inv, false)
		if err == nil {
			err = c.bw.Flush()
		}
		if hc != nil {
			hc.EndWait()
		}
		s.err = err
		switch {
		case err == nil:
			// The body is read now: the connection is free to watch.
			inv.watchClient(ctx)
		case clientSide(err) && !s.stopped.Load():
			// The exchange cannot go on: closing ends the wait for an
			// answer and tells the function its request was aborted.
			s.clientFailed = true
			c.conn.Close()
		}
	}()
	return s
}

// sendingGoner is the hang-up watch's Goner while the body is sent. A
// sender blocked writing to an instance that does not read is freed by
// closing the instance's connection; one reading the client needs
// nothing: its read returns at once with what ended the connection, and
// tells a body cut by a clean close (400: the client may still read the
// answer) from a reset, which closing first would hide. Between two
// reads the sender may be passing on what it read, or blocked: it gets
// hangUpGrace to come back to reading before it is taken for blocked.
type sendingGoner struct{ s *bodySender }

// hangUpGrace is how long a hang-up seen between two reads of the body
// waits for the sender's next read.
const hangUpGrace = 50 * time.Millisecond

func (g sendingGoner) ClientGone() {
	inv := g.s.inv
	if inv.readingBody.Load() {
		inv.gone.Store(true)
		return
	}
	go func() {
		t := time.NewTimer(hangUpGrace)
		defer t.Stop()
		select {
		case <-g.s.done:
			return
		case <-t.C:
		}
		g.s.mu.Lock()
		defer g.s.mu.Unlock()
		switch {
		case g.s.finished:
		case inv.readingBody.Load():
			inv.gone.Store(true)
		default:
			inv.ClientGone()
		}
	}()
}

// senderGrace is how long an answer waits for the body's sending to end
// before it is taken as an early one.
const senderGrace = 20 * time.Millisecond

// wait waits up to d for the sending to end; it reports whether the
// sending still runs.
func (s *bodySender) wait(d time.Duration) (running bool) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-s.done:
		return false
	case <-t.C:
		return true
	}
}

func (s *bodySender) running() bool {
	select {
	case <-s.done:
		return false
	default:
		return true
	}
}

// stop ends the sending if it still goes and waits for it; it reports
// whether the whole request was sent. Otherwise neither connection can
// carry another request.
func (s *bodySender) stop() (sent bool) {
	if s.running() {
		s.stopped.Store(true)
		// Deadlines in the past end a blocked write to the instance or
		// read from the client at once.
		now := time.Now()
		_ = s.c.conn.SetWriteDeadline(now)
		_ = s.ctx.Conn().SetReadDeadline(now)
		<-s.done
	}
	if s.err != nil {
		s.inv.bodyPending = true
		return false
	}
	// Sent whole, perhaps just as it was stopped: the deadlines left in
	// the past are replaced before the next use of either connection (the
	// server sets its own before it reads the next request), so a request
	// pipelined behind this one is still served.
	return true
}

// failed stops the sending after the answer's head could not be read,
// and says which failure to report: the client's (a body too large or
// cut short) when it caused the other, and a slow client's when the time
// ran out while the body was still coming (the function was waiting for
// it, not stuck).
func (s *bodySender) failed(headErr error) error {
	// Seen before stop, which ends the sender's read too.
	waiting := s.inv.readingBody.Load()
	s.stop()
	// A stop ends the sender with a timeout, never with the client's
	// other failures (a body cut short, too large, or reset): those are
	// the client's though stop came first (a hang-up's watch that closed
	// the instance's connection, say).
	if s.clientFailed || clientSide(s.err) && !isTimeout(s.err) {
		return s.err
	}
	// The client's read deadline is the head's: when both end at once,
	// the sender's timeout can come after stop was begun (so it is not
	// taken as the client's failure above) and after waiting was read.
	if isTimeout(headErr) && (waiting || clientSide(s.err) && isTimeout(s.err)) {
		return &clientBodyError{headErr}
	}
	return headErr
}

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
// own; if the instance switches protocols within the function's time, the
// client's connection is spliced to it until either side closes or
// neither sends anything for Config.UpgradeIdleTimeout. The lease is held
// meanwhile: an open WebSocket counts as a request in flight, so its
// instance is neither stopped as idle nor throttled.
func (rt *Router) upgrade(ctx *fasthttp.RequestCtx, inv *invocation) (streaming bool, err error) {
	inst := inv.lease.Instance()
	if !time.Now().Before(inv.deadline) {
		return false, errors.Join(errUndelivered, os.ErrDeadlineExceeded)
	}
	c, err := rt.dial(inst, inv.deadline)
	if err != nil {
		return false, errors.Join(errUndelivered, err)
	}
	_ = c.conn.SetDeadline(inv.deadline)
	h := &ctx.Response.Header
	if err = rt.writeRequest(c.bw, ctx, inv, true); err == nil {
		if err = c.bw.Flush(); err == nil {
			err = readAnswerHead(ctx, inv, c.br, true)
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
	h.Del("Spry-Cold-Start")
	h.Del("Spry-Error")
	h.Del(backend.ErrorMarkHeader)
	rt.markCold(h, inv)
	head := h.AppendBytes(nil)
	// The lease and the instance's connection are given back when the
	// splice ends, or when the server closes the client's connection
	// without running the handler at all (OnClose). Whichever comes
	// first owns the cleanup: the handler's own closes run the hook too,
	// and must not free what its copies still read.
	const (
		pending = iota
		spliced
		dropped
	)
	var state atomic.Int32
	rt.upgrades.add()
	end := func() {
		c.close()
		inv.finish(fasthttp.StatusSwitchingProtocols)
		rt.upgrades.done()
	}
	if hc, ok := httpserve.ConnOf(ctx.Conn()); ok {
		hc.OnClose(func() {
			if state.CompareAndSwap(pending, dropped) {
				end()
			}
		})
	}
	ctx.HijackSetNoResponse(true)
	ctx.Hijack(func(client net.Conn) {
		if !state.CompareAndSwap(pending, spliced) {
			client.Close()
			return
		}
		defer end()
		// The server keeps hijacked connections (KeepHijackedConns): the
		// handler closes them.
		defer client.Close()
		if inv.caller != nil {
			stop, ok := rt.watchCaller(inv.caller, c.conn)
			if !ok {
				return
			}
			defer stop()
		}
		_ = client.SetDeadline(inv.deadline)
		if _, err := client.Write(head); err != nil {
			return
		}
		// The function's timeout bounded the request up to its 101; an
		// open WebSocket may last for hours, and is ended when neither
		// side has sent anything for the idle timeout instead.
		_ = client.SetDeadline(time.Time{})
		_ = c.conn.SetDeadline(time.Time{})
		splice(client, c.conn, c.br, rt.cfg.UpgradeIdleTimeout)
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
