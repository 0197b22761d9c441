// Package auth issues and checks API tokens and says who may do what.
// Tokens are "spry_<id>_<secret>": the id finds the record, only a SHA-256
// of the 256-bit secret is stored, and the comparison is constant-time. A
// fast hash is right here because the secret is random, not a password.
package auth

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spry-run/spry/internal/errdefs"
	"github.com/spry-run/spry/internal/store"
)

// Store is what auth needs of the metadata store.
type Store interface {
	store.Users
	store.Tokens
}

// Principal is an authenticated caller.
type Principal struct {
	User    string
	Admin   bool
	TokenID string
	// Scopes are what the token may do (never empty: ScopeAll for a
	// token without any stored).
	Scopes []Scope
	// ExpiresAt is when the token stops working; zero: never.
	ExpiresAt time.Time
}

// Allows reports whether p's token may do what needs need.
func (p Principal) Allows(need Scope) bool { return Allows(p.Scopes, need) }

// TokenOptions are what a new token may be limited to.
type TokenOptions struct {
	Scopes    []Scope   // none: ScopeAll
	ExpiresAt time.Time // zero: never
}

// CanManage reports whether p may see and change functions owned by owner.
func (p Principal) CanManage(owner string) bool { return p.Admin || p.User == owner }

// Service authenticates callers and issues tokens.
type Service struct {
	store Store
	now   func() time.Time
}

// New returns a Service over s.
func New(s Store, now func() time.Time) *Service {
	if now == nil {
		now = time.Now
	}
	return &Service{store: s, now: now}
}

// errBadToken is the one answer for a token that is not one, is revoked
// or has expired: which of them is no business of whoever holds it.
var errBadToken = errdefs.New(errdefs.ErrUnauthenticated, "invalid, expired or revoked token")

// Authenticate checks a bearer token and returns who it belongs to.
func (s *Service) Authenticate(ctx context.Context, token string) (Principal, error) {
	id, secret, ok := parse(token)
	if !ok {
		return Principal{}, errBadToken
	}
	t, err := s.store.GetToken(ctx, id)
	if err != nil {
		if errors.Is(err, errdefs.ErrNotFound) {
			// Compare anyway so a missing id costs what a wrong secret does.
			subtle.ConstantTimeCompare(hash(secret), make([]byte, sha256.Size))
			return Principal{}, errBadToken
		}
		return Principal{}, err
	}
	if subtle.ConstantTimeCompare(hash(secret), t.Hash) != 1 || !t.RevokedAt.IsZero() || Expired(t, s.now()) {
		return Principal{}, errBadToken
	}
	u, err := s.store.GetUser(ctx, t.User)
	if err != nil {
		if errors.Is(err, errdefs.ErrNotFound) {
			return Principal{}, errBadToken
		}
		return Principal{}, err
	}
	return Principal{User: u.Name, Admin: u.Admin, TokenID: t.ID, Scopes: FromStrings(t.Scopes), ExpiresAt: t.ExpiresAt}, nil
}

// Expired reports whether t has expired at now.
func Expired(t store.Token, now time.Time) bool {
	return !t.ExpiresAt.IsZero() && !now.Before(t.ExpiresAt)
}

// IssueToken creates a new token for user and returns its plaintext, which
// is never stored and cannot be shown again.
func (s *Service) IssueToken(ctx context.Context, user, name string, opt TokenOptions) (string, store.Token, error) {
	tok, t := s.newToken(user, name, opt)
	if err := s.store.CreateToken(ctx, t); err != nil {
		return "", store.Token{}, fmt.Errorf("issue token: %w", err)
	}
	return tok, t, nil
}

// CreateUser creates u with its first token, named name, in one
// transaction: a failure leaves neither, never a user no one can act
// as. It returns the token's plaintext, as IssueToken does.
func (s *Service) CreateUser(ctx context.Context, u store.User, name string, opt TokenOptions) (string, store.Token, error) {
	tok, t := s.newToken(u.Name, name, opt)
	if err := s.store.CreateUser(ctx, u, t); err != nil {
		return "", store.Token{}, err
	}
	return tok, t, nil
}

// newToken makes a token for user: its plaintext and its record.
func (s *Service) newToken(user, name string, opt TokenOptions) (string, store.Token) {
	var idb [8]byte
	var sec [32]byte
	// crypto/rand.Read never fails (it crashes the program instead).
	_, _ = rand.Read(idb[:])
	_, _ = rand.Read(sec[:])
	id := hex.EncodeToString(idb[:])
	secret := base64.RawURLEncoding.EncodeToString(sec[:])
	t := store.Token{ID: id, User: user, Hash: hash(secret), Name: name, CreatedAt: s.now(), ExpiresAt: opt.ExpiresAt, Scopes: Strings(normalize(opt.Scopes))}
	return "spry_" + id + "_" + secret, t
}

func hash(secret string) []byte {
	h := sha256.Sum256([]byte(secret))
	return h[:]
}

// parse splits "spry_<16 hex>_<43 base64url>".
func parse(token string) (id, secret string, ok bool) {
	if !shaped(token) {
		return "", "", false
	}
	return token[5:21], token[22:], true
}

// shaped says whether tok is "spry_<16 hex>_<43 base64url>", without
// allocating. (The decoders would also take the CR and LF that base64
// skips.)
func shaped[T string | []byte](tok T) bool {
	if len(tok) != len("spry_")+16+1+43 || string(tok[:5]) != "spry_" || tok[21] != '_' {
		return false
	}
	for i := 5; i < len(tok); i++ {
		c := tok[i]
		hex := '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
		b64 := '0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || c == '-' || c == '_'
		if i < 21 && !hex || i > 21 && !b64 {
			return false
		}
	}
	return true
}

// IsSpryBearer says whether the Authorization value v carries a token of
// Spry's shape, valid or not, without allocating (the router asks it of
// every request that has one).
func IsSpryBearer(v []byte) bool {
	scheme, tok, ok := bytes.Cut(v, []byte{' '})
	return ok && bytes.EqualFold(scheme, []byte("Bearer")) && shaped(bytes.TrimSpace(tok))
}

// BearerToken extracts the token from an Authorization header value.
func BearerToken(header string) (string, bool) {
	scheme, tok, ok := strings.Cut(header, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	tok = strings.TrimSpace(tok)
	return tok, tok != ""
}
