package api

import (
	"errors"
	"net/http"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/spry-run/spry/internal/errdefs"
	"github.com/spry-run/spry/internal/store"
)

// TokenView is a token as the API shows it; the secret is never shown
// again after creation.
type TokenView struct {
	ID        string     `json:"id"`
	User      string     `json:"user"`
	Name      string     `json:"name"`
	CreatedAt time.Time  `json:"created_at"`
	RevokedAt *time.Time `json:"revoked_at,omitempty"`
}

func tokenView(t store.Token) TokenView {
	v := TokenView{ID: t.ID, User: t.User, Name: t.Name, CreatedAt: t.CreatedAt}
	if !t.RevokedAt.IsZero() {
		r := t.RevokedAt
		v.RevokedAt = &r
	}
	return v
}

// tokenUser is whose tokens a request is about: the caller's own, or any
// user's for an admin.
func tokenUser(r *http.Request, user string) (string, error) {
	p := principal(r)
	if user == "" || user == p.User {
		return p.User, nil
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
	ts, err := a.tokens.ListTokens(r.Context(), user)
	if err != nil {
		return err
	}
	out := make([]TokenView, 0, len(ts))
	for _, t := range ts {
		out = append(out, tokenView(t))
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
	user, err := tokenUser(r, body.User)
	if err != nil {
		return err
	}
	// Held, so that the user is not deleted, and perhaps made again,
	// before its token is stored: the token would be the new user's.
	if err := a.holdUser(r, user, errdefs.New(errdefs.ErrNotFound, "user %s was deleted", user)); err != nil {
		return err
	}
	if _, err := a.users.GetUser(r.Context(), user); err != nil {
		return err
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
		if t.RevokedAt.IsZero() {
			active++
		}
	}
	if active >= MaxTokensPerUser {
		return errdefs.New(errdefs.ErrQuotaExceeded, "%s has %d tokens, as many as one user may; revoke one to make another", user, active)
	}
	tok, t, err := a.auth.IssueToken(r.Context(), user, body.Name)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusCreated, map[string]any{"token": tok, "id": t.ID, "user": t.User, "name": t.Name})
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
	a.endFollows(t.User, id, errdefs.New(errdefs.ErrUnauthenticated, "token %s was revoked", id))
	w.WriteHeader(http.StatusNoContent)
	return nil
}
