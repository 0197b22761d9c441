// Package router serves /fn/<owner>/<name>/<rest>: it resolves the
// function's live version, leases an instance from the activator (which
// may cold start one), and proxies the request to it over its Unix socket
// with keep-alive connections. The function sees the request with path
// /<rest> and the original query, method, headers and streamed body.
//
// The router is a fasthttp handler (see internal/httpserve for why): it
// works on the server's request and response in place, and a response
// body that is not already in hand streams from the instance after the
// handler returns, so the lease ends when that body does.
package router

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/valyala/fasthttp"

	"github.com/spry-run/spry/internal/activator"
	"github.com/spry-run/spry/internal/auth"
	"github.com/spry-run/spry/internal/backend"
	"github.com/spry-run/spry/internal/errdefs"
	"github.com/spry-run/spry/internal/httpserve"
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

// Tokens checks bearer tokens (auth.Cache: on the request path, it
// answers from memory).
type Tokens interface {
	Authenticate(ctx context.Context, token string) (auth.Principal, error)
	// Cached answers from memory only (a token verified lately), never
	// reading the store.
	Cached(token string) (auth.Principal, bool)
	// Watch calls end once p's token is revoked, its user deleted, or
	// it expires, until stop is called: a private function's WebSocket
	// is closed then, as a log follow is.
	Watch(p auth.Principal, end func()) (stop func())
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
	// that do not set their own. An upgrade's (a WebSocket's) ends at its
	// 101: the upgraded connection is bounded by UpgradeIdleTimeout.
	Timeout time.Duration
	// UpgradeIdleTimeout ends an upgraded connection over which neither
	// side has sent anything for so long; 0 means
	// DefaultUpgradeIdleTimeout.
	UpgradeIdleTimeout time.Duration
	// MaxBodyBytes bounds a request body (413 beyond it); 0 means 100 MiB.
	MaxBodyBytes int64
	Logger       *slog.Logger
	Access       AccessLogger // optional
	// OnColdStart, if set, is told how long a request that waited for a
	// cold start took to its first response byte.
	OnColdStart func(spec *backend.Spec, d time.Duration)
	// Domain, if set, serves each function at a host of its own as
	// well, "<name>.<owner>.<Domain>" (see hosts.go).
	Domain string
	// Tokens checks the tokens of calls to private functions; nil: no
	// call to one is let through.
	Tokens Tokens
	// TrustedProxies are the peers (a TLS proxy in front, say) whose
	// X-Forwarded-For, -Proto and -Host a function is given. Anyone
	// else's are dropped: the function is told the peer's own address,
	// and the scheme and host the router saw, so that no client can
	// pose as another address.
	TrustedProxies httpserve.Proxies
	// Limiter counts the wrong tokens sent to private functions per
	// client (the peer, or with TrustedProxies the client a proxy names);
	// the server shares it with the API, so that neither is a side door
	// for guessing tokens. nil: one of the router's own
	// (auth.FailureBurst, auth.FailureEvery).
	Limiter *auth.FailureLimiter
}

// Router proxies invocations.
type Router struct {
	cfg      Config
	resolver Resolver
	leaser   Leaser
	pool     pool
	log      *slog.Logger
	lane     *Lane  // the event loops in front, if any
	domain   string // Config.Domain, as normalDomain gives it
	upgrades upgrades
}

// trusts says whether the peer at ip (as a string, as the loops keep it)
// is one of cfg.TrustedProxies.
func (rt *Router) trusts(ip string) bool {
	if len(rt.cfg.TrustedProxies) == 0 {
		return false
	}
	a, err := netip.ParseAddr(ip)
	return err == nil && rt.cfg.TrustedProxies.Trusts(a)
}

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
	if cfg.UpgradeIdleTimeout <= 0 {
		cfg.UpgradeIdleTimeout = DefaultUpgradeIdleTimeout
	}
	if cfg.Limiter == nil {
		cfg.Limiter = auth.NewFailureLimiter(auth.FailureEvery, auth.FailureBurst, nil)
	}
	return &Router{cfg: cfg, resolver: res, leaser: leaser, log: cfg.Logger, pool: pool{idle: map[string][]*upConn{}},
		domain: normalDomain(cfg.Domain)}
}

