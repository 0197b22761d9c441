// Package kv is functions' key-value storage. Each function has a
// namespace of its own, named by its id: kept across versions, deploys
// and restarts, removed with the function. Its code reaches it as
// ctx.kv, through a Unix socket in its sandbox that only its own
// instances have (ServeConn); entries live in one SQLite file of the
// server's data directory.
package kv

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/spry-run/spry/internal/errdefs"
	"github.com/spry-run/spry/internal/sqlitedb"
)

// Limits of one entry and one listing, as Deno KV's and Workers KV's
// are of the same order: a key of a few hundred bytes, a value of 64 KiB.
const (
	MaxKeyBytes   = 512
	MaxValueBytes = 64 << 10
	MaxList       = 1000
	DefaultList   = 100
	// MaxListBytes bounds a page's keys and values together: past it a
	// page ends early, with its cursor (a page has one entry at least).
	MaxListBytes = 1 << 20
	// MaxExpireIn is the longest expiry a value may be given.
	MaxExpireIn = 10 * 365 * 24 * time.Hour
)

// deleteBatch is how many entries Sweep and DeleteFunction remove in
// one transaction: the writer's lock is one for all functions.
const deleteBatch = 1000

// EntryOverhead is what each entry counts against its namespace's bound
// beyond its key's and value's bytes: about what a row costs SQLite in
// its pages and index, so that millions of tiny entries cannot take
// many times the bound of disk.
const EntryOverhead = 100

// DefaultMaxBytes is a function's namespace's default bound, keys and
// values together.
const DefaultMaxBytes = 64 << 20

// DefaultMaxBytesPerOwner is spry serve's default bound of all of one
// owner's namespaces together: ten functions at their full bound.
const DefaultMaxBytesPerOwner = 10 * DefaultMaxBytes

var migrations = []string{
	`CREATE TABLE entries (
		fn TEXT NOT NULL,
		key TEXT NOT NULL,
		value BLOB NOT NULL,
		expires INTEGER, -- Unix ms; NULL: never
		size INTEGER NOT NULL, -- the key's and the value's bytes, and EntryOverhead
		PRIMARY KEY (fn, key)
	) WITHOUT ROWID;
	CREATE INDEX entries_expires ON entries (expires) WHERE expires IS NOT NULL;
	-- What each namespace holds, keys and values, kept with every change
	-- so that a write's bound check reads one row, not the namespace.
	CREATE TABLE usage (
		fn TEXT PRIMARY KEY,
		bytes INTEGER NOT NULL
	) WITHOUT ROWID;`,
	// Each write gives its entry the next version of one clock, kept
	// here so that a key deleted and set again (or the server
	// restarted) never has a version it had before.
	`ALTER TABLE entries ADD COLUMN version INTEGER NOT NULL DEFAULT 0;
	CREATE TABLE clock (id INTEGER PRIMARY KEY CHECK (id = 0), version INTEGER NOT NULL);
	INSERT INTO clock (id, version) VALUES (0, 0);`,
	// Each namespace's owner, learnt at its first write (Options.Owners;
	// '': not yet), and what each owner's namespaces hold together, kept
	// with every change as usage is. Open recomputes owners from usage,
	// so it is never more than a sum of it.
	`ALTER TABLE usage ADD COLUMN owner TEXT NOT NULL DEFAULT '';
	CREATE TABLE owners (
		owner TEXT PRIMARY KEY,
		bytes INTEGER NOT NULL
	) WITHOUT ROWID;`,
}

// Store holds every function's entries.
type Store struct {
	db *sql.DB
	// wmu is held by each write transaction: SQLite's writers poll for
	// its lock, and lose it to a loop of transactions (Sweep's batches),
	// where a mutex hands it to the one that waited.
	wmu      sync.Mutex
	get      *sql.Stmt // prepared once: parsing it took a third of a read's time
	maxBytes int64
	// maxOwner bounds an owner's namespaces together (0: no bound);
	// owners resolves function ids to their owners.
	maxOwner int64
	owners   func(ids []string) map[string]string
	// unowned: namespaces may have bytes and no owner yet (a file from
	// before owners were kept); the next write learns theirs first.
	unowned atomic.Bool
	now     func() time.Time
	// connIdle and lineTime are ServeConn's ConnIdleTimeout and
	// LineTimeout (tests shorten them).
	connIdle, lineTime time.Duration
}

