// Package api is Spry's management API under /api/v1: functions, users
// and tokens, one file per resource. Every call is authenticated with a
// bearer token; errors are JSON with the status of their errdefs class.
package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"net/url"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spry-run/spry/internal/activator"
	"github.com/spry-run/spry/internal/auth"
	"github.com/spry-run/spry/internal/backend"
	"github.com/spry-run/spry/internal/errdefs"
	"github.com/spry-run/spry/internal/functions"
	"github.com/spry-run/spry/internal/store"
)

// Functions is what the API needs of the functions service.
type Functions interface {
	Deploy(ctx context.Context, req functions.DeployRequest) (store.Function, error)
	Reconfigure(ctx context.Context, owner, name, by string, ch functions.Change) (store.Function, error)
	Versions(ctx context.Context, owner, name string) (store.Function, []store.Version, error)
	Rollback(ctx context.Context, owner, name string, version int64) (store.Function, error)
	SetTraffic(ctx context.Context, owner, name string, split []store.Split) (store.Function, error)
	SetTag(ctx context.Context, owner, name, tag string, version int64) (store.Function, error)
	DeleteVersion(ctx context.Context, owner, name string, version int64) error
	Delete(ctx context.Context, owner, name string) error
	Get(ctx context.Context, owner, name string) (store.Function, error)
	List(ctx context.Context, owner string, page store.Page) ([]store.Function, error)
	// Count returns how many functions owner has and how many one owner
	// may have (0: no limit).
	Count(ctx context.Context, owner string) (n, limit int, err error)
}

// Authenticator checks tokens and issues new ones.
type Authenticator interface {
	Authenticate(ctx context.Context, token string) (auth.Principal, error)
	IssueToken(ctx context.Context, user, name string, opt auth.TokenOptions) (string, store.Token, error)
	// CreateUser creates u with a first token named name: both, or on
	// any error neither.
	CreateUser(ctx context.Context, u store.User, name string, opt auth.TokenOptions) (string, store.Token, error)
}

// TokenForgetter drops what it remembers of a token or of a user's
// tokens (auth.Cache).
type TokenForgetter interface {
	ForgetToken(id string)
	ForgetUser(name string)
}

// Instances reports running instances per version key, and what each
// owner's instances count against their quotas.
type Instances interface {
	Counts() map[string]int
	OwnerUsage(owner string) activator.OwnerUsage
}

// Budgets reports what each owner's instances count against the
// per-user budgets of processes and open files, and the budgets (0:
// none), from totals kept apart, so that asking waits for no slow work
// (local.Backend).
type Budgets interface {
	OwnerBudgets(owner string) (pidsUsed, pidsLimit int64, filesUsed, filesLimit uint64)
}

// Config is the API's setup.
type Config struct {
	MaxCodeBytes int64
	// MaxDeploys bounds the deploys past admission at once (0:
	// DefaultMaxDeploys); MaxDeploysWaiting those waiting for it (0:
	// DefaultMaxDeploysWaiting).
	MaxDeploys        int
	MaxDeploysWaiting int
	// DeployBodyTimeout bounds reading a deploy's body, from its
	// admission (0: DefaultDeployBodyTimeout).
	DeployBodyTimeout time.Duration
	// BodyTimeout bounds reading any other request's body (0:
	// DefaultBodyTimeout; tests shorten it).
	BodyTimeout time.Duration
	// PublicURL is the base of function URLs in responses; empty means
	// "derive from the request's Host".
	PublicURL string
	// FunctionDomain, if set, is where each function has a host of its
	// own, "<name>.<owner>.<FunctionDomain>": function URLs name that.
	FunctionDomain string
	// RunScheduled runs a function's scheduled handler now and returns
	// how it went (POST .../scheduled); nil: not offered.
	RunScheduled func(ctx context.Context, owner, name string) error
	// ScheduleStatus tells a function's schedule, next time and last
	// runs (GET .../scheduled); nil: not offered.
	ScheduleStatus ScheduleStatus
	// KV is the functions' key-value storage (GET .../kv); nil: none.
	KV KV
	// Backups makes backups of the server's data (GET /backup); nil:
	// none.
	Backups Backups
	// Invocations runs asynchronous invocations (POST
	// .../invocations); nil: none.
	Invocations Invocations
	// Budgets reports the per-user budgets of processes and open files
	// (GET /usage's pids and open_files); nil: not reported.
	Budgets Budgets
	// MaxInvocationBytes bounds an asynchronous invocation's body
	// (0: MaxInvocationBody): the server sets it no larger than the
	// router takes, so an event it could never deliver is refused when
	// it is sent, not failed when it runs.
	MaxInvocationBytes int64
	// Forget is told of each token the API revokes and each user it
	// deletes, once the store has it, so that a cache of verified tokens
	// (the router's, for private functions) drops them at once; nil:
	// none.
	Forget TokenForgetter
	// Limiter counts failed authentications per client; the server
	// gives the API and the router (private functions) the same one, so
	// that neither is a side door for guessing tokens. nil: one of the
	// API's own (auth.FailureBurst, auth.FailureEvery, by Now).
	Limiter *auth.FailureLimiter
	Now     func() time.Time
	// AfterFunc runs f once d has passed, by the clock Now reads, and
	// returns what stops it (nil: time.AfterFunc). It ends the log
	// follows of tokens that expire; tests fire it themselves.
	AfterFunc func(d time.Duration, f func()) (stop func() bool)
	Logger    *slog.Logger
}

