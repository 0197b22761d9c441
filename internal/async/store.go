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
	// Each owner's bytes (Add's byte bound), kept by triggers in the
	// transaction of every write, so that checking them reads one row.
	// An invocation counts its request's body, and the response it
	// keeps: once finished the one it has (its body is then dropped:
	// nothing reads it), until then MaxResponse, the most it may get,
	// so that finishing never adds to its owner's bytes. Finished ones'
	// bodies are dropped here too.
	`UPDATE invocations SET body = x'' WHERE finished IS NOT NULL;
	CREATE TABLE owner_bytes (
		owner TEXT PRIMARY KEY,
		bytes INTEGER NOT NULL
	) STRICT, WITHOUT ROWID;
	INSERT INTO owner_bytes (owner, bytes)
		SELECT owner, sum(length(body) + iif(finished IS NULL, 65536, ifnull(length(response), 0))) FROM invocations GROUP BY owner;
	CREATE TRIGGER invocations_bytes_insert AFTER INSERT ON invocations BEGIN
		INSERT INTO owner_bytes (owner, bytes)
			VALUES (new.owner, length(new.body) + iif(new.finished IS NULL, 65536, ifnull(length(new.response), 0)))
			ON CONFLICT (owner) DO UPDATE SET bytes = bytes + excluded.bytes;
	END;
	CREATE TRIGGER invocations_bytes_update AFTER UPDATE OF body, response, finished ON invocations BEGIN
		UPDATE owner_bytes SET bytes = bytes
			- (length(old.body) + iif(old.finished IS NULL, 65536, ifnull(length(old.response), 0)))
			+ (length(new.body) + iif(new.finished IS NULL, 65536, ifnull(length(new.response), 0)))
			WHERE owner = new.owner;
	END;
	CREATE TRIGGER invocations_bytes_delete AFTER DELETE ON invocations BEGIN
		UPDATE owner_bytes SET bytes = bytes
			- (length(old.body) + iif(old.finished IS NULL, 65536, ifnull(length(old.response), 0)))
			WHERE owner = old.owner;
	END;`,
	// failure_of: the id of the failed invocation whose event this one
	// carries (its function's on-failure destination's); its own
	// failure is never sent on. forwarded_to: the id of the event a
	// failed one was sent on as.
	`ALTER TABLE invocations ADD COLUMN failure_of TEXT NOT NULL DEFAULT '';
	ALTER TABLE invocations ADD COLUMN forwarded_to TEXT NOT NULL DEFAULT '';`,
	// An owner's total down to 0 goes (a missing one reads 0): every
	// owner that ever enqueued (users since deleted) kept a row. The
	// update adds its change as the insert does, so it makes the row
	// again if it went.
	`DROP TRIGGER invocations_bytes_update;
	CREATE TRIGGER invocations_bytes_update AFTER UPDATE OF body, response, finished ON invocations BEGIN
		INSERT INTO owner_bytes (owner, bytes)
			VALUES (new.owner,
				(length(new.body) + iif(new.finished IS NULL, 65536, ifnull(length(new.response), 0)))
				- (length(old.body) + iif(old.finished IS NULL, 65536, ifnull(length(old.response), 0))))
			ON CONFLICT (owner) DO UPDATE SET bytes = bytes + excluded.bytes;
		DELETE FROM owner_bytes WHERE owner = new.owner AND bytes = 0;
	END;
	DROP TRIGGER invocations_bytes_delete;
	CREATE TRIGGER invocations_bytes_delete AFTER DELETE ON invocations BEGIN
		UPDATE owner_bytes SET bytes = bytes
			- (length(old.body) + iif(old.finished IS NULL, 65536, ifnull(length(old.response), 0)))
			WHERE owner = old.owner;
		DELETE FROM owner_bytes WHERE owner = old.owner AND bytes = 0;
	END;
	DELETE FROM owner_bytes WHERE bytes = 0;`,
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
	// FailureOf is, for the event of a failed invocation sent on to its
	// function's on-failure destination, the failed one's id; such an
	// event's own failure is never sent on (no chains, no loops).
	FailureOf string
	// ForwardedTo is, for a failed invocation sent on to its function's
	// on-failure destination, the id of the event it was sent as.
	ForwardedTo string
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

// Bounds are what Add holds each owner to; 0 is no bound.
type Bounds struct {
	// Pending bounds an owner's invocations not finished.
	Pending int
	// Bytes bounds an owner's bytes, as Usage counts them.
	Bytes int64
}

// Add stores inv, queued, unless that would put its owner past b: then
// it is an errdefs.ErrRateLimited. inv's Seq is set.
func (s *Store) Add(ctx context.Context, inv *Invocation, b Bounds) error {
	return s.inTx(ctx, func(tx *sql.Tx) error { return add(ctx, tx, inv, b) })
}