// invocation is one request's state, from the lease to the end of the
// response body.
type invocation struct {
	rt       *Router
	spec     *backend.Spec
	lease    *activator.Lease
	start    time.Time
	deadline time.Time
	method   string
	uri      string // as the client sent it, for the access log
	rest     string // the function's path, escaped
	query    string
	reqID    string
	status   int
	// codings are the answer's transfer codings besides chunked, as the
	// instance sent them (see codings.go).
	codings string
	// bodyPending: the client's body was not read through yet.
	bodyPending bool
	// readingBody: the body's sender waits on the client right now (not
	// on the instance), so a timeout then is the client's slowness.
	readingBody atomic.Bool
	// retry is set by fail when the request can go to another instance;
	// retried marks the second attempt.
	retry, retried bool
	// The client watch (watch.go): gone says the client hung up; up is
	// the instance connection a hang-up closes.
	watched *httpserve.Conn
	wait    httpserve.Wait
	actx    *lazyDeadline
	gone    atomic.Bool
	up      atomic.Pointer[upConn]
	// caller is who a private function's upgrade was let through for,
	// with the token it sent: the upgraded connection is watched
	// (rt.cfg.Tokens.Watch). Nil otherwise.
	caller *admitted
}

// admitted is a private function's caller and its token.
type admitted struct {
	p     auth.Principal
	token string
}

// Handle serves a request Serves says is a function's.
func (rt *Router) Handle(ctx *fasthttp.RequestCtx) {
	rawURI := ctx.Request.Header.RequestURI()
	uri := string(rawURI)
	path, _, _ := strings.Cut(originForm(uri), "?")
	if rt.domain != "" {
		host := requestHost(rawURI, ctx.Request.Header.Host())
		if owner, name, under := rt.hostFunction(host); under {
			switch {
			case owner == "":
				rt.writeError(ctx, newRequestID(), noHostFunction(host, rt.domain))
				httpserve.LeaveBody(ctx)
			case !strings.HasPrefix(path, "/"):
				rt.writeError(ctx, "", errdefs.New(errdefs.ErrInvalidArgument, "malformed request target"))
				ctx.SetConnectionClose()
			default:
				rt.serve(ctx, owner, name, path, uri, false)
			}
			return
		}
	}
	owner, name, rest, err := SplitPath(path)
	if err == nil && climbs(rest) {
		err = errdefs.New(errdefs.ErrInvalidArgument, "the path's dot segments climb out of /fn/<owner>/<name>/")
	}
	if err != nil {
		rt.writeError(ctx, newRequestID(), err)
		httpserve.LeaveBody(ctx)
		return
	}
	rt.serve(ctx, owner, name, rest, uri, false)
}

// ServeFunction serves the request in ctx with function owner/name, as if
// it had come to Prefix+owner/name+rest (rest is the escaped path).
func (rt *Router) ServeFunction(ctx *fasthttp.RequestCtx, owner, name, rest string) {
	rt.serve(ctx, owner, name, rest, string(ctx.Request.Header.RequestURI()), false)
}

// ServeAdmitted is ServeFunction for a request the caller has already
// let through, as it would a private function's: an asynchronous
// invocation, which a token that may deploy the function enqueued. No
// token is asked for.
func (rt *Router) ServeAdmitted(ctx *fasthttp.RequestCtx, owner, name, rest string) {
	rt.serve(ctx, owner, name, rest, string(ctx.Request.Header.RequestURI()), true)
}

