package auth

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/spry-run/spry/internal/errdefs"
	"github.com/spry-run/spry/internal/store"
	"github.com/spry-run/spry/internal/store/sqlite"
)

func TestAllows(t *testing.T) {
	tests := []struct {
		held []Scope
		need Scope
		want bool
	}{
		{[]Scope{ScopeAll}, ScopeRead, true},
		{[]Scope{ScopeAll}, ScopeDeploy, true},
		{[]Scope{ScopeAll}, ScopeMetrics, true},
		{[]Scope{ScopeAll}, ScopeAll, true},
		{[]Scope{ScopeDeploy}, ScopeRead, true},
		{[]Scope{ScopeDeploy}, ScopeDeploy, true},
		{[]Scope{ScopeDeploy}, ScopeAll, false},
		{[]Scope{ScopeDeploy}, ScopeMetrics, false},
		{[]Scope{ScopeRead}, ScopeRead, true},
		{[]Scope{ScopeRead}, ScopeDeploy, false},
		{[]Scope{ScopeMetrics}, ScopeRead, false},
		{[]Scope{ScopeMetrics}, ScopeMetrics, true},
		{[]Scope{ScopeRead, ScopeMetrics}, ScopeMetrics, true},
		{[]Scope{ScopeAll}, ScopeInvoke, true},
		{[]Scope{ScopeDeploy}, ScopeInvoke, true},
		{[]Scope{ScopeRead}, ScopeInvoke, false},
		{[]Scope{ScopeMetrics}, ScopeInvoke, false},
		{[]Scope{ScopeInvoke}, ScopeInvoke, true},
		{[]Scope{ScopeInvoke}, ScopeRead, false},
		{[]Scope{ScopeInvoke}, ScopeDeploy, false},
		{[]Scope{"future"}, ScopeRead, false},
		{nil, ScopeRead, false},
	}
	for _, tt := range tests {
		if got := Allows(tt.held, tt.need); got != tt.want {
			t.Errorf("Allows(%v, %s) = %v, want %v", tt.held, tt.need, got, tt.want)
		}
	}
}

func TestParseScopes(t *testing.T) {
	tests := []struct {
		in      []string
		want    []Scope
		wantErr bool
	}{
		{nil, []Scope{ScopeAll}, false},
		{[]string{"read"}, []Scope{ScopeRead}, false},
		{[]string{"read,metrics"}, []Scope{ScopeRead, ScopeMetrics}, false},
		{[]string{"metrics", "read", "read"}, []Scope{ScopeRead, ScopeMetrics}, false},
		{[]string{"read", "deploy"}, []Scope{ScopeDeploy}, false},
		{[]string{"all", "read"}, []Scope{ScopeAll}, false},
		{[]string{"invoke,read"}, []Scope{ScopeRead, ScopeInvoke}, false},
		{[]string{"invoke", "deploy"}, []Scope{ScopeDeploy}, false},
		{[]string{"write"}, nil, true},
		{[]string{""}, nil, true},
		{[]string{"read,"}, nil, true},
		{[]string{"any"}, nil, true},
	}
	for _, tt := range tests {
		got, err := ParseScopes(tt.in)
		if (err != nil) != tt.wantErr || !slices.Equal(got, tt.want) {
			t.Errorf("ParseScopes(%q) = %v, %v; want %v (error: %v)", tt.in, got, err, tt.want, tt.wantErr)
		}
		if err != nil && !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("ParseScopes(%q): %v is not invalid_argument", tt.in, err)
		}
	}
}

func TestExpiry(t *testing.T) {
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	tests := []struct {
		in, at  string
		want    time.Time
		wantErr bool
	}{
		{"", "", time.Time{}, false},
		{"720h", "", now.Add(720 * time.Hour), false},
		{"30d", "", now.AddDate(0, 0, 30), false},
		{"1m", "", now.Add(time.Minute), false},
		{"3650d", "", now.Add(MaxLifetime), false},
		{"59s", "", time.Time{}, true},
		{"3651d", "", time.Time{}, true},
		{"-1h", "", time.Time{}, true},
		{"1.5d", "", time.Time{}, true},
		{"d", "", time.Time{}, true},
		{"3600", "", time.Time{}, true},
		{"", "2030-01-03T03:04:05Z", now.Add(24 * time.Hour), false},
		{"", "2030-01-03T04:04:05+01:00", now.Add(24 * time.Hour), false},
		{"", "2030-01-02T03:04:30Z", time.Time{}, true}, // under a minute away
		{"", "2029-01-02T03:04:05Z", time.Time{}, true}, // past
		{"", "tomorrow", time.Time{}, true},
		{"1h", "2030-01-03T03:04:05Z", time.Time{}, true}, // both
	}
	for _, tt := range tests {
		got, err := Expiry(now, tt.in, tt.at)
		if (err != nil) != tt.wantErr || !got.Equal(tt.want) {
			t.Errorf("Expiry(%q, %q) = %v, %v; want %v (error: %v)", tt.in, tt.at, got, err, tt.want, tt.wantErr)
		}
		if err != nil && !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("Expiry(%q, %q): %v is not invalid_argument", tt.in, tt.at, err)
		}
	}
}

// A token works until its expiry by the service's clock, and from then
// on is refused as a revoked one is; the clock moves, nothing sleeps.
func TestAuthenticateExpiry(t *testing.T) {
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "spry.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	s := New(st, func() time.Time { return now })
	if err := st.CreateUser(ctx, store.User{Name: "alice"}); err != nil {
		t.Fatal(err)
	}
	short, _, err := s.IssueToken(ctx, "alice", "ci", TokenOptions{ExpiresAt: now.Add(time.Hour), Scopes: []Scope{ScopeRead}})
	if err != nil {
		t.Fatal(err)
	}
	forever, _, err := s.IssueToken(ctx, "alice", "laptop", TokenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	revoked, rt, err := s.IssueToken(ctx, "alice", "old", TokenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.RevokeToken(ctx, rt.ID, now); err != nil {
		t.Fatal(err)
	}
	p, err := s.Authenticate(ctx, short)
	if err != nil || !slices.Equal(p.Scopes, []Scope{ScopeRead}) || !p.ExpiresAt.Equal(now.Add(time.Hour)) {
		t.Fatalf("before expiry: %+v, %v", p, err)
	}
	_, revokedErr := s.Authenticate(ctx, revoked)
	for _, tt := range []struct {
		at      time.Duration
		wantErr bool
	}{{59 * time.Minute, false}, {time.Hour - time.Millisecond, false}, {time.Hour, true}, {48 * time.Hour, true}} {
		now = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC).Add(tt.at)
		_, err := s.Authenticate(ctx, short)
		if (err != nil) != tt.wantErr {
			t.Errorf("at +%v: %v, want error %v", tt.at, err, tt.wantErr)
		}
		if err != nil && err.Error() != revokedErr.Error() {
			t.Errorf("expired: %v; a revoked token: %v; want the same", err, revokedErr)
		}
		if p, err := s.Authenticate(ctx, forever); err != nil || !slices.Equal(p.Scopes, []Scope{ScopeAll}) {
			t.Errorf("a token without expiry at +%v: %+v, %v", tt.at, p, err)
		}
	}
}