// API serves /api/v1.
type API struct {
	cfg       Config
	fns       Functions
	auth      Authenticator
	users     store.Users
	tokens    store.Tokens
	instances Instances
	logs      Logs
	limiter   *auth.FailureLimiter
	log       *slog.Logger
	deleting  chan struct{} // one user deletion at a time (deleteUser)
	gate      *userGate
	deploys   *deploySlots
	tokenMu   sync.Mutex    // one token made at a time (createToken)
	backups   chan struct{} // one backup at a time (backup)

	followMu  sync.Mutex
	follows   perUser // open log follows per user
	followers map[*follower]struct{}
	reads     perUser // log reads (not follows) in progress per user
}

// New returns the API.
func New(fns Functions, authn Authenticator, users store.Users, tokens store.Tokens, instances Instances, logs Logs, cfg Config) *API {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.AfterFunc == nil {
		cfg.AfterFunc = func(d time.Duration, f func()) func() bool { return time.AfterFunc(d, f).Stop }
	}
	if cfg.MaxDeploys <= 0 {
		cfg.MaxDeploys = DefaultMaxDeploys
	}
	if cfg.MaxDeploysWaiting <= 0 {
		cfg.MaxDeploysWaiting = DefaultMaxDeploysWaiting
	}
	if cfg.DeployBodyTimeout <= 0 {
		cfg.DeployBodyTimeout = DefaultDeployBodyTimeout
	}
	if cfg.BodyTimeout <= 0 {
		cfg.BodyTimeout = DefaultBodyTimeout
	}
	limiter := cfg.Limiter
	if limiter == nil {
		limiter = auth.NewFailureLimiter(auth.FailureEvery, auth.FailureBurst, cfg.Now)
	}
	return &API{cfg: cfg, fns: fns, auth: authn, users: users, tokens: tokens, instances: instances, logs: logs, limiter: limiter, log: cfg.Logger, deleting: make(chan struct{}, 1), gate: newUserGate(), deploys: newDeploySlots(cfg.MaxDeploys, cfg.MaxDeploysWaiting), backups: make(chan struct{}, 1), follows: perUser{}, followers: map[*follower]struct{}{}, reads: perUser{}}
}

// route is one method of one API path: the scope its token needs and
// its handler. routes is the one list of them, so that no route is
// served without a decision on its scope.
type route struct {
	method, pattern string
	need            auth.Scope
	h               handlerFunc
}

// anyScope is the need of a route every token may call, whatever its
// scopes (whoami). It is no scope a token can be given.
const anyScope auth.Scope = "any"

