// Package sqlite implements store.Store on a single SQLite database file, so
// that a one-node Spry needs no database server. It uses the pure-Go driver
// modernc.org/sqlite, which keeps Spry buildable without cgo.
package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/spry-run/spry/internal/errdefs"
	"github.com/spry-run/spry/internal/sqlitedb"
	"github.com/spry-run/spry/internal/store"
)

// migrations are applied in order, each in the same transaction as the
// PRAGMA user_version bump that records it. Only ever append: a database's
// user_version is the number of entries it has already applied.
var migrations = []string{
	// 1: initial schema. Times are Unix milliseconds; NULL is the zero time.
	`
CREATE TABLE users (
	name       TEXT PRIMARY KEY,
	admin      INTEGER NOT NULL DEFAULT 0,
	created_at INTEGER
) STRICT;

CREATE TABLE tokens (
	id         TEXT PRIMARY KEY,
	user_name  TEXT NOT NULL REFERENCES users (name) ON DELETE CASCADE,
	hash       BLOB NOT NULL,
	name       TEXT NOT NULL,
	created_at INTEGER,
	revoked_at INTEGER
) STRICT;

-- Serves ListTokens and the ON DELETE CASCADE from users.
CREATE INDEX tokens_by_user ON tokens (user_name, created_at);

CREATE TABLE functions (
	owner           TEXT NOT NULL,
	name            TEXT NOT NULL,
	id              TEXT NOT NULL UNIQUE,
	live_version    INTEGER NOT NULL,
	created_at      INTEGER,
	updated_at      INTEGER,
	last_invoked_at INTEGER,
	PRIMARY KEY (owner, name)
) STRICT;

CREATE TABLE versions (
	owner      TEXT NOT NULL,
	name       TEXT NOT NULL,
	number     INTEGER NOT NULL,
	digest     TEXT NOT NULL,
	size       INTEGER NOT NULL,
	config     TEXT NOT NULL,
	created_at INTEGER,
	created_by TEXT NOT NULL,
	PRIMARY KEY (owner, name, number),
	FOREIGN KEY (owner, name) REFERENCES functions (owner, name) ON DELETE CASCADE
) STRICT;

-- Serves Digests, which the blob garbage collector calls.
CREATE INDEX versions_by_digest ON versions (digest);
`,
	// 2: traffic splits and tags, as one JSON document (store.Routing).
	`ALTER TABLE functions ADD COLUMN routing TEXT NOT NULL DEFAULT '{}';`,
	// 3: tokens' expiry (NULL: never) and scopes (space-separated; '':
	// all rights), which tokens made before keep.
	`
ALTER TABLE tokens ADD COLUMN expires_at INTEGER;
ALTER TABLE tokens ADD COLUMN scopes TEXT NOT NULL DEFAULT '';
`,
	// 4: the highest version number each function has given, so that a
	// deleted version's (DeleteVersion) is not given again. Until now it
	// was the highest kept, which pruning never deletes.
	`
ALTER TABLE functions ADD COLUMN last_version INTEGER NOT NULL DEFAULT 0;
UPDATE functions SET last_version = (SELECT COALESCE(MAX(number), 0) FROM versions v
	WHERE v.owner = functions.owner AND v.name = functions.name);
`,
	// 5: how far each function's schedule has run (store.ScheduleMark),
	// so that a time missed while the server was down runs at its start.
	`
CREATE TABLE schedule_marks (
	function_id TEXT PRIMARY KEY REFERENCES functions (id) ON DELETE CASCADE,
	cron        TEXT NOT NULL,
	at          INTEGER NOT NULL
) STRICT;
`,
	// 6: a value sealed with the secret key (store.Functions'
	// SecretKeyCheck), so that a server started with another key knows.
	`
CREATE TABLE secret_key_check (
	id     INTEGER PRIMARY KEY CHECK (id = 1),
	sealed TEXT NOT NULL
) STRICT;
`,
}

// Store is a store.Store kept in one SQLite database file. It is safe for
// concurrent use, also by several processes sharing the file.
type Store struct {
	db *sql.DB
}

var _ store.Store = (*Store)(nil)

// Open opens the database at path, creating it if needed, and brings its
// schema up to date.
func Open(ctx context.Context, path string) (*Store, error) {
	if path == "" {
		return nil, errdefs.Invalid("sqlite: database path is empty")
	}
	db, err := sqlitedb.Open(ctx, path, []string{"foreign_keys(1)"}, migrations)
	if err != nil {
		return nil, fmt.Errorf("sqlite: %w", err)
	}
	return &Store{db: db}, nil
}

