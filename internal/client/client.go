// Package client is a Go client of Spry's management API, used by the CLI
// and by the integration tests.
package client

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/spry-run/spry/internal/api"
	"github.com/spry-run/spry/internal/errdefs"
)

// Client talks to one Spry server.
type Client struct {
	URL   string // e.g. http://127.0.0.1:8080
	Token string
	HTTP  *http.Client
	// Busy, if set, is told of each wait before a request the server
	// refused as busy is sent again, and why it was refused.
	Busy func(wait time.Duration, why error)
	// Sleep waits d or until ctx ends (nil: a timer); tests set it so
	// as not to wait.
	Sleep func(ctx context.Context, d time.Duration) error
}

// A request the API refused as busy is sent again at most
// maxBusyRetries times, after the wait its Retry-After asks for if that
// is at most maxBusyWait: a longer one is said at once, for the user to
// decide.
const (
	maxBusyRetries = 4
	maxBusyWait    = 30 * time.Second
)

// busyWait says whether res refuses its request as busy, and how long
// the server asked the client to wait before sending it again: a 429 or
// 503 with Retry-After (in seconds, as Spry sends it). The API answers
// so only before it acts on a request (a deploy not admitted, a log read
// past the user's limit, no instance for a scheduled run yet, too many
// failed logins), so a request of any method may be sent again.
func busyWait(res *http.Response) (time.Duration, bool) {
	if res.StatusCode != http.StatusTooManyRequests && res.StatusCode != http.StatusServiceUnavailable {
		return 0, false
	}
	n, err := strconv.Atoi(strings.TrimSpace(res.Header.Get("Retry-After")))
	if err != nil || n < 0 || time.Duration(n)*time.Second > maxBusyWait {
		return 0, false
	}
	return time.Duration(n) * time.Second, true
}

