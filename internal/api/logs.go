package api

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/spry-run/spry/internal/auth"
	"github.com/spry-run/spry/internal/errdefs"
	"github.com/spry-run/spry/internal/logstore"
)

// Logs reads function logs.
type Logs interface {
	QueryMore(ctx context.Context, q logstore.Query) ([]logstore.Entry, bool, error)
	Follow(ctx context.Context, q logstore.Query) (<-chan logstore.Entry, func() error)
}

// LogsTruncatedHeader, on a log read (not a follow), says that the
// limit left out entries that pass its filters: "older" ones (a tail),
// or "newer" ones (a page after an id; the next page is after the last
// id sent).
const LogsTruncatedHeader = "Spry-Logs-Truncated"

// MaxFollowsPerUser bounds the log follows one user keeps open at once:
// each holds a connection, a goroutine and a buffer of up to
// logstore.Options.FollowBuffer lines.
const MaxFollowsPerUser = 16

// MaxReadsPerUser bounds the log reads (not follows) of one user in
// progress at once. A read holds its entries, up to
// logstore.MaxQueryBytes of lines, until the client has taken them: a
// client that reads none held them for good, so a user with one function
// that logs could pin the server's memory 8 MiB a connection (60 such
// connections held some 500 MiB).
const MaxReadsPerUser = 4

// LogLine is one log entry as the API streams it (NDJSON).
type LogLine struct {
	ID        int64     `json:"id"`
	Time      time.Time `json:"time"`
	Version   int64     `json:"version"`
	Instance  string    `json:"instance,omitempty"`
	Stream    string    `json:"stream"`
	RequestID string    `json:"request_id,omitempty"`
	Line      string    `json:"line"`
}

// parseSince reads "10m" (that long ago) or an RFC 3339 time.
func parseSince(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if d, err := time.ParseDuration(s); err == nil && d >= 0 {
		return now.Add(-d), nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	return time.Time{}, errdefs.Invalid("since %q: want a duration like 10m or an RFC 3339 time", s)
}

func (a *API) functionLogs(w http.ResponseWriter, r *http.Request) error {
	owner, name, err := a.target(r)
	if err != nil {
		return err
	}
	fn, err := a.fns.Get(r.Context(), owner, name)
	if err != nil {
		return err
	}
	qv := r.URL.Query()
	q := logstore.Query{Owner: owner, Function: name, FunctionID: fn.ID}
	if q.Since, err = parseSince(qv.Get("since"), a.cfg.Now()); err != nil {
		return err
	}
	for _, p := range []struct {
		key string
		dst *int64
	}{{"version", &q.Version}, {"after", &q.AfterID}} {
		if v := qv.Get(p.key); v != "" {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n < 0 {
				return errdefs.Invalid("%s %q: want a non-negative integer", p.key, v)
			}
			*p.dst = n
		}
	}
	if v := qv.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > logstore.MaxLimit {
			return errdefs.Invalid("limit %q: want 1 to %d", v, logstore.MaxLimit)
		}
		q.Limit = n
	}
	follow, err := queryBool(qv, "follow", false)
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	enc := json.NewEncoder(w)
	write := func(e logstore.Entry) error {
		return enc.Encode(LogLine{ID: e.ID, Time: e.Time, Version: e.Version, Instance: e.Instance, Stream: e.Stream, RequestID: e.RequestID, Line: e.Line})
	}
	if !follow {
		user := principal(r).User
		if err := a.openRead(user); err != nil {
			// Reads end by themselves, unlike follows.
			w.Header().Set("Retry-After", "1")
			return err
		}
		defer a.closeRead(user)
		entries, more, err := a.logs.QueryMore(r.Context(), q)
		if err != nil {
			return err
		}
		if more {
			// The head is the only place left to say so: the body is
			// the entries, one a line. A tail is cut at its old end, a
			// page after an id at its new end.
			cut := "older"
			if q.AfterID > 0 {
				cut = "newer"
			}
			w.Header().Set(LogsTruncatedHeader, cut)
		}
		for _, e := range entries {
			if err := write(e); err != nil {
				return nil
			}
		}
		return nil
	}
	ctx, cancel := context.WithCancelCause(r.Context())
	defer cancel(nil)
	f, err := a.openFollow(principal(r), cancel)
	if err != nil {
		return err
	}
	defer a.closeFollow(f)
	// A revoke between the authentication and openFollow found no
	// follow to end: look again now that this one is recorded.
	if t, err := a.tokens.GetToken(ctx, f.token); errors.Is(err, errdefs.ErrNotFound) || err == nil && (!t.RevokedAt.IsZero() || auth.Expired(t, a.cfg.Now())) {
		return errdefs.New(errdefs.ErrUnauthenticated, "invalid, expired or revoked token")
	} else if err != nil {
		return err
	}
	ch, errf := a.logs.Follow(ctx, q)
	rc := http.NewResponseController(w)
	w.WriteHeader(http.StatusOK)
	_ = rc.Flush()
	for e := range ch {
		if err := write(e); err != nil {
			return nil
		}
		if len(ch) == 0 {
			_ = rc.Flush()
		}
	}
	if err := errf(); err != nil && r.Context().Err() == nil {
		// The stream's last line says why it ended, in the API's error
		// shape: the head, 200, is long gone.
		switch {
		case ctx.Err() != nil:
			// Its token was revoked or expired, or its user deleted.
			err = context.Cause(ctx)
		case errors.Is(err, logstore.ErrDeleted):
			err = errdefs.New(errdefs.ErrNotFound, "function %s/%s was deleted", owner, name)
		case errors.Is(err, logstore.ErrClosed):
			err = errdefs.New(errdefs.ErrUnavailable, "the server is shutting down; follow again once it is back")
		default:
			a.log.Warn("log follow ended", "owner", owner, "function", name, "err", err)
		}
		_, body := errdefs.Encode(err)
		_, _ = w.Write(body)
	}
	return nil
}