// serve serves a function's request; admitted: the caller has checked
// its right to call a private function.
func (rt *Router) serve(ctx *fasthttp.RequestCtx, owner, name, rest, uri string, admitted bool) {
	if string(ctx.Method()) == fasthttp.MethodConnect {
		// CONNECT asks for a tunnel, and its target is a host:port
		// (authority-form, RFC 9112 3.2.3), never a function's path. A
		// function's 2xx to it would have the client, or a proxy in
		// front, take the connection for a tunnel while the router reads
		// what comes next on it as requests. The connection closes: what
		// the client sends after may be the tunnel's bytes.
		rt.writeError(ctx, "", errdefs.New(errdefs.ErrInvalidArgument, "CONNECT is not served: a function is no tunnel"))
		ctx.SetConnectionClose()
		return
	}
	if !validTarget(uri) {
		rt.writeError(ctx, "", errdefs.New(errdefs.ErrInvalidArgument, "malformed request target"))
		ctx.SetConnectionClose()
		return
	}
	if rh := &ctx.Request.Header; len(rh.Host()) == 0 {
		if rh.IsHTTP11() {
			// RFC 9112 §3.2 (nginx answers so too); the instance would.
			rt.writeError(ctx, "", errdefs.New(errdefs.ErrInvalidArgument, "HTTP/1.1 request without Host"))
			ctx.SetConnectionClose()
			return
		}
		// HTTP/1.0 may leave Host out, but the instance, an HTTP/1.1
		// server, needs one: the address the client reached stands in.
		rh.SetHost(ctx.LocalAddr().String())
	}
	if len(uri) > 0 && uri[0] != '/' {
		// An absolute-form target's host is the request's, whatever the
		// Host field says (RFC 9112 §3.2.2): the function sees that one.
		host, ok := targetHost(uri)
		if !ok {
			rt.writeError(ctx, "", errdefs.New(errdefs.ErrInvalidArgument, "malformed host in the request target"))
			ctx.SetConnectionClose()
			return
		}
		ctx.Request.Header.SetHost(host)
	}
	_, query, _ := strings.Cut(uri, "?")
	cl := bodyLength(&ctx.Request.Header)
	retried, arrived := handedOver(ctx)
	if arrived.IsZero() {
		arrived = time.Now()
	}
	inv := &invocation{rt: rt, start: arrived, method: methodString(ctx.Method()), uri: uri, rest: rest, query: query,
		reqID: newRequestID(), bodyPending: cl != 0, retried: retried}
	defer func() {
		// An answer given before the body was read leaves it unread, so
		// the connection cannot carry another request.
		if inv.bodyPending {
			ctx.SetConnectionClose()
		}
	}()
	if int64(cl) > rt.cfg.MaxBodyBytes {
		rt.writeError(ctx, inv.reqID, errdefs.New(errdefs.ErrTooLarge, "request body is over the %d byte limit", rt.cfg.MaxBodyBytes))
		return
	}
	spec, err := rt.resolve(context.Background(), owner, name)
	if err != nil {
		rt.writeError(ctx, inv.reqID, err)
		return
	}
	inv.spec = spec
	// One timeout covers the whole invocation, cold start included.
	timeout := spec.Timeout
	if timeout <= 0 {
		timeout = rt.cfg.Timeout
	}
	inv.deadline = inv.start.Add(timeout)
	if cl != 0 {
		// The client's body is read while the function runs, so it gets
		// the function's time rather than the header timeout.
		_ = ctx.Conn().SetReadDeadline(inv.deadline)
	}
	actx := &lazyDeadline{deadline: inv.deadline}
	defer actx.stop()
	inv.actx = actx
	upgrade := isUpgrade(&ctx.Request.Header)
	if spec.Private && !admitted {
		// Checked before any instance is sought: a refused call starts
		// none.
		caller, err := rt.admit(ctx, actx, spec)
		if err != nil {
			rt.writeError(ctx, inv.reqID, err)
			inv.status = ctx.Response.StatusCode()
			rt.finished(inv, "", false)
			return
		}
		if upgrade {
			inv.caller = caller
		}
	}
	defer inv.endWatch()
	if !upgrade && cl == 0 {
		// A request with a body is watched once the body is read (see
		// forward); an upgraded connection is spliced both ways, so a
		// hang-up ends it anyway.
		inv.watchClient(ctx)
	}
	lease, err := rt.acquireWatched(ctx, inv, owner, name, spec)
	if err != nil {
		rt.noInstance(ctx, inv, err)
		return
	}
	// A deploy between resolving and the lease: the version live now
	// serves, and is the one the request is counted and logged for.
	inv.spec = lease.Instance().Spec
	rt.resolver.Invoked(inv.spec)
	inv.lease = lease
	for {
		var streaming bool
		if upgrade {
			streaming, err = rt.upgrade(ctx, inv)
		} else {
			streaming, err = rt.forward(ctx, inv)
		}
		if err != nil {
			rt.fail(ctx, inv, err)
		}
		if !inv.retry {
			if !streaming {
				inv.finish(ctx.Response.StatusCode())
			}
			if rt.lane != nil && !upgrade && !inv.bodyPending && err == nil {
				rt.lane.takeBack(ctx)
			}
			return
		}
		lease.Release()
		if lease, err = rt.acquireWatched(ctx, inv, owner, name, spec); err != nil {
			rt.noInstance(ctx, inv, err)
			return
		}
		inv.lease, inv.retry, inv.retried = lease, false, true
		inv.spec = lease.Instance().Spec
	}
}

