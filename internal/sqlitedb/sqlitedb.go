// Package sqlitedb opens Spry's SQLite files (modernc.org/sqlite) the one
// way they all want: created private (0600), WAL, a busy timeout, writers
// that take the lock at BEGIN, and a schema brought up to date by numbered
// migrations recorded in PRAGMA user_version.
package sqlitedb

import (
	"context"
	"database/sql"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	_ "modernc.org/sqlite" // the driver
)

// JournalSizeLimit is what a WAL file is truncated to when a checkpoint
// starts it over. A WAL grows past SQLite's automatic checkpoints (1000
// pages, ~4 MiB) while a reader keeps them from finishing (a backup's
// snapshot, a long list), and without a limit keeps the largest size it
// ever reached until the file is closed. A variable for the tests.
var JournalSizeLimit int64 = 64 << 20

// BusyTimeout is how long a writer waits for the write lock. Writes hold
// it for milliseconds, so reaching it means something is wrong rather than
// merely busy.
const BusyTimeout = 10 * time.Second

// Open opens (creating if needed) the database at path with the given
// per-connection pragmas (besides busy_timeout, synchronous(NORMAL) and
// journal_size_limit, which every file gets) and applies the migrations
// it lacks. Migrations are only ever appended: a database's user_version
// is the number of them it has applied.
func Open(ctx context.Context, path string, pragmas []string, migrations []string) (*sql.DB, error) {
	// SQLite would create the file world-readable, and it holds secrets'
	// hashes or functions' output. Creating it first fixes its mode; SQLite
	// gives the -wal and -shm files the mode of the database file.
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := f.Close(); err != nil {
		return nil, err
	}
	db, err := sql.Open("sqlite", dsn(path, pragmas))
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	if err := initDB(ctx, db, migrations); err != nil {
		db.Close()
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	return db, nil
}

// dsn builds the driver's connection string. The pragmas in it are
// per-connection, so the driver runs them on every connection it opens.
func dsn(path string, pragmas []string) string {
	q := url.Values{}
	q.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", BusyTimeout.Milliseconds()))
	// NORMAL is durable across application crashes in WAL mode; only a power
	// loss can drop the last commits, and never corrupts the file.
	q.Add("_pragma", "synchronous(NORMAL)")
	q.Add("_pragma", fmt.Sprintf("journal_size_limit(%d)", JournalSizeLimit))
	for _, p := range pragmas {
		q.Add("_pragma", p)
	}
	// A deferred transaction that reads and then writes fails at once with
	// SQLITE_BUSY if another connection wrote in between. Taking the write
	// lock at BEGIN makes writers queue under busy_timeout.
	q.Set("_txlock", "immediate")
	// A file: URI, with the path escaped, so that a '?' or '#' in the path
	// is not taken for the start of the parameters.
	return "file:" + (&url.URL{Path: path}).EscapedPath() + "?" + q.Encode()
}

func initDB(ctx context.Context, db *sql.DB, migrations []string) error {
	// journal_mode is a property of the file, so setting it once suffices.
	// WAL lets readers proceed while a writer commits.
	var mode string
	if err := db.QueryRowContext(ctx, "PRAGMA journal_mode = WAL").Scan(&mode); err != nil {
		return fmt.Errorf("set journal mode: %w", err)
	}
	if !strings.EqualFold(mode, "wal") {
		return fmt.Errorf("set journal mode: got %q, want wal", mode)
	}
	return migrate(ctx, db, migrations)
}

func migrate(ctx context.Context, db *sql.DB, migrations []string) error {
	// The transaction is immediate, so two processes opening a new file at
	// once cannot both apply the same migration.
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	defer tx.Rollback()
	var v int
	if err := tx.QueryRowContext(ctx, "PRAGMA user_version").Scan(&v); err != nil {
		return fmt.Errorf("migrate: read schema version: %w", err)
	}
	if v > len(migrations) {
		return fmt.Errorf("migrate: database schema version %d is newer than this program's (%d)", v, len(migrations))
	}
	if v == len(migrations) {
		return nil
	}
	for i := v; i < len(migrations); i++ {
		if _, err := tx.ExecContext(ctx, migrations[i]); err != nil {
			return fmt.Errorf("migrate to schema version %d: %w", i+1, err)
		}
	}
	// PRAGMA takes no bound parameters.
	if _, err := tx.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", len(migrations))); err != nil {
		return fmt.Errorf("migrate: set schema version: %w", err)
	}
	return tx.Commit()
}

// Snapshot writes a consistent copy of db to path with VACUUM INTO: one
// read transaction, so writers go on meanwhile (WAL) and the copy is the
// database as of its start, compacted and without a -wal file of its
// own. path must not exist (or be empty); ctx interrupts the copy, which
// then leaves a partial file for the caller to remove.
func Snapshot(ctx context.Context, db *sql.DB, path string) error {
	if _, err := db.ExecContext(ctx, "VACUUM INTO ?", path); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("snapshot to %s: %w", path, ctx.Err())
		}
		return fmt.Errorf("snapshot to %s: %w", path, err)
	}
	return nil
}

// Check opens the database file at path read-only and runs PRAGMA
// integrity_check on it, for a file that came from elsewhere (a backup
// restored) before anything opens it for writing. A file that is not
// SQLite, or is damaged, is an error naming the first problem.
func Check(ctx context.Context, path string) error {
	if _, err := os.Stat(path); err != nil {
		return err
	}
	q := url.Values{}
	q.Set("mode", "ro")
	db, err := sql.Open("sqlite", "file:"+(&url.URL{Path: path}).EscapedPath()+"?"+q.Encode())
	if err != nil {
		return fmt.Errorf("check %s: %w", path, err)
	}
	defer db.Close()
	rows, err := db.QueryContext(ctx, "PRAGMA integrity_check")
	if err != nil {
		return fmt.Errorf("check %s: %w", path, err)
	}
	defer rows.Close()
	var problems []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			return fmt.Errorf("check %s: %w", path, err)
		}
		if s != "ok" {
			problems = append(problems, s)
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("check %s: %w", path, err)
	}
	if len(problems) > 0 {
		return fmt.Errorf("check %s: the database is damaged: %s", path, strings.Join(problems[:min(len(problems), 3)], "; "))
	}
	return nil
}
