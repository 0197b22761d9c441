package router

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	neturl "net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spry-run/spry/internal/backend"
)

// The hot path. httputil.ReverseProxy with http.Transport costs two
// goroutines, several channel handoffs and a header clone per request,
// which on two cores is most of the proxy's CPU. Here each request uses
// the serving goroutine alone: it takes a kept-alive connection to the
// instance from a small per-instance pool, writes the request with
// net/http's own serializer, parses the response with http.ReadResponse
// and copies it back. Upgrades (WebSockets) still go through
// ReverseProxy, which knows how to splice them.

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
		c.conn.Close()
		p.drop(inst.ID)
		return
	default:
	}
	p.mu.Lock()
	if len(p.idle[inst.ID]) >= maxIdlePerInstance {
		p.mu.Unlock()
		c.conn.Close()
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
		c.conn.Close()
	}
}

var (
	readerPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 16<<10) }}
	writerPool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 16<<10) }}
	copyPool   = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}
)

func (rt *Router) dial(ctx context.Context, inst *backend.Instance) (*upConn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, inst.Network, inst.Address)
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

// hopHeaders are connection-level; they never cross the proxy.
var hopHeaders = []string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

func removeHop(h http.Header) {
	if c := h["Connection"]; len(c) > 0 {
		for _, v := range c {
			for _, f := range strings.Split(v, ",") {
				if f = strings.TrimSpace(f); f != "" {
					delete(h, http.CanonicalHeaderKey(f))
				}
			}
		}
	}
	for _, k := range hopHeaders {
		delete(h, k)
	}
}

// errUndelivered marks a failure before the request reached the instance:
// safe to send again.
var errUndelivered = errors.New("request not delivered")

// forward sends r to the leased instance and copies the answer to w. It
// returns an error only if nothing was written to w yet; an error wrapping
// errUndelivered means the request may be sent elsewhere.
func (rt *Router) forward(ctx context.Context, w http.ResponseWriter, r *http.Request, inv *invocation) error {
	inst := inv.lease.Instance()
	out := rt.outgoing(r, inv)
	deadline, _ := ctx.Deadline()

	var resp *http.Response
	var c *upConn
	for attempt := 0; ; attempt++ {
		reused := true
		if c = rt.pool.get(inst); c == nil {
			reused = false
			var err error
			if c, err = rt.dial(ctx, inst); err != nil {
				return errors.Join(errUndelivered, err)
			}
		}
		var err error
		resp, err = rt.roundTrip(ctx, c, out, deadline)
		if err == nil {
			break
		}
		c.close()
		// A kept-alive connection the instance had already closed fails
		// before any answer; with no body sent, trying a fresh connection
		// cannot replay anything.
		if reused && attempt == 0 && out.Body == nil && !errors.Is(err, os.ErrDeadlineExceeded) && ctx.Err() == nil {
			continue
		}
		return err
	}

	h := w.Header()
	for k, vv := range resp.Header {
		h[k] = vv
	}
	removeHop(h)
	h.Set("Spry-Request-Id", inv.reqID)
	rt.markCold(h, inv)
	w.WriteHeader(resp.StatusCode)

	err := copyBody(w, resp, c.conn)
	if err == nil && !resp.Close {
		c.conn.SetDeadline(time.Time{})
		rt.pool.put(inst, c)
	} else {
		c.close()
	}
	if err != nil && errors.Is(ctx.Err(), context.DeadlineExceeded) {
		// The function's time ran out mid-response: it may be stuck. (A
		// client that went away also ends the copy, but says nothing
		// about the function.)
		inv.lease.Kill(backend.ExitTimeout)
	}
	// The status is written; errors copying the body can only end the
	// response early (the client sees it cut short).
	return nil
}

// outgoing is the request the instance gets: the function's own path and
// query, the client's method, headers and body, plus forwarding headers.
// It reuses r's header map: the handler owns r.
func (rt *Router) outgoing(r *http.Request, inv *invocation) *http.Request {
	h := r.Header
	removeHop(h)
	delete(h, "Expect")
	if ip, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		if prior := h["X-Forwarded-For"]; len(prior) > 0 {
			ip = strings.Join(prior, ", ") + ", " + ip
		}
		h["X-Forwarded-For"] = []string{ip}
	}
	h["X-Forwarded-Host"] = []string{r.Host}
	proto := "http"
	if r.TLS != nil {
		proto = "https"
	}
	h["X-Forwarded-Proto"] = []string{proto}
	h["Spry-Request-Id"] = []string{inv.reqID}
	if _, ok := h["User-Agent"]; !ok {
		// Request.Write would add Go's own.
		h["User-Agent"] = []string{""}
	}
	out := &http.Request{
		Method:        r.Method,
		URL:           target{path: inv.rest, query: inv.query}.url(),
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        h,
		Host:          r.Host,
		ContentLength: r.ContentLength,
	}
	if r.ContentLength != 0 {
		out.Body = r.Body
	}
	return out
}

// roundTrip writes out on c and reads the response head.
func (rt *Router) roundTrip(ctx context.Context, c *upConn, out *http.Request, deadline time.Time) (*http.Response, error) {
	if !deadline.IsZero() {
		c.conn.SetDeadline(deadline)
	}
	// A client that goes away ends the exchange at once.
	stop := context.AfterFunc(ctx, func() { c.conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if err := out.Write(c.bw); err != nil {
		return nil, err
	}
	if err := c.bw.Flush(); err != nil {
		return nil, err
	}
	for {
		resp, err := http.ReadResponse(c.br, out)
		if err != nil {
			return nil, err
		}
		// Informational answers (103 Early Hints) are not forwarded.
		if resp.StatusCode >= 100 && resp.StatusCode < 200 && resp.StatusCode != http.StatusSwitchingProtocols {
			continue
		}
		return resp, nil
	}
}

// copyBody copies the response body, flushing at once when the length is
// unknown (a stream, such as server-sent events) so it reaches the client
// as it is produced.
func copyBody(w http.ResponseWriter, resp *http.Response, conn net.Conn) error {
	defer resp.Body.Close()
	bufp := copyPool.Get().(*[]byte)
	defer copyPool.Put(bufp)
	buf := *bufp
	stream := resp.ContentLength < 0 || strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream")
	if !stream {
		_, err := io.CopyBuffer(writerOnly{w}, resp.Body, buf)
		return err
	}
	rc := http.NewResponseController(w)
	for {
		n, err := resp.Body.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return werr
			}
			if ferr := rc.Flush(); ferr != nil {
				return ferr
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// writerOnly hides ReadFrom, so io.CopyBuffer uses the pooled buffer.
type writerOnly struct{ io.Writer }

// target builds the outgoing URL without parsing one.
type target struct{ path, query string }

func (u target) url() *neturl.URL {
	out := &neturl.URL{Path: u.path, RawQuery: u.query}
	if p, err := neturl.PathUnescape(u.path); err == nil {
		out.Path, out.RawPath = p, u.path
	}
	return out
}

func (rt *Router) markCold(h http.Header, inv *invocation) {
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
