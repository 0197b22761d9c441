package sqlitedb

import (
	"context"
	"database/sql"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

var testMigrations = []string{`CREATE TABLE t (n INTEGER PRIMARY KEY, v TEXT NOT NULL) STRICT;`}

func openTest(t *testing.T, path string) *sql.DB {
	t.Helper()
	db, err := Open(t.Context(), path, nil, testMigrations)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func count(t *testing.T, db *sql.DB) int {
	t.Helper()
	var n int
	if err := db.QueryRow(`SELECT count(*) FROM t`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// A snapshot taken while a writer commits holds whole transactions
// only, opens as a database of its own (schema version and all), and
// passes Check; the source goes on being written.
func TestSnapshotWhileWriting(t *testing.T) {
	dir := t.TempDir()
	db := openTest(t, filepath.Join(dir, "a.db"))
	// Each transaction inserts ten rows: a torn copy would hold a count
	// that is not a multiple of ten.
	insert := func(i int) {
		tx, err := db.Begin()
		if err != nil {
			t.Error(err)
			return
		}
		for j := range 10 {
			if _, err := tx.Exec(`INSERT INTO t (v) VALUES (?)`, strings.Repeat("x", 100*i+j)); err != nil {
				t.Error(err)
			}
		}
		if err := tx.Commit(); err != nil {
			t.Error(err)
		}
	}
	for i := range 50 {
		insert(i)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 50; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			insert(i % 100)
		}
	})
	snaps := make([]string, 5)
	for i := range snaps {
		snaps[i] = filepath.Join(dir, "snap"+string(rune('0'+i))+".db")
		if err := Snapshot(t.Context(), db, snaps[i]); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
	for _, p := range snaps {
		if err := Check(t.Context(), p); err != nil {
			t.Fatalf("check %s: %v", p, err)
		}
		if _, err := os.Stat(p + "-wal"); err == nil {
			t.Errorf("%s has a -wal file after Check", p)
		}
		s := openTest(t, p)
		if n := count(t, s); n < 500 || n%10 != 0 {
			t.Errorf("%s holds %d rows: want whole transactions, at least the 500 before", p, n)
		}
		var v int
		if err := s.QueryRow(`PRAGMA user_version`).Scan(&v); err != nil || v != len(testMigrations) {
			t.Errorf("%s: user_version %d, %v", p, v, err)
		}
	}
	if n := count(t, db); n < 500 {
		t.Errorf("source holds %d rows", n)
	}
}

// A snapshot onto a file that holds something is refused, the file
// untouched; a cancelled one says so.
func TestSnapshotRefusals(t *testing.T) {
	dir := t.TempDir()
	db := openTest(t, filepath.Join(dir, "a.db"))
	taken := filepath.Join(dir, "taken")
	if err := os.WriteFile(taken, []byte("mine"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := Snapshot(t.Context(), db, taken); err == nil {
		t.Error("a snapshot over a file that holds data succeeded")
	}
	if b, _ := os.ReadFile(taken); string(b) != "mine" {
		t.Errorf("the file was changed: %q", b)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := Snapshot(ctx, db, filepath.Join(dir, "c.db")); err == nil || !strings.Contains(err.Error(), "context canceled") {
		t.Errorf("a cancelled snapshot: %v", err)
	}
}

// Check refuses what is not a sound SQLite file.
func TestCheckRefuses(t *testing.T) {
	dir := t.TempDir()
	db := openTest(t, filepath.Join(dir, "a.db"))
	if _, err := db.Exec(`INSERT INTO t (v) VALUES (?)`, strings.Repeat("y", 100000)); err != nil {
		t.Fatal(err)
	}
	good := filepath.Join(dir, "good.db")
	if err := Snapshot(t.Context(), db, good); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(good)
	if err != nil {
		t.Fatal(err)
	}
	damaged := append([]byte(nil), data...)
	// The second page onwards: the header stays valid, the content not.
	for i := 4096 + 8; i < len(damaged) && i < 4096+200; i++ {
		damaged[i] = 0xff
	}
	for _, tt := range []struct {
		name string
		data []byte
	}{
		{"text", []byte("this is not a database, whatever its name says\n")},
		{"truncated", data[:len(data)/2]},
		{"damaged", damaged},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := filepath.Join(dir, tt.name+".db")
			if err := os.WriteFile(p, tt.data, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := Check(t.Context(), p); err == nil {
				t.Error("Check passed it")
			}
		})
	}
	if err := Check(t.Context(), filepath.Join(dir, "missing.db")); err == nil {
		t.Error("Check passed a missing file")
	}
}

// A WAL that grew while a reader kept the writers' checkpoints from
// starting it over (a backup's snapshot, a long list) is truncated back
// to JournalSizeLimit once a checkpoint does: left as it was, every file
// but the log store's kept the largest size it ever reached until the
// server stopped.
func TestWALTruncatedAfterItGrew(t *testing.T) {
	defer func(n int64) { JournalSizeLimit = n }(JournalSizeLimit)
	JournalSizeLimit = 256 << 10
	path := filepath.Join(t.TempDir(), "db")
	db := openTest(t, path)
	ctx := t.Context()
	walSize := func() int64 {
		fi, err := os.Stat(path + "-wal")
		if err != nil {
			t.Fatal(err)
		}
		return fi.Size()
	}
	reader, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer reader.Close()
	// A read transaction the writes below cannot checkpoint past.
	if _, err := reader.ExecContext(ctx, "BEGIN DEFERRED"); err != nil {
		t.Fatal(err)
	}
	if n := 0; reader.QueryRowContext(ctx, "SELECT count(*) FROM t").Scan(&n) != nil {
		t.Fatal("read")
	}
	pad := strings.Repeat("x", 4000)
	for i := range 2000 {
		if _, err := db.Exec(`INSERT INTO t (v) VALUES (?)`, pad); err != nil {
			t.Fatalf("insert %d: %v", i, err)
		}
	}
	grown := walSize()
	if grown < 4*JournalSizeLimit {
		t.Fatalf("the WAL grew to %d bytes only; the test needs it well past %d", grown, JournalSizeLimit)
	}
	if _, err := reader.ExecContext(ctx, "COMMIT"); err != nil {
		t.Fatal(err)
	}
	// The next write checkpoints (the WAL is past 1000 pages), and the
	// one after starts the WAL over, which is when it is truncated.
	for i := range 3 {
		if _, err := db.Exec(`INSERT INTO t (v) VALUES ('y')`); err != nil {
			t.Fatalf("insert %d: %v", i, err)
		}
	}
	if got := walSize(); got > JournalSizeLimit {
		t.Fatalf("the WAL is %d bytes after checkpoints (it grew to %d); want at most %d", got, grown, JournalSizeLimit)
	}
}