// Close closes the database.
func (s *Store) Close() error {
	return s.db.Close()
}

// Snapshot writes a consistent copy of the database to path, which must
// not exist, while the store goes on serving (a backup's).
func (s *Store) Snapshot(ctx context.Context, path string) error {
	if err := sqlitedb.Snapshot(ctx, s.db, path); err != nil {
		return fmt.Errorf("sqlite: %w", err)
	}
	return nil
}

// errorf gives a driver error its errdefs class and names the resource it
// concerns. Errors without a class keep the driver error in their chain for
// logs; errdefs keeps their text from clients.
func errorf(ctx context.Context, err error, format string, args ...any) error {
	what := fmt.Sprintf(format, args...)
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("%s: %w", what, errdefs.ErrNotFound)
	}
	if ctx.Err() != nil {
		// The driver reports an interrupted statement in its own words;
		// callers should see why it was interrupted.
		return fmt.Errorf("%s: %w", what, ctx.Err())
	}
	var se *sqlite.Error
	if errors.As(err, &se) {
		switch se.Code() {
		case sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY, sqlite3.SQLITE_CONSTRAINT_UNIQUE:
			return fmt.Errorf("%s: %w", what, errdefs.ErrAlreadyExists)
		}
		switch se.Code() & 0xff {
		case sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED:
			return fmt.Errorf("%s: database is busy: %w", what, errdefs.ErrUnavailable)
		}
	}
	return fmt.Errorf("sqlite: %s: %w", what, err)
}

func isConstraint(err error, code int) bool {
	var se *sqlite.Error
	return errors.As(err, &se) && se.Code() == code
}

// millis is how times are stored: Unix milliseconds, and NULL for the zero
// time, which has no meaningful Unix representation.
func millis(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t.UnixMilli()
}

// msTime scans a column written by millis.
type msTime struct{ t *time.Time }

func (m msTime) Scan(src any) error {
	switch v := src.(type) {
	case nil:
		*m.t = time.Time{}
	case int64:
		*m.t = time.UnixMilli(v).UTC()
	default:
		return fmt.Errorf("time column holds %T, want INTEGER", src)
	}
	return nil
}

type scanner interface{ Scan(dest ...any) error }

func fnName(owner, name string) string { return owner + "/" + name }

// Users

func (s *Store) CreateUser(ctx context.Context, u store.User, tokens ...store.Token) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return errorf(ctx, err, "user %q", u.Name)
	}
	defer tx.Rollback()
	_, err = tx.ExecContext(ctx,
		`INSERT INTO users (name, admin, created_at) VALUES (?, ?, ?)`,
		u.Name, u.Admin, millis(u.CreatedAt))
	if err != nil {
		return errorf(ctx, err, "user %q", u.Name)
	}
	for _, t := range tokens {
		if err := createToken(ctx, tx, t); err != nil {
			return err
		}
	}
	if err := tx.Commit(); err != nil {
		return errorf(ctx, err, "user %q", u.Name)
	}
	return nil
}

const userColumns = `name, admin, created_at`

func scanUser(sc scanner) (store.User, error) {
	var u store.User
	err := sc.Scan(&u.Name, &u.Admin, msTime{&u.CreatedAt})
	return u, err
}

func (s *Store) GetUser(ctx context.Context, name string) (store.User, error) {
	u, err := scanUser(s.db.QueryRowContext(ctx,
		`SELECT `+userColumns+` FROM users WHERE name = ?`, name))
	if err != nil {
		return store.User{}, errorf(ctx, err, "user %q", name)
	}
	return u, nil
}

func (s *Store) ListUsers(ctx context.Context) ([]store.User, error) {
	users, err := list(ctx, s.db, scanUser,
		`SELECT `+userColumns+` FROM users ORDER BY name`)
	if err != nil {
		return nil, errorf(ctx, err, "list users")
	}
	return users, nil
}