// Options are the store's.
type Options struct {
	// MaxBytes bounds each namespace, keys and values together (0:
	// DefaultMaxBytes).
	MaxBytes int64
	// MaxBytesPerOwner bounds all of one owner's namespaces together
	// (0: no bound). It needs Owners.
	MaxBytesPerOwner int64
	// Owners returns the owners of the functions of ids that exist, by
	// id. It is called outside the store's locks, at the first write of a
	// namespace whose owner the store has not recorded yet (nil: none is
	// ever recorded, and no owner's bound applies).
	Owners func(ids []string) map[string]string
	// Now is the clock expiries are read by (nil: time.Now).
	Now func() time.Time
}

// Open opens (creating if needed) the store at path.
func Open(ctx context.Context, path string, o Options) (*Store, error) {
	db, err := sqlitedb.Open(ctx, path, nil, migrations)
	if err != nil {
		return nil, err
	}
	if o.MaxBytes <= 0 {
		o.MaxBytes = DefaultMaxBytes
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	get, err := db.PrepareContext(ctx, `SELECT value, version FROM entries WHERE fn = ? AND key = ? AND (expires IS NULL OR expires > ?)`)
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	s := &Store{db: db, get: get, maxBytes: o.MaxBytes, maxOwner: o.MaxBytesPerOwner, owners: o.Owners, now: o.Now,
		connIdle: ConnIdleTimeout, lineTime: LineTimeout}
	if err := s.recount(ctx); err != nil {
		s.Close()
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	return s, nil
}

// recount makes each owner's total the sum of its namespaces' usage, as
// they are recorded, and notes whether some have no owner yet: a file
// from before owners were kept has none, and one whose write learnt no
// owner (its function just deleted) may have some.
func (s *Store) recount(ctx context.Context) error {
	return s.inTx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `DELETE FROM owners; INSERT INTO owners (owner, bytes) SELECT owner, sum(bytes) FROM usage WHERE owner != '' GROUP BY owner HAVING sum(bytes) != 0`); err != nil {
			return err
		}
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM usage WHERE owner = '' AND bytes != 0`).Scan(&n); err != nil {
			return err
		}
		s.unowned.Store(n > 0)
		return nil
	})
}

// learnOwners records the owners of the namespaces that have bytes and
// none yet, and adds their bytes to their owners' totals, so that an
// owner's bound counts what its functions held before owners were kept.
// Namespaces of functions that no longer exist stay without (the
// server's prune removes them).
func (s *Store) learnOwners(ctx context.Context) error {
	if s.owners == nil || !s.unowned.Load() {
		return nil
	}
	rows, err := s.db.QueryContext(ctx, `SELECT fn FROM usage WHERE owner = '' AND bytes != 0`)
	if err != nil {
		return fmt.Errorf("kv: %w", err)
	}
	var ids []string
	for rows.Next() {
		var fn string
		if err := rows.Scan(&fn); err != nil {
			rows.Close()
			return fmt.Errorf("kv: %w", err)
		}
		ids = append(ids, fn)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("kv: %w", err)
	}
	// Outside the store's lock: the resolver takes its own.
	owners := s.owners(ids)
	err = s.inTx(ctx, func(tx *sql.Tx) error {
		for fn, owner := range owners {
			if err := setOwner(ctx, tx, fn, owner); err != nil {
				return err
			}
		}
		return nil
	})
	if err == nil {
		s.unowned.Store(false)
	}
	return err
}

// setOwner records owner as fn's, unless fn has one, and adds what fn
// holds to owner's total. A concurrent writer may have recorded it
// since it was read: the guard makes that a no-op.
func setOwner(ctx context.Context, tx *sql.Tx, fn, owner string) error {
	var bytes int64
	err := tx.QueryRowContext(ctx, `INSERT INTO usage (fn, bytes, owner) VALUES (?, 0, ?)
		ON CONFLICT (fn) DO UPDATE SET owner = excluded.owner WHERE owner = ''
		RETURNING bytes`, fn, owner).Scan(&bytes)
	if errors.Is(err, sql.ErrNoRows) {
		return nil // it had an owner
	}
	if err != nil || bytes == 0 {
		return err
	}
	return addOwner(ctx, tx, owner, bytes)
}

// addOwner adds delta to owner's total. A total down to 0 goes, as a
// missing one reads 0: else every owner that ever wrote (users since
// deleted) kept a row.
func addOwner(ctx context.Context, tx *sql.Tx, owner string, delta int64) error {
	_, err := tx.ExecContext(ctx, `INSERT INTO owners (owner, bytes) VALUES (?, ?)
		ON CONFLICT (owner) DO UPDATE SET bytes = bytes + excluded.bytes`, owner, delta)
	if err == nil && delta < 0 {
		_, err = tx.ExecContext(ctx, `DELETE FROM owners WHERE owner = ? AND bytes = 0`, owner)
	}
	return err
}

// Close closes the file.
func (s *Store) Close() error {
	s.get.Close()
	return s.db.Close()
}

// Snapshot writes a consistent copy of the entries to path, which must
// not exist, while the store goes on serving (a backup's). Writers are
// not held: the copy is one read transaction.
func (s *Store) Snapshot(ctx context.Context, path string) error {
	if err := sqlitedb.Snapshot(ctx, s.db, path); err != nil {
		return fmt.Errorf("kv: %w", err)
	}
	return nil
}

// Entry is one key, its value (JSON text) and the value's version.
type Entry struct {
	Key     string          `json:"key"`
	Value   json.RawMessage `json:"value"`
	Version string          `json:"version"`
}

// A version names one write of a key: every write gives the next of
// one clock, as hex digits of a fixed width, so that versions compare
// as strings as they do as numbers.
func formatVersion(v int64) string { return fmt.Sprintf("%016x", v) }

func parseVersion(s string) (int64, error) {
	v, err := strconv.ParseInt(s, 16, 64)
	if len(s) != 16 || err != nil || v < 0 {
		return 0, errdefs.Invalid("kv: %q is not a version (16 hex digits, as a read gives)", s)
	}
	return v, nil
}

// A Precondition is what a conditional write needs of the key's entry
// as it is: none (Absent), or one of Version ("": any).
type Precondition struct {
	Absent  bool
	Version string
}

// check tells whether the key's present version (-1: none) meets p.
func (p *Precondition) check(present int64) (bool, error) {
	switch {
	case p == nil:
		return true, nil
	case p.Absent:
		return present < 0, nil
	case p.Version == "":
		return present >= 0, nil
	}
	want, err := parseVersion(p.Version)
	return present >= 0 && present == want, err
}

// failed is the error of an op ("write", "delete") on key refused by p,
// the key's present version being present (-1: none): it says what the
// key holds against what the op was made for.
func (p *Precondition) failed(key, op string, present int64) error {
	switch {
	case present < 0:
		return errdefs.New(errdefs.ErrPrecondition, "kv: the key %q has no value (the %s was made for one)", key, op)
	case p.Absent:
		return errdefs.New(errdefs.ErrPrecondition, "kv: the key %q has a value (the %s was made for none)", key, op)
	}
	return errdefs.New(errdefs.ErrPrecondition, "kv: the key %q has changed (its version is not the one the %s was made for)", key, op)
}

func checkKey(key string) error {
	switch {
	case key == "":
		return errdefs.Invalid("kv: a key must not be empty")
	case len(key) > MaxKeyBytes:
		return errdefs.New(errdefs.ErrTooLarge, "kv: a key is at most %d bytes; this one is %d", MaxKeyBytes, len(key))
	case !utf8.ValidString(key):
		return errdefs.Invalid("kv: a key must be UTF-8 text")
	}
	return nil
}

// Get returns fn's value of key, or ok false if it has none (or it
// expired).
func (s *Store) Get(ctx context.Context, fn, key string) (value json.RawMessage, ok bool, err error) {
	e, ok, err := s.GetEntry(ctx, fn, key)
	return e.Value, ok, err
}

// GetEntry returns fn's entry of key, with its version, or ok false if
// it has none (or it expired).
func (s *Store) GetEntry(ctx context.Context, fn, key string) (Entry, bool, error) {
	if err := checkKey(key); err != nil {
		return Entry{}, false, err
	}
	var value []byte
	var version int64
	err := s.get.QueryRowContext(ctx, fn, key, s.now().UnixMilli()).Scan(&value, &version)
	if errors.Is(err, sql.ErrNoRows) {
		return Entry{}, false, nil
	}
	if err != nil {
		return Entry{}, false, fmt.Errorf("kv get: %w", err)
	}
	return Entry{Key: key, Value: value, Version: formatVersion(version)}, true, nil
}

// Set gives fn's key the value (JSON text), which expires after
// expireIn unless that is 0. It fails with ErrQuotaExceeded if the
// namespace would grow past its bound, and leaves it as it was.
func (s *Store) Set(ctx context.Context, fn, key string, value json.RawMessage, expireIn time.Duration) error {
	_, err := s.SetIf(ctx, fn, key, value, expireIn, nil)
	return err
}

// SetIf is Set if the key's entry meets pre (nil: always), else an
// ErrPrecondition error, and returns the value's version.
func (s *Store) SetIf(ctx context.Context, fn, key string, value json.RawMessage, expireIn time.Duration, pre *Precondition) (string, error) {
	var compact bytes.Buffer
	// JSON is UTF-8 text, which Compact does not check: bytes that are
	// not would be read back as they are by the API, and as U+FFFD by
	// the function.
	if err := json.Compact(&compact, value); err != nil || len(value) == 0 || !utf8.Valid(compact.Bytes()) {
		if err := checkKey(key); err != nil {
			return "", err
		}
		return "", errdefs.Invalid("kv: a value must be JSON (UTF-8 text)")
	}
	if n, ok := outOfRange(compact.Bytes()); ok {
		if err := checkKey(key); err != nil {
			return "", err
		}
		return "", errdefs.Invalid("kv: the number %s is out of range of a double: a function would read it as Infinity", n)
	}
	return s.put(ctx, fn, key, expireIn, pre, func(json.RawMessage) (json.RawMessage, bool, error) {
		return compact.Bytes(), false, nil
	})
}

// outOfRange returns the first number of the valid JSON text v that a
// double cannot hold (1e400): JSON allows it, but the function's
// JSON.parse reads it as Infinity, which it can never write back.
// Only a number with an exponent or more digits than a double's
// largest can be one, so most values are not tokenized.
func outOfRange(v []byte) (string, bool) {
	if !bytes.ContainsAny(v, "eE") && len(v) <= 309 {
		return "", false
	}
	d := json.NewDecoder(bytes.NewReader(v))
	d.UseNumber()
	for {
		t, err := d.Token()
		if err != nil {
			return "", false
		}
		if n, ok := t.(json.Number); ok {
			if _, err := strconv.ParseFloat(string(n), 64); err != nil {
				return string(n), true
			}
		}
	}
}

// Add adds delta to fn's number at key (0 if it has none, or it
// expired), atomically, and returns the sum: a counter that concurrent
// requests add to loses no update, as one made of Get and Set would.
// expireIn, unless 0, gives the entry a new expiry; 0 keeps the one it
// has. A value that is not a number is an invalid-argument error.
func (s *Store) Add(ctx context.Context, fn, key string, delta float64, expireIn time.Duration) (float64, error) {
	if math.IsNaN(delta) || math.IsInf(delta, 0) {
		return 0, errdefs.Invalid("kv: add takes a finite number")
	}
	var sum float64
	_, err := s.put(ctx, fn, key, expireIn, nil, func(old json.RawMessage) (json.RawMessage, bool, error) {
		var n float64
		if old != nil {
			// Through a pointer: null, which Unmarshal leaves a float
			// as it was, is not a number either.
			var p *float64
			if err := json.Unmarshal(old, &p); err != nil || p == nil {
				return nil, false, errdefs.Invalid("kv: the value of %q is not a number, to add to", key)
			}
			n = *p
		}
		sum = n + delta
		if math.IsInf(sum, 0) {
			return nil, false, errdefs.Invalid("kv: the sum is past what a number holds")
		}
		b, err := json.Marshal(sum)
		return b, expireIn == 0 && old != nil, err
	})
	return sum, err
}

// put stores what value makes of the key's present value (nil: none, or
// expired), if the entry meets pre, with a new expiry after expireIn (0:
// never), or with the present one if value says to keep it; it returns
// the entry's new version.
func (s *Store) put(ctx context.Context, fn, key string, expireIn time.Duration, pre *Precondition, value func(old json.RawMessage) (json.RawMessage, bool, error)) (string, error) {
	if err := checkKey(key); err != nil {
		return "", err
	}
	if expireIn < 0 || expireIn > MaxExpireIn {
		return "", errdefs.Invalid("kv: expireIn must be between 0 (never) and %v", MaxExpireIn)
	}
	if _, err := pre.check(-1); err != nil {
		return "", err
	}
	var version int64
	err := s.write(ctx, fn, func(tx *sql.Tx, used, ownerUsed int64) (int64, error) {
		// The time is read in the writers' turn, not before its wait:
		// else an entry that expired meanwhile would be taken as there.
		t := s.now()
		now := t.UnixMilli()
		var expires any
		if expireIn > 0 {
			expires = t.Add(expireIn).UnixMilli()
		}
		var old int64
		var oldValue []byte
		var oldExpires sql.NullInt64
		present := int64(-1)
		err := tx.QueryRowContext(ctx, `SELECT size, value, expires, version FROM entries WHERE fn = ? AND key = ?`, fn, key).Scan(&old, &oldValue, &oldExpires, &present)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return 0, err
		}
		if oldExpires.Valid && oldExpires.Int64 <= now {
			oldValue, present = nil, -1 // expired: as if it were not there
		}
		if ok, _ := pre.check(present); !ok {
			return 0, pre.failed(key, "write", present)
		}
		v, keep, err := value(oldValue)
		if err != nil {
			return 0, err
		}
		if keep && oldExpires.Valid {
			expires = oldExpires.Int64
		}
		if len(v) > MaxValueBytes {
			return 0, errdefs.New(errdefs.ErrTooLarge, "kv: a value is at most %d bytes as JSON; this one is %d", MaxValueBytes, len(v))
		}
		size := int64(len(key)+len(v)) + EntryOverhead
		// Expired entries are not read, but hold their bytes until the
		// sweep: past a bound, the function's own make room first, but
		// key's (which the write replaces, counting its size as the
		// old). The expiries' index finds them: it holds no more than
		// what expired since the last sweep, where fn's keys may be
		// hundreds of thousands.
		if size > old && (used-old+size > s.maxBytes || ownerUsed >= 0 && s.maxOwner > 0 && ownerUsed-old+size > s.maxOwner) {
			_, freed, err := removeIn(ctx, tx, `DELETE FROM entries WHERE (fn, key) IN (
					SELECT fn, key FROM entries INDEXED BY entries_expires WHERE expires <= ?3 AND fn = ?1 AND key != ?2 LIMIT ?4
				) RETURNING fn, size`, fn, key, now, deleteBatch)
			if err != nil {
				return 0, err
			}
			used -= freed
			if ownerUsed >= 0 {
				ownerUsed -= freed
			}
		}
		// Still past the user's bound: the user's other functions'
		// expired entries make room too (their bytes come off their own
		// namespaces here; the sweep would take them within a minute).
		if size > old && ownerUsed >= 0 && s.maxOwner > 0 && ownerUsed-old+size > s.maxOwner {
			_, others, err := removeIn(ctx, tx, `DELETE FROM entries WHERE (fn, key) IN (
					SELECT fn, key FROM entries INDEXED BY entries_expires WHERE expires <= ?1 AND fn != ?2
						AND fn IN (SELECT fn FROM usage WHERE owner = (SELECT owner FROM usage WHERE fn = ?2) AND owner != '')
					LIMIT ?3
				) RETURNING fn, size`, now, fn, deleteBatch)
			if err != nil {
				return 0, err
			}
			ownerUsed -= others
		}
		// A write that shrinks the namespace is always let through:
		// a function over its bound (the bound lowered) can still
		// make room.
		if next := used - old + size; next > s.maxBytes && size > old {
			return 0, errdefs.New(errdefs.ErrQuotaExceeded, "kv: the function's entries would take %d bytes, more than its %d (spry serve --kv-max-bytes); delete some first", next, s.maxBytes)
		}
		if next := ownerUsed - old + size; ownerUsed >= 0 && s.maxOwner > 0 && next > s.maxOwner && size > old {
			return 0, errdefs.New(errdefs.ErrQuotaExceeded, "kv: the entries of all of the user's functions would take %d bytes, more than one user's %d (spry serve --kv-max-bytes-per-user); delete some first", next, s.maxOwner)
		}
		if version, err = nextVersion(ctx, tx); err != nil {
			return 0, err
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO entries (fn, key, value, expires, size, version) VALUES (?, ?, ?, ?, ?, ?)
			ON CONFLICT (fn, key) DO UPDATE SET value = excluded.value, expires = excluded.expires, size = excluded.size, version = excluded.version`, fn, key, v, expires, size, version)
		return size - old, err
	})
	if err != nil {
		return "", err
	}
	return formatVersion(version), nil
}