// admit lets a call to private function spec through if it carries a
// token of the function's owner's, or an admin's, whose scopes allow
// invoke (checked within actx, the invocation's time), and takes the
// token out of the request: the function never sees its caller's Spry
// token. Otherwise it says why not: 401 (with WWW-Authenticate, as the
// API's) without a valid token, 403 with one that may not call the
// function, 429 (with Retry-After) to a client over the failure limit.
func (rt *Router) admit(ctx *fasthttp.RequestCtx, actx context.Context, spec *backend.Spec) (*admitted, error) {
	rh := &ctx.Request.Header
	tok, ok := auth.BearerToken(string(rh.Peek(fasthttp.HeaderAuthorization)))
	if !ok || rt.cfg.Tokens == nil {
		ctx.Response.Header.Set("WWW-Authenticate", `Bearer realm="spry"`)
		return nil, errdefs.New(errdefs.ErrUnauthenticated, "%s/%s is private: send Authorization: Bearer <token>, a token of its owner's with scope invoke", spec.Owner, spec.Name)
	}
	// A client over the limit is answered from memory only: a token
	// verified lately goes through (so one guesser behind a NAT or a
	// proxy does not lock out the services calling from there, as the
	// API lets right tokens through), any other is refused without a
	// store read.
	client := auth.ClientKey(rt.client(ctx))
	var p auth.Principal
	var err error
	if ok, wait := rt.cfg.Limiter.Allowed(client); !ok {
		var hit bool
		if p, hit = rt.cfg.Tokens.Cached(tok); !hit {
			retryAfter, err := auth.Refusal(wait)
			ctx.Response.Header.Set("Retry-After", retryAfter)
			return nil, err
		}
	} else if p, err = rt.cfg.Tokens.Authenticate(actx, tok); err != nil {
		// (A cached token's check never looks at actx, so starts no
		// timer.)
		if errors.Is(err, errdefs.ErrUnauthenticated) {
			rt.cfg.Limiter.Failed(client)
			ctx.Response.Header.Set("WWW-Authenticate", `Bearer realm="spry", error="invalid_token"`)
		} else {
			rt.log.Error("cannot check a token", "owner", spec.Owner, "function", spec.Name, "err", err)
			err = errdefs.New(errdefs.ErrUnavailable, "the token cannot be checked now; try again")
		}
		return nil, err
	}
	if !p.CanManage(spec.Owner) {
		return nil, errdefs.New(errdefs.ErrPermissionDenied, "%s/%s is private: only its owner's tokens (or an admin's) may call it", spec.Owner, spec.Name)
	}
	if !p.Allows(auth.ScopeInvoke) {
		return nil, errdefs.New(errdefs.ErrPermissionDenied, "calling a private function needs a token with scope invoke, deploy or all; this token has %s",
			strings.Join(auth.Strings(p.Scopes), ", "))
	}
	rh.Del(fasthttp.HeaderAuthorization)
	return &admitted{p: p, token: tok}, nil
}

// watchCaller has a private function's upgraded connection (to the
// instance, up) closed once the token that opened it stops working, as a log
// follow ends, until stop is called (when the connection has ended); ok
// is false if the token was revoked meanwhile. The token is checked
// again once the watch is in place (from memory, unless it was
// forgotten), so a revocation between the first check and the watch is
// not missed.
func (rt *Router) watchCaller(caller *admitted, up net.Conn) (stop func(), ok bool) {
	// Closing the instance's side ends the splice as the instance's own
	// close would: the client's side is closed after it.
	stop = rt.cfg.Tokens.Watch(caller.p, func() { up.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), recheckTimeout)
	defer cancel()
	if _, err := rt.cfg.Tokens.Authenticate(ctx, caller.token); errors.Is(err, errdefs.ErrUnauthenticated) {
		stop()
		return nil, false
	}
	// (Any other error is the store's, not the token's: the watch stays.)
	return stop, true
}

