// Package router serves /fn/<owner>/<name>/<rest>: it resolves the
// function's live version, leases an instance from the activator (which
// may cold start one), and proxies the request to it over its Unix socket
// with keep-alive connections. The function sees the request with path
// /<rest> and the original query, method, headers and streamed body.
package router

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/spry-run/spry/internal/activator"
	"github.com/spry-run/spry/internal/backend"
	"github.com/spry-run/spry/internal/errdefs"
)

// Resolver finds a function's live version.
type Resolver interface {
	// Resolve picks the version for one request: by tag (a name or a
	// version number) if tag is set, else by the function's traffic split.
	Resolve(ctx context.Context, owner, name, tag string) (*backend.Spec, error)
	Invoked(spec *backend.Spec)
}

// Leaser leases instances.
type Leaser interface {
	Acquire(ctx context.Context, spec *backend.Spec) (*activator.Lease, error)
}

// Prefix is where functions are served.
const Prefix = "/fn/"

// AccessLogger records one line per invocation.
type AccessLogger interface {
	Access(a Access)
}

// Access describes one finished invocation.
type Access struct {
	Spec      *backend.Spec
	Instance  string
	RequestID string
	Method    string
	Path      string
	Status    int
	Duration  time.Duration
	Cold      bool
}

// Config is the router's setup.
type Config struct {
	// Timeout bounds one invocation, cold start included, for functions
	// that do not set their own.
	Timeout time.Duration
	// MaxBodyBytes bounds a request body (413 beyond it); 0 means 100 MiB.
	MaxBodyBytes int64
	Logger       *slog.Logger
	Access       AccessLogger // optional
	// OnColdStart, if set, is told how long a request that waited for a
	// cold start took to its first response byte.
	OnColdStart func(spec *backend.Spec, d time.Duration)
}

// Router proxies invocations.
type Router struct {
	cfg      Config
	resolver Resolver
	leaser   Leaser
	proxy    *httputil.ReverseProxy // for protocol upgrades only
	pool     pool
	log      *slog.Logger
}

type ctxKey int

const (
	leaseKey ctxKey = iota
)

// New returns a Router.
func New(res Resolver, leaser Leaser, cfg Config) *Router {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 60 * time.Second
	}
	if cfg.MaxBodyBytes == 0 {
		cfg.MaxBodyBytes = 100 << 20
	}
	rt := &Router{cfg: cfg, resolver: res, leaser: leaser, log: cfg.Logger, pool: pool{idle: map[string][]*upConn{}}}
	transport := &http.Transport{
		// The URL's host is the instance id, so each instance gets its
		// own pool of keep-alive connections; the dialer finds the
		// instance's socket through the request's lease.
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			st, _ := ctx.Value(leaseKey).(*invocation)
			if st == nil {
				return nil, errors.New("no instance for this request")
			}
			inst := st.lease.Instance()
			var d net.Dialer
			return d.DialContext(ctx, inst.Network, inst.Address)
		},
		MaxIdleConns:        0,
		MaxIdleConnsPerHost: 256,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
		ForceAttemptHTTP2:   false,
	}
	rt.proxy = &httputil.ReverseProxy{
		Rewrite:        rt.rewrite,
		Transport:      transport,
		ModifyResponse: rt.modifyResponse,
		ErrorHandler:   rt.proxyError,
		// FlushInterval 0: the proxy flushes at once for streamed responses
		// (unknown length, server-sent events) and buffers the rest, so a
		// small response costs one write.
	}
	return rt
}

// invocation is the per-request state the proxy callbacks need.
type invocation struct {
	lease *activator.Lease
	start time.Time
	rest  string
	query string
	reqID string
	// retry is set by the error handler when the request can go to another
	// instance; retried marks the second attempt.
	retry, retried bool
}

func (rt *Router) rewrite(pr *httputil.ProxyRequest) {
	inv := pr.In.Context().Value(leaseKey).(*invocation)
	pr.Out.URL = &url.URL{Scheme: "http", Host: inv.lease.Instance().ID, RawPath: inv.rest, RawQuery: inv.query}
	if p, err := url.PathUnescape(inv.rest); err == nil {
		pr.Out.URL.Path = p
	} else {
		pr.Out.URL.Path = inv.rest
		pr.Out.URL.RawPath = ""
	}
	pr.Out.Host = pr.In.Host
	pr.SetXForwarded()
	pr.Out.Header.Set("Spry-Request-Id", inv.reqID)
}

