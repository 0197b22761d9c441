package api

import (
	"errors"
	"net/http"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/spry-run/spry/internal/auth"
	"github.com/spry-run/spry/internal/errdefs"
	"github.com/spry-run/spry/internal/names"
	"github.com/spry-run/spry/internal/store"
)

// TokenView is a token as the API shows it; the secret is never shown
// again after creation.
type TokenView struct {
	ID        string     `json:"id"`
	User      string     `json:"user"`
	Name      string     `json:"name"`
	Scopes    []string   `json:"scopes"`
	CreatedAt time.Time  `json:"created_at"`
	RevokedAt *time.Time `json:"revoked_at,omitempty"`
	// ExpiresAt is null for a token that never expires.
	ExpiresAt *time.Time `json:"expires_at"`
	Expired   bool       `json:"expired"`
}

func tokenView(t store.Token, now time.Time) TokenView {
	v := TokenView{ID: t.ID, User: t.User, Name: t.Name, Scopes: auth.Strings(auth.FromStrings(t.Scopes)), CreatedAt: t.CreatedAt,
		ExpiresAt: timeOrNil(t.ExpiresAt), Expired: auth.Expired(t, now)}
	if !t.RevokedAt.IsZero() {
		r := t.RevokedAt
		v.RevokedAt = &r
	}
	return v
}