// recheckTimeout bounds watchCaller's second check of a token, which
// reads the store if the token is no longer remembered.
const recheckTimeout = 5 * time.Second

// client is the address of the request's client: its peer, or, from a
// trusted proxy, the client the proxy names in X-Forwarded-For (what the
// API is told of it too: httpserve.RealClient).
func (rt *Router) client(ctx *fasthttp.RequestCtx) netip.Addr {
	peer, _ := netip.AddrFromSlice(ctx.RemoteIP())
	peer = peer.Unmap()
	if !rt.cfg.TrustedProxies.Trusts(peer) {
		return peer
	}
	var xff []string
	for k, v := range ctx.Request.Header.All() {
		if string(k) == "X-Forwarded-For" {
			xff = append(xff, string(v))
		}
	}
	return rt.cfg.TrustedProxies.Client(peer, xff)
}

// acquireWatched is acquire for a request that may wait in the queue:
// one that watchClient does not watch yet (its connection holds its body,
// or an upgrade's first bytes) is watched without reading meanwhile, so
// that a client that hangs up leaves the queue at once rather than hold
// its place until the timeout and then reach the function.
func (rt *Router) acquireWatched(ctx *fasthttp.RequestCtx, inv *invocation, owner, name string, spec *backend.Spec) (*activator.Lease, error) {
	if c, ok := httpserve.ConnOf(ctx.Conn()); ok && inv.watched == nil {
		c.AwaitHangUp(&httpserve.Wait{}, inv.start, inv)
		defer c.EndWait()
	}
	return rt.acquire(inv.actx, owner, name, spec)
}

// noInstance answers a request that got no instance, and logs it.
func (rt *Router) noInstance(ctx *fasthttp.RequestCtx, inv *invocation, err error) {
	if inv.gone.Load() {
		clientClosed(ctx)
		inv.status = StatusClientClosed
		rt.finished(inv, "", false)
		return
	}
	// A user at their bounds is the user's business (the answer says
	// it): not a WARN per request. Nor is a function that does not
	// load: refused during its backoff, the activator logged the failure
	// once, and a line per request would be thousands (the access log
	// has each).
	level := slog.LevelWarn
	switch {
	case errors.Is(err, errdefs.ErrFunctionFailed):
		level = slog.LevelDebug
	case errors.Is(err, errdefs.ErrRateLimited):
		level = slog.LevelInfo
	}
	rt.log.Log(context.Background(), level, "no instance", "owner", inv.spec.Owner, "function", inv.spec.Name, "request_id", inv.reqID, "err", err)
	if errors.Is(err, errdefs.ErrUnavailable) || errors.Is(err, errdefs.ErrRateLimited) {
		ctx.Response.Header.Set("Retry-After", "1")
	}
	rt.writeError(ctx, inv.reqID, err)
	inv.status = ctx.Response.StatusCode()
	rt.finished(inv, "", false)
}

// lazyDeadline is a context with a deadline whose timer starts only when
// something waits on it: a lease is usually granted at once, without
// looking at the context, and a timer per request is a measurable cost.
type lazyDeadline struct {
	deadline time.Time
	once     sync.Once
	ctx      context.Context
	cancel   context.CancelFunc
}

func (c *lazyDeadline) init() {
	c.once.Do(func() { c.ctx, c.cancel = context.WithDeadline(context.Background(), c.deadline) })
}

func (c *lazyDeadline) Deadline() (time.Time, bool) { return c.deadline, true }
func (c *lazyDeadline) Done() <-chan struct{}       { c.init(); return c.ctx.Done() }
func (c *lazyDeadline) Err() error                  { c.init(); return c.ctx.Err() }
func (c *lazyDeadline) Value(key any) any           { return nil }

// abort ends the context early.
func (c *lazyDeadline) abort() {
	c.init()
	c.cancel()
}

