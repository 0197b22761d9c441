package async

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spry-run/spry/internal/errdefs"
	"github.com/spry-run/spry/internal/sqlitedb"
)

// The triggers of migrations[1] count MaxResponse as 65536: a change to
// it needs a migration of its own.
func TestResponseReserve(t *testing.T) {
	if MaxResponse != 65536 {
		t.Fatalf("MaxResponse is %d; the triggers reserve 65536", MaxResponse)
	}
}

// counted is each owner's bytes as Usage defines them, from the rows
// themselves: what the triggers' totals must equal.
func counted(t *testing.T, st *Store) map[string]int64 {
	t.Helper()
	rows, err := st.db.Query(`SELECT owner, sum(length(body) + iif(finished IS NULL, 65536, ifnull(length(response), 0))) FROM invocations GROUP BY owner`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]int64{}
	for rows.Next() {
		var owner string
		var n int64
		if err := rows.Scan(&owner, &n); err != nil {
			t.Fatal(err)
		}
		out[owner] = n
	}
	return out
}

// An owner's bytes bound what Add takes: bodies of invocations not
// finished, each with MaxResponse for its response, and responses of
// those finished. Finishing frees the body and what the response did
// not take, pruning and deleting free the rest; other owners are not
// held to one's bytes.
func TestByteBound(t *testing.T) {
	ctx := t.Context()
	st := openStore(t, filepath.Join(t.TempDir(), "invocations.db"))
	const body = 100
	per := int64(body + MaxResponse)
	b := Bounds{Bytes: 3*per + 10}
	t0 := time.Unix(1000, 0)
	add := func(owner, fn string, n int) (*Invocation, error) {
		inv := newInv(owner, fn, strings.Repeat("x", n))
		inv.ID, inv.CreatedAt, inv.NextAt = NewID(), t0, t0
		return inv, st.Add(ctx, inv, b)
	}
	usage := func(step, owner string, pending int, bytes int64) {
		t.Helper()
		u, err := st.Usage(ctx, owner)
		if err != nil || u != (Usage{Pending: pending, Bytes: bytes}) {
			t.Errorf("%s: %s's usage %+v, %v; want %d pending, %d bytes", step, owner, u, err, pending, bytes)
		}
		if c := counted(t, st)[owner]; c != u.Bytes {
			t.Errorf("%s: %s's rows count %d bytes, the total %d", step, owner, c, u.Bytes)
		}
	}
	refused := func(step, owner string) {
		t.Helper()
		inv, err := add(owner, "f", 0)
		if !errors.Is(err, errdefs.ErrRateLimited) || !strings.Contains(err.Error(), "--async-max-bytes-per-user") {
			t.Errorf("%s: %v, want rate_limited naming the flag", step, err)
		}
		if _, err := st.Get(ctx, "id-f", inv.ID); !errors.Is(err, errdefs.ErrNotFound) {
			t.Errorf("%s: the refused one was stored: %v", step, err)
		}
	}

	usage("none yet", "alice", 0, 0)
	for range 3 {
		if _, err := add("alice", "f", body); err != nil {
			t.Fatal(err)
		}
	}
	usage("three", "alice", 3, 3*per)
	refused("a fourth, even empty", "alice")
	usage("the refusal", "alice", 3, 3*per)

	// Bob's are his own.
	if _, err := add("bob", "g", body); err != nil {
		t.Errorf("bob's first, alice full: %v", err)
	}
	usage("bob's", "bob", 1, per)

	// A retry keeps its body, and its response within what it counts.
	inv, err := st.Claim(ctx, "alice", t0)
	if err != nil || inv == nil {
		t.Fatalf("claim: %+v %v", inv, err)
	}
	r := Result{Status: 500, Body: []byte(strings.Repeat("e", MaxResponse))}
	if err := st.Record(ctx, inv.ID, r, StatusQueued, t0, t0); err != nil {
		t.Fatal(err)
	}
	usage("a retry", "alice", 3, 3*per)

	// Finished: its body goes, its response counts as it is.
	if inv, err = st.Claim(ctx, "alice", t0); err != nil || inv == nil {
		t.Fatalf("claim again: %+v %v", inv, err)
	}
	done := t0.Add(time.Second)
	if err := st.Record(ctx, inv.ID, Result{Status: 200, Body: []byte("ok")}, StatusSucceeded, done, time.Time{}); err != nil {
		t.Fatal(err)
	}
	var kept int
	if err := st.db.QueryRow(`SELECT length(body) FROM invocations WHERE id = ?`, inv.ID).Scan(&kept); err != nil || kept != 0 {
		t.Errorf("a finished one's body: %d bytes, %v", kept, err)
	}
	usage("one finished", "alice", 2, 2*per+2)
	if _, err := add("alice", "f", body); err != nil {
		t.Errorf("one more after one finished: %v", err)
	}
	usage("one more", "alice", 3, 3*per+2)
	refused("full again", "alice")

	// A response past MaxResponse (no Send gives one) is cut to it.
	if inv, err = st.Claim(ctx, "alice", t0); err != nil || inv == nil {
		t.Fatalf("third claim: %+v %v", inv, err)
	}
	r = Result{Status: 200, Body: []byte(strings.Repeat("r", MaxResponse+10))}
	if err := st.Record(ctx, inv.ID, r, StatusSucceeded, done, time.Time{}); err != nil {
		t.Fatal(err)
	}
	if got, _ := st.Get(ctx, "id-f", inv.ID); len(got.Last.Body) != MaxResponse || !got.Last.Truncated {
		t.Errorf("an oversized response: kept %d bytes, truncated %v", len(got.Last.Body), got.Last.Truncated)
	}
	usage("another finished", "alice", 2, 2*per+2+MaxResponse)

	// Pruned finished ones free their responses, a deleted function
	// everything.
	if n, err := st.Prune(ctx, done.Add(time.Nanosecond)); err != nil || n != 2 {
		t.Errorf("Prune = %d, %v", n, err)
	}
	usage("the prune", "alice", 2, 2*per)
	if err := st.DeleteFunction(ctx, "id-f"); err != nil {
		t.Fatal(err)
	}
	usage("the deletion", "alice", 0, 0)
	usage("all that", "bob", 1, per)
}