func (s *Store) DeleteUser(ctx context.Context, name string) error {
	// Immediate: the check and the delete hold the write lock together.
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return errorf(ctx, err, "delete user %q", name)
	}
	defer tx.Rollback()
	var lastAdmin bool
	err = tx.QueryRowContext(ctx,
		`SELECT admin AND NOT EXISTS (SELECT 1 FROM users WHERE admin AND name != ?) FROM users WHERE name = ?`,
		name, name).Scan(&lastAdmin)
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("user %q: %w", name, errdefs.ErrNotFound)
	}
	if err != nil {
		return errorf(ctx, err, "delete user %q", name)
	}
	if lastAdmin {
		return errdefs.New(errdefs.ErrConflict, "%s is the last admin; make another admin first", name)
	}
	// Tokens go by ON DELETE CASCADE, in the same statement.
	res, err := tx.ExecContext(ctx, `DELETE FROM users WHERE name = ?`, name)
	if err := affected(ctx, res, err, "user %q", name); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return errorf(ctx, err, "delete user %q", name)
	}
	return nil
}

// Tokens

func (s *Store) CreateToken(ctx context.Context, t store.Token) error {
	return createToken(ctx, s.db, t)
}

// execer is a database or a transaction.
type execer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

func createToken(ctx context.Context, db execer, t store.Token) error {
	hash := t.Hash
	if hash == nil {
		hash = []byte{} // NULL is not a hash
	}
	_, err := db.ExecContext(ctx,
		`INSERT INTO tokens (id, user_name, hash, name, created_at, revoked_at, expires_at, scopes)
		 VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
		t.ID, t.User, hash, t.Name, millis(t.CreatedAt), millis(t.RevokedAt), millis(t.ExpiresAt), strings.Join(t.Scopes, " "))
	if isConstraint(err, sqlite3.SQLITE_CONSTRAINT_FOREIGNKEY) {
		return fmt.Errorf("token %q: user %q: %w", t.ID, t.User, errdefs.ErrNotFound)
	}
	if err != nil {
		return errorf(ctx, err, "token %q", t.ID)
	}
	return nil
}

const tokenColumns = `id, user_name, hash, name, created_at, revoked_at, expires_at, scopes`

func scanToken(sc scanner) (store.Token, error) {
	var t store.Token
	var scopes string
	err := sc.Scan(&t.ID, &t.User, &t.Hash, &t.Name, msTime{&t.CreatedAt}, msTime{&t.RevokedAt}, msTime{&t.ExpiresAt}, &scopes)
	t.Scopes = strings.Fields(scopes)
	return t, err
}

func (s *Store) GetToken(ctx context.Context, id string) (store.Token, error) {
	t, err := scanToken(s.db.QueryRowContext(ctx,
		`SELECT `+tokenColumns+` FROM tokens WHERE id = ?`, id))
	if err != nil {
		return store.Token{}, errorf(ctx, err, "token %q", id)
	}
	return t, nil
}

func (s *Store) ListTokens(ctx context.Context, user string) ([]store.Token, error) {
	tokens, err := list(ctx, s.db, scanToken,
		`SELECT `+tokenColumns+` FROM tokens WHERE user_name = ? ORDER BY created_at, id`, user)
	if err != nil {
		return nil, errorf(ctx, err, "list tokens of user %q", user)
	}
	return tokens, nil
}

func (s *Store) RevokeToken(ctx context.Context, id string, at time.Time) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return errorf(ctx, err, "revoke token %q", id)
	}
	defer tx.Rollback()
	res, err := tx.ExecContext(ctx,
		`UPDATE tokens SET revoked_at = coalesce(revoked_at, ?) WHERE id = ?`, millis(at), id)
	if err := affected(ctx, res, err, "token %q", id); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, `
		DELETE FROM tokens WHERE revoked_at IS NOT NULL
		AND user_name = (SELECT user_name FROM tokens WHERE id = ?1)
		AND id NOT IN (SELECT id FROM tokens WHERE revoked_at IS NOT NULL
			AND user_name = (SELECT user_name FROM tokens WHERE id = ?1)
			ORDER BY revoked_at DESC, id DESC LIMIT ?2)`, id, store.MaxRevokedTokens); err != nil {
		return errorf(ctx, err, "prune revoked tokens")
	}
	if err := tx.Commit(); err != nil {
		return errorf(ctx, err, "revoke token %q", id)
	}
	return nil
}

// Functions

func (s *Store) Deploy(ctx context.Context, id string, v store.Version) (store.Version, error) {
	name := fnName(v.Owner, v.Name)
	config, err := json.Marshal(v.Config)
	if err != nil {
		return store.Version{}, fmt.Errorf("function %q: encode config: %w", name, err)
	}

	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return store.Version{}, errorf(ctx, err, "deploy function %q", name)
	}
	defer tx.Rollback()

	// The id only names a new function: an existing one keeps its own, so a
	// redeploy must not fail because the id it was given is taken.
	var exists bool
	if err := tx.QueryRowContext(ctx,
		`SELECT EXISTS (SELECT 1 FROM functions WHERE owner = ? AND name = ?)`,
		v.Owner, v.Name).Scan(&exists); err != nil {
		return store.Version{}, errorf(ctx, err, "deploy function %q", name)
	}
	if !exists {
		// live_version 0 joins no version until the UPDATE below; no one
		// sees it before the commit.
		_, err := tx.ExecContext(ctx,
			`INSERT INTO functions (owner, name, id, live_version, created_at, updated_at)
			 VALUES (?, ?, ?, 0, ?, ?)`,
			v.Owner, v.Name, id, millis(v.CreatedAt), millis(v.CreatedAt))
		if err != nil {
			return store.Version{}, errorf(ctx, err, "function %q: id %q", name, id)
		}
	}

	// Safe without further locking: the transaction holds the write lock.
	if err := tx.QueryRowContext(ctx,
		`SELECT last_version + 1 FROM functions WHERE owner = ? AND name = ?`,
		v.Owner, v.Name).Scan(&v.Number); err != nil {
		return store.Version{}, errorf(ctx, err, "deploy function %q", name)
	}
	if _, err := tx.ExecContext(ctx,
		`INSERT INTO versions (owner, name, number, digest, size, config, created_at, created_by)
		 VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
		v.Owner, v.Name, v.Number, v.Digest, v.Size, string(config), millis(v.CreatedAt), v.CreatedBy); err != nil {
		return store.Version{}, errorf(ctx, err, "version %d of function %q", v.Number, name)
	}
	if _, err := tx.ExecContext(ctx,
		`UPDATE functions SET live_version = ?1, last_version = ?1, updated_at = ?2, routing = json_remove(routing, '$.traffic')
		 WHERE owner = ?3 AND name = ?4`,
		v.Number, millis(v.CreatedAt), v.Owner, v.Name); err != nil {
		return store.Version{}, errorf(ctx, err, "deploy function %q", name)
	}
	// The oldest versions go, but those a tag names (traffic, cleared
	// above, names none now): a function redeployed for ever must not
	// grow the database for ever.
	if _, err := tx.ExecContext(ctx,
		`DELETE FROM versions WHERE owner = ?1 AND name = ?2 AND number <= ?3
		 AND number NOT IN (SELECT j.value FROM functions f, json_each(f.routing, '$.tags') j
		                    WHERE f.owner = ?1 AND f.name = ?2)`,
		v.Owner, v.Name, v.Number-store.MaxVersions); err != nil {
		return store.Version{}, errorf(ctx, err, "deploy function %q: prune versions", name)
	}
	if err := tx.Commit(); err != nil {
		return store.Version{}, errorf(ctx, err, "deploy function %q", name)
	}
	return v, nil
}