// routes are the API's routes. Each handler names the query parameters
// it reads (see reads); the deploy checks its own, which depend on its
// body. Scopes: reads of functions, and of one's usage, need read,
// changes to functions deploy, users, tokens and backups all (a token
// never manages tokens unless it has every right; a backup holds every
// token's hash and the secrets' key).
func (a *API) routes() []route {
	const (
		read   = auth.ScopeRead
		deploy = auth.ScopeDeploy
		all    = auth.ScopeAll
	)
	return []route{
		{"GET", "/api/v1/whoami", anyScope, reads(a.whoami)},
		{"GET", "/api/v1/usage", read, reads(a.usage, "user")},
		{"GET", "/api/v1/functions", read, reads(a.listFunctions, "owner", "limit", "after")},
		{"GET", "/api/v1/functions/{name}", read, reads(a.getFunction, "owner")},
		{"PUT", "/api/v1/functions/{name}", deploy, a.deployFunction},
		{"PATCH", "/api/v1/functions/{name}", deploy, reads(a.configureFunction, "owner")},
		{"DELETE", "/api/v1/functions/{name}", deploy, reads(a.deleteFunction, "owner")},
		{"GET", "/api/v1/functions/{name}/logs", read, reads(a.functionLogs, "owner", "since", "version", "after", "limit", "follow")},
		{"GET", "/api/v1/functions/{name}/versions", read, reads(a.listVersions, "owner")},
		{"DELETE", "/api/v1/functions/{name}/versions/{version}", deploy, reads(a.deleteVersion, "owner")},
		{"POST", "/api/v1/functions/{name}/rollback", deploy, reads(a.rollback, "owner")},
		{"GET", "/api/v1/functions/{name}/scheduled", read, reads(a.getScheduled, "owner")},
		{"POST", "/api/v1/functions/{name}/scheduled", deploy, reads(a.runScheduled, "owner")},
		{"PUT", "/api/v1/functions/{name}/traffic", deploy, reads(a.setTraffic, "owner")},
		{"PUT", "/api/v1/functions/{name}/tags/{tag}", deploy, reads(a.setTag, "owner")},
		{"DELETE", "/api/v1/functions/{name}/tags/{tag}", deploy, reads(a.deleteTag, "owner")},
		{"GET", "/api/v1/functions/{name}/kv", read, reads(a.listKV, "owner", "prefix", "cursor", "limit")},
		{"GET", "/api/v1/functions/{name}/kv/{key...}", read, reads(a.getKV, "owner")},
		{"PUT", "/api/v1/functions/{name}/kv/{key...}", deploy, reads(a.putKV, "owner", "expireIn")},
		{"DELETE", "/api/v1/functions/{name}/kv/{key...}", deploy, reads(a.deleteKV, "owner")},
		{"POST", "/api/v1/functions/{name}/invocations", deploy, reads(a.enqueueInvocation, "owner", "path")},
		{"GET", "/api/v1/functions/{name}/invocations", read, reads(a.listInvocations, "owner", "limit", "after")},
		{"GET", "/api/v1/functions/{name}/invocations/{id}", read, reads(a.getInvocation, "owner")},
		{"GET", "/api/v1/users", all, reads(a.listUsers)},
		{"POST", "/api/v1/users", all, reads(a.createUser)},
		{"GET", "/api/v1/users/{name}", all, reads(a.getUser)},
		{"DELETE", "/api/v1/users/{name}", all, reads(a.deleteUser)},
		{"GET", "/api/v1/tokens", all, reads(a.listTokens, "user")},
		{"POST", "/api/v1/tokens", all, reads(a.createToken)},
		{"DELETE", "/api/v1/tokens/{id}", all, reads(a.revokeToken)},
		{"GET", "/api/v1/backup", all, reads(a.backup, "logs", "secret_key")},
	}
}

// Handler returns the API's routes, all behind authentication.
func (a *API) Handler() http.Handler {
	mux := http.NewServeMux()
	byPattern := map[string]methods{}
	for _, rt := range a.routes() {
		m, ok := byPattern[rt.pattern]
		if !ok {
			m = methods{}
			byPattern[rt.pattern] = m
			mux.Handle(rt.pattern, m)
		}
		m[rt.method] = rt
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		a.fail(w, r, errdefs.New(errdefs.ErrNotFound, "no API endpoint at %s", r.URL.Path))
	})
	return a.authenticate(mux)
}