// Restored moves the version clock of a store restored from a backup
// ahead of every version the server it was copied from may have given
// since: to the time in microseconds (unless it is past that already),
// which no count of writes reaches. Else the restored server would give
// again the versions of writes made after the backup, and a write made
// for one of them would go through against another value.
func (s *Store) Restored(ctx context.Context) error {
	return s.inTx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `UPDATE clock SET version = max(version, ?) WHERE id = 0`, s.now().UnixMicro())
		return err
	})
}

// nextVersion takes the clock's next version, in the write's
// transaction.
func nextVersion(ctx context.Context, tx *sql.Tx) (int64, error) {
	var v int64
	err := tx.QueryRowContext(ctx, `UPDATE clock SET version = version + 1 WHERE id = 0 RETURNING version`).Scan(&v)
	return v, err
}

// Delete removes fn's key, if it has one.
func (s *Store) Delete(ctx context.Context, fn, key string) error {
	return s.DeleteIf(ctx, fn, key, nil)
}

// DeleteIf is Delete if the key's entry meets pre (nil: always), else
// an ErrPrecondition error.
func (s *Store) DeleteIf(ctx context.Context, fn, key string, pre *Precondition) error {
	if err := checkKey(key); err != nil {
		return err
	}
	if _, err := pre.check(-1); err != nil {
		return err
	}
	return s.write(ctx, fn, func(tx *sql.Tx, _, _ int64) (int64, error) {
		now := s.now().UnixMilli() // in the writers' turn, as put's
		var old int64
		var expires sql.NullInt64
		present := int64(-1)
		err := tx.QueryRowContext(ctx, `DELETE FROM entries WHERE fn = ? AND key = ? RETURNING size, version, expires`, fn, key).Scan(&old, &present, &expires)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return 0, err
		}
		if expires.Valid && expires.Int64 <= now {
			present = -1
		}
		if ok, _ := pre.check(present); !ok {
			// The transaction is rolled back: the entry stays.
			return 0, pre.failed(key, "delete", present)
		}
		return -old, nil
	})
}