func (rt *Router) modifyResponse(res *http.Response) error {
	inv := res.Request.Context().Value(leaseKey).(*invocation)
	res.Header.Set("Spry-Request-Id", inv.reqID)
	rt.markCold(res.Header, inv)
	return nil
}

func (rt *Router) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	inv := r.Context().Value(leaseKey).(*invocation)
	rt.fail(w, r.Context(), inv, err)
}

// fail answers a request whose instance did not give a response, or marks
// it for a retry elsewhere when it was never delivered.
func (rt *Router) fail(w http.ResponseWriter, ctx context.Context, inv *invocation, err error) {
	inst := inv.lease.Instance()
	// A dial error means the request never reached the instance (it died
	// before reading it): safe to try once more on another instance. Once
	// a request was sent it is never replayed.
	var op *net.OpError
	undelivered := errors.Is(err, errUndelivered) || errors.As(err, &op) && op.Op == "dial"
	if undelivered && !inv.retried && ctx.Err() == nil {
		inv.retry = true
		inv.lease.Kill(backend.ExitCrashed)
		return
	}
	// The client went away (its context was cancelled, which also cuts
	// the instance connection's deadline short): nobody reads an answer,
	// and the function did nothing wrong.
	if errors.Is(ctx.Err(), context.Canceled) {
		w.WriteHeader(499)
		return
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) {
		timeout := inv.lease.Instance().Spec.Timeout
		rt.log.Warn("invocation timed out; killing the instance", "instance", inst.ID, "request_id", inv.reqID, "timeout", timeout)
		inv.lease.Kill(backend.ExitTimeout)
		rt.writeError(w, inv.reqID, errdefs.New(errdefs.ErrTimeout, "the function did not respond within its %s timeout", timeout))
		return
	}
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		rt.writeError(w, inv.reqID, errdefs.New(errdefs.ErrTooLarge, "request body is over the %d byte limit", mbe.Limit))
		return
	}
	if ex, ok := whyEnded(inst); ok {
		rt.writeError(w, inv.reqID, errdefs.New(errdefs.ErrFunctionFailed, "the function's instance ended while handling the request: %s", ex.Detail))
		return
	}
	rt.log.Warn("proxy error", "instance", inst.ID, "request_id", inv.reqID, "err", err)
	rt.writeError(w, inv.reqID, errdefs.New(errdefs.ErrBadGateway, "the function's instance could not be reached"))
}

// whyEnded tells the caller why a failed instance failed (out of memory, a
// crash). The backend may know at once; otherwise its reaper learns a
// moment later, so wait briefly.
func whyEnded(inst *backend.Instance) (backend.Exit, bool) {
	if ex, ok := inst.Diagnose(); ok {
		return ex, true
	}
	select {
	case <-inst.Done():
	case <-time.After(200 * time.Millisecond):
	}
	return inst.Diagnose()
}

func (rt *Router) writeError(w http.ResponseWriter, reqID string, err error) {
	if reqID != "" {
		w.Header().Set("Spry-Request-Id", reqID)
	}
	errdefs.WriteHTTP(w, err)
}

// ServeHTTP handles /fn/... requests.
func (rt *Router) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	reqID := newRequestID()
	owner, name, rest, err := SplitPath(r.URL.EscapedPath())
	if err != nil {
		rt.writeError(w, reqID, err)
		return
	}
	if r.ContentLength > rt.cfg.MaxBodyBytes {
		rt.writeError(w, reqID, errdefs.New(errdefs.ErrTooLarge, "request body is over the %d byte limit", rt.cfg.MaxBodyBytes))
		return
	}
	// The transport closes the body on a failed attempt; keep it open so
	// an undelivered request can be retried (the server closes it after
	// the handler anyway).
	r.Body = holdBody{http.MaxBytesReader(w, r.Body, rt.cfg.MaxBodyBytes)}
	spec, err := rt.resolve(r.Context(), owner, name)
	if err != nil {
		rt.writeError(w, reqID, err)
		return
	}
	// One timeout covers the whole invocation, cold start included.
	timeout := spec.Timeout
	if timeout <= 0 {
		timeout = rt.cfg.Timeout
	}
	ctx, cancel := context.WithDeadline(r.Context(), start.Add(timeout))
	defer cancel()
	lease, err := rt.acquire(ctx, owner, name, spec)
	if err != nil {
		rt.log.Warn("no instance", "owner", owner, "function", name, "request_id", reqID, "err", err)
		if errors.Is(err, errdefs.ErrUnavailable) {
			w.Header().Set("Retry-After", "1")
		}
		rt.writeError(w, reqID, err)
		rt.finished(spec, "", reqID, r, errdefs.HTTPStatus(err), start, false)
		return
	}
	rt.resolver.Invoked(spec)
	inv := &invocation{lease: lease, start: start, rest: rest, query: r.URL.RawQuery, reqID: reqID}
	sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
	send := func() {
		if r.Header.Get("Upgrade") != "" {
			// Protocol upgrades (WebSockets) are spliced by ReverseProxy.
			rt.proxy.ServeHTTP(sw, r.WithContext(context.WithValue(ctx, leaseKey, inv)))
			return
		}
		if err := rt.forward(ctx, sw, r, inv); err != nil {
			rt.fail(sw, ctx, inv, err)
		}
	}
	send()
	if inv.retry {
		lease.Release()
		lease, err = rt.acquire(ctx, owner, name, spec)
		if err != nil {
			rt.writeError(sw, reqID, err)
			rt.finished(spec, "", reqID, r, sw.status, start, false)
			return
		}
		inv.lease, inv.retry, inv.retried = lease, false, true
		send()
	}
	lease.Release()
	rt.finished(spec, lease.Instance().ID, reqID, r, sw.status, start, inv.lease.Cold)
}