// authorize is where scopes are enforced, for every route (and
// /metrics): p's token may do what needs need, or the answer is a 403
// naming the scopes that would.
func authorize(p auth.Principal, need auth.Scope) error {
	if need == anyScope || p.Allows(need) {
		return nil
	}
	var grant []string
	for _, s := range auth.Scopes {
		if auth.Allows([]auth.Scope{s}, need) {
			grant = append(grant, string(s))
		}
	}
	return errdefs.New(errdefs.ErrPermissionDenied, "this needs a token with scope %s; this token has %s",
		strings.Join(grant, " or "), strings.Join(auth.Strings(p.Scopes), ", "))
}

// handlerFunc is an API handler; it returns an error instead of writing
// one, so failures are answered in one place.
type handlerFunc func(w http.ResponseWriter, r *http.Request) error

// methods dispatches on the request method, once the token's scopes
// allow the route, and answers other methods with a JSON 405 and an
// Allow header.
type methods map[string]route

func (m methods) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rt, ok := m[r.Method]
	if !ok && r.Method == http.MethodHead {
		rt, ok = m[http.MethodGet]
	}
	if !ok {
		allow := make([]string, 0, len(m)+1)
		for k := range m {
			allow = append(allow, k)
		}
		if _, ok := m[http.MethodGet]; ok {
			// Served as the GET is, so allowed (RFC 9110's Allow lists
			// every method the resource supports).
			allow = append(allow, http.MethodHead)
		}
		sort.Strings(allow)
		w.Header().Set("Allow", strings.Join(allow, ", "))
		errdefs.WriteHTTP(w, errdefs.New(errdefs.ErrMethodNotAllowed, "method %s is not allowed here; use %s", r.Method, strings.Join(allow, ", ")))
		return
	}
	err := authorize(principal(r), rt.need)
	if err == nil {
		err = checkQuery(r.URL.RawQuery)
	}
	if err == nil {
		err = rt.h(w, r)
	}
	if err != nil {
		api := r.Context().Value(apiKey).(*API)
		api.fail(w, r, err)
	}
}

// checkQuery refuses a query string that does not parse or names a
// parameter twice: r.URL.Query() drops the pairs it cannot parse and
// handlers take the first of repeated ones, so the request would go
// ahead without what it asked for (an admin's ?owner= mistyped acted on
// the admin's own functions).
func checkQuery(raw string) error {
	q, err := url.ParseQuery(raw)
	if err != nil {
		return errdefs.Invalid("malformed query string: %v", err)
	}
	for k, vs := range q {
		if len(vs) > 1 {
			return errdefs.Invalid("query parameter %q is given %d times; give it once", k, len(vs))
		}
	}
	return nil
}

// reads is h for requests whose query names only keys: a parameter the
// handler does not read is refused rather than ignored, since the request
// would go ahead without it (an admin's DELETE with ?Owner=alice, or
// ?user=alice as the tokens endpoint spells it, deleted the admin's own
// function of that name).
func reads(h handlerFunc, keys ...string) handlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		for k := range r.URL.Query() {
			if slices.Contains(keys, k) {
				continue
			}
			if len(keys) == 0 {
				return errdefs.Invalid("unknown query parameter %q: this endpoint takes none", k)
			}
			return errdefs.Invalid("unknown query parameter %q: this endpoint takes %s", k, strings.Join(keys, ", "))
		}
		return h(w, r)
	}
}

// queryBool reads the boolean query parameter key: def if it is absent,
// else one of strconv.ParseBool's spellings (1, t, true, 0, f, false, in
// lower, upper or title case). Anything else is a 400: a spelling taken
// for false (follow=yes) made the request something else, in silence.
func queryBool(q url.Values, key string, def bool) (bool, error) {
	if !q.Has(key) {
		return def, nil
	}
	b, err := strconv.ParseBool(q.Get(key))
	if err != nil {
		return false, errdefs.Invalid("query parameter %s=%q: want 1, t, true, 0, f or false", key, q.Get(key))
	}
	return b, nil
}

type ctxKey int

const (
	principalKey ctxKey = iota
	apiKey
	holdsKey
)

func principal(r *http.Request) auth.Principal {
	p, _ := r.Context().Value(principalKey).(auth.Principal)
	return p
}