// timeOrNil is t, or nil (JSON null) for the zero time.
func timeOrNil(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

// tokenUser is whose tokens a request is about: the caller's own, or any
// user's for an admin. A name no user may have is a 400, as usage's.
func tokenUser(r *http.Request, user string) (string, error) {
	p := principal(r)
	if user == "" || user == p.User {
		return p.User, nil
	}
	if err := names.User(user); err != nil {
		return "", err
	}
	if !p.Admin {
		return "", errdefs.New(errdefs.ErrPermissionDenied, "you may not manage tokens of user %q", user)
	}
	return user, nil
}

func (a *API) listTokens(w http.ResponseWriter, r *http.Request) error {
	user, err := tokenUser(r, r.URL.Query().Get("user"))
	if err != nil {
		return err
	}
	if user != principal(r).User {
		// An admin's ?user= of no user is a 404, as for usage: an empty
		// list said a mistyped name had no tokens.
		if _, err := a.users.GetUser(r.Context(), user); err != nil {
			return err
		}
	}
	ts, err := a.tokens.ListTokens(r.Context(), user)
	if err != nil {
		return err
	}
	out := make([]TokenView, 0, len(ts))
	for _, t := range ts {
		out = append(out, tokenView(t, a.cfg.Now()))
	}
	return writeJSON(w, http.StatusOK, map[string]any{"tokens": out})
}

// unprintable says whether r is not for a terminal as it is: a control
// character, or a bidirectional control (Unicode's Bidi_Control).
func unprintable(r rune) bool { return unicode.IsControl(r) || unicode.Is(unicode.Bidi_Control, r) }

// MaxTokensPerUser bounds a user's tokens not revoked: each is a row
// every listing reads, and an unbounded count is a way to grow the store.
const MaxTokensPerUser = 100

// CreateTokenBody is the body of POST /api/v1/tokens.
type CreateTokenBody struct {
	Name string `json:"name,omitempty"`
	User string `json:"user,omitempty"`
	// Scopes limit the token (auth.Scope names; none: all).
	Scopes []string `json:"scopes,omitempty"`
	Expiry
}

// Expiry is when a new token expires: after ExpiresIn (a Go duration, or
// days as "30d") or at ExpiresAt (RFC 3339), one of them or neither
// (never).
type Expiry struct {
	ExpiresIn string `json:"expires_in,omitempty"`
	ExpiresAt string `json:"expires_at,omitempty"`
}

func (a *API) createToken(w http.ResponseWriter, r *http.Request) error {
	var body CreateTokenBody
	if err := readJSON(w, r, &body); err != nil {
		return err
	}
	if len(body.Name) > 200 {
		return errdefs.Invalid("token name is over 200 bytes")
	}
	// It is shown in terminals (spry token ls), the token's dates after
	// it: no control characters, nor bidirectional ones, which a terminal
	// applying the bidi algorithm reorders the rest of the line by.
	if strings.ContainsFunc(body.Name, unprintable) || !utf8.ValidString(body.Name) {
		return errdefs.Invalid("token name has control characters, bidirectional controls (U+202E...), or is not UTF-8")
	}
	scopes, err := auth.ParseScopes(body.Scopes)
	if err != nil {
		return err
	}
	expires, err := auth.Expiry(a.cfg.Now(), body.ExpiresIn, body.ExpiresAt)
	if err != nil {
		return err
	}
	// Only tokens with every right reach here (the route needs all),
	// but the rule holds whatever the routes say: no token makes one
	// with more rights than its own.
	if p := principal(r); !auth.Within(scopes, p.Scopes) {
		return errdefs.New(errdefs.ErrPermissionDenied, "a token with scopes %s cannot make one with scopes %s",
			strings.Join(auth.Strings(p.Scopes), ", "), strings.Join(auth.Strings(scopes), ", "))
	}
	user, err := tokenUser(r, body.User)
	if err != nil {
		return err
	}
	// Held, so that the user is not deleted, and perhaps made again,
	// before its token is stored: the token would be the new user's.
	if err := a.holdUser(r, user, errdefs.New(errdefs.ErrNotFound, "user %s was deleted", user)); err != nil {
		return err
	}
	u, err := a.users.GetUser(r.Context(), user)
	if err != nil {
		return err
	}
	if slices.Contains(scopes, auth.ScopeMetrics) && !u.Admin {
		return errdefs.New(errdefs.ErrPermissionDenied, "only an admin's token may hold scope metrics; %s is not an admin", user)
	}
	// Counted and made one at a time, so the count cannot go stale.
	a.tokenMu.Lock()
	defer a.tokenMu.Unlock()
	ts, err := a.tokens.ListTokens(r.Context(), user)
	if err != nil {
		return err
	}
	active := 0
	for _, t := range ts {
		if !t.RevokedAt.IsZero() {
			continue
		}
		// An expired token is as dead as a revoked one: it is recorded
		// as revoked when it expired, so that it neither counts against
		// the bound (a CI job making a short-lived token per run would
		// reach it) nor stays for good (revoked ones are pruned).
		if auth.Expired(t, a.cfg.Now()) {
			if err := a.tokens.RevokeToken(r.Context(), t.ID, t.ExpiresAt); err != nil {
				return err
			}
			continue
		}
		active++
	}
	if active >= MaxTokensPerUser {
		return errdefs.New(errdefs.ErrQuotaExceeded, "%s has %d tokens, as many as one user may; revoke one to make another", user, active)
	}
	tok, t, err := a.auth.IssueToken(r.Context(), user, body.Name, auth.TokenOptions{Scopes: scopes, ExpiresAt: expires})
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusCreated, map[string]any{"token": tok, "id": t.ID, "user": t.User, "name": t.Name,
		"scopes": t.Scopes, "expires_at": timeOrNil(t.ExpiresAt)})
}

func (a *API) revokeToken(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("id")
	// Not found rather than forbidden for others' tokens, in the same
	// words as for missing ones: ids of others' tokens are not the
	// caller's business.
	notFound := errdefs.New(errdefs.ErrNotFound, "token %q not found", id)
	t, err := a.tokens.GetToken(r.Context(), id)
	if errors.Is(err, errdefs.ErrNotFound) {
		return notFound
	}
	if err != nil {
		return err
	}
	if p := principal(r); !p.Admin && t.User != p.User {
		return notFound
	}
	if err := a.tokens.RevokeToken(r.Context(), id, a.cfg.Now()); err != nil {
		return err
	}
	if a.cfg.Forget != nil {
		a.cfg.Forget.ForgetToken(id)
	}
	a.endFollows(t.User, id, errdefs.New(errdefs.ErrUnauthenticated, "token %s was revoked", id))
	w.WriteHeader(http.StatusNoContent)
	return nil
}