// write runs change in a transaction with what fn's namespace holds and
// what its owner's hold together (-1: no owner known), and adds the
// change's delta to both.
func (s *Store) write(ctx context.Context, fn string, change func(tx *sql.Tx, used, ownerUsed int64) (int64, error)) error {
	if err := s.learnOwners(ctx); err != nil {
		return err
	}
	// A namespace's owner is learnt at its first write: the transaction
	// is given up, the owner resolved outside the lock (the resolver
	// takes its own), and the write made again with it.
	owner, asked := "", false
	for {
		err := s.inTx(ctx, func(tx *sql.Tx) error {
			if owner != "" {
				if err := setOwner(ctx, tx, fn, owner); err != nil {
					return err
				}
			}
			var used int64
			var recorded string
			if err := tx.QueryRowContext(ctx, `SELECT bytes, owner FROM usage WHERE fn = ?`, fn).Scan(&used, &recorded); err != nil && !errors.Is(err, sql.ErrNoRows) {
				return err
			}
			if recorded == "" && s.owners != nil && !asked {
				return errNoOwner
			}
			ownerUsed := int64(-1)
			if recorded != "" {
				ownerUsed = 0
				if err := tx.QueryRowContext(ctx, `SELECT bytes FROM owners WHERE owner = ?`, recorded).Scan(&ownerUsed); err != nil && !errors.Is(err, sql.ErrNoRows) {
					return err
				}
			}
			delta, err := change(tx, used, ownerUsed)
			if err != nil || delta == 0 {
				return err
			}
			if _, err = tx.ExecContext(ctx, `INSERT INTO usage (fn, bytes) VALUES (?, ?)
				ON CONFLICT (fn) DO UPDATE SET bytes = bytes + excluded.bytes`, fn, delta); err != nil {
				return err
			}
			if recorded != "" {
				return addOwner(ctx, tx, recorded, delta)
			}
			return nil
		})
		if !errors.Is(err, errNoOwner) {
			return err
		}
		owner, asked = s.owners([]string{fn})[fn], true
	}
}