// follower is one open log follow: whose, and how to end it.
type follower struct {
	user, token string
	cancel      context.CancelCauseFunc
	expires     time.Time   // when its token expires; zero: never
	stop        func() bool // stops the expiry's timer (followMu)
}

// openFollow counts one more follow of p's, if MaxFollowsPerUser allows,
// and records it so that revoking its token, or its expiry, ends it.
func (a *API) openFollow(p auth.Principal, cancel context.CancelCauseFunc) (*follower, error) {
	a.followMu.Lock()
	defer a.followMu.Unlock()
	if !a.follows.take(p.User, MaxFollowsPerUser) {
		return nil, errdefs.New(errdefs.ErrRateLimited, "%s already follows %d logs, the most at once; end one first", p.User, MaxFollowsPerUser)
	}
	f := &follower{user: p.User, token: p.TokenID, cancel: cancel, expires: p.ExpiresAt}
	a.followers[f] = struct{}{}
	if !f.expires.IsZero() {
		a.armExpiry(f)
	}
	return f, nil
}

// armExpiry ends f when its token expires, as a revocation would (the
// same cancel): a follow outlives its token in neither case. The time
// is the API's clock's; a timer that fires before it says so is armed
// again for the rest (followMu held).
func (a *API) armExpiry(f *follower) {
	f.stop = a.cfg.AfterFunc(f.expires.Sub(a.cfg.Now()), func() {
		a.followMu.Lock()
		defer a.followMu.Unlock()
		if _, open := a.followers[f]; !open {
			return
		}
		if a.cfg.Now().Before(f.expires) {
			a.armExpiry(f)
			return
		}
		f.cancel(errdefs.New(errdefs.ErrUnauthenticated, "token %s expired", f.token))
	})
}

func (a *API) closeFollow(f *follower) {
	a.followMu.Lock()
	defer a.followMu.Unlock()
	if f.stop != nil {
		f.stop()
	}
	delete(a.followers, f)
	a.follows.give(f.user)
}

// openRead counts one more log read of user's, if MaxReadsPerUser allows.
func (a *API) openRead(user string) error {
	a.followMu.Lock()
	defer a.followMu.Unlock()
	if !a.reads.take(user, MaxReadsPerUser) {
		return errdefs.New(errdefs.ErrRateLimited, "%s already reads %d logs, the most at once; wait for one to end", user, MaxReadsPerUser)
	}
	return nil
}

func (a *API) closeRead(user string) {
	a.followMu.Lock()
	defer a.followMu.Unlock()
	a.reads.give(user)
}

// perUser counts what each user holds of something bounded per user
// (its callers lock).
type perUser map[string]int

// take counts one more of user's, unless they hold limit already.
func (c perUser) take(user string, limit int) bool {
	if c[user] >= limit {
		return false
	}
	c[user]++
	return true
}

// give gives one of user's back.
func (c perUser) give(user string) {
	if c[user]--; c[user] <= 0 {
		delete(c, user)
	}
}

// endFollows ends the open follows of a token (or, with token "", of a
// user): a follow outlives no token of its own, as no request does.
func (a *API) endFollows(user, token string, why error) {
	a.followMu.Lock()
	defer a.followMu.Unlock()
	for f := range a.followers {
		if (token != "" && f.token == token) || (token == "" && f.user == user) {
			f.cancel(why)
		}
	}
}