// acquire leases an instance of spec, resolving again if a deploy
// retired the version in between.
func (rt *Router) acquire(ctx context.Context, owner, name string, spec *backend.Spec) (*activator.Lease, error) {
	lease, err := rt.leaser.Acquire(ctx, spec)
	// Each retirement means a newer version is live, so this makes
	// progress; the bound only guards against a deploy storm.
	for attempt := 0; errors.Is(err, activator.ErrRetired) && attempt < 50 && ctx.Err() == nil; attempt++ {
		if spec, err = rt.resolve(ctx, owner, name); err == nil {
			lease, err = rt.leaser.Acquire(ctx, spec)
		}
	}
	return lease, err
}

// finished reports a finished invocation to the access log and metrics.
func (rt *Router) finished(spec *backend.Spec, instance, reqID string, r *http.Request, status int, start time.Time, cold bool) {
	if rt.cfg.Access == nil {
		return
	}
	path := r.URL.EscapedPath()
	if r.URL.RawQuery != "" {
		path += "?" + r.URL.RawQuery
	}
	rt.cfg.Access.Access(Access{
		Spec: spec, Instance: instance, RequestID: reqID, Method: r.Method, Path: path,
		Status: status, Duration: time.Since(start), Cold: cold,
	})
}

type holdBody struct{ io.ReadCloser }

func (holdBody) Close() error { return nil }

// statusWriter remembers the status written, for the access log.
type statusWriter struct {
	http.ResponseWriter
	status int
	wrote  bool
}

func (s *statusWriter) WriteHeader(code int) {
	if !s.wrote && code >= 200 {
		s.status, s.wrote = code, true
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusWriter) Write(b []byte) (int, error) {
	s.wrote = true
	return s.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the real writer (to flush).
func (s *statusWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// resolve finds the version for a request to owner/name or
// owner/name@tag.
func (rt *Router) resolve(ctx context.Context, owner, name string) (*backend.Spec, error) {
	fn, tag, _ := strings.Cut(name, "@")
	spec, err := rt.resolver.Resolve(ctx, owner, fn, tag)
	if errors.Is(err, errdefs.ErrNotFound) {
		err = errdefs.New(errdefs.ErrNotFound, "function %s/%s not found", owner, name)
	}
	return spec, err
}

// SplitPath splits an escaped request path "/fn/<owner>/<name>[/<rest>]"
// into its parts; rest always starts with "/". Owner and name are checked
// only for shape here (the resolver decides whether they exist).
func SplitPath(p string) (owner, name, rest string, err error) {
	tail, ok := strings.CutPrefix(p, Prefix)
	if !ok {
		return "", "", "", errdefs.New(errdefs.ErrNotFound, "not found")
	}
	owner, tail, _ = strings.Cut(tail, "/")
	name, rest, hasRest := strings.Cut(tail, "/")
	if owner == "" || name == "" {
		return "", "", "", errdefs.New(errdefs.ErrNotFound, "no function at %q: use /fn/<owner>/<name>/", truncate(p))
	}
	rest = "/" + rest
	if !hasRest {
		rest = "/"
	}
	return owner, name, rest, nil
}

func truncate(s string) string {
	if len(s) > 100 {
		return s[:100] + "..."
	}
	return s
}

func newRequestID() string {
	return fmt.Sprintf("%016x", rand.Uint64())
}