// errNoOwner gives up a write's transaction to learn its namespace's
// owner.
var errNoOwner = errors.New("kv: the namespace's owner is not known yet")

// inTx runs f in one write transaction, in the writers' turn (wmu).
func (s *Store) inTx(ctx context.Context, f func(tx *sql.Tx) error) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("kv: %w", err)
	}
	defer tx.Rollback()
	if err := f(tx); err != nil {
		if errdefs.Public(err) {
			return err
		}
		return fmt.Errorf("kv: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("kv: %w", err)
	}
	return nil
}

// List returns up to limit of fn's entries whose keys start with
// prefix, in key order (bytewise), after the key cursor (""; the start),
// and the cursor of the next page ("" when there is none). A page ends
// early past MaxListBytes.
func (s *Store) List(ctx context.Context, fn, prefix, cursor string, limit int) ([]Entry, string, error) {
	switch {
	case limit < 0 || limit > MaxList:
		return nil, "", errdefs.Invalid("kv: limit must be between 1 and %d", MaxList)
	case len(prefix) > MaxKeyBytes || len(cursor) > MaxKeyBytes:
		return nil, "", errdefs.Invalid("kv: prefix and cursor are at most %d bytes", MaxKeyBytes)
	case limit == 0:
		limit = DefaultList
	}
	// Keys compare bytewise (SQLite's BINARY), so the keys with the
	// prefix are one range: from the prefix to the prefix with its last
	// byte below 0xff raised (none: to the end).
	from := max(prefix, cursor)
	q := `SELECT key, value, version FROM entries WHERE fn = ? AND key >= ? AND key > ? AND (expires IS NULL OR expires > ?)`
	args := []any{fn, from, cursor, s.now().UnixMilli()}
	if end, ok := prefixEnd(prefix); ok {
		q += ` AND key < ?`
		args = append(args, end)
	}
	q += ` ORDER BY key LIMIT ?`
	args = append(args, limit+1)
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, "", fmt.Errorf("kv list: %w", err)
	}
	defer rows.Close()
	var out []Entry
	size, full := 0, false
	for rows.Next() {
		var e Entry
		var v []byte
		var version int64
		if err := rows.Scan(&e.Key, &v, &version); err != nil {
			return nil, "", fmt.Errorf("kv list: %w", err)
		}
		e.Value, e.Version = v, formatVersion(version)
		if size += len(e.Key) + len(v); size > MaxListBytes && len(out) > 0 {
			full = true
			break
		}
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, "", fmt.Errorf("kv list: %w", err)
	}
	next := ""
	switch {
	case full:
		next = out[len(out)-1].Key
	case len(out) > limit:
		out = out[:limit]
		next = out[limit-1].Key
	}
	return out, next, nil
}

