package sqlite

import (
	"database/sql"
	"path/filepath"
	"testing"

	"github.com/spry-run/spry/internal/store"
)

// A data dir from before routing existed (schema 1) opens, keeps its
// functions, and gets routing and version pruning like a new one.
func TestMigrateFromSchema1(t *testing.T) {
	path := filepath.Join(t.TempDir(), "spry.db")
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		migrations[0],
		`PRAGMA user_version = 1`,
		`INSERT INTO users (name, admin) VALUES ('alice', 1)`,
		`INSERT INTO functions (owner, name, id, live_version) VALUES ('alice', 'f', 'id1', 1)`,
		`INSERT INTO versions (owner, name, number, digest, size, config, created_by) VALUES ('alice', 'f', 1, 'sha256:1', 1, '{"runtime":"deno"}', 'alice')`,
	} {
		if _, err := db.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	db.Close()

	s, err := Open(t.Context(), path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
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
