package async

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/spry-run/spry/internal/errdefs"
	"github.com/spry-run/spry/internal/sqlitedb"
)

// Statuses of an invocation. One waiting for a retry is queued, with
// its next attempt's time ahead.
const (
	StatusQueued    = "queued"
	StatusRunning   = "running"
	StatusSucceeded = "succeeded"
	StatusFailed    = "failed"
)

var migrations = []string{
	`CREATE TABLE invocations (
		seq INTEGER PRIMARY KEY AUTOINCREMENT, -- the order they came in: lists' cursor
		id TEXT NOT NULL UNIQUE,
		owner TEXT NOT NULL,
		fn TEXT NOT NULL, -- the function's id: one made again under its name is another
		name TEXT NOT NULL,
		path TEXT NOT NULL,
		host TEXT NOT NULL,
		content_type TEXT NOT NULL,
		body BLOB NOT NULL,
		status TEXT NOT NULL,
		attempts INTEGER NOT NULL DEFAULT 0,
		created INTEGER NOT NULL, -- Unix ns, as every time here
		started INTEGER,
		finished INTEGER,
		next INTEGER NOT NULL, -- when a queued one may run
		http_status INTEGER NOT NULL DEFAULT 0,
		duration INTEGER NOT NULL DEFAULT 0,
		error TEXT NOT NULL DEFAULT '',
		response BLOB,
		response_type TEXT NOT NULL DEFAULT '',
		truncated INTEGER NOT NULL DEFAULT 0
	) STRICT;
	CREATE INDEX invocations_fn ON invocations (fn, seq);
	-- The dispatcher's: an owner's due ones in order, and its count.
	CREATE INDEX invocations_queued ON invocations (owner, next, seq) WHERE status = 'queued';
	CREATE INDEX invocations_running ON invocations (owner) WHERE status = 'running';
	CREATE INDEX invocations_finished ON invocations (finished) WHERE finished IS NOT NULL;`,
}

// Invocation is one asynchronous invocation and how it went so far.
type Invocation struct {
	Seq         int64
	ID          string
	Owner       string
	FunctionID  string
	Function    string
	Path        string // the function's path and query, escaped
	Host        string // the Host the function is sent
	ContentType string
	Body        []byte // only when claimed (Store.Claim)
	Status      string
	Attempts    int
	CreatedAt   time.Time
	StartedAt   time.Time // of the last attempt; zero: none yet
	FinishedAt  time.Time // zero: not finished
	NextAt      time.Time // a queued one's next attempt
	// Last is the last attempt's outcome (zero before the first ends).
	Last Result
}

// Store keeps invocations in one SQLite file of the data directory.
type Store struct {
	db *sql.DB
	// wmu is held by each write: SQLite's writers poll for its lock
	// (as kv.Store's do).
	wmu sync.Mutex
}

// Open opens (creating if needed) the store at path.
func Open(ctx context.Context, path string) (*Store, error) {
	db, err := sqlitedb.Open(ctx, path, nil, migrations)
	if err != nil {
		return nil, err
	}
	return &Store{db: db}, nil
}

// Close closes the file.
func (s *Store) Close() error { return s.db.Close() }

// Snapshot writes a consistent copy of the store to path, which must
// not exist, while it goes on serving (a backup's).
func (s *Store) Snapshot(ctx context.Context, path string) error {
	if err := sqlitedb.Snapshot(ctx, s.db, path); err != nil {
		return fmt.Errorf("invocations: %w", err)
	}
	return nil
}

func (s *Store) inTx(ctx context.Context, f func(tx *sql.Tx) error) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("invocations: %w", err)
	}
	defer tx.Rollback()
	if err := f(tx); err != nil {
		if errdefs.Public(err) {
			return err
		}
		return fmt.Errorf("invocations: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("invocations: %w", err)
	}
	return nil
}

func (s *Store) exec(ctx context.Context, q string, args ...any) (int64, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	res, err := s.db.ExecContext(ctx, q, args...)
	if err != nil {
		return 0, fmt.Errorf("invocations: %w", err)
	}
	return res.RowsAffected()
}

// NewID returns a new invocation id: 32 random hex digits.
func NewID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Add stores inv, queued, unless its owner has maxPending (>0) or more
// not finished already: then it is an errdefs.ErrRateLimited. inv's
// Seq is set.
func (s *Store) Add(ctx context.Context, inv *Invocation, maxPending int) error {
	return s.inTx(ctx, func(tx *sql.Tx) error {
		if maxPending > 0 {
			n, err := pending(ctx, tx, inv.Owner)
			if err != nil {
				return err
			}
			if n >= maxPending {
				return errdefs.New(errdefs.ErrRateLimited, "user %s has %d asynchronous invocations not finished, the most one may have (spry serve --async-max-per-user); wait for some to finish", inv.Owner, n)
			}
		}
		return tx.QueryRowContext(ctx, `INSERT INTO invocations (id, owner, fn, name, path, host, content_type, body, status, created, next)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?) RETURNING seq`,
			inv.ID, inv.Owner, inv.FunctionID, inv.Function, inv.Path, inv.Host, inv.ContentType, nonNil(inv.Body),
			inv.CreatedAt.UnixNano(), inv.NextAt.UnixNano()).Scan(&inv.Seq)
	})
}