// prefixEnd is the least string above every string with prefix p, or
// false if there is none (p empty, or all 0xff bytes).
func prefixEnd(p string) (string, bool) {
	b := []byte(p)
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] < 0xff {
			b[i]++
			return string(b[:i+1]), true
		}
	}
	return "", false
}

// DeleteFunction removes fn's namespace, deleteBatch entries a
// transaction, and then what it holds.
func (s *Store) DeleteFunction(ctx context.Context, fn string) error {
	for {
		n, err := s.removeBatch(ctx, `DELETE FROM entries WHERE fn = ?1 AND key IN (SELECT key FROM entries WHERE fn = ?1 LIMIT ?2) RETURNING fn, size`, fn, deleteBatch)
		if err != nil {
			return err
		}
		if n < deleteBatch {
			break
		}
	}
	return s.inTx(ctx, func(tx *sql.Tx) error {
		var left int64
		var owner string
		err := tx.QueryRowContext(ctx, `DELETE FROM usage WHERE fn = ? RETURNING bytes, owner`, fn).Scan(&left, &owner)
		if errors.Is(err, sql.ErrNoRows) || err == nil && (owner == "" || left == 0) {
			return nil
		}
		if err != nil {
			return err
		}
		// What a write let in after the last batch.
		return addOwner(ctx, tx, owner, -left)
	})
}