const functionQuery = `
SELECT f.id, f.owner, f.name, f.live_version, f.created_at, f.updated_at, f.last_invoked_at, f.routing,
       v.number, v.digest, v.size, v.config, v.created_at, v.created_by
FROM functions f
JOIN versions v ON v.owner = f.owner AND v.name = f.name AND v.number = f.live_version`

func scanFunction(sc scanner) (store.Function, error) {
	var (
		f       store.Function
		config  string
		routing string
	)
	err := sc.Scan(&f.ID, &f.Owner, &f.Name, &f.LiveVersion,
		msTime{&f.CreatedAt}, msTime{&f.UpdatedAt}, msTime{&f.LastInvokedAt}, &routing,
		&f.Live.Number, &f.Live.Digest, &f.Live.Size, &config,
		msTime{&f.Live.CreatedAt}, &f.Live.CreatedBy)
	if err != nil {
		return store.Function{}, err
	}
	f.Live.Owner, f.Live.Name = f.Owner, f.Name
	if err := json.Unmarshal([]byte(config), &f.Live.Config); err != nil {
		return store.Function{}, fmt.Errorf("decode config of version %d: %w", f.Live.Number, err)
	}
	if err := json.Unmarshal([]byte(routing), &f.Routing); err != nil {
		return store.Function{}, fmt.Errorf("decode routing of function %q: %w", f.Name, err)
	}
	return f, nil
}

