package auth

import (
	"slices"
	"strings"
	"time"

	"github.com/spry-run/spry/internal/errdefs"
)

// Scope names what a token may do. A token holds a set of them; the
// management API says which one each of its routes needs.
type Scope string

const (
	// ScopeAll is every right of the token's user: the default, and
	// what every token made before scopes holds.
	ScopeAll Scope = "all"
	// ScopeRead reads what the user may see: functions, versions, logs
	// (follows included), key-value entries, env and secret names.
	ScopeRead Scope = "read"
	// ScopeDeploy is ScopeRead and every change to functions: deploys,
	// configuration, versions, key-value writes, deletion. Not tokens,
	// not users.
	ScopeDeploy Scope = "deploy"
	// ScopeMetrics reads /metrics, and only that; only an admin's token
	// may hold it (it is how a monitoring system scrapes without a full
	// admin token).
	ScopeMetrics Scope = "metrics"
	// ScopeInvoke calls the private functions the token's user may
	// manage (an admin's: everyone's), and nothing else: what a service
	// calling an internal function is given. It reads nothing, so a
	// leaked one shows neither code, env nor logs.
	ScopeInvoke Scope = "invoke"
)

// Scopes are the scopes a token may be given, in the order they are
// listed.
var Scopes = []Scope{ScopeRead, ScopeInvoke, ScopeDeploy, ScopeMetrics, ScopeAll}

// implies says which scopes each scope grants besides itself.
var implies = map[Scope][]Scope{
	ScopeAll: {ScopeRead, ScopeInvoke, ScopeDeploy, ScopeMetrics},
	// A deployer may call what it deploys, to try it.
	ScopeDeploy: {ScopeRead, ScopeInvoke},
}

// Allows reports whether a token holding held may do what needs need.
func Allows(held []Scope, need Scope) bool {
	for _, h := range held {
		if h == need || slices.Contains(implies[h], need) {
			return true
		}
	}
	return false
}

// Within reports whether every scope of want is allowed by held: a token
// never makes one with more rights than its own.
func Within(want, held []Scope) bool {
	for _, w := range want {
		if !Allows(held, w) {
			return false
		}
	}
	return true
}

// ParseScopes reads scope names (each may be a comma-separated list),
// dropping repeats and, beside "all", the scopes it implies. None at
// all is ScopeAll.
func ParseScopes(names []string) ([]Scope, error) {
	var out []Scope
	for _, n := range names {
		for s := range strings.SplitSeq(n, ",") {
			sc := Scope(strings.TrimSpace(s))
			if !slices.Contains(Scopes, sc) {
				return nil, errdefs.Invalid("scopes: unknown scope %q; want %s", sc, scopeList())
			}
			if !slices.Contains(out, sc) {
				out = append(out, sc)
			}
		}
	}
	return normalize(out), nil
}

// normalize orders scopes as Scopes lists them and drops those another
// implies; empty is ScopeAll.
func normalize(in []Scope) []Scope {
	var out []Scope
	for _, s := range Scopes {
		if !slices.Contains(in, s) {
			continue
		}
		implied := false
		for _, o := range in {
			if o != s && slices.Contains(implies[o], s) {
				implied = true
			}
		}
		if !implied {
			out = append(out, s)
		}
	}
	if len(out) == 0 {
		return []Scope{ScopeAll}
	}
	return out
}

// FromStrings reads stored scope names; none (a token from before
// scopes) is ScopeAll. A name this version does not know grants nothing.
func FromStrings(names []string) []Scope {
	out := make([]Scope, 0, len(names))
	for _, n := range names {
		out = append(out, Scope(n))
	}
	if len(out) == 0 {
		return []Scope{ScopeAll}
	}
	return out
}

// Strings is scopes as stored and shown.
func Strings(scopes []Scope) []string {
	out := make([]string, 0, len(scopes))
	for _, s := range scopes {
		out = append(out, string(s))
	}
	return out
}

func scopeList() string { return strings.Join(Strings(Scopes), ", ") }

// Token lifetimes: shorter would expire before a CI job could use it, and
// longer is as good as none.
const (
	MinLifetime = time.Minute
	MaxLifetime = 10 * 365 * 24 * time.Hour
)

// ParseLifetime reads a token's lifetime: a Go duration ("720h",
// "90m") or a whole number of days ("30d"), within MinLifetime and
// MaxLifetime. field names it in errors.
func ParseLifetime(field, s string) (time.Duration, error) {
	d, ok := parseDays(s)
	if !ok {
		return 0, errdefs.Invalid("%s %q: want a duration like 720h or 30d", field, s)
	}
	if d < MinLifetime || d > MaxLifetime {
		return 0, errdefs.Invalid("%s %q: want 1m to 3650d", field, s)
	}
	return d, nil
}

// parseDays is time.ParseDuration, or a whole number of days ("30d").
func parseDays(s string) (time.Duration, bool) {
	if n, ok := strings.CutSuffix(s, "d"); ok {
		days := 0
		if n == "" || len(n) > 5 {
			return 0, false
		}
		for _, c := range n {
			if c < '0' || c > '9' {
				return 0, false
			}
			days = days*10 + int(c-'0')
		}
		return time.Duration(days) * 24 * time.Hour, true
	}
	d, err := time.ParseDuration(s)
	return d, err == nil
}

// Expiry is when a token made at now stops working: now+lifetime, or at
// (RFC 3339), one of them or neither (zero: never). Both bounded as
// ParseLifetime bounds a lifetime.
func Expiry(now time.Time, lifetime, at string) (time.Time, error) {
	switch {
	case lifetime != "" && at != "":
		return time.Time{}, errdefs.Invalid("expires_in and expires_at: give one of them")
	case lifetime != "":
		d, err := ParseLifetime("expires_in", lifetime)
		if err != nil {
			return time.Time{}, err
		}
		return now.Add(d).UTC(), nil
	case at != "":
		t, err := time.Parse(time.RFC3339Nano, at)
		if err != nil {
			return time.Time{}, errdefs.Invalid("expires_at %q: want an RFC 3339 time like 2030-01-02T15:04:05Z", at)
		}
		if d := t.Sub(now); d < MinLifetime || d > MaxLifetime {
			return time.Time{}, errdefs.Invalid("expires_at %q: want a time 1m to 3650d from now", at)
		}
		return t.UTC(), nil
	}
	return time.Time{}, nil
}