// send sends a request made by attempt, again while the server refuses it
// as busy (see busyWait), and returns the last answer. attempt returns a
// network error already said (netError).
func (c *Client) send(ctx context.Context, attempt func() (*http.Response, error)) (*http.Response, error) {
	for tries := 0; ; tries++ {
		res, err := attempt()
		if err != nil {
			return nil, err
		}
		wait, busy := busyWait(res)
		if !busy || tries == maxBusyRetries {
			return res, nil
		}
		why := decodeError(res)
		res.Body.Close()
		if c.Busy != nil {
			c.Busy(wait, why)
		}
		sleep := c.Sleep
		if sleep == nil {
			sleep = sleepCtx
		}
		if err := sleep(ctx, wait); err != nil {
			return nil, err
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// New returns a client for the server at baseURL.
func New(baseURL, token string) *Client {
	return &Client{URL: strings.TrimRight(baseURL, "/"), Token: token, HTTP: &http.Client{Timeout: 5 * time.Minute, CheckRedirect: checkRedirect}}
}

// TrustCA makes c trust the certificates in pemCerts (a private CA, or a
// server's self-signed certificate) besides the system's.
func (c *Client) TrustCA(pemCerts []byte) error {
	pool, err := x509.SystemCertPool()
	if err != nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(pemCerts) {
		return errors.New("no PEM certificate in it")
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: pool}
	c.HTTP.Transport = tr
	return nil
}

// checkRedirect follows a redirect only to the same origin (or from http
// to https on the same host) with the same method: Go follows a 301 or 302
// with a GET, whose answer a write would take for its own, and sends the
// token along to another port of the same host.
func checkRedirect(req *http.Request, via []*http.Request) error {
	prev := via[len(via)-1]
	upgrade := prev.URL.Scheme == "http" && req.URL.Scheme == "https" && prev.URL.Hostname() == req.URL.Hostname()
	switch {
	case len(via) >= 10:
		return &redirectError{from: via[0].URL.String(), to: req.URL.String(), why: "too many redirects"}
	case req.Method != via[0].Method:
		return &redirectError{from: via[0].URL.String(), to: req.URL.String(), why: via[0].Method + " would become " + req.Method}
	case !upgrade && (req.URL.Scheme != prev.URL.Scheme || req.URL.Host != prev.URL.Host):
		return &redirectError{from: via[0].URL.String(), to: req.URL.String(), why: "another server, which the token is not for"}
	}
	return nil
}

// redirectError is a redirect the client would not follow: the --url is
// not the server's own (bad input, exit 2).
type redirectError struct{ from, to, why string }

func (e *redirectError) Error() string {
	return fmt.Sprintf("%s redirects to %s (%s): pass the server's own URL with --url or SPRY_URL", e.from, e.to, e.why)
}
func (e *redirectError) Unwrap() error { return errdefs.ErrInvalidArgument }

// netError says why a request got no answer.
func (c *Client) netError(err error) error {
	var re *redirectError
	if errors.As(err, &re) {
		return re
	}
	return &unreachable{c.URL, err}
}

// Error is an error answered by the server. errors.Is matches it against
// the errdefs class of its code.
type Error struct {
	Status  int
	Code    string
	Message string
}

func (e *Error) Error() string { return e.Message }

// Unwrap returns the errdefs class, so errors.Is(err, errdefs.ErrNotFound)
// works on the client side too.
func (e *Error) Unwrap() error { return errdefs.FromCode(e.Code) }

func (c *Client) do(ctx context.Context, method, path string, q url.Values, body []byte, contentType string, out any) error {
	u := c.URL + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	res, err := c.send(ctx, func() (*http.Response, error) {
		var r io.Reader
		if body != nil {
			r = bytes.NewReader(body) // anew for each try
		}
		req, err := http.NewRequestWithContext(ctx, method, u, r)
		if err != nil {
			return nil, err
		}
		if c.Token != "" {
			req.Header.Set("Authorization", "Bearer "+c.Token)
		}
		if contentType != "" {
			req.Header.Set("Content-Type", contentType)
		}
		res, err := c.HTTP.Do(req)
		if err != nil {
			return nil, c.netError(err)
		}
		return res, nil
	})
	if err != nil {
		return err
	}
	defer res.Body.Close()
	if res.StatusCode >= 400 {
		return decodeError(res)
	}
	if out == nil {
		_, _ = io.Copy(io.Discard, res.Body)
		return nil
	}
	if err := json.NewDecoder(res.Body).Decode(out); err != nil {
		return fmt.Errorf("decode %s %s response: %w", method, path, err)
	}
	return nil
}

func decodeError(res *http.Response) error {
	data, _ := io.ReadAll(io.LimitReader(res.Body, 1<<20))
	var b errdefs.Body
	if json.Unmarshal(data, &b) == nil && b.Error.Code != "" {
		return &Error{Status: res.StatusCode, Code: b.Error.Code, Message: printable(b.Error.Message)}
	}
	// Not the API's JSON: a proxy in front of the server answered. Its
	// status still says what went wrong (and so the CLI's exit code).
	code, ok := statusCodes[res.StatusCode]
	if !ok {
		code = "internal"
	}
	return &Error{Status: res.StatusCode, Code: code, Message: fmt.Sprintf("server answered %s: %s", res.Status, printable(firstWords(string(data), 200)))}
}

// firstWords is s on one line, its runs of white space made one space,
// cut after about n bytes: a proxy's error page is HTML over many lines,
// of which the start says enough.
func firstWords(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) <= n {
		return s
	}
	i := n
	for i > 0 && !utf8.RuneStart(s[i]) {
		i--
	}
	return s[:i] + "..."
}

// printable writes the control characters of what a server said as
// escapes (\x1b): the CLI prints it on a terminal, which an escape
// sequence from a proxy or a server that is not Spry's could drive.
// Newlines and tabs drive nothing and stay: a build error has a line per
// error, and npm's message is lines of its own.
func printable(s string) string {
	if !strings.ContainsFunc(s, escaped) {
		return s
	}
	var b strings.Builder
	for _, r := range s {
		if escaped(r) {
			fmt.Fprintf(&b, "\\x%02x", r)
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

func escaped(r rune) bool {
	return r != '\n' && r != '\t' && unicode.IsControl(r)
}

// statusCodes are the API codes a bare HTTP status stands for.
var statusCodes = map[int]string{
	http.StatusBadRequest:                  "invalid_argument",
	http.StatusUnauthorized:                "unauthenticated",
	http.StatusForbidden:                   "permission_denied",
	http.StatusNotFound:                    "not_found",
	http.StatusMethodNotAllowed:            "method_not_allowed",
	http.StatusRequestTimeout:              "request_timeout",
	http.StatusConflict:                    "conflict",
	http.StatusRequestEntityTooLarge:       "too_large",
	http.StatusUnsupportedMediaType:        "unsupported_media_type",
	http.StatusTooManyRequests:             "rate_limited",
	http.StatusRequestHeaderFieldsTooLarge: "header_too_large",
	http.StatusBadGateway:                  "bad_gateway",
	http.StatusServiceUnavailable:          "unavailable",
	http.StatusGatewayTimeout:              "timeout",
}

func ownerQuery(owner string) url.Values {
	if owner == "" {
		return nil
	}
	return url.Values{"owner": {owner}}
}

// Deploy creates or updates a function.
func (c *Client) Deploy(ctx context.Context, owner, name string, body api.DeployBody) (api.FunctionView, error) {
	var v api.FunctionView
	data, err := json.Marshal(body)
	if err != nil {
		return v, err
	}
	err = c.do(ctx, "PUT", "/api/v1/functions/"+url.PathEscape(name), ownerQuery(owner), data, "application/json", &v)
	return v, err
}

// Functions lists functions (the admin's call with owner "" lists all),
// page after page.
func (c *Client) Functions(ctx context.Context, owner string) ([]api.FunctionView, error) {
	var all []api.FunctionView
	q := url.Values{"limit": {strconv.Itoa(api.MaxPageSize)}}
	if owner != "" {
		q.Set("owner", owner)
	}
	for {
		var page api.FunctionList
		if err := c.do(ctx, "GET", "/api/v1/functions", q, nil, "", &page); err != nil {
			return all, err
		}
		all = append(all, page.Functions...)
		if page.Next == "" {
			return all, nil
		}
		q.Set("after", page.Next)
	}
}

// Function gets one function.
func (c *Client) Function(ctx context.Context, owner, name string) (api.FunctionView, error) {
	var v api.FunctionView
	err := c.do(ctx, "GET", "/api/v1/functions/"+url.PathEscape(name), ownerQuery(owner), nil, "", &v)
	return v, err
}

// DeleteFunction deletes a function.
func (c *Client) DeleteFunction(ctx context.Context, owner, name string) error {
	return c.do(ctx, "DELETE", "/api/v1/functions/"+url.PathEscape(name), ownerQuery(owner), nil, "", nil)
}

// Whoami says who the token belongs to, and what it may do until when.
type Whoami struct {
	User      string     `json:"user"`
	Admin     bool       `json:"admin"`
	TokenID   string     `json:"token_id"`
	Scopes    []string   `json:"scopes"`
	ExpiresAt *time.Time `json:"expires_at"` // nil: never
}

// Whoami asks the server who the client's token belongs to.
func (c *Client) Whoami(ctx context.Context) (Whoami, error) {
	var w Whoami
	err := c.do(ctx, "GET", "/api/v1/whoami", nil, nil, "", &w)
	return w, err
}

// NewUser is a created user and its first token.
type NewUser struct {
	User      api.UserView `json:"user"`
	Token     string       `json:"token"`
	TokenID   string       `json:"token_id"`
	ExpiresAt *time.Time   `json:"expires_at"`
}

// CreateUser creates a user (admin only) and returns its first token.
func (c *Client) CreateUser(ctx context.Context, body api.CreateUserBody) (NewUser, error) {
	var out NewUser
	data, _ := json.Marshal(body)
	err := c.do(ctx, "POST", "/api/v1/users", nil, data, "application/json", &out)
	return out, err
}

// Users lists users (admin only).
func (c *Client) Users(ctx context.Context) ([]api.UserView, error) {
	var out struct {
		Users []api.UserView `json:"users"`
	}
	err := c.do(ctx, "GET", "/api/v1/users", nil, nil, "", &out)
	return out.Users, err
}

// DeleteUser deletes a user and their functions (admin only).
func (c *Client) DeleteUser(ctx context.Context, name string) error {
	return c.do(ctx, "DELETE", "/api/v1/users/"+url.PathEscape(name), nil, nil, "", nil)
}

// NewToken is a created token; Token is shown only this once.
type NewToken struct {
	Token     string     `json:"token"`
	ID        string     `json:"id"`
	User      string     `json:"user"`
	Name      string     `json:"name"`
	Scopes    []string   `json:"scopes"`
	ExpiresAt *time.Time `json:"expires_at"`
}

// CreateToken issues a token for the caller (or, for an admin, for
// body.User).
func (c *Client) CreateToken(ctx context.Context, body api.CreateTokenBody) (NewToken, error) {
	var out NewToken
	data, _ := json.Marshal(body)
	err := c.do(ctx, "POST", "/api/v1/tokens", nil, data, "application/json", &out)
	return out, err
}

// Tokens lists the caller's tokens (or, for an admin, user's).
func (c *Client) Tokens(ctx context.Context, user string) ([]api.TokenView, error) {
	var out struct {
		Tokens []api.TokenView `json:"tokens"`
	}
	var q url.Values
	if user != "" {
		q = url.Values{"user": {user}}
	}
	err := c.do(ctx, "GET", "/api/v1/tokens", q, nil, "", &out)
	return out.Tokens, err
}

// Usage reports the caller's use of their budgets (or, for an admin,
// user's).
func (c *Client) Usage(ctx context.Context, user string) (api.UsageView, error) {
	var out api.UsageView
	var q url.Values
	if user != "" {
		q = url.Values{"user": {user}}
	}
	err := c.do(ctx, "GET", "/api/v1/usage", q, nil, "", &out)
	return out, err
}

// RevokeToken revokes a token by id.
func (c *Client) RevokeToken(ctx context.Context, id string) error {
	return c.do(ctx, "DELETE", "/api/v1/tokens/"+url.PathEscape(id), nil, nil, "", nil)
}

// Invoke calls a function at path (which may hold a query) and returns
// the raw response; the caller closes its body.
func (c *Client) Invoke(ctx context.Context, owner, name, method, path string, body io.Reader, header http.Header) (*http.Response, error) {
	if !strings.HasPrefix(path, "/") {
		path = "/" + path
	}
	req, err := http.NewRequestWithContext(ctx, method, c.URL+"/fn/"+owner+"/"+name+path, body)
	if err != nil {
		return nil, errdefs.Invalid("%v", err) // a method or path that is not one
	}
	for k, vs := range header {
		req.Header[k] = vs
	}
	// A function's redirect is its answer, shown as it is (as curl does).
	// Its timeout is the server's to enforce (up to --max-timeout), and a
	// streamed body may go on longer still: only ctx bounds it here.
	hc := *c.HTTP
	hc.Timeout = 0
	hc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	// Not sent again on a 429 or 503 (as the API's calls are): it is the
	// function's answer, or the router's, for the caller to see.
	res, err := hc.Do(req)
	if err != nil {
		return nil, &unreachable{c.URL, err}
	}
	return res, nil
}

// InvokeError returns the platform's error that res, an invocation's
// answer whose body began with body, is: the router's own (a timeout, an
// instance that crashed, a full queue), which its Spry-Error header marks
// and no function's answer has. It returns nil for the function's own
// answer, whatever its status.
func InvokeError(res *http.Response, body []byte) error {
	code := res.Header.Get("Spry-Error")
	if code == "" {
		return nil
	}
	var b errdefs.Body
	if json.Unmarshal(body, &b) == nil && b.Error.Code != "" {
		return &Error{Status: res.StatusCode, Code: b.Error.Code, Message: printable(b.Error.Message)}
	}
	// A HEAD's answer has no body.
	return &Error{Status: res.StatusCode, Code: code, Message: printable(fmt.Sprintf("the platform answered %s (%s)", res.Status, code))}
}

// Configure changes a function's configuration (a new version, same code).
func (c *Client) Configure(ctx context.Context, owner, name string, body api.ConfigBody) (api.FunctionView, error) {
	var v api.FunctionView
	data, err := json.Marshal(body)
	if err != nil {
		return v, err
	}
	err = c.do(ctx, "PATCH", "/api/v1/functions/"+url.PathEscape(name), ownerQuery(owner), data, "application/json", &v)
	return v, err
}

// LogOptions select log entries.
type LogOptions struct {
	Owner   string
	Since   string // "10m" or an RFC 3339 time
	Version int64
	Limit   int
	Follow  bool
}

// Logs streams a function's log entries to fn until the server ends the
// stream (at once, unless following) or ctx ends. cut, of a read that
// is not a follow, says whether the limit left entries out: "older"
// ones, as the server's api.LogsTruncatedHeader says; "" if none.
func (c *Client) Logs(ctx context.Context, name string, o LogOptions, fn func(api.LogLine) error) (cut string, err error) {
	q := url.Values{}
	if o.Owner != "" {
		q.Set("owner", o.Owner)
	}
	if o.Since != "" {
		q.Set("since", o.Since)
	}
	if o.Version > 0 {
		q.Set("version", strconv.FormatInt(o.Version, 10))
	}
	if o.Limit > 0 {
		q.Set("limit", strconv.Itoa(o.Limit))
	}
	if o.Follow {
		q.Set("follow", "1")
	}
	u := c.URL + "/api/v1/functions/" + url.PathEscape(name) + "/logs?" + q.Encode()
	res, err := c.get(ctx, u, o.Follow)
	if err != nil {
		return "", err
	}
	defer res.Body.Close()
	if res.StatusCode >= 400 {
		return "", decodeError(res)
	}
	cut = res.Header.Get(api.LogsTruncatedHeader)
	dec := json.NewDecoder(res.Body)
	for {
		// A follow's last line may be an error saying why it ended.
		var l struct {
			api.LogLine
			Error *struct{ Code, Message string } `json:"error"`
		}
		if err := dec.Decode(&l); err != nil {
			var syntax *json.SyntaxError
			var typ *json.UnmarshalTypeError
			switch {
			case ctx.Err() != nil, err == io.EOF && !o.Follow:
				return cut, nil
			case err == io.EOF:
				// A follow ends with a line saying why; without one the
				// server (or a proxy) went away.
				return "", errdefs.New(errdefs.ErrUnavailable, "the server at %s ended the follow without saying why; follow again once it is back", c.URL)
			case errors.As(err, &syntax), errors.As(err, &typ):
				return "", fmt.Errorf("decode logs: %w", err)
			default:
				return "", errdefs.New(errdefs.ErrUnavailable, "the log stream from %s broke off: %v", c.URL, err)
			}
		}
		if l.Error != nil {
			return "", &Error{Status: errdefs.HTTPStatus(errdefs.FromCode(l.Error.Code)), Code: l.Error.Code, Message: l.Error.Message}
		}
		if err := fn(l.LogLine); err != nil {
			return "", err
		}
	}
}

// get sends a GET to u, again while the server is busy (send). An
// answer that streams has no end (a log follow) or ends when it is all
// sent (a backup): only ctx bounds it, once the server has answered.
// Until then the client's timeout does, as for any call: a server that
// took the connection and never answered kept a follow waiting forever.
func (c *Client) get(ctx context.Context, u string, streams bool) (*http.Response, error) {
	hc := c.HTTP
	if streams {
		nc := *c.HTTP
		nc.Timeout = 0
		hc = &nc
	}
	reqCtx, cancel := ctx, context.CancelFunc(nil)
	if streams && c.HTTP.Timeout > 0 {
		reqCtx, cancel = context.WithCancel(ctx)
	}
	res, err := c.send(ctx, func() (*http.Response, error) {
		req, err := http.NewRequestWithContext(reqCtx, "GET", u, nil)
		if err != nil {
			return nil, err
		}
		req.Header.Set("Authorization", "Bearer "+c.Token)
		var waited *time.Timer
		if cancel != nil {
			waited = time.AfterFunc(c.HTTP.Timeout, cancel)
		}
		res, err := hc.Do(req)
		if waited != nil && !waited.Stop() {
			// The timer cancelled ctx: no answer in time, whatever Do says.
			if err == nil {
				res.Body.Close()
			}
			return nil, &unreachable{c.URL, fmt.Errorf("no answer within %s", c.HTTP.Timeout)}
		}
		if err != nil {
			return nil, c.netError(err)
		}
		return res, nil
	})
	if err != nil {
		if cancel != nil {
			cancel()
		}
		return nil, err
	}
	if cancel != nil {
		res.Body = &cancelBody{ReadCloser: res.Body, cancel: cancel}
	}
	return res, nil
}

// cancelBody ends its request's context when it is closed.
type cancelBody struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (b *cancelBody) Close() error {
	err := b.ReadCloser.Close()
	b.cancel()
	return err
}

// BackupOptions say what a backup holds besides the databases and
// bundles (api's GET /backup).
type BackupOptions struct {
	NoSecretKey bool
	Logs        bool
}

// BackupHeadWait is how long Backup waits for the server's answer to
// begin.
const BackupHeadWait = time.Hour

// Backup asks the server for a backup of its data and returns its
// stream (a gzip tar, backup.Read's) once the server has answered; the
// caller closes it. Only ctx bounds how long the stream takes.
func (c *Client) Backup(ctx context.Context, o BackupOptions) (io.ReadCloser, error) {
	q := url.Values{}
	if o.NoSecretKey {
		q.Set("secret_key", "false")
	}
	if o.Logs {
		q.Set("logs", "true")
	}
	u := c.URL + "/api/v1/backup"
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	// The server snapshots every database before its first byte, which
	// on a large data directory can take longer than an answer's usual
	// wait.
	hc := *c.HTTP
	hc.Timeout = max(hc.Timeout, BackupHeadWait)
	bc := *c
	bc.HTTP = &hc
	res, err := bc.get(ctx, u, true)
	if err != nil {
		return nil, err
	}
	if res.StatusCode >= 400 {
		defer res.Body.Close()
		return nil, decodeError(res)
	}
	return res.Body, nil
}

// Versions lists a function's versions, newest first.
func (c *Client) Versions(ctx context.Context, owner, name string) ([]api.VersionView, error) {
	var out struct {
		Versions []api.VersionView `json:"versions"`
	}
	err := c.do(ctx, "GET", "/api/v1/functions/"+url.PathEscape(name)+"/versions", ownerQuery(owner), nil, "", &out)
	return out.Versions, err
}

// DeleteVersion deletes one version of a function, which nothing may
// route to (not live, in no traffic split, named by no tag).
func (c *Client) DeleteVersion(ctx context.Context, owner, name string, version int64) error {
	path := "/api/v1/functions/" + url.PathEscape(name) + "/versions/" + strconv.FormatInt(version, 10)
	return c.do(ctx, "DELETE", path, ownerQuery(owner), nil, "", nil)
}

// Rollback makes an earlier version live (0: the one before the live one).
func (c *Client) Rollback(ctx context.Context, owner, name string, version int64) (api.FunctionView, error) {
	var v api.FunctionView
	var body api.RollbackBody
	if version != 0 {
		body.Version = &version
	}
	data, _ := json.Marshal(body)
	err := c.do(ctx, "POST", "/api/v1/functions/"+url.PathEscape(name)+"/rollback", ownerQuery(owner), data, "application/json", &v)
	return v, err
}

// RunScheduled runs the function's scheduled handler now and waits for
// it.
func (c *Client) RunScheduled(ctx context.Context, owner, name string) error {
	// The function's timeout (up to --max-timeout) is the server's to
	// enforce, as for Invoke: only ctx bounds the wait here.
	hc := *c.HTTP
	hc.Timeout = 0
	u := *c
	u.HTTP = &hc
	return u.do(ctx, "POST", "/api/v1/functions/"+url.PathEscape(name)+"/scheduled", ownerQuery(owner), nil, "", nil)
}

// Schedule is a function's schedule, its next time and its last runs.
func (c *Client) Schedule(ctx context.Context, owner, name string) (api.ScheduleView, error) {
	var v api.ScheduleView
	err := c.do(ctx, "GET", "/api/v1/functions/"+url.PathEscape(name)+"/scheduled", ownerQuery(owner), nil, "", &v)
	return v, err
}

// SetTraffic splits traffic between versions (version -> percent).
func (c *Client) SetTraffic(ctx context.Context, owner, name string, split api.TrafficBody) (api.FunctionView, error) {
	var v api.FunctionView
	data, _ := json.Marshal(split)
	err := c.do(ctx, "PUT", "/api/v1/functions/"+url.PathEscape(name)+"/traffic", ownerQuery(owner), data, "application/json", &v)
	return v, err
}

// SetTag points a tag at a version; version 0 removes the tag.
func (c *Client) SetTag(ctx context.Context, owner, name, tag string, version int64) error {
	path := "/api/v1/functions/" + url.PathEscape(name) + "/tags/" + url.PathEscape(tag)
	if version == 0 {
		return c.do(ctx, "DELETE", path, ownerQuery(owner), nil, "", nil)
	}
	data, _ := json.Marshal(api.TagBody{Version: version})
	return c.do(ctx, "PUT", path, ownerQuery(owner), data, "application/json", nil)
}

// unreachable is a failure to reach the server at all: unavailable (the
// CLI exits 6), with the network's error underneath.
type unreachable struct {
	url string
	err error
}

func (e *unreachable) Error() string {
	var cve *tls.CertificateVerificationError
	var he x509.HostnameError
	switch {
	case errors.As(e.err, &he):
		return "cannot reach the Spry server at " + e.url + ": its TLS certificate is for another host (" + he.Error() + ")"
	case errors.As(e.err, &cve):
		// Go's words ("tls: failed to verify certificate: x509: ...")
		// do not say what to do.
		return "cannot reach the Spry server at " + e.url + ": its TLS certificate is not trusted (" + cve.Err.Error() +
			"); if a private CA signed it, or it signed itself, pass that CA's certificate with --ca-cert FILE or SPRY_CA_CERT"
	}
	why, hint := netReason(e.err)
	if hint {
		return "cannot reach the Spry server at " + e.url + " (" + why + "): is spry serve running there? Name the server with --url, SPRY_URL or spry login"
	}
	return "cannot reach the Spry server at " + e.url + ": " + why
}

// netReason says why a request got no answer in the words a user needs,
// without Go's chain ("Get \"http://...\": dial tcp 127.0.0.1:1: connect:
// connection refused" repeats the URL and the address), and whether the
// server is likely not where the URL says (refused, or no such host).
func netReason(err error) (why string, wrongServer bool) {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	var dns *net.DNSError
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused", true
	case errors.As(err, &dns) && dns.IsNotFound:
		return "no such host " + dns.Name, true
	case errors.As(err, &dns):
		return "cannot look up " + dns.Name + ": " + dns.Err, false
	case errors.As(err, &ne) && ne.Timeout():
		return "no answer in time", false
	}
	return err.Error(), false
}
func (e *unreachable) Unwrap() []error { return []error{e.err, errdefs.ErrUnavailable} }

// KVOptions select a page of a function's key-value entries.
type KVOptions struct {
	Prefix, Cursor string
	Limit          int
}

// KVList lists a page of a function's key-value entries.
func (c *Client) KVList(ctx context.Context, owner, name string, o KVOptions) (api.KVList, error) {
	q := ownerQuery(owner)
	if q == nil {
		q = url.Values{}
	}
	if o.Prefix != "" {
		q.Set("prefix", o.Prefix)
	}
	if o.Cursor != "" {
		q.Set("cursor", o.Cursor)
	}
	if o.Limit != 0 {
		q.Set("limit", strconv.Itoa(o.Limit))
	}
	var out api.KVList
	err := c.do(ctx, "GET", "/api/v1/functions/"+url.PathEscape(name)+"/kv", q, nil, "", &out)
	for i := range out.Entries {
		out.Entries[i].Value = compact(out.Entries[i].Value)
	}
	return out, err
}

// compact is a JSON value as stored (a server before this one indented
// its kv answers).
func compact(v json.RawMessage) json.RawMessage {
	var b bytes.Buffer
	if json.Compact(&b, v) != nil {
		return v
	}
	return b.Bytes()
}

// KVGet returns a key's value (JSON text); a missing key is a not_found
// error.
func (c *Client) KVGet(ctx context.Context, owner, name, key string) (json.RawMessage, error) {
	var e struct {
		Value json.RawMessage `json:"value"`
	}
	err := c.do(ctx, "GET", kvPath(name, key), ownerQuery(owner), nil, "", &e)
	return compact(e.Value), err
}

// KVSet stores value (JSON text) under key, expiring after expireIn
// unless that is 0.
func (c *Client) KVSet(ctx context.Context, owner, name, key string, value json.RawMessage, expireIn time.Duration) error {
	q := ownerQuery(owner)
	if expireIn > 0 {
		if q == nil {
			q = url.Values{}
		}
		// Whole milliseconds, rounded up: 0 would be never.
		q.Set("expireIn", strconv.FormatInt(int64((expireIn+time.Millisecond-1)/time.Millisecond), 10))
	}
	return c.do(ctx, "PUT", kvPath(name, key), q, value, "application/json", nil)
}

// KVDelete removes a key.
func (c *Client) KVDelete(ctx context.Context, owner, name, key string) error {
	return c.do(ctx, "DELETE", kvPath(name, key), ownerQuery(owner), nil, "", nil)
}

func kvPath(name, key string) string {
	k := url.PathEscape(key)
	if key == "." || key == ".." {
		// As they are, the path's own . and .. segments.
		k = strings.ReplaceAll(k, ".", "%2E")
	}
	return "/api/v1/functions/" + url.PathEscape(name) + "/kv/" + k
}

// Enqueue queues an asynchronous invocation of a function: a POST of
// body (with contentType, if set) to path, later, with retries. It
// returns the invocation as queued.
func (c *Client) Enqueue(ctx context.Context, owner, name, path string, body []byte, contentType string) (api.InvocationView, error) {
	var v api.InvocationView
	q := url.Values{"path": {path}}
	if owner != "" {
		q.Set("owner", owner)
	}
	if body == nil {
		body = []byte{}
	}
	err := c.do(ctx, "POST", "/api/v1/functions/"+url.PathEscape(name)+"/invocations", q, body, contentType, &v)
	return v, err
}

// Invocation gets one asynchronous invocation, with its last answer.
func (c *Client) Invocation(ctx context.Context, owner, name, id string) (api.InvocationView, error) {
	var v api.InvocationView
	err := c.do(ctx, "GET", "/api/v1/functions/"+url.PathEscape(name)+"/invocations/"+url.PathEscape(id), ownerQuery(owner), nil, "", &v)
	return v, err
}

// Invocations lists a function's newest asynchronous invocations, up to
// limit, page after page, and says whether there are more.
func (c *Client) Invocations(ctx context.Context, owner, name string, limit int) ([]api.InvocationView, bool, error) {
	var all []api.InvocationView
	q := url.Values{}
	if owner != "" {
		q.Set("owner", owner)
	}
	for len(all) < limit {
		q.Set("limit", strconv.Itoa(min(limit-len(all), api.MaxPageSize)))
		var page api.InvocationList
		if err := c.do(ctx, "GET", "/api/v1/functions/"+url.PathEscape(name)+"/invocations", q, nil, "", &page); err != nil {
			return all, false, err
		}
		all = append(all, page.Invocations...)
		if page.Next == "" {
			return all, false, nil
		}
		q.Set("after", page.Next)
	}
	return all, true, nil
}