func (s *Store) GetFunction(ctx context.Context, owner, name string) (store.Function, error) {
	f, err := scanFunction(s.db.QueryRowContext(ctx,
		functionQuery+` WHERE f.owner = ? AND f.name = ?`, owner, name))
	if err != nil {
		return store.Function{}, errorf(ctx, err, "function %q", fnName(owner, name))
	}
	return f, nil
}

func (s *Store) ListFunctions(ctx context.Context, owner string, page store.Page) ([]store.Function, error) {
	var (
		where []string
		args  []any
	)
	if owner != "" {
		where, args = append(where, "f.owner = ?"), append(args, owner)
	}
	if page.After != (store.FunctionKey{}) {
		// A row value: the primary key index serves it as a range.
		where, args = append(where, "(f.owner, f.name) > (?, ?)"), append(args, page.After.Owner, page.After.Name)
	}
	q := functionQuery
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	q += " ORDER BY f.owner, f.name"
	if page.Limit > 0 {
		q, args = q+" LIMIT ?", append(args, page.Limit)
	}
	fns, err := list(ctx, s.db, scanFunction, q, args...)
	if err != nil {
		return nil, errorf(ctx, err, "list functions of owner %q", owner)
	}
	return fns, nil
}

func (s *Store) CountFunctions(ctx context.Context, owner string) (int, error) {
	var n int
	err := s.db.QueryRowContext(ctx, `SELECT count(*) FROM functions WHERE owner = ?`, owner).Scan(&n)
	if err != nil {
		return 0, errorf(ctx, err, "count functions of owner %q", owner)
	}
	return n, nil
}

func (s *Store) DeleteFunction(ctx context.Context, owner, name string) error {
	// Versions go by ON DELETE CASCADE, in the same statement.
	res, err := s.db.ExecContext(ctx,
		`DELETE FROM functions WHERE owner = ? AND name = ?`, owner, name)
	return affected(ctx, res, err, "function %q", fnName(owner, name))
}

const versionColumns = `owner, name, number, digest, size, config, created_at, created_by`

func scanVersion(sc scanner) (store.Version, error) {
	var (
		v      store.Version
		config string
	)
	if err := sc.Scan(&v.Owner, &v.Name, &v.Number, &v.Digest, &v.Size, &config,
		msTime{&v.CreatedAt}, &v.CreatedBy); err != nil {
		return store.Version{}, err
	}
	if err := json.Unmarshal([]byte(config), &v.Config); err != nil {
		return store.Version{}, fmt.Errorf("decode config of version %d: %w", v.Number, err)
	}
	return v, nil
}

func (s *Store) GetVersion(ctx context.Context, owner, name string, number int64) (store.Version, error) {
	v, err := scanVersion(s.db.QueryRowContext(ctx,
		`SELECT `+versionColumns+` FROM versions WHERE owner = ? AND name = ? AND number = ?`,
		owner, name, number))
	if err != nil {
		return store.Version{}, errorf(ctx, err, "version %d of function %q", number, fnName(owner, name))
	}
	return v, nil
}

func (s *Store) ListVersions(ctx context.Context, owner, name string) ([]store.Version, error) {
	vs, err := list(ctx, s.db, scanVersion,
		`SELECT `+versionColumns+` FROM versions WHERE owner = ? AND name = ? ORDER BY number DESC`,
		owner, name)
	if err != nil {
		return nil, errorf(ctx, err, "list versions of function %q", fnName(owner, name))
	}
	// Deploy creates a function with its first version and versions are
	// only deleted with their function, so no versions means no function.
	if len(vs) == 0 {
		return nil, fmt.Errorf("function %q: %w", fnName(owner, name), errdefs.ErrNotFound)
	}
	return vs, nil
}

