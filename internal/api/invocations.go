package api

import (
	"context"
	"encoding/base64"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/spry-run/spry/internal/async"
	"github.com/spry-run/spry/internal/errdefs"
	"github.com/spry-run/spry/internal/functions"
)

// Invocations are functions' asynchronous invocations (async.Worker).
type Invocations interface {
	// Enqueue stores inv as a new invocation, due now, and sets its id,
	// status and times.
	Enqueue(ctx context.Context, inv *async.Invocation) error
	Get(ctx context.Context, fn, id string) (async.Invocation, error)
	List(ctx context.Context, fn string, before int64, limit int) ([]async.Invocation, error)
	// Attempts is how many attempts an invocation of a function that
	// allows max gets.
	Attempts(max int) int
	// Usage and Bounds are what an owner's invocations take, and what
	// they may (0: no bound), for GET /api/v1/usage.
	Usage(ctx context.Context, owner string) (async.Usage, error)
	Bounds() async.Bounds
}

// MaxInvocationBody bounds an asynchronous invocation's body
// (async.MaxBody).
const MaxInvocationBody = async.MaxBody

// maxInvocationPath bounds the path (and query) an invocation is sent
// to.
const maxInvocationPath = 8 << 10

// InvocationView is an asynchronous invocation as the API shows it.
type InvocationView struct {
	ID          string `json:"id"`
	Owner       string `json:"owner"`
	Function    string `json:"function"`
	Path        string `json:"path"`
	ContentType string `json:"content_type,omitempty"`
	// Status is queued (also while it waits for a retry), running,
	// succeeded or failed.
	Status      string     `json:"status"`
	Attempts    int        `json:"attempts"`
	MaxAttempts int        `json:"max_attempts"`
	CreatedAt   time.Time  `json:"created_at"`
	StartedAt   *time.Time `json:"started_at"`  // the last attempt's start
	FinishedAt  *time.Time `json:"finished_at"` // null until it has
	// NextAttemptAt is when a queued one may run next.
	NextAttemptAt *time.Time `json:"next_attempt_at,omitempty"`
	// The last attempt's: its answer's status (none if it had no
	// answer), how long it took, and what went wrong.
	HTTPStatus int     `json:"http_status,omitempty"`
	DurationMS float64 `json:"duration_ms,omitempty"`
	Error      string  `json:"error,omitempty"`
	// ForwardedTo is, for a failed one, the id of the invocation of its
	// function's on-failure destination its event was sent on as.
	ForwardedTo string `json:"forwarded_to,omitempty"`
	// FailureOf is, for an on-failure destination's invocation, the id
	// of the failed invocation whose event it carries.
	FailureOf string `json:"failure_of,omitempty"`
	// Response is the last attempt's answer, in GET of one invocation.
	Response *ResponseView `json:"response,omitempty"`
}

// ResponseView is the answer of an invocation's last attempt: its
// body's first 64 KiB, as text if they are UTF-8, else base64; shown as
// a failure's event shows it.
type ResponseView = async.EventResponse

// InvocationList is one page of invocations, newest first; Next, if
// set, is the cursor (?after=) of the page after it.
type InvocationList struct {
	Invocations []InvocationView `json:"invocations"`
	Next        string           `json:"next,omitempty"`
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	t = t.UTC()
	return &t
}

// invocationView shows inv, an invocation of a function whose
// invocations get maxAttempts (invocationsTarget).
func invocationView(inv async.Invocation, maxAttempts int, withResponse bool) InvocationView {
	v := InvocationView{ID: inv.ID, Owner: inv.Owner, Function: inv.Function, Path: inv.Path, ContentType: inv.ContentType,
		Status: inv.Status, Attempts: inv.Attempts, MaxAttempts: maxAttempts,
		CreatedAt: inv.CreatedAt.UTC(), StartedAt: timePtr(inv.StartedAt), FinishedAt: timePtr(inv.FinishedAt),
		HTTPStatus: inv.Last.Status, DurationMS: float64(inv.Last.Duration.Microseconds()) / 1000, Error: inv.Last.Error,
		ForwardedTo: inv.ForwardedTo, FailureOf: inv.FailureOf}
	if inv.Status == async.StatusQueued {
		v.NextAttemptAt = timePtr(inv.NextAt)
	}
	if withResponse && inv.Last.Status != 0 {
		r := &ResponseView{ContentType: inv.Last.ContentType, Truncated: inv.Last.Truncated}
		r.Body, r.Encoding = async.EncodeBody(inv.Last.Body)
		v.Response = r
	}
	return v
}

// invocationsTarget is the function an invocations request is about.
type invocationsTarget struct {
	owner, name, id string
	// maxAttempts is how many attempts its invocations get, as its live
	// version allows now (an attempt goes by the version live when it
	// runs).
	maxAttempts int
}