// Namespaces lists the functions that have entries (or had).
func (s *Store) Namespaces(ctx context.Context) ([]string, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT fn FROM usage UNION SELECT DISTINCT fn FROM entries`)
	if err != nil {
		return nil, fmt.Errorf("kv: %w", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var fn string
		if err := rows.Scan(&fn); err != nil {
			return nil, fmt.Errorf("kv: %w", err)
		}
		out = append(out, fn)
	}
	return out, rows.Err()
}

// Sweep removes the entries that have expired, and returns how many.
// Until then they are not read, but count against their namespace's
// bound. It removes deleteBatch a transaction.
func (s *Store) Sweep(ctx context.Context) (int, error) {
	now := s.now().UnixMilli()
	total := 0
	for {
		n, err := s.removeBatch(ctx, `DELETE FROM entries WHERE (fn, key) IN (
				SELECT fn, key FROM entries WHERE expires IS NOT NULL AND expires <= ?1 LIMIT ?2
			) RETURNING fn, size`, now, deleteBatch)
		total += n
		if err != nil || n < deleteBatch {
			return total, err
		}
	}
}

// removeBatch runs query, a DELETE of at most deleteBatch entries
// returning each one's fn and size, in one transaction with the sizes
// taken off what their namespaces hold, and returns how many it
// deleted: a batch at a time, so that other functions' writes go
// between the batches of a long removal.
func (s *Store) removeBatch(ctx context.Context, query string, args ...any) (int, error) {
	n := 0
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		var err error
		n, _, err = removeIn(ctx, tx, query, args...)
		return err
	})
	if err != nil {
		return 0, err
	}
	return n, nil
}

// removeIn runs query, a DELETE returning each entry's fn and size, in
// tx, takes the sizes off what their namespaces and owners hold, and
// returns how many entries and bytes it removed.
func removeIn(ctx context.Context, tx *sql.Tx, query string, args ...any) (int, int64, error) {
	rows, err := tx.QueryContext(ctx, query, args...)
	if err != nil {
		return 0, 0, err
	}
	n, total := 0, int64(0)
	freed := map[string]int64{}
	for rows.Next() {
		var fn string
		var size int64
		if err := rows.Scan(&fn, &size); err != nil {
			rows.Close()
			return 0, 0, err
		}
		freed[fn] += size
		total += size
		n++
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, 0, err
	}
	for fn, size := range freed {
		var owner string
		err := tx.QueryRowContext(ctx, `UPDATE usage SET bytes = bytes - ? WHERE fn = ? RETURNING owner`, size, fn).Scan(&owner)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return 0, 0, err
		}
		if owner != "" {
			if err := addOwner(ctx, tx, owner, -size); err != nil {
				return 0, 0, err
			}
		}
	}
	return n, total, nil
}

// Used returns what fn's namespace holds, keys and values, in bytes.
func (s *Store) Used(ctx context.Context, fn string) (int64, error) {
	var used int64
	err := s.db.QueryRowContext(ctx, `SELECT bytes FROM usage WHERE fn = ?`, fn).Scan(&used)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil
	}
	return used, err
}

// MaxBytesPerOwner is the bound of all of one owner's namespaces
// together (Options.MaxBytesPerOwner; 0: none).
func (s *Store) MaxBytesPerOwner() int64 { return s.maxOwner }

// OwnerUsed returns what all of owner's namespaces hold together, as far
// as their owner is recorded, in bytes.
func (s *Store) OwnerUsed(ctx context.Context, owner string) (int64, error) {
	var used int64
	err := s.db.QueryRowContext(ctx, `SELECT bytes FROM owners WHERE owner = ?`, owner).Scan(&used)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil
	}
	return used, err
}