func (s *Store) SetLive(ctx context.Context, owner, name string, number int64, at time.Time) error {
	res, err := s.db.ExecContext(ctx,
		`UPDATE functions SET live_version = ?1, updated_at = ?2, routing = json_remove(routing, '$.traffic')
		 WHERE owner = ?3 AND name = ?4 AND EXISTS (
			SELECT 1 FROM versions WHERE owner = ?3 AND name = ?4 AND number = ?1)`,
		number, millis(at), owner, name)
	err = affected(ctx, res, err, "version %d of function %q", number, fnName(owner, name))
	if !errors.Is(err, errdefs.ErrNotFound) {
		return err
	}
	// Say which one is missing. Not atomic with the update, but it only
	// picks the message.
	var one int
	if e := s.db.QueryRowContext(ctx,
		`SELECT 1 FROM functions WHERE owner = ? AND name = ?`, owner, name).Scan(&one); errors.Is(e, sql.ErrNoRows) {
		return fmt.Errorf("function %q: %w", fnName(owner, name), errdefs.ErrNotFound)
	}
	return err
}

func (s *Store) DeleteVersion(ctx context.Context, owner, name string, number int64, at time.Time) error {
	fn := fnName(owner, name)
	// Immediate: the checks and the delete hold the write lock together.
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return errorf(ctx, err, "delete version %d of function %q", number, fn)
	}
	defer tx.Rollback()
	var (
		live    int64
		routing string
		r       store.Routing
	)
	if err := tx.QueryRowContext(ctx,
		`SELECT live_version, routing FROM functions WHERE owner = ? AND name = ?`,
		owner, name).Scan(&live, &routing); err != nil {
		return errorf(ctx, err, "function %q", fn)
	}
	if err := json.Unmarshal([]byte(routing), &r); err != nil {
		return fmt.Errorf("decode routing of function %q: %w", fn, err)
	}
	if err := store.InUse(fn, number, live, r); err != nil {
		return err
	}
	res, err := tx.ExecContext(ctx,
		`DELETE FROM versions WHERE owner = ? AND name = ? AND number = ?`, owner, name, number)
	if err := affected(ctx, res, err, "version %d of function %q", number, fn); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx,
		`UPDATE functions SET updated_at = ? WHERE owner = ? AND name = ?`, millis(at), owner, name); err != nil {
		return errorf(ctx, err, "delete version %d of function %q", number, fn)
	}
	if err := tx.Commit(); err != nil {
		return errorf(ctx, err, "delete version %d of function %q", number, fn)
	}
	return nil
}

func (s *Store) SetRouting(ctx context.Context, owner, name string, r store.Routing, at time.Time) error {
	data, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("encode routing: %w", err)
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return errorf(ctx, err, "set routing of function %q", fnName(owner, name))
	}
	defer tx.Rollback()
	check := func(number int64) error {
		var one int
		err := tx.QueryRowContext(ctx,
			`SELECT 1 FROM versions WHERE owner = ? AND name = ? AND number = ?`, owner, name, number).Scan(&one)
		if err != nil {
			return errorf(ctx, err, "version %d of function %q", number, fnName(owner, name))
		}
		return nil
	}
	for _, sp := range r.Traffic {
		if err := check(sp.Version); err != nil {
			return err
		}
	}
	for _, v := range r.Tags {
		if err := check(v); err != nil {
			return err
		}
	}
	res, err := tx.ExecContext(ctx,
		`UPDATE functions SET routing = ?, updated_at = ? WHERE owner = ? AND name = ?`,
		string(data), millis(at), owner, name)
	if err := affected(ctx, res, err, "function %q", fnName(owner, name)); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return errorf(ctx, err, "set routing of function %q", fnName(owner, name))
	}
	return nil
}

func (s *Store) SetLastInvoked(ctx context.Context, at map[store.FunctionKey]time.Time) error {
	if len(at) == 0 {
		return nil
	}
	// One transaction, so the batch costs one fsync rather than one each.
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return errorf(ctx, err, "set last invoked")
	}
	defer tx.Rollback()
	stmt, err := tx.PrepareContext(ctx,
		`UPDATE functions SET last_invoked_at = ? WHERE owner = ? AND name = ?`)
	if err != nil {
		return errorf(ctx, err, "set last invoked")
	}
	defer stmt.Close()
	for k, t := range at {
		// Functions deleted since their invocation are not an error.
		if _, err := stmt.ExecContext(ctx, millis(t), k.Owner, k.Name); err != nil {
			return errorf(ctx, err, "set last invoked of function %q", fnName(k.Owner, k.Name))
		}
	}
	if err := tx.Commit(); err != nil {
		return errorf(ctx, err, "set last invoked")
	}
	return nil
}

