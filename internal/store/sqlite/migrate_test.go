package sqlite

import (
	"crypto/sha256"
	"database/sql"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spry-run/spry/internal/auth"
	"github.com/spry-run/spry/internal/store"
)

// openFromSchema opens a data file made at schema version n (its first
// n migrations) with the rows rows, as an older spry left it.
func openFromSchema(t *testing.T, n int, rows ...string) *Store {
	t.Helper()
	path := filepath.Join(t.TempDir(), "spry.db")
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	stmts := append(slices.Clone(migrations[:n]), fmt.Sprintf(`PRAGMA user_version = %d`, n))
	for _, q := range append(stmts, rows...) {
		if _, err := db.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	db.Close()
	s, err := Open(t.Context(), path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// A data dir from before routing existed (schema 1) opens, keeps its
// functions, and gets routing and version pruning like a new one.
func TestMigrateFromSchema1(t *testing.T) {
	s := openFromSchema(t, 1,
		`INSERT INTO users (name, admin) VALUES ('alice', 1)`,
		`INSERT INTO functions (owner, name, id, live_version) VALUES ('alice', 'f', 'id1', 1)`,
		`INSERT INTO versions (owner, name, number, digest, size, config, created_by) VALUES ('alice', 'f', 1, 'sha256:1', 1, '{"runtime":"deno"}', 'alice')`)
	ctx := t.Context()
	fn, err := s.GetFunction(ctx, "alice", "f")
	if err != nil || fn.ID != "id1" || fn.Live.Config.Runtime != "deno" {
		t.Fatalf("GetFunction after migrating: %+v, %v", fn, err)
	}
	if _, err := s.Deploy(ctx, "id2", store.Version{Owner: "alice", Name: "f", Digest: "sha256:2"}); err != nil {
		t.Fatal(err)
	}
	r := store.Routing{Traffic: []store.Split{{Version: 1, Percent: 50}, {Version: 2, Percent: 50}}, Tags: map[string]int64{"old": 1}}
	if err := s.SetRouting(ctx, "alice", "f", r, fn.CreatedAt); err != nil {
		t.Fatal(err)
	}
	fn, err = s.GetFunction(ctx, "alice", "f")
	if err != nil || fn.LiveVersion != 2 || len(fn.Routing.Traffic) != 2 || fn.Routing.Tags["old"] != 1 {
		t.Fatalf("GetFunction after deploy and routing: %+v, %v", fn, err)
	}
	var v int
	if err := s.db.QueryRow(`PRAGMA user_version`).Scan(&v); err != nil || v != len(migrations) {
		t.Fatalf("user_version = %d, %v; want %d", v, err, len(migrations))
	}
}

// A data dir from before token expiry and scopes (schema 2) opens, and
// its tokens keep working as they did: no expiry, all rights.
func TestMigrateTokensFromSchema2(t *testing.T) {
	secret := strings.Repeat("A", 43)
	sum := sha256.Sum256([]byte(secret))
	s := openFromSchema(t, 2,
		`INSERT INTO users (name, admin) VALUES ('alice', 1)`,
		fmt.Sprintf(`INSERT INTO tokens (id, user_name, hash, name, created_at) VALUES ('0123456789abcdef', 'alice', X'%x', 'old', 1000)`, sum[:]))
	ctx := t.Context()
	old, err := s.GetToken(ctx, "0123456789abcdef")
	if err != nil || !old.ExpiresAt.IsZero() || len(old.Scopes) != 0 || old.Name != "old" {
		t.Fatalf("old token after migrating: %+v, %v", old, err)
	}
	// Far in the future by the clock: an old token never expires.
	later := func() time.Time { return time.Now().AddDate(50, 0, 0) }
	p, err := auth.New(s, later).Authenticate(ctx, "spry_0123456789abcdef_"+secret)
	if err != nil || p.User != "alice" || !p.Admin || !slices.Equal(p.Scopes, []auth.Scope{auth.ScopeAll}) || !p.ExpiresAt.IsZero() {
		t.Fatalf("old token authenticates as %+v, %v; want alice with all rights, no expiry", p, err)
	}
	// New tokens take both.
	exp := time.UnixMilli(5000).UTC()
	nt := store.Token{ID: "new", User: "alice", Hash: []byte{1}, CreatedAt: time.UnixMilli(2000), ExpiresAt: exp, Scopes: []string{"read", "metrics"}}
	if err := s.CreateToken(ctx, nt); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetToken(ctx, "new")
	if err != nil || !got.ExpiresAt.Equal(exp) || !slices.Equal(got.Scopes, nt.Scopes) {
		t.Fatalf("new token: %+v, %v", got, err)
	}
	var v int
	if err := s.db.QueryRow(`PRAGMA user_version`).Scan(&v); err != nil || v != len(migrations) {
		t.Fatalf("user_version = %d, %v; want %d", v, err, len(migrations))
	}
}

// A data dir from before versions could be deleted (schema 3) opens with
// each function's highest number remembered: the next deploy follows its
// newest version, and deleting that one does not give its number again.
func TestMigrateLastVersionFromSchema3(t *testing.T) {
	s := openFromSchema(t, 3,
		`INSERT INTO users (name, admin) VALUES ('alice', 1)`,
		`INSERT INTO functions (owner, name, id, live_version) VALUES ('alice', 'f', 'id1', 2)`,
		`INSERT INTO versions (owner, name, number, digest, size, config, created_by) VALUES
			('alice', 'f', 2, 'sha256:2', 1, '{"runtime":"deno"}', 'alice'),
			('alice', 'f', 3, 'sha256:3', 1, '{"runtime":"deno"}', 'alice')`)
	ctx := t.Context()
	if err := s.DeleteVersion(ctx, "alice", "f", 3, time.UnixMilli(1000)); err != nil {
		t.Fatal(err)
	}
	v, err := s.Deploy(ctx, "id2", store.Version{Owner: "alice", Name: "f", Digest: "sha256:4"})
	if err != nil || v.Number != 4 {
		t.Fatalf("Deploy after migrating and deleting version 3: %+v, %v; want number 4", v, err)
	}
	var n int
	if err := s.db.QueryRow(`PRAGMA user_version`).Scan(&n); err != nil || n != len(migrations) {
		t.Fatalf("user_version = %d, %v; want %d", n, err, len(migrations))
	}
}