// stop releases the timer, if one was started.
func (c *lazyDeadline) stop() {
	c.once.Do(func() {})
	if c.cancel != nil {
		c.cancel()
	}
}

// handedOver says, for the first request of a connection the loops
// handed over (the one whose bytes the loop had read), whether the loop
// tried it on an instance already (the slow path's attempt is then the
// one retry) and when the loop had it; for any other request, false and
// the zero time. The first is told by the server's count of requests on
// the connection, so a first request that is not a function's (the API,
// /healthz) leaves nothing behind for the next.
func handedOver(ctx *fasthttp.RequestCtx) (retried bool, arrived time.Time) {
	if ctx.ConnRequestNum() != 1 {
		return false, time.Time{}
	}
	hc, ok := ctx.Conn().(*httpserve.Conn)
	if !ok {
		return false, time.Time{}
	}
	pc, ok := hc.Conn.(*prefixConn)
	if !ok {
		return false, time.Time{}
	}
	return pc.retried, pc.arrived
}

// finish ends the invocation: the lease is released and it is logged.
func (inv *invocation) finish(status int) {
	inv.status = status
	inv.lease.Release()
	inv.rt.finished(inv, inv.lease.Instance().ID, inv.lease.Cold)
}

// fail answers a request whose instance did not give a response, or marks
// it for a retry elsewhere when it was never delivered.
func (rt *Router) fail(ctx *fasthttp.RequestCtx, inv *invocation, err error) {
	inst := inv.lease.Instance()
	if clientSide(err) && errors.Is(err, io.ErrUnexpectedEOF) {
		// The client's side ended mid-body; the function saw its request
		// aborted (and the connection closes: its body was not read).
		// First: a client that half-closed after it may still read the
		// answer, though the watch took its end for a hang-up.
		ctx.Response.Reset()
		rt.writeError(ctx, inv.reqID, errdefs.New(errdefs.ErrInvalidArgument, "the request body ended before its end"))
		return
	}
	if clientSide(err) && malformedBody(err) {
		// The client is there but sent a body that is not HTTP (a bad
		// chunk size, say): its fault, and it should hear so.
		ctx.Response.Reset()
		rt.writeError(ctx, inv.reqID, errdefs.New(errdefs.ErrInvalidArgument, "malformed request body: %v", errors.Unwrap(err)))
		ctx.SetConnectionClose()
		return
	}
	if inv.gone.Load() {
		clientClosed(ctx)
		return
	}
	// A dial error means the request never reached the instance (it died
	// before reading it): safe to try once more on another instance. Once
	// a request was sent it is never replayed. The router's own lack of
	// descriptors (or memory) is not the instance's fault: it is kept.
	var op *net.OpError
	undelivered := errors.Is(err, errUndelivered) || errors.As(err, &op) && op.Op == "dial"
	local := httpserve.OutOfResources(err)
	// A listen queue that stayed full until the time was (nearly) up
	// (dial waits for room): the instance is alive but not accepting, its
	// event loop perhaps held. Not a crash, and no time is left to try
	// another: a timeout, whose rules (a probe) tell stuck from busy.
	busy := undelivered && errors.Is(err, syscall.EAGAIN) && !ended(inst)
	if undelivered && !local && !busy && !inv.retried && time.Now().Before(inv.deadline) {
		inv.retry = true
		inv.lease.Kill(backend.ExitCrashed)
		return
	}
	ctx.Response.Reset()
	if local {
		rt.log.Warn("cannot reach the instance", "instance", inst.ID, "request_id", inv.reqID, "err", err)
		ctx.Response.Header.Set("Retry-After", "1")
		rt.writeError(ctx, inv.reqID, errdefs.New(errdefs.ErrUnavailable, "the platform is out of connections; try again"))
		return
	}
	if errors.Is(err, errTooLarge) {
		rt.writeError(ctx, inv.reqID, errdefs.New(errdefs.ErrTooLarge, "request body is over the %d byte limit", rt.cfg.MaxBodyBytes))
		return
	}
	if clientSide(err) && isTimeout(err) {
		// The body had not all come when the time was up: the function
		// was waiting for it, not stuck, so its instance lives on (the
		// request's connection to it is closed). A slow client must not
		// be able to kill an instance other requests share.
		rt.writeError(ctx, inv.reqID, errdefs.New(errdefs.ErrRequestTimeout, "the request body did not arrive within the function's %s timeout", inst.Spec.Timeout))
		ctx.SetConnectionClose()
		return
	}
	if !time.Now().Before(inv.deadline) || isTimeout(err) || busy {
		timeout := inst.Spec.Timeout
		msg := "invocation timed out while the instance loaded the function"
		switch {
		case undelivered && !busy:
			// The wait for an instance took the time: the instance never
			// had the request, so nothing says it is stuck.
			msg = "invocation timed out before it reached an instance"
		case inv.lease.TimedOut():
			msg = "invocation timed out; checking that the instance still answers"
		}
		rt.log.Info(msg, logAttrs(inst, inv, "timeout", timeout)...)
		rt.writeError(ctx, inv.reqID, errdefs.New(errdefs.ErrTimeout, "the function did not respond within its %s timeout", timeout))
		return
	}
	if clientSide(err) {
		// Reading the body failed otherwise (a reset): the client is
		// gone, and the instance is not at fault.
		clientClosed(ctx)
		return
	}
	if errors.Is(err, errBadAnswer) {
		rt.log.Info("malformed response", logAttrs(inst, inv, "err", err)...)
		rt.writeError(ctx, inv.reqID, errdefs.New(errdefs.ErrBadGateway, "the function's instance sent a malformed response"))
		return
	}
	if ex, ok := whyEnded(inst); ok && ex.BeforeLoad {
		// It never handled the request: its function did not load, as
		// the requests that waited in it were told.
		rt.writeError(ctx, inv.reqID, errdefs.New(errdefs.ErrFunctionFailed, "%s", ex.LoadFailure()))
		return
	} else if ok {
		rt.writeError(ctx, inv.reqID, errdefs.New(errdefs.ErrFunctionFailed, "the function's instance ended while handling the request: %s", ex.Detail))
		return
	}
	rt.log.Warn("proxy error", logAttrs(inst, inv, "err", err)...)
	rt.writeError(ctx, inv.reqID, errdefs.New(errdefs.ErrBadGateway, "the function's instance could not be reached"))
}