func (s *Store) MarkSchedules(ctx context.Context, marks map[string]store.ScheduleMark) error {
	if len(marks) == 0 {
		return nil
	}
	// One transaction, so the batch costs one fsync rather than one each.
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return errorf(ctx, err, "mark schedules")
	}
	defer tx.Rollback()
	// A function deleted since is not an error: its mark is not kept.
	stmt, err := tx.PrepareContext(ctx, `INSERT INTO schedule_marks (function_id, cron, at)
		SELECT ?1, ?2, ?3 WHERE EXISTS (SELECT 1 FROM functions WHERE id = ?1)
		ON CONFLICT (function_id) DO UPDATE SET cron = excluded.cron, at = excluded.at`)
	if err != nil {
		return errorf(ctx, err, "mark schedules")
	}
	defer stmt.Close()
	for id, m := range marks {
		if _, err := stmt.ExecContext(ctx, id, m.Cron, m.At.UnixMilli()); err != nil {
			return errorf(ctx, err, "mark the schedule of function %s", id)
		}
	}
	if err := tx.Commit(); err != nil {
		return errorf(ctx, err, "mark schedules")
	}
	return nil
}

func (s *Store) ScheduleMarks(ctx context.Context) (map[string]store.ScheduleMark, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT function_id, cron, at FROM schedule_marks`)
	if err != nil {
		return nil, errorf(ctx, err, "list schedule marks")
	}
	defer rows.Close()
	marks := map[string]store.ScheduleMark{}
	for rows.Next() {
		var id string
		var m store.ScheduleMark
		if err := rows.Scan(&id, &m.Cron, msTime{&m.At}); err != nil {
			return nil, errorf(ctx, err, "list schedule marks")
		}
		marks[id] = m
	}
	if err := rows.Err(); err != nil {
		return nil, errorf(ctx, err, "list schedule marks")
	}
	return marks, nil
}

func (s *Store) Digests(ctx context.Context) (map[string]bool, error) {
	digests, err := list(ctx, s.db, func(sc scanner) (string, error) {
		var d string
		err := sc.Scan(&d)
		return d, err
	}, `SELECT DISTINCT digest FROM versions`)
	if err != nil {
		return nil, errorf(ctx, err, "list digests")
	}
	set := make(map[string]bool, len(digests))
	for _, d := range digests {
		set[d] = true
	}
	return set, nil
}

// CountSecretVersions implements store.Functions.
func (s *Store) CountSecretVersions(ctx context.Context) (int, error) {
	var n int
	// Config is JSON with "secrets" omitted when empty; the test for an
	// empty object covers rows written otherwise.
	err := s.db.QueryRowContext(ctx, `SELECT count(*) FROM versions
		WHERE json_extract(config, '$.secrets') IS NOT NULL
		AND json_extract(config, '$.secrets') != '{}'`).Scan(&n)
	if err != nil {
		return 0, errorf(ctx, err, "count versions with secrets")
	}
	return n, nil
}

// SecretKeyCheck implements store.Functions.
func (s *Store) SecretKeyCheck(ctx context.Context) (string, error) {
	var sealed string
	err := s.db.QueryRowContext(ctx, `SELECT sealed FROM secret_key_check`).Scan(&sealed)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil
	}
	if err != nil {
		return "", errorf(ctx, err, "read the secret key's check")
	}
	return sealed, nil
}

// SetSecretKeyCheck implements store.Functions.
func (s *Store) SetSecretKeyCheck(ctx context.Context, sealed string) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO secret_key_check (id, sealed) VALUES (1, ?)
		ON CONFLICT (id) DO UPDATE SET sealed = excluded.sealed`, sealed)
	if err != nil {
		return errorf(ctx, err, "write the secret key's check")
	}
	return nil
}

// list runs a query and scans every row with scan.
func list[T any](ctx context.Context, db *sql.DB, scan func(scanner) (T, error), query string, args ...any) ([]T, error) {
	rows, err := db.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []T
	for rows.Next() {
		x, err := scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, x)
	}
	return out, rows.Err()
}

// affected turns the result of a statement that targets one row by key
// into ErrNotFound when the row did not exist.
func affected(ctx context.Context, res sql.Result, err error, format string, args ...any) error {
	if err != nil {
		return errorf(ctx, err, format, args...)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return errorf(ctx, err, format, args...)
	}
	if n == 0 {
		return fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), errdefs.ErrNotFound)
	}
	return nil
}
