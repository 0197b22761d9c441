package api

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/spry-run/spry/internal/api/apitest"
	"github.com/spry-run/spry/internal/auth"
	"github.com/spry-run/spry/internal/errdefs"
	"github.com/spry-run/spry/internal/functions"
	"github.com/spry-run/spry/internal/store/sqlite"
)

// env is a whole API over the real sqlite store, blob store, log store
// and secret box, served by httptest.
type env struct {
	t      *testing.T
	srv    *httptest.Server
	api    *API
	st     *sqlite.Store
	dbPath string // st's file
	fns    *functions.Service
	admin  string // the admin's token
	tokens map[string]string
	clock  *clock // nil but for newClockEnv
}

func newEnv(t *testing.T) *env {
	t.Helper()
	return newEnvConfig(t, Config{MaxCodeBytes: 1 << 20})
}

// newEnvConfig is newEnv with the API's config cfg.
func newEnvConfig(t *testing.T, cfg Config) *env {
	t.Helper()
	return newEnvOn(t, apitest.New(t), cfg)
}

// newEnvOn is newEnvConfig over the stores d.
func newEnvOn(t *testing.T, d *apitest.Deps, cfg Config) *env {
	t.Helper()
	var authn Authenticator = d.Auth
	if cfg.Now != nil {
		// Tokens expire by the API's clock.
		authn = auth.New(d.Store, cfg.Now)
	}
	a := New(d.Functions, authn, d.Store, d.Store, nil, d.Logs, cfg)
	srv := httptest.NewServer(a.Handler())
	t.Cleanup(srv.Close)
	return &env{t: t, srv: srv, api: a, st: d.Store, dbPath: d.DBPath, fns: d.Functions, admin: d.Admin, tokens: map[string]string{"admin": d.Admin}}
}

// newClockEnv is newEnv on a clock the test moves, whose timers fire
// when it moves past them.
func newClockEnv(t *testing.T) (*env, *clock) {
	t.Helper()
	c := &clock{now: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)}
	e := newEnvConfig(t, Config{MaxCodeBytes: 1 << 20, Now: c.Now, AfterFunc: c.AfterFunc})
	e.clock = c
	return e, c
}

// clock is a settable clock with timers (Config.Now, Config.AfterFunc).
type clock struct {
	mu     sync.Mutex
	now    time.Time
	timers map[*clockTimer]struct{}
}

type clockTimer struct {
	at time.Time
	f  func()
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) AfterFunc(d time.Duration, f func()) func() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.timers == nil {
		c.timers = map[*clockTimer]struct{}{}
	}
	ct := &clockTimer{at: c.now.Add(d), f: f}
	c.timers[ct] = struct{}{}
	return func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		_, ok := c.timers[ct]
		delete(c.timers, ct)
		return ok
	}
}

// Advance moves the clock by d and runs the timers then due, as
// time.AfterFunc would, each in its own goroutine.
func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	for ct := range c.timers {
		if !ct.at.After(c.now) {
			delete(c.timers, ct)
			go ct.f()
		}
	}
}

// user creates a user through the API and returns its token.
func (e *env) user(name string) string {
	e.t.Helper()
	var res struct{ Token string }
	e.mustDo(e.admin, "POST", "/api/v1/users", `{"name":"`+name+`"}`, http.StatusCreated, &res)
	e.tokens[name] = res.Token
	return res.Token
}

// do sends a request, body as JSON, and returns its status and body.
func (e *env) do(token, method, path, body string) (int, []byte) {
	e.t.Helper()
	var b []byte
	contentType := ""
	if body != "" {
		b, contentType = []byte(body), "application/json"
	}
	status, _, out := e.raw(token, method, path, contentType, b, nil)
	return status, out
}

// raw sends body as it is, with contentType (none if empty) and header, and
// returns the answer's status, head and body.
func (e *env) raw(token, method, path, contentType string, body []byte, header http.Header) (int, http.Header, []byte) {
	e.t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, e.srv.URL+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for k, vs := range header {
		req.Header[k] = vs
	}
	res, err := e.srv.Client().Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return res.StatusCode, res.Header, b
}

// mustDo sends a request, wants status, and decodes the body into out.
func (e *env) mustDo(token, method, path, body string, status int, out any) {
	e.t.Helper()
	got, b := e.do(token, method, path, body)
	if got != status {
		e.t.Fatalf("%s %s: status %d, want %d: %s", method, path, got, status, b)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			e.t.Fatalf("%s %s: %v: %s", method, path, err, b)
		}
	}
}

// wantError checks an error answer: status and code in the API's shape.
func wantError(t *testing.T, what string, status int, body []byte, wantStatus int, wantCode string) {
	t.Helper()
	var eb errdefs.Body
	if status != wantStatus || json.Unmarshal(body, &eb) != nil || eb.Error.Code != wantCode {
		t.Errorf("%s: %d %s, want %d %s", what, status, body, wantStatus, wantCode)
	}
}

// deployRaw deploys a small TypeScript function as a raw body, its
// settings in query, and returns the answer's status and body.
func (e *env) deployRaw(token, name, query string) (int, []byte) {
	e.t.Helper()
	status, _, b := e.raw(token, "PUT", "/api/v1/functions/"+name+"?"+query, "application/typescript",
		[]byte("export default { fetch() { return new Response('x') } }"), nil)
	return status, b
}

// deploy deploys a small function as token's user (or owner, for the admin).
func (e *env) deploy(token, path string) FunctionView {
	e.t.Helper()
	var fn FunctionView
	got, b := e.do(token, "PUT", path, `{"code":"export default { fetch() { return new Response('hi') } }"}`)
	if got != http.StatusOK && got != http.StatusCreated {
		e.t.Fatalf("deploy %s: %d %s", path, got, b)
	}
	if err := json.Unmarshal(b, &fn); err != nil {
		e.t.Fatal(err)
	}
	return fn
}