func (a *API) authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tok, ok := auth.BearerToken(r.Header.Get("Authorization"))
		if !ok {
			w.Header().Set("WWW-Authenticate", `Bearer realm="spry"`)
			a.fail(w, r, errdefs.New(errdefs.ErrUnauthenticated, "missing bearer token: send Authorization: Bearer <token>"))
			return
		}
		// A right token passes even from a client over the failure
		// limit: clients behind one proxy share an address, and one of
		// them guessing must not lock the rest out. Guessing gains
		// nothing from that; a secret has 256 bits.
		deletions := a.gate.deletions()
		p, err := a.auth.Authenticate(r.Context(), tok)
		if errors.Is(err, errdefs.ErrUnauthenticated) {
			// The real client's address, with trusted proxies
			// (httpserve.RealClient).
			ap, _ := netip.ParseAddrPort(r.RemoteAddr)
			client := auth.ClientKey(ap.Addr())
			if ok, wait := a.limiter.Allowed(client); !ok {
				retryAfter, err := auth.Refusal(wait)
				w.Header().Set("Retry-After", retryAfter)
				a.fail(w, r, err)
				return
			}
			a.limiter.Failed(client)
		}
		if err != nil {
			w.Header().Set("WWW-Authenticate", `Bearer realm="spry", error="invalid_token"`)
			a.fail(w, r, err)
			return
		}
		ctx, cancel := context.WithCancelCause(r.Context())
		defer cancel(nil)
		h := &holds{cancel: cancel, names: map[string]bool{}}
		defer h.release()
		ctx = context.WithValue(ctx, principalKey, p)
		ctx = context.WithValue(ctx, apiKey, a)
		ctx = context.WithValue(ctx, holdsKey, h)
		r = r.WithContext(ctx)
		if err := a.holdUser(r, p.User, errdefs.New(errdefs.ErrUnauthenticated, "user %s was deleted", p.User)); err != nil {
			a.fail(w, r, err)
			return
		}
		// A deletion that ended since the token was checked may have
		// been its user's (the hold waited for one that ran): check it
		// again, now that no deletion of its user can run.
		if a.gate.deletions() != deletions {
			if _, err := a.auth.Authenticate(ctx, tok); err != nil {
				w.Header().Set("WWW-Authenticate", `Bearer realm="spry", error="invalid_token"`)
				a.fail(w, r, err)
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// fail answers with err's class and logs errors that are the server's
// fault.
func (a *API) fail(w http.ResponseWriter, r *http.Request, err error) {
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		err = errdefs.New(errdefs.ErrTooLarge, "request body is over the %d byte limit", mbe.Limit)
	}
	clientGone := false
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		// Cancelled by the server with a cause (its user was deleted):
		// that is the answer.
		if cause := context.Cause(r.Context()); cause != nil && !errors.Is(cause, context.Canceled) && !errors.Is(cause, context.DeadlineExceeded) {
			err = cause
		} else {
			clientGone = r.Context().Err() != nil
			err = errdefs.New(errdefs.ErrTimeout, "request cancelled or timed out")
		}
	}
	if status := errdefs.HTTPStatus(err); status >= 500 {
		if clientGone || notServerFault(err) {
			a.log.Debug("api error", "method", r.Method, "path", r.URL.Path, "status", status, "err", err)
		} else {
			a.log.Error("api error", "method", r.Method, "path", r.URL.Path, "status", status, "err", err)
		}
	}
	errdefs.WriteHTTP(w, err)
}

// notServerFault says whether err, a 5xx, is a user's doing: their
// function threw, failed to load or ran out of its time (a scheduled run,
// a build). The answer and the function's logs say it; it is nothing for
// an operator to act on, so not an ERROR line per request. (Unavailable
// is not among them: a runtime that does not start is the server's.)
func notServerFault(err error) bool {
	return errors.Is(err, errdefs.ErrFunctionFailed) || errors.Is(err, errdefs.ErrFunctionError) ||
		errors.Is(err, errdefs.ErrTimeout)
}

func writeJSON(w http.ResponseWriter, status int, v any) error {
	return encodeJSON(w, status, v, "  ")
}