// invocationsFunction resolves the request's function.
func (a *API) invocationsFunction(r *http.Request) (invocationsTarget, error) {
	if a.cfg.Invocations == nil {
		return invocationsTarget{}, errdefs.New(errdefs.ErrUnavailable, "this server runs no asynchronous invocations")
	}
	owner, name, err := a.target(r)
	if err != nil {
		return invocationsTarget{}, err
	}
	fn, err := a.fns.Get(r.Context(), owner, name)
	if err != nil {
		return invocationsTarget{}, err
	}
	max := a.cfg.Invocations.Attempts(functions.AsyncRetries(fn.Live.Config.Limits) + 1)
	return invocationsTarget{owner: owner, name: name, id: fn.ID, maxAttempts: max}, nil
}

// checkInvocationPath refuses a path a request could not be sent to:
// one not starting with /, with a fragment, white space or control
// characters, a broken percent-escape, or bytes that are not UTF-8.
func checkInvocationPath(p string) error {
	switch {
	case !strings.HasPrefix(p, "/"):
		return errdefs.Invalid("path %q must start with /", p)
	case len(p) > maxInvocationPath:
		return errdefs.Invalid("path is over %d bytes", maxInvocationPath)
	case !utf8.ValidString(p):
		return errdefs.Invalid("path is not UTF-8")
	case strings.ContainsRune(p, '#'):
		return errdefs.Invalid("path %q has a fragment (#); escape it as %%23", p)
	}
	for i := 0; i < len(p); i++ {
		if c := p[i]; c <= ' ' || c == 0x7f {
			return errdefs.Invalid("path %q holds white space or a control character; escape it", p)
		}
	}
	if _, err := url.ParseRequestURI(p); err != nil {
		return errdefs.Invalid("path %q: %v", p, err)
	}
	return nil
}

func (a *API) enqueueInvocation(w http.ResponseWriter, r *http.Request) error {
	t, err := a.invocationsFunction(r)
	if err != nil {
		return err
	}
	owner, name := t.owner, t.name
	path := r.URL.Query().Get("path")
	if path == "" {
		path = "/"
	}
	if err := checkInvocationPath(path); err != nil {
		return err
	}
	ct := r.Header.Get("Content-Type")
	if len(ct) > 1024 {
		return errdefs.Invalid("Content-Type is over 1024 bytes")
	}
	end, err := a.timeBody(w, r)
	if err != nil {
		return err
	}
	max := a.cfg.MaxInvocationBytes
	if max <= 0 {
		max = MaxInvocationBody
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, max))
	end()
	if err != nil {
		return bodyError(err)
	}
	inv := &async.Invocation{Owner: owner, FunctionID: t.id, Function: name, Path: path, Host: r.Host, ContentType: ct, Body: body}
	if err := a.cfg.Invocations.Enqueue(r.Context(), inv); err != nil {
		if errdefs.HTTPStatus(err) == http.StatusTooManyRequests {
			// Longer than a client retries by itself: invocations
			// finish at their functions' pace.
			w.Header().Set("Retry-After", "60")
		}
		return err
	}
	loc := "/api/v1/functions/" + url.PathEscape(name) + "/invocations/" + inv.ID
	if r.URL.Query().Has("owner") {
		loc += "?" + url.Values{"owner": {owner}}.Encode()
	}
	w.Header().Set("Location", loc)
	return writeJSON(w, http.StatusAccepted, invocationView(*inv, t.maxAttempts, false))
}

func (a *API) getInvocation(w http.ResponseWriter, r *http.Request) error {
	t, err := a.invocationsFunction(r)
	if err != nil {
		return err
	}
	inv, err := a.cfg.Invocations.Get(r.Context(), t.id, r.PathValue("id"))
	if err != nil {
		return err
	}
	return writeCompact(w, http.StatusOK, invocationView(inv, t.maxAttempts, true))
}

func (a *API) listInvocations(w http.ResponseWriter, r *http.Request) error {
	t, err := a.invocationsFunction(r)
	if err != nil {
		return err
	}
	q := r.URL.Query()
	limit := DefaultPageSize
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > MaxPageSize {
			return errdefs.Invalid("limit must be a whole number from 1 to %d", MaxPageSize)
		}
		limit = n
	}
	var before int64
	if q.Has("after") {
		// Empty is no cursor (see parsePage).
		b, err := base64.RawURLEncoding.DecodeString(q.Get("after"))
		if err == nil {
			before, err = strconv.ParseInt(string(b), 10, 64)
		}
		if err != nil || before < 1 {
			return errdefs.Invalid("after is not a cursor from this list's next")
		}
	}
	invs, err := a.cfg.Invocations.List(r.Context(), t.id, before, limit+1)
	if err != nil {
		return err
	}
	res := InvocationList{Invocations: make([]InvocationView, 0, min(len(invs), limit))}
	if len(invs) > limit {
		invs = invs[:limit]
		res.Next = base64.RawURLEncoding.EncodeToString([]byte(strconv.FormatInt(invs[limit-1].Seq, 10)))
	}
	for _, inv := range invs {
		res.Invocations = append(res.Invocations, invocationView(inv, t.maxAttempts, false))
	}
	return writeJSON(w, http.StatusOK, res)
}