// A file made before owners' bytes were kept gets them counted from its
// rows, and finished invocations' bodies dropped, as it opens.
func TestByteBoundMigration(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "invocations.db")
	db, err := sqlitedb.Open(ctx, path, nil, migrations[:1])
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		`INSERT INTO invocations (id, owner, fn, name, path, host, content_type, body, status, created, next)
			VALUES ('a', 'alice', 'f', 'f', '/', 'h', '', x'0102', 'queued', 1, 1)`,
		`INSERT INTO invocations (id, owner, fn, name, path, host, content_type, body, status, created, next, finished, response)
			VALUES ('b', 'alice', 'f', 'f', '/', 'h', '', x'010203', 'succeeded', 1, 1, 2, x'0405')`,
		`INSERT INTO invocations (id, owner, fn, name, path, host, content_type, body, status, created, next, finished)
			VALUES ('c', 'bob', 'g', 'g', '/', 'h', '', x'01', 'failed', 1, 1, 2)`,
	} {
		if _, err := db.ExecContext(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	db.Close()
	st := openStore(t, path)
	for owner, want := range map[string]Usage{"alice": {Pending: 1, Bytes: 2 + MaxResponse + 2}, "bob": {Bytes: 0}} {
		if u, err := st.Usage(ctx, owner); err != nil || u != want {
			t.Errorf("%s: %+v, %v; want %+v", owner, u, err, want)
		}
	}
	if c := counted(t, st); c["alice"] != 2+MaxResponse+2 || c["bob"] != 0 {
		t.Errorf("the rows count %v", c)
	}
}

// The worker holds owners to its byte bound (640 MiB unless told, none
// if negative), and says so in Bounds.
func TestWorkerByteBound(t *testing.T) {
	ctx := t.Context()
	st := openStore(t, filepath.Join(t.TempDir(), "invocations.db"))
	for _, tt := range []struct {
		set, want int64
	}{{0, DefaultMaxBytesPerOwner}, {-1, 0}, {1 << 20, 1 << 20}} {
		if got := NewWorker(st, Config{MaxBytesPerOwner: tt.set}).Bounds().Bytes; got != tt.want {
			t.Errorf("MaxBytesPerOwner %d: Bounds().Bytes = %d, want %d", tt.set, got, tt.want)
		}
	}
	w := NewWorker(st, Config{MaxBytesPerOwner: 2 * MaxResponse, Send: func(context.Context, *Invocation) Result { return Result{} }})
	if err := w.Enqueue(ctx, newInv("alice", "f", "a")); err != nil {
		t.Fatal(err)
	}
	err := w.Enqueue(ctx, newInv("alice", "f", "b"))
	if !errors.Is(err, errdefs.ErrRateLimited) {
		t.Errorf("past the bound: %v", err)
	}
	if u, err := w.Usage(ctx, "alice"); err != nil || u != (Usage{Pending: 1, Bytes: 1 + MaxResponse}) {
		t.Errorf("Usage = %+v, %v", u, err)
	}
}

// An owner whose invocations are all gone (pruned, its functions or the
// user deleted), or hold no bytes, keeps no row of owner_bytes: one
// stayed for every owner that ever enqueued, at 0. A row that went
// comes back with the owner's next bytes, right.
func TestOwnerBytesRowGoesAtZero(t *testing.T) {
	ctx := t.Context()
	st := openStore(t, filepath.Join(t.TempDir(), "invocations.db"))
	t0 := time.Unix(1000, 0)
	add := func(owner, fn, body string) *Invocation {
		t.Helper()
		inv := newInv(owner, fn, body)
		inv.ID, inv.CreatedAt, inv.NextAt = NewID(), t0, t0
		if err := st.Add(ctx, inv, Bounds{}); err != nil {
			t.Fatal(err)
		}
		return inv
	}
	finish := func(owner string, response string) {
		t.Helper()
		inv, err := st.Claim(ctx, owner, t0)
		if err != nil || inv == nil {
			t.Fatalf("claim: %+v %v", inv, err)
		}
		if err := st.Record(ctx, inv.ID, Result{Status: 200, Body: []byte(response)}, StatusSucceeded, t0.Add(time.Second), time.Time{}); err != nil {
			t.Fatal(err)
		}
	}
	rows := func(step string, want ...string) {
		t.Helper()
		r, err := st.db.Query(`SELECT owner FROM owner_bytes ORDER BY owner`)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		var got []string
		for r.Next() {
			var o string
			if err := r.Scan(&o); err != nil {
				t.Fatal(err)
			}
			got = append(got, o)
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s: owners with a row %q, want %q", step, got, want)
		}
		for owner, n := range counted(t, st) {
			if u, err := st.Usage(ctx, owner); err != nil || u.Bytes != n {
				t.Errorf("%s: %s's total %d (%v), its rows count %d", step, owner, u.Bytes, err, n)
			}
		}
	}

	add("alice", "f", "x")
	add("bob", "g", "y")
	rows("two owners", "alice", "bob")
	if err := st.DeleteFunction(ctx, "id-f"); err != nil {
		t.Fatal(err)
	}
	rows("alice's function deleted", "bob")

	// Finished with nothing kept: the row goes while the invocation
	// stays, and comes back with the next one.
	finish("bob", "")
	rows("bob's finished, empty", []string{}...)
	add("bob", "g", "zz")
	rows("bob's next", "bob")
	finish("bob", "ok")
	rows("bob's next finished", "bob")
	if n, err := st.Prune(ctx, t0.Add(time.Hour)); err != nil || n != 2 {
		t.Fatalf("Prune = %d, %v", n, err)
	}
	rows("pruned", []string{}...)
}

// A file whose deleted owners kept their rows at 0 loses them as it
// opens.
func TestOwnerBytesZeroRowsMigration(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "invocations.db")
	db, err := sqlitedb.Open(ctx, path, nil, migrations[:3])
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		`INSERT INTO invocations (id, owner, fn, name, path, host, content_type, body, status, created, next)
			VALUES ('a', 'alice', 'f', 'f', '/', 'h', '', x'0102', 'queued', 1, 1)`,
		`INSERT INTO invocations (id, owner, fn, name, path, host, content_type, body, status, created, next)
			VALUES ('b', 'gone', 'g', 'g', '/', 'h', '', x'01', 'queued', 1, 1)`,
		`DELETE FROM invocations WHERE id = 'b'`,
	} {
		if _, err := db.ExecContext(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	db.Close()
	st := openStore(t, path)
	var owners []string
	r, err := st.db.Query(`SELECT owner FROM owner_bytes ORDER BY owner`)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for r.Next() {
		var o string
		if err := r.Scan(&o); err != nil {
			t.Fatal(err)
		}
		owners = append(owners, o)
	}
	if !slices.Equal(owners, []string{"alice"}) {
		t.Errorf("owners with a row after the migration: %q, want alice's alone", owners)
	}
	if u, err := st.Usage(ctx, "alice"); err != nil || u.Bytes != 2+MaxResponse {
		t.Errorf("alice: %+v, %v", u, err)
	}
}