// writeCompact is writeJSON without the indentation, for answers with
// the functions' values: indenting a deeply nested value multiplies it
// (one of 20 KB, 10,000 levels deep, would be 200 MB).
func writeCompact(w http.ResponseWriter, status int, v any) error {
	return encodeJSON(w, status, v, "")
}

func encodeJSON(w http.ResponseWriter, status int, v any, indent string) error {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", indent)
	return enc.Encode(v)
}

// maxJSONBody bounds JSON requests other than deploys.
const maxJSONBody = 64 << 10

// errEmptyBody is readJSON's error for a body with nothing in it, which
// some requests take for "no body".
var errEmptyBody = errdefs.Invalid("request body is empty; send a JSON object")

// readJSON decodes a small JSON body strictly: unknown fields, fields
// given twice, nulls that would be taken for values, text that is not
// UTF-8 and trailing data are errors (checkJSON).
func readJSON(w http.ResponseWriter, r *http.Request, v any) error {
	return readJSONLimit(w, r, v, maxJSONBody)
}

// DefaultBodyTimeout bounds reading the body of every request but a
// deploy (Config.BodyTimeout), from when its handler starts to read it:
// they are at most 448 KiB of JSON, and without it a client
// sending one a byte at a time held its request, and what it holds
// (a user's hold, the token mutex), for as long as it liked. Fasthttp
// reads the first 8 KiB with the head, under the head's deadline.
const DefaultBodyTimeout = 10 * time.Second

// timeBody bounds r's body's time as the deploy's is (timedBody), for a
// request that is not a deploy; the deadline is lifted by the returned
// func once the body is read.
func (a *API) timeBody(w http.ResponseWriter, r *http.Request) (end func(), err error) {
	timed, err := newTimedBody(w, r, a.cfg.BodyTimeout, "the request's start")
	if err != nil {
		return nil, err
	}
	r.Body = timed
	return timed.end, nil
}

// readJSONLimit is readJSON for a body of up to limit bytes.
func readJSONLimit(w http.ResponseWriter, r *http.Request, v any, limit int64) error {
	// Every request the API serves has it (authenticate puts it there).
	if api, ok := r.Context().Value(apiKey).(*API); ok {
		end, err := api.timeBody(w, r)
		if err != nil {
			return err
		}
		defer end()
	}
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		return bodyError(err)
	}
	if len(bytes.TrimSpace(b)) == 0 {
		return errEmptyBody
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return errdefs.Invalid("invalid JSON body: %v", err)
	}
	// What the decoder takes without a word, though it is not what
	// the body says (see checkJSON), and anything after the value.
	return checkJSON(b, reflect.TypeOf(v).Elem())
}

// bodyError is the answer for a request body that could not be read
// whole: over its limit (413) or its deadline (408) as they say, else
// a 400. A body cut short or badly framed (a broken chunked encoding)
// is the client's doing, and was a 500 logged as the server's.
func bodyError(err error) error {
	if _, ok := errors.AsType[*http.MaxBytesError](err); ok || errors.Is(err, errdefs.ErrRequestTimeout) {
		return err
	}
	return errdefs.Invalid("read the request body: %v", err)
}

// instanceCount is the number of running instances of fn's live version.
func (a *API) instanceCount(fn store.Function) int {
	if a.instances == nil {
		return 0
	}
	spec := backend.Spec{FunctionID: fn.ID, Version: fn.LiveVersion}
	return a.instances.Counts()[spec.Key()]
}

// RequireAdmin serves h (/metrics) only to callers with an admin's
// token whose scopes allow metrics (all, or metrics alone: what a
// monitoring system is given). It authenticates as the API does, so
// wrong tokens count against the same per-client limit: /metrics is no
// side door for guessing them.
func (a *API) RequireAdmin(h http.Handler) http.Handler {
	return a.authenticate(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p := principal(r)
		if !p.Admin {
			a.fail(w, r, errdefs.New(errdefs.ErrPermissionDenied, "only an admin may read metrics"))
			return
		}
		if err := authorize(p, auth.ScopeMetrics); err != nil {
			a.fail(w, r, err)
			return
		}
		h.ServeHTTP(w, r)
	}))
}