func nonNil(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}

// Pending counts owner's invocations not finished (queued, waiting for
// a retry, or running).
func (s *Store) Pending(ctx context.Context, owner string) (int, error) {
	n, err := pending(ctx, s.db, owner)
	if err != nil {
		return 0, fmt.Errorf("invocations: %w", err)
	}
	return n, nil
}

type querier interface {
	QueryRowContext(ctx context.Context, q string, args ...any) *sql.Row
}

func pending(ctx context.Context, q querier, owner string) (int, error) {
	var a, b int
	if err := q.QueryRowContext(ctx, `SELECT count(*) FROM invocations WHERE owner = ? AND status = 'queued'`, owner).Scan(&a); err != nil {
		return 0, err
	}
	if err := q.QueryRowContext(ctx, `SELECT count(*) FROM invocations WHERE owner = ? AND status = 'running'`, owner).Scan(&b); err != nil {
		return 0, err
	}
	return a + b, nil
}

// Queued counts the invocations queued, due or waiting for a retry.
func (s *Store) Queued(ctx context.Context) (int, error) {
	var n int
	if err := s.db.QueryRowContext(ctx, `SELECT count(*) FROM invocations WHERE status = 'queued'`).Scan(&n); err != nil {
		return 0, fmt.Errorf("invocations: %w", err)
	}
	return n, nil
}

// columns are what Get and List read: everything but the request's body.
const columns = `seq, id, owner, fn, name, path, host, content_type, status, attempts, created, started, finished, next,
	http_status, duration, error, response, response_type, truncated`

type scanner interface{ Scan(dst ...any) error }

func scan(r scanner, extra ...any) (Invocation, error) {
	var inv Invocation
	var created, next, duration int64
	var started, finished sql.NullInt64
	var truncated int
	dst := append([]any{&inv.Seq, &inv.ID, &inv.Owner, &inv.FunctionID, &inv.Function, &inv.Path, &inv.Host, &inv.ContentType,
		&inv.Status, &inv.Attempts, &created, &started, &finished, &next,
		&inv.Last.Status, &duration, &inv.Last.Error, &inv.Last.Body, &inv.Last.ContentType, &truncated}, extra...)
	if err := r.Scan(dst...); err != nil {
		return inv, err
	}
	inv.CreatedAt = time.Unix(0, created)
	inv.NextAt = time.Unix(0, next)
	if started.Valid {
		inv.StartedAt = time.Unix(0, started.Int64)
	}
	if finished.Valid {
		inv.FinishedAt = time.Unix(0, finished.Int64)
	}
	inv.Last.Duration = time.Duration(duration)
	inv.Last.Truncated = truncated != 0
	return inv, nil
}

// Get returns the invocation id of the function whose id is fn.
func (s *Store) Get(ctx context.Context, fn, id string) (Invocation, error) {
	inv, err := scan(s.db.QueryRowContext(ctx, `SELECT `+columns+` FROM invocations WHERE id = ? AND fn = ?`, id, fn))
	if errors.Is(err, sql.ErrNoRows) {
		return inv, errdefs.New(errdefs.ErrNotFound, "the function has no invocation %q", id)
	}
	if err != nil {
		return inv, fmt.Errorf("invocations: %w", err)
	}
	return inv, nil
}

// List returns up to limit of fn's invocations, newest first, those
// that came before the one numbered before (0: from the newest).
func (s *Store) List(ctx context.Context, fn string, before int64, limit int) ([]Invocation, error) {
	if before <= 0 {
		before = 1<<63 - 1
	}
	rows, err := s.db.QueryContext(ctx, `SELECT `+columns+` FROM invocations WHERE fn = ? AND seq < ? ORDER BY seq DESC LIMIT ?`, fn, before, limit)
	if err != nil {
		return nil, fmt.Errorf("invocations: %w", err)
	}
	defer rows.Close()
	var out []Invocation
	for rows.Next() {
		inv, err := scan(rows)
		if err != nil {
			return nil, fmt.Errorf("invocations: %w", err)
		}
		out = append(out, inv)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("invocations: %w", err)
	}
	return out, nil
}

// Claim takes owner's oldest due invocation (its next attempt at or
// before now), marks it running with one more attempt, and returns it
// with its body; nil if none is due.
func (s *Store) Claim(ctx context.Context, owner string, now time.Time) (*Invocation, error) {
	var inv Invocation
	var body []byte
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		var err error
		inv, err = scan(tx.QueryRowContext(ctx, `UPDATE invocations SET status = 'running', started = ?, attempts = attempts + 1
			WHERE seq = (SELECT seq FROM invocations WHERE owner = ? AND status = 'queued' AND next <= ? ORDER BY next, seq LIMIT 1)
			RETURNING `+columns+`, body`, now.UnixNano(), owner, now.UnixNano()), &body)
		return err
	})
	inv.Body = body
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return &inv, nil
}