// logAttrs names inst's function, inst and inv's request in a log line,
// before more.
func logAttrs(inst *backend.Instance, inv *invocation, more ...any) []any {
	return append([]any{"owner", inst.Spec.Owner, "function", inst.Spec.Name, "instance", inst.ID, "request_id", inv.reqID}, more...)
}

// ended says whether inst has ended.
func ended(inst *backend.Instance) bool {
	select {
	case <-inst.Done():
		return true
	default:
		return false
	}
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

func (rt *Router) writeError(ctx *fasthttp.RequestCtx, reqID string, err error) {
	httpserve.WriteError(ctx, err)
	if reqID != "" {
		ctx.Response.Header.Set("Spry-Request-Id", reqID)
	}
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
func (rt *Router) finished(inv *invocation, instance string, cold bool) {
	if rt.cfg.Access == nil {
		return
	}
	rt.cfg.Access.Access(Access{
		Spec: inv.spec, Instance: instance, RequestID: inv.reqID, Method: inv.method, Path: originForm(inv.uri),
		Status: inv.status, Duration: time.Since(inv.start), Cold: cold,
	})
}

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

// validTarget says whether a request target is fit to pass on: fasthttp
// accepts control characters, spaces, broken percent-escapes and bytes
// that are not UTF-8 in it,
// which the instance's parser would refuse on a connection other
// requests share.
func validTarget(uri string) bool {
	high := false
	for i := 0; i < len(uri); i++ {
		switch c := uri[i]; {
		case c <= ' ' || c == 0x7f:
			return false
		case c >= 0x80:
			high = true
		case c == '%':
			if i+2 >= len(uri) || httpserve.Unhex(uri[i+1]) < 0 || httpserve.Unhex(uri[i+2]) < 0 {
				return false
			}
		}
	}
	// Raw UTF-8 passes, percent-encoded on its way to the instance
	// (appendTarget); bytes that are not UTF-8 the instance would refuse
	// with a bare 400.
	return !high || utf8.ValidString(uri)
}

// Routes says whether a request URI is for the router.
func Routes(uri []byte) bool {
	if len(uri) > 0 && uri[0] == '/' {
		return len(uri) >= len(Prefix) && string(uri[:len(Prefix)]) == Prefix
	}
	return strings.HasPrefix(originForm(string(uri)), Prefix)
}

// targetHost is the host[:port] of an absolute request URI
// ("http://h:8080/fn/a/b" is "h:8080"), if it is one a Host may be.
func targetHost(uri string) (string, bool) {
	_, after, ok := strings.Cut(uri, "://")
	if !ok {
		return "", false
	}
	if i := strings.IndexAny(after, "/?#"); i >= 0 {
		after = after[:i]
	}
	return after, after != "" && httpserve.ValidHost([]byte(after))
}

// originForm strips the scheme and host of an absolute request URI
// ("http://h/fn/a/b" is "/fn/a/b"); others are returned as they are.
func originForm(uri string) string {
	if strings.HasPrefix(uri, "/") {
		return uri
	}
	if _, after, ok := strings.Cut(uri, "://"); ok {
		if i := strings.IndexAny(after, "/?"); i >= 0 {
			if after[i] == '?' {
				return "/" + after[i:]
			}
			return after[i:]
		}
		return "/"
	}
	return uri
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
	// ("name@" names no version: not the live one either.)
	if owner == "" || name == "" || strings.HasSuffix(name, "@") {
		return "", "", "", errdefs.New(errdefs.ErrNotFound, "no function at %q: use /fn/<owner>/<name>/", truncate(p))
	}
	rest = "/" + rest
	if !hasRest {
		rest = "/"
	}
	return owner, name, rest, nil
}

// climbs says whether rest, a function's escaped path, has ".." segments
// that climb above its root: "/fn/bob/fn/../../alice/fn" is bob's
// function to the router (it splits the path as it comes), and alice's
// to whatever removes dot segments first (RFC 3986 5.2.4), as nginx does
// before it matches a location and a browser before it sends a URL, so a
// proxy in front that allows or denies by path would decide for one
// function and the router serve another. Such a path is refused rather
// than taken either way. A dot may be escaped (%2e, which nginx decodes
// first), and "%2F" and "\" count as slashes (nginx decodes the one,
// URL parsers of the WHATWG's kind take the other for a slash), empty
// segments not at all (merged, as nginx does): whatever some reader
// takes to climb, climbs. Dot segments within the function's path are
// the function's.
func climbs(rest string) bool {
	if !strings.Contains(rest, "/.") && strings.IndexByte(rest, '%') < 0 && strings.IndexByte(rest, '\\') < 0 {
		return false // (most paths: a dot segment starts "/.")
	}
	rest = escapedSlash.Replace(rest)
	depth := 0
	for seg := range strings.FieldsFuncSeq(rest, isSlash) {
		switch dots(seg) {
		case 1:
		case 2:
			if depth--; depth < 0 {
				return true
			}
		default:
			depth++
		}
	}
	return false
}

var escapedSlash = strings.NewReplacer("%2f", "/", "%2F", "/")

// isSlash says whether c separates path segments to some reader.
func isSlash(c rune) bool { return c == '/' || c == '\\' }

// dots is 1 for a segment "." and 2 for "..", a dot perhaps escaped
// ("%2e"); else 0.
func dots(seg string) int {
	n := 0
	for len(seg) > 0 {
		switch {
		case seg[0] == '.':
			seg = seg[1:]
		case len(seg) >= 3 && seg[0] == '%' && seg[1] == '2' && seg[2]|0x20 == 'e':
			seg = seg[3:]
		default:
			return 0
		}
		if n++; n > 2 {
			return 0
		}
	}
	return n
}

func truncate(s string) string {
	if len(s) > 100 {
		return s[:100] + "..."
	}
	return s
}

// newRequestID returns 16 random hex digits.
func newRequestID() string {
	const digits = "0123456789abcdef"
	var b [16]byte
	v := rand.Uint64()
	for i := len(b) - 1; i >= 0; i-- {
		b[i] = digits[v&15]
		v >>= 4
	}
	return string(b[:])
}