// add is Add's, in tx.
func add(ctx context.Context, tx *sql.Tx, inv *Invocation, b Bounds) error {
	if b.Pending > 0 {
		n, err := pending(ctx, tx, inv.Owner)
		if err != nil {
			return err
		}
		if n >= b.Pending {
			return errdefs.New(errdefs.ErrRateLimited, "user %s has %d asynchronous invocations not finished, the most one may have (spry serve --async-max-per-user); wait for some to finish", inv.Owner, n)
		}
	}
	if b.Bytes > 0 {
		used, err := ownerBytes(ctx, tx, inv.Owner)
		if err != nil {
			return err
		}
		if need := int64(len(inv.Body)) + MaxResponse; used+need > b.Bytes {
			return errdefs.New(errdefs.ErrRateLimited, "user %s's asynchronous invocations hold %d bytes; this one would take %d more (its body, and %d for its response), past one user's %d (spry serve --async-max-bytes-per-user); wait for some to finish, or for finished ones to be removed", inv.Owner, used, need, MaxResponse, b.Bytes)
		}
	}
	return tx.QueryRowContext(ctx, `INSERT INTO invocations (id, owner, fn, name, path, host, content_type, body, status, created, next, failure_of)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?) RETURNING seq`,
		inv.ID, inv.Owner, inv.FunctionID, inv.Function, inv.Path, inv.Host, inv.ContentType, nonNil(inv.Body),
		inv.CreatedAt.UnixNano(), inv.NextAt.UnixNano(), inv.FailureOf).Scan(&inv.Seq)
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

// Usage is what one owner's invocations take of Bounds.
type Usage struct {
	// Pending counts their invocations not finished.
	Pending int
	// Bytes counts their request bodies (those not finished: a finished
	// one's is dropped) and responses, each not finished counted as
	// keeping MaxResponse (the most it may get), so that finishing never
	// adds to it. What else a row holds (its path, host, content type
	// and error, each bounded) is not counted.
	Bytes int64
}

// Usage says what owner's invocations take of Bounds.
func (s *Store) Usage(ctx context.Context, owner string) (Usage, error) {
	var u Usage
	var err error
	if u.Pending, err = pending(ctx, s.db, owner); err == nil {
		u.Bytes, err = ownerBytes(ctx, s.db, owner)
	}
	if err != nil {
		return Usage{}, fmt.Errorf("invocations: %w", err)
	}
	return u, nil
}

// ownerBytes reads owner's bytes as the triggers keep them.
func ownerBytes(ctx context.Context, q querier, owner string) (int64, error) {
	var n int64
	err := q.QueryRowContext(ctx, `SELECT bytes FROM owner_bytes WHERE owner = ?`, owner).Scan(&n)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil
	}
	return n, err
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
	http_status, duration, error, response, response_type, truncated, failure_of, forwarded_to`

type scanner interface{ Scan(dst ...any) error }

func scan(r scanner, extra ...any) (Invocation, error) {
	var inv Invocation
	var created, next, duration int64
	var started, finished sql.NullInt64
	var truncated int
	dst := append([]any{&inv.Seq, &inv.ID, &inv.Owner, &inv.FunctionID, &inv.Function, &inv.Path, &inv.Host, &inv.ContentType,
		&inv.Status, &inv.Attempts, &created, &started, &finished, &next,
		&inv.Last.Status, &duration, &inv.Last.Error, &inv.Last.Body, &inv.Last.ContentType, &truncated,
		&inv.FailureOf, &inv.ForwardedTo}, extra...)
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
// again for next if retry, else finished at now with status, its
// request's body dropped (nothing reads it then, and it would count
// against its owner's bytes). An invocation no longer there (its
// function deleted) is no error.
func (s *Store) Record(ctx context.Context, id string, r Result, status string, now, next time.Time) error {
	return s.inTx(ctx, func(tx *sql.Tx) error {
		_, err := record(ctx, tx, id, r, status, now, next)
		return err
	})
}

// Forward records the running invocation id as failed, as Record does,
// and in the same transaction (so that the event is built from the body
// Record drops, and is never lost nor stored twice) stores fwd, queued,
// the event of its failure for its function's on-failure destination,
// and notes fwd's id as where id was forwarded to. If fwd would put its
// owner past b, id is recorded all the same, nothing else is stored,
// and the refusal (an errdefs.ErrRateLimited) is returned as refused.
func (s *Store) Forward(ctx context.Context, id string, r Result, now time.Time, fwd *Invocation, b Bounds) (refused, err error) {
	err = s.inTx(ctx, func(tx *sql.Tx) error {
		// Finished first: the failed one's body and response reserve
		// leave its owner's bytes before fwd's are counted.
		n, err := record(ctx, tx, id, r, StatusFailed, now, now)
		if err != nil {
			return err
		}
		if n == 0 {
			// Its function was deleted meanwhile: nothing to send on.
			refused = ErrGone
			return nil
		}
		if err := add(ctx, tx, fwd, b); err != nil {
			if errors.Is(err, errdefs.ErrRateLimited) {
				refused = err
				return nil
			}
			return err
		}
		_, err = tx.ExecContext(ctx, `UPDATE invocations SET forwarded_to = ? WHERE id = ?`, fwd.ID, id)
		return err
	})
	return refused, err
}

// ErrGone is Forward's refusal of an invocation no longer there: its
// function was deleted meanwhile.
var ErrGone = errdefs.New(errdefs.ErrNotFound, "the invocation is gone: its function was deleted")

// record is Record's, in tx.
// It returns how many rows it changed: 0 if id is no longer there.
func record(ctx context.Context, tx *sql.Tx, id string, r Result, status string, now, next time.Time) (int64, error) {
	var finished any
	if status != StatusQueued {
		finished = now.UnixNano()
	}
	var body any
	if r.Body != nil {
		// No more than its owner's bytes counted it for.
		if len(r.Body) > MaxResponse {
			r.Body, r.Truncated = r.Body[:MaxResponse], true
		}
		body = r.Body
	}
	res, err := tx.ExecContext(ctx, `UPDATE invocations SET status = ?1, finished = ?2, next = ?3, http_status = ?4, duration = ?5, error = ?6,
		response = ?7, response_type = ?8, truncated = ?9, body = iif(?2 IS NULL, body, x'') WHERE id = ?10 AND status = 'running'`,
		status, finished, next.UnixNano(), r.Status, int64(r.Duration), truncate(r.Error, maxError), body, truncate(r.ContentType, maxContentType), r.Truncated, id)
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
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