// Due returns, for every owner with queued invocations, when the
// earliest of them may run.
func (s *Store) Due(ctx context.Context) (map[string]time.Time, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT owner, min(next) FROM invocations WHERE status = 'queued' GROUP BY owner`)
	if err != nil {
		return nil, fmt.Errorf("invocations: %w", err)
	}
	defer rows.Close()
	out := map[string]time.Time{}
	for rows.Next() {
		var owner string
		var next int64
		if err := rows.Scan(&owner, &next); err != nil {
			return nil, fmt.Errorf("invocations: %w", err)
		}
		out[owner] = time.Unix(0, next)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("invocations: %w", err)
	}
	return out, nil
}

// NextDue says when owner's earliest queued invocation may run; false
// if it has none.
func (s *Store) NextDue(ctx context.Context, owner string) (time.Time, bool, error) {
	var next sql.NullInt64
	if err := s.db.QueryRowContext(ctx, `SELECT min(next) FROM invocations WHERE owner = ? AND status = 'queued'`, owner).Scan(&next); err != nil {
		return time.Time{}, false, fmt.Errorf("invocations: %w", err)
	}
	if !next.Valid {
		return time.Time{}, false, nil
	}
	return time.Unix(0, next.Int64), true, nil
}

// Record stores how the running invocation id's attempt went: queued
// again for next if retry, else finished at now with status. An
// invocation no longer there (its function deleted) is no error.
func (s *Store) Record(ctx context.Context, id string, r Result, status string, now, next time.Time) error {
	var finished any
	if status != StatusQueued {
		finished = now.UnixNano()
	}
	var body any
	if r.Body != nil {
		body = r.Body
	}
	_, err := s.exec(ctx, `UPDATE invocations SET status = ?, finished = ?, next = ?, http_status = ?, duration = ?, error = ?,
		response = ?, response_type = ?, truncated = ? WHERE id = ? AND status = 'running'`,
		status, finished, next.UnixNano(), r.Status, int64(r.Duration), truncate(r.Error, maxError), body, truncate(r.ContentType, maxContentType), r.Truncated, id)
	return err
}

// Release puts the running invocation id back in the queue, due at
// now, its attempt not counted: one the server stopped during.
func (s *Store) Release(ctx context.Context, id string, now time.Time) error {
	_, err := s.exec(ctx, `UPDATE invocations SET status = 'queued', attempts = max(attempts - 1, 0), next = ? WHERE id = ? AND status = 'running'`,
		now.UnixNano(), id)
	return err
}

// Recover queues again, due at now, every invocation left running by a
// server that stopped without ending them (killed, or past its
// shutdown timeout): their attempts are not counted, and they run again
// (at least once, not exactly once). It returns how many there were.
func (s *Store) Recover(ctx context.Context, now time.Time) (int64, error) {
	return s.exec(ctx, `UPDATE invocations SET status = 'queued', attempts = max(attempts - 1, 0), next = ? WHERE status = 'running'`, now.UnixNano())
}

// DeleteFunction removes every invocation of the function whose id is
// fn.
func (s *Store) DeleteFunction(ctx context.Context, fn string) error {
	_, err := s.exec(ctx, `DELETE FROM invocations WHERE fn = ?`, fn)
	return err
}

// pruneBatch is how many rows one transaction of Prune removes: the
// writer's lock is every enqueue's too.
const pruneBatch = 1000

// Prune removes the invocations that finished before before, and
// returns how many.
func (s *Store) Prune(ctx context.Context, before time.Time) (int64, error) {
	var total int64
	for {
		n, err := s.exec(ctx, `DELETE FROM invocations WHERE seq IN
			(SELECT seq FROM invocations WHERE finished IS NOT NULL AND finished < ? LIMIT ?)`, before.UnixNano(), pruneBatch)
		total += n
		if err != nil || n < pruneBatch {
			return total, err
		}
	}
}

// Functions lists the ids of the functions that have invocations.
func (s *Store) Functions(ctx context.Context) ([]string, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT DISTINCT fn FROM invocations`)
	if err != nil {
		return nil, fmt.Errorf("invocations: %w", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var fn string
		if err := rows.Scan(&fn); err != nil {
			return nil, fmt.Errorf("invocations: %w", err)
		}
		out = append(out, fn)
	}
	return out, rows.Err()
}

// Bounds of what an attempt's record keeps.
const (
	maxError       = 4 << 10
	maxContentType = 1 << 10
)

// truncate cuts s to at most n bytes, without a rune cut in two.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "")
}
