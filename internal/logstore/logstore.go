package logstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"golang.org/x/sys/unix"
	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/spry-run/spry/internal/errdefs"
	"github.com/spry-run/spry/internal/sqlitedb"
)

// Streams an entry can come from.
// insertRows is how many entries one INSERT statement writes.
const insertRows = 100

const (
	StreamStdout = "stdout"
	StreamStderr = "stderr"
	StreamSystem = "system" // the platform's messages about a function: crashes, OOM kills, timeouts, dropped lines
	StreamAccess = "access" // one line per invocation
)

// MaxLineBytes bounds the stored length of a line, in bytes. Longer lines
// are cut at a character boundary and end with a marker saying so.
const MaxLineBytes = 16 << 10

// Defaults for Options.
const (
	DefaultMaxEntriesPerFunction = 10000
	DefaultMaxAge                = 7 * 24 * time.Hour
	// DefaultMaxBytes bounds the log database as a whole: the bound per
	// function times the functions users may have is no bound on disk.
	DefaultMaxBytes = 2 << 30
	// DefaultMaxKeepFree caps the default KeepFree, as journald's.
	DefaultMaxKeepFree   = 4 << 30
	DefaultBufferSize    = 8192
	DefaultFlushInterval = 200 * time.Millisecond
	DefaultFollowBuffer  = 1024
)

const (
	// keptAnyway is what the database may hold however short of
	// KeepFree its disk is.
	keptAnyway = 16 << 20
	// maxBatch bounds the entries written in one transaction: a full batch
	// is written at once rather than when the flush timer fires.
	maxBatch = 1024
	// deleteBatch bounds the rows one retention statement deletes, so that
	// no single statement holds the write lock for long.
	deleteBatch = 1000
	// Retention runs every retentionTicks flush intervals (5s by default),
	// after retentionRows entries have been written since the last pass,
	// and on every Flush.
	retentionTicks = 25
	retentionRows  = 50000
)

var (
	// ErrClosed is returned by calls on a closed Store, and ends Follow
	// when the store is closed under it.
	ErrClosed = fmt.Errorf("logstore: store is closed: %w", errdefs.ErrUnavailable)
	// ErrDeleted ends Follow when its function is deleted: a function
	// made later under the same name (perhaps by a new user of the same
	// name) is not the one the follower was allowed to read.
	ErrDeleted = fmt.Errorf("logstore: the function was deleted: %w", errdefs.ErrNotFound)
)

// migrations are applied in order, each in the same transaction as the
// PRAGMA user_version bump that records it. Only ever append: a database's
// user_version is the number of entries it has already applied.
var migrations = []string{
	// 1: initial schema. Times are Unix microseconds.
	`
-- AUTOINCREMENT so that an ID is never reused, even after the newest
-- entries are deleted: followers and pagers resume after an ID.
CREATE TABLE entries (
	id         INTEGER PRIMARY KEY AUTOINCREMENT,
	time_us    INTEGER NOT NULL,
	owner      TEXT NOT NULL,
	name       TEXT NOT NULL,
	version    INTEGER NOT NULL,
	instance   TEXT NOT NULL,
	stream     TEXT NOT NULL,
	request_id TEXT NOT NULL,
	line       TEXT NOT NULL
) STRICT;

-- Serves Query, retention by count and DeleteFunction.
CREATE INDEX entries_by_function ON entries (owner, name, id);

-- Serves retention by age.
CREATE INDEX entries_by_time ON entries (time_us);
`,
	// 2: the function's ID, which names are not: a function deleted and
	// made again under its name is another function, and must not see the
	// lines of the one before. Entries from before have ''.
	`ALTER TABLE entries ADD COLUMN function_id TEXT NOT NULL DEFAULT '';`,
	// 3: what each owner's entries hold, for trimToSize to take from the
	// owners holding the most. It changes in the transaction of each change
	// of entries (only ever inserted and deleted), so it is right however
	// the process ended: insert adds what it writes, one statement per
	// owner, and a trigger takes off what any statement deletes. An entry's
	// bytes are the estimate of its size that entryBytes makes.
	`
CREATE TABLE owners (
	owner   TEXT PRIMARY KEY,
	bytes   INTEGER NOT NULL,
	entries INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

INSERT INTO owners (owner, bytes, entries)
SELECT owner,
	sum(octet_length(line) + octet_length(owner) + octet_length(name) + octet_length(function_id)
		+ octet_length(instance) + octet_length(stream) + octet_length(request_id) + 64),
	count(*)
FROM entries GROUP BY owner;

CREATE TRIGGER entries_delete AFTER DELETE ON entries BEGIN
	UPDATE owners SET
		bytes = bytes - (octet_length(OLD.line) + octet_length(OLD.owner) + octet_length(OLD.name) + octet_length(OLD.function_id)
			+ octet_length(OLD.instance) + octet_length(OLD.stream) + octet_length(OLD.request_id) + 64),
		entries = entries - 1
	WHERE owner = OLD.owner;
END;

-- An owner whose last entry went (its functions or the user deleted) is
-- not kept.
CREATE TRIGGER owners_empty AFTER UPDATE OF entries ON owners WHEN NEW.entries <= 0 BEGIN
	DELETE FROM owners WHERE owner = NEW.owner;
END;

-- Serves trimToSize: an owner's oldest entries, across its functions.
CREATE INDEX entries_by_owner ON entries (owner, id);
`,
}

// Entry is one log line.
type Entry struct {
	ID         int64 // assigned by the store, increasing in the order entries are stored
	Time       time.Time
	Owner      string
	Function   string
	FunctionID string // the function's ID, never reused unlike its name
	Version    int64
	Instance   string
	Stream     string // StreamStdout, StreamStderr, StreamSystem or StreamAccess
	RequestID  string
	Line       string
}

// Options tunes a Store. Zero values take the defaults.
type Options struct {
	MaxEntriesPerFunction int              // oldest entries beyond it are deleted; default 10000
	MaxAge                time.Duration    // older entries are deleted; default 7 days
	MaxBytes              int64            // past it, entries are deleted down to 90%, the oldest of the owners holding the most first; default 2 GiB
	KeepFree              int64            // while less is free on the database's disk, its file stops growing (see sizeLimit); default 15% of that disk, at most 4 GiB
	BufferSize            int              // entries Append can queue before it drops; default 8192
	FlushInterval         time.Duration    // how often queued entries are written; default 200ms
	FollowBuffer          int              // entries queued for each follower before it catches up from the database; default 1024
	MaxQueuedPerFunction  int              // once the queue is half full, what one function's entries may fill of it; default BufferSize/8
	Now                   func() time.Time // default time.Now; called concurrently
	Logger                *slog.Logger     // for errors of the writer goroutine; default discards
}

func (o *Options) setDefaults() error {
	if o.MaxEntriesPerFunction < 0 || o.MaxAge < 0 || o.MaxBytes < 0 || o.KeepFree < 0 || o.BufferSize < 0 || o.FlushInterval < 0 || o.FollowBuffer < 0 || o.MaxQueuedPerFunction < 0 {
		return errdefs.Invalid("logstore: options must not be negative")
	}
	if o.MaxEntriesPerFunction == 0 {
		o.MaxEntriesPerFunction = DefaultMaxEntriesPerFunction
	}
	if o.MaxAge == 0 {
		o.MaxAge = DefaultMaxAge
	}
	if o.MaxBytes == 0 {
		o.MaxBytes = DefaultMaxBytes
	}
	if o.BufferSize == 0 {
		o.BufferSize = DefaultBufferSize
	}
	if o.FlushInterval == 0 {
		o.FlushInterval = DefaultFlushInterval
	}
	if o.FollowBuffer == 0 {
		o.FollowBuffer = DefaultFollowBuffer
	}
	if o.MaxQueuedPerFunction == 0 {
		o.MaxQueuedPerFunction = max(o.BufferSize/8, 1)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// Store is a log store in one SQLite file. It is safe for concurrent use,
// but only one Store (one process) may use a file at a time.
type Store struct {
	db   *sql.DB
	opts Options
	dir  string // the database's directory, whose disk's free space sizeLimit reads

	queue chan item
	stop  chan struct{} // closed by Close
	done  chan struct{} // closed when the writer has exited

	closed    atomic.Bool
	closeOnce sync.Once
	closeErr  error

	dropped atomic.Uint64
	dropMu  sync.Mutex
	drops   map[dropKey]dropCount // lost lines not yet reported in a system line
	// queued counts each function's entries in the queue (function ID →
	// *atomic.Int32), so that one function's flood fills at most its
	// share of the queue and other functions' lines still get in.
	queued sync.Map

	subMu      sync.Mutex
	subs       map[fnKey]map[*subscriber]struct{}
	subsClosed bool
	// deleted holds the IDs of functions deleted lately, and when: a
	// follow of one that subscribes after its delete ended the others
	// (it had fallen behind, or the caller looked the function up just
	// before the delete) ends at once rather than wait for good.
	deleted map[string]time.Time

	// Owned by the writer goroutine.
	batch          []pending
	touched        map[fnKey]struct{}   // functions written to since their last count check
	gone           map[string]time.Time // IDs of deleted functions, and when: their late lines are dropped
	sinceRetention int
	err            error // first failure since the last Flush
	// writeFailures counts the writes failed in a row (a full disk):
	// notices are tried again ever more slowly, and the failure is
	// logged at the first and then at most every failLogEvery.
	writeFailures int
	failLogged    time.Time
	beforeWrite   func() // test hook, called before each batch is written

	// Test hook, called by Follow's goroutine after it subscribes and
	// after its initial query. Set before calling Follow.
	followHook func(stage string)
}

type fnKey struct{ owner, name string }

func keyOf(e *Entry) fnKey { return fnKey{e.Owner, e.Function} }

// dropKey names a function for its drop notice: the ID too, so that the
// notice reaches the function that lost the lines.
type dropKey struct {
	fnKey
	id string
}

// goneFor is how long the ID of a deleted function is remembered, so that
// what its requests and instances still write is dropped rather than
// stored under a name a new function may take. It outlasts a request's
// longest timeout and the access sampler's last summary.
const goneFor = time.Hour

type dropCount struct {
	n        uint64
	version  int64 // of the last line lost, so that --version N shows the notice
	instance string
	unstored bool // some were lost to a failed write (a full disk), not to a full queue
}

// item is what the queue carries: an entry, or a request for the writer.
type item struct {
	e   Entry
	n   *atomic.Int32 // e's function's count of queued entries
	req *request
}

type request struct {
	del  *dropKey   // nil: flush
	done chan error // buffered, so the writer never waits for the caller
}

// pending is an entry waiting in the writer's batch.
type pending struct {
	e      Entry
	notice uint64 // > 0: a drop notice standing for this many lost lines
}

// Open opens the log database at path, creating it if needed, and starts
// its writer. Close it to flush and stop.
func Open(ctx context.Context, path string, opts Options) (*Store, error) {
	return open(ctx, path, opts, nil)
}

func open(ctx context.Context, path string, opts Options, beforeWrite func()) (*Store, error) {
	if path == "" {
		return nil, errdefs.Invalid("logstore: database path is empty")
	}
	if err := opts.setDefaults(); err != nil {
		return nil, err
	}
	dir := filepath.Dir(path)
	if opts.KeepFree == 0 {
		// journald's SystemKeepFree: 15% of the disk, at most 4 GiB.
		if _, size, err := disk(dir); err == nil {
			opts.KeepFree = min(size/100*15, DefaultMaxKeepFree)
		}
	}
	db, err := sqlitedb.Open(ctx, path, nil, migrations)
	if err != nil {
		return nil, fmt.Errorf("logstore: %w", err)
	}
	s := &Store{
		db:          db,
		opts:        opts,
		dir:         dir,
		queue:       make(chan item, opts.BufferSize),
		stop:        make(chan struct{}),
		done:        make(chan struct{}),
		drops:       make(map[dropKey]dropCount),
		subs:        make(map[fnKey]map[*subscriber]struct{}),
		deleted:     make(map[string]time.Time),
		touched:     make(map[fnKey]struct{}),
		gone:        make(map[string]time.Time),
		beforeWrite: beforeWrite,
	}
	go s.run()
	return s, nil
}

// Append queues e to be stored. It never blocks: when the queue is full, or
// e's function already fills its share of it, e is dropped and counted (see
// Dropped), and a system line saying how many lines were lost is stored for
// e's function later. A zero e.Time means now; e.ID is ignored. Lines over MaxLineBytes are truncated and invalid
// UTF-8 is replaced with U+FFFD. Entries appended after Close are dropped.
func (s *Store) Append(e Entry) {
	if s.closed.Load() {
		s.dropped.Add(1)
		return
	}
	e.ID = 0
	if e.Time.IsZero() {
		e.Time = s.opts.Now()
	}
	// The precision stored, so that followers see what Query returns.
	e.Time = time.UnixMicro(e.Time.UnixMicro()).UTC()
	e.Line = cleanLine(e.Line)
	// Past half full, each function gets no more than its share.
	n := s.queuedOf(e.FunctionID)
	if n.Add(1) <= int32(s.opts.MaxQueuedPerFunction) || len(s.queue) < cap(s.queue)/2 {
		select {
		case s.queue <- item{e: e, n: n}:
			return
		default:
		}
	}
	n.Add(-1)
	s.dropped.Add(1)
	s.countDrop(&e, 1, false)
}

// queuedOf returns the count of id's queued entries.
func (s *Store) queuedOf(id string) *atomic.Int32 {
	if n, ok := s.queued.Load(id); ok {
		return n.(*atomic.Int32)
	}
	n, _ := s.queued.LoadOrStore(id, new(atomic.Int32))
	return n.(*atomic.Int32)
}

// countDrop remembers n lost lines of e's function for a drop notice. The
// lock is only taken when lines are lost, never on Append's usual path.
func (s *Store) countDrop(e *Entry, n uint64, unstored bool) {
	s.dropMu.Lock()
	k := dropKey{keyOf(e), e.FunctionID}
	d := s.drops[k]
	d.n += n
	d.version, d.instance = e.Version, e.Instance
	d.unstored = d.unstored || unstored
	s.drops[k] = d
	s.dropMu.Unlock()
}

// Dropped returns how many appended entries were lost since Open, because
// the queue was full, the store was closed or a write failed.
func (s *Store) Dropped() uint64 { return s.dropped.Load() }

// cleanLine makes line valid UTF-8 of at most MaxLineBytes.
func cleanLine(line string) string {
	if len(line) <= MaxLineBytes && utf8.ValidString(line) {
		return line
	}
	orig := len(line)
	if orig > MaxLineBytes {
		// Nothing past MaxLineBytes is kept; cut there first so that a huge
		// line costs no more than a long one. Back off to a character start
		// so that a character split by the cut does not become U+FFFD.
		cut := MaxLineBytes
		for i := 0; i < utf8.UTFMax-1 && !utf8.RuneStart(line[cut]); i++ {
			cut--
		}
		line = line[:cut]
	}
	line = strings.ToValidUTF8(line, "\uFFFD")
	if orig <= MaxLineBytes && len(line) <= MaxLineBytes {
		return line
	}
	// U+FFFD takes 3 bytes, so an invalid line can also grow past the limit.
	marker := fmt.Sprintf("…[truncated, %d bytes in all]", orig)
	keep := min(MaxLineBytes-len(marker), len(line))
	for keep > 0 && keep < len(line) && !utf8.RuneStart(line[keep]) {
		keep--
	}
	return line[:keep] + marker
}

// Flush waits until everything appended before it was called is stored,
// published to followers and subject to retention. It returns the first
// error the writer met since the previous Flush.
func (s *Store) Flush(ctx context.Context) error {
	return s.do(ctx, &request{})
}

// DeleteFunction deletes the entries of a function of that name, including
// those appended before the call and not yet stored, and ends its followers
// with ErrDeleted. Entries of function ID id appended afterwards (by
// requests and instances still ending) are dropped: a function made later
// under the name is another function.
func (s *Store) DeleteFunction(ctx context.Context, owner, function, id string) error {
	if owner == "" || function == "" || id == "" {
		return errdefs.Invalid("logstore: owner, function and ID are required")
	}
	s.endDeleted(fnKey{owner, function}, id)
	return s.do(ctx, &request{del: &dropKey{fnKey{owner, function}, id}})
}

// do hands r to the writer, behind every entry queued before it, and waits
// for its answer.
func (s *Store) do(ctx context.Context, r *request) error {
	if s.closed.Load() {
		return ErrClosed
	}
	r.done = make(chan error, 1)
	select {
	case s.queue <- item{req: r}:
	case <-ctx.Done():
		return ctx.Err()
	case <-s.done:
		return ErrClosed
	}
	select {
	case err := <-r.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	case <-s.done:
		// The writer may have answered just before it exited.
		select {
		case err := <-r.done:
			return err
		default:
			return ErrClosed
		}
	}
}

// Close writes what is queued, ends followers with ErrClosed and closes the
// database. It returns the writer's last unreported error, if any.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		close(s.stop)
		<-s.done
		s.closeErr = errors.Join(s.err, s.db.Close())
	})
	return s.closeErr
}

// Snapshot writes a consistent copy of the stored entries to path, which
// must not exist, while the store goes on serving (a backup's). Lines
// still queued for the writer are not in it.
func (s *Store) Snapshot(ctx context.Context, path string) error {
	if err := sqlitedb.Snapshot(ctx, s.db, path); err != nil {
		return fmt.Errorf("logstore: %w", err)
	}
	return nil
}

// run is the writer goroutine: the only one that writes to the database.
func (s *Store) run() {
	defer close(s.done)
	// The flush timer runs only while entries wait, so an idle store
	// does not wake five times a second; retention has its own pace.
	flush := time.NewTimer(s.opts.FlushInterval)
	flush.Stop()
	defer flush.Stop()
	armed := false
	arm := func() {
		if !armed {
			flush.Reset(s.opts.FlushInterval)
			armed = true
		}
	}
	retention := time.NewTicker(retentionTicks * s.opts.FlushInterval)
	defer retention.Stop()

	// Options may have changed since the file was last open, so every
	// function's count is checked once.
	if keys, err := s.functions(context.Background()); err != nil {
		s.fail("list functions", err)
	} else {
		for _, k := range keys {
			s.touched[k] = struct{}{}
		}
	}
	s.retain()

	for {
		select {
		case it := <-s.queue:
			s.handle(it)
			if len(s.batch) > 0 {
				arm()
			}
		case <-flush.C:
			armed = false
			s.write()
			if s.dropsPending() {
				// A failed write's notices are tried again, ever more
				// slowly while writes fail (a full disk).
				flush.Reset(retryDelay(s.opts.FlushInterval, s.writeFailures))
				armed = true
			}
		case <-retention.C:
			s.write()
			s.retain()
		case <-s.stop:
			for drained := false; !drained; {
				select {
				case it := <-s.queue:
					s.handle(it)
				default:
					drained = true
				}
			}
			s.write()
			s.closeSubscribers()
			return
		}
	}
}

func (s *Store) handle(it item) {
	if it.req == nil {
		it.n.Add(-1)
		if _, ok := s.gone[it.e.FunctionID]; ok {
			return
		}
		s.batch = append(s.batch, pending{e: it.e})
		if len(s.batch) >= maxBatch {
			s.write()
		}
		return
	}
	s.write()
	if k := it.req.del; k != nil {
		it.req.done <- s.deleteFunction(*k)
		return
	}
	s.retain()
	it.req.done <- s.err
	s.err = nil
}

// failLogEvery bounds how often writes failing in a row are logged.
const failLogEvery = 30 * time.Second

// retryDelay is the wait before the next try after failures writes
// failed in a row: every doubling from interval, up to 30 s.
func retryDelay(interval time.Duration, failures int) time.Duration {
	d := interval
	for i := 1; i < failures && d < 30*time.Second; i++ {
		d *= 2
	}
	return min(d, 30*time.Second)
}

// fail logs a writer error and keeps the first one for Flush.
func (s *Store) fail(what string, err error) {
	s.opts.Logger.Error("logstore: "+what, "err", err)
	if s.err == nil {
		s.err = fmt.Errorf("logstore: %s: %w", what, err)
	}
}

// write stores the batch in one transaction and publishes it to followers.
func (s *Store) write() {
	s.addDropNotices()
	if len(s.batch) == 0 {
		return
	}
	if s.beforeWrite != nil {
		s.beforeWrite()
	}
	batch := s.batch
	s.batch = s.batch[:0] // reused: publish copies what it sends
	if err := s.insert(batch); err != nil {
		s.writeFailures++
		what := fmt.Sprintf("write %d entries", len(batch))
		if now := s.opts.Now(); s.writeFailures == 1 || now.Sub(s.failLogged) >= failLogEvery {
			s.failLogged = now
			s.fail(fmt.Sprintf("%s (%d failed writes in a row)", what, s.writeFailures), err)
		} else if s.err == nil {
			s.err = fmt.Errorf("logstore: %s: %w", what, err)
		}
		for i := range batch {
			p := &batch[i]
			if p.notice > 0 {
				// Still lost, and the loss still to be told.
				s.countDrop(&p.e, p.notice, true)
			} else {
				s.dropped.Add(1)
				s.countDrop(&p.e, 1, true)
			}
		}
		return
	}
	if s.writeFailures > 0 {
		s.opts.Logger.Info("logstore: writes succeed again", "failed_writes", s.writeFailures)
		s.writeFailures = 0
	}
	for i := range batch {
		s.touched[keyOf(&batch[i].e)] = struct{}{}
	}
	s.publish(batch)
	s.sinceRetention += len(batch)
	if s.sinceRetention >= retentionRows {
		s.retain()
	}
}

// dropsPending says whether lost lines wait for their notice.
func (s *Store) dropsPending() bool {
	s.dropMu.Lock()
	defer s.dropMu.Unlock()
	return len(s.drops) > 0
}

// addDropNotices puts one system line into the batch for each function
// that lost lines since the last write.
func (s *Store) addDropNotices() {
	s.dropMu.Lock()
	defer s.dropMu.Unlock()
	if len(s.drops) == 0 {
		return
	}
	now := time.UnixMicro(s.opts.Now().UnixMicro()).UTC()
	for k, d := range s.drops {
		if _, ok := s.gone[k.id]; ok {
			continue
		}
		why := "the log store fell behind"
		if d.unstored {
			why = "the log store could not write them (the server's log says why)"
		}
		line := "spry: 1 log line was dropped because " + why
		if d.n != 1 {
			line = fmt.Sprintf("spry: %d log lines were dropped because %s", d.n, why)
		}
		s.batch = append(s.batch, pending{
			e: Entry{
				Time:       now,
				Owner:      k.owner,
				Function:   k.name,
				FunctionID: k.id,
				Version:    d.version,
				Instance:   d.instance,
				Stream:     StreamSystem,
				Line:       line,
			},
			notice: d.n,
		})
	}
	clear(s.drops)
}

// insert writes batch in one transaction and sets the IDs SQLite gave it.
func (s *Store) insert(batch []pending) error {
	ctx := context.Background()
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	// One statement per owner, where a trigger would cost one per entry.
	usage := make(map[string]ownerUsage)
	for i := range batch {
		e := &batch[i].e
		u := usage[e.Owner]
		u.bytes += entryBytes(e)
		u.entries++
		usage[e.Owner] = u
	}
	for owner, u := range usage {
		if _, err := tx.ExecContext(ctx,
			`INSERT INTO owners (owner, bytes, entries) VALUES (?, ?, ?)
			 ON CONFLICT (owner) DO UPDATE SET bytes = bytes + excluded.bytes, entries = entries + excluded.entries`,
			owner, u.bytes, u.entries); err != nil {
			return err
		}
	}
	// Many rows per statement: one statement per row was most of the
	// writer's cost at high invocation rates.
	for len(batch) > 0 {
		n := min(len(batch), insertRows)
		chunk := batch[:n]
		batch = batch[n:]
		var q strings.Builder
		q.WriteString("INSERT INTO entries (time_us, owner, name, function_id, version, instance, stream, request_id, line) VALUES ")
		args := make([]any, 0, 9*n)
		for i := range chunk {
			if i > 0 {
				q.WriteString(",")
			}
			q.WriteString("(?,?,?,?,?,?,?,?,?)")
			e := &chunk[i].e
			args = append(args, e.Time.UnixMicro(), e.Owner, e.Function, e.FunctionID, e.Version, e.Instance, e.Stream, e.RequestID, e.Line)
		}
		res, err := tx.ExecContext(ctx, q.String(), args...)
		if err != nil {
			return err
		}
		last, err := res.LastInsertId()
		if err != nil {
			return err
		}
		// One writer and AUTOINCREMENT: a statement's rows get consecutive
		// ids ending at the last one.
		for i := range chunk {
			chunk[i].e.ID = last - int64(n-1-i)
		}
	}
	return tx.Commit()
}

// retain deletes entries older than MaxAge and, for each function written
// to since its last check, those beyond the newest MaxEntriesPerFunction.
func (s *Store) retain() {
	ctx := context.Background()
	s.sinceRetention = 0
	now := s.opts.Now()
	for id, at := range s.gone {
		// Append counts late lines of a deleted function too, under a new
		// count (deleteFunction dropped the old one): unless it goes here,
		// the store would keep one per function ever deleted. One still
		// counting lines on their way goes at a later pass.
		if n, ok := s.queued.Load(id); ok && n.(*atomic.Int32).Load() == 0 {
			s.queued.CompareAndDelete(id, n)
		}
		if now.Sub(at) > goneFor {
			delete(s.gone, id)
		}
	}
	cutoff := now.Add(-s.opts.MaxAge).UnixMicro()
	if err := s.deleteBatches(ctx,
		`DELETE FROM entries WHERE id IN (
			SELECT id FROM entries WHERE time_us < ? ORDER BY time_us LIMIT ?)`,
		cutoff); err != nil {
		s.fail("delete old entries", err)
	}
	for k := range s.touched {
		// The ID of the newest entry past the limit, if there is one: it and
		// all before it go.
		var last int64
		err := s.db.QueryRowContext(ctx,
			`SELECT id FROM entries WHERE owner = ? AND name = ?
			 ORDER BY id DESC LIMIT 1 OFFSET ?`,
			k.owner, k.name, s.opts.MaxEntriesPerFunction).Scan(&last)
		if err == nil {
			err = s.deleteBatches(ctx,
				`DELETE FROM entries WHERE id IN (
					SELECT id FROM entries WHERE owner = ? AND name = ? AND id <= ?
					ORDER BY id LIMIT ?)`,
				k.owner, k.name, last)
		}
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			s.fail(fmt.Sprintf("trim entries of %s/%s", k.owner, k.name), err)
			continue // checked again next time
		}
		delete(s.touched, k)
	}
	if err := s.trimToSize(ctx); err != nil {
		s.fail("trim the log database to its size", err)
	}
}

// trimToSize keeps the database's pages in use within sizeLimit. Past it,
// entries are deleted down to nine tenths of it (so that the next pass is
// not at once), fairly between owners: the owners holding the most bytes
// lose their oldest entries first, down to a common level (see
// waterLevel), and an owner holding no more than the level loses none.
// Freed pages are reused, so the file stays about that size.
func (s *Store) trimToSize(ctx context.Context) error {
	used, file, err := s.pageBytes(ctx)
	if err != nil {
		return err
	}
	limit := s.sizeLimit(file)
	if used <= limit {
		return nil
	}
	target := limit / 10 * 9
	for used > target {
		owners, err := s.owners(ctx)
		if err != nil {
			return err
		}
		var total int64
		for _, o := range owners {
			total += o.bytes
		}
		if total <= 0 {
			return nil
		}
		// The owners' bytes are an estimate and the excess is in pages:
		// the excess's share of the pages is taken of the estimate. A page
		// is freed only once mostly empty, so when the lines deleted shared
		// pages with others' the next round goes on.
		need := int64(float64(used-target)/float64(used)*float64(total)) + 1
		level := waterLevel(owners, need)
		var deleted int64
		for _, o := range owners {
			if o.bytes <= level {
				break // sorted: the rest hold less
			}
			n, err := s.trimOwner(ctx, o, level)
			deleted += n
			if err != nil {
				return err
			}
		}
		if deleted == 0 {
			return nil
		}
		if used, _, err = s.pageBytes(ctx); err != nil {
			return err
		}
	}
	return nil
}

// entryBytes is the estimate of e's size in the database: its text, and 64
// for its numbers, record headers and index entries. Migration 3's trigger
// takes off the same when e is deleted: they must agree.
func entryBytes(e *Entry) int64 {
	return int64(len(e.Line)+len(e.Owner)+len(e.Function)+len(e.FunctionID)+
		len(e.Instance)+len(e.Stream)+len(e.RequestID)) + 64
}

// ownerUsage is what an owner's entries hold.
type ownerUsage struct {
	owner   string
	bytes   int64 // the estimate of their size; see migration 3
	entries int64
}

// owners returns what each owner's entries hold, most bytes first. The
// table has a row per owner with entries, not per entry.
func (s *Store) owners(ctx context.Context) ([]ownerUsage, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT owner, bytes, entries FROM owners ORDER BY bytes DESC, owner`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var owners []ownerUsage
	for rows.Next() {
		var o ownerUsage
		if err := rows.Scan(&o.owner, &o.bytes, &o.entries); err != nil {
			return nil, err
		}
		owners = append(owners, o)
	}
	return owners, rows.Err()
}

// waterLevel returns the level that owners (most bytes first) are cut down
// to so that need bytes go: the owners above it lose what they hold over
// it, the others nothing. The level is never below the fair share of what
// stays, (total-need)/len(owners), so an owner holding no more than that
// keeps all its entries however much another one writes.
func waterLevel(owners []ownerUsage, need int64) int64 {
	var sum int64
	for k := 1; k <= len(owners); k++ {
		sum += owners[k-1].bytes
		// The top k owners cut to level free sum - k*level.
		level := (sum - need) / int64(k)
		if k == len(owners) || level >= owners[k].bytes {
			return max(level, 0)
		}
	}
	return 0
}

// trimOwner deletes o's oldest entries, of all its functions, until its
// entries hold no more than level bytes, and returns how many it deleted.
func (s *Store) trimOwner(ctx context.Context, o ownerUsage, level int64) (int64, error) {
	var deleted int64
	for o.bytes > level && o.entries > 0 {
		// By the estimate of how many entries hold the excess, at most a
		// batch a statement: no more than needed, in few statements.
		perRow := max(o.bytes/o.entries, 1)
		n := min((o.bytes-level)/perRow+1, deleteBatch)
		res, err := s.db.ExecContext(ctx,
			`DELETE FROM entries WHERE id IN (
				SELECT id FROM entries WHERE owner = ? ORDER BY id LIMIT ?)`, o.owner, n)
		if err != nil {
			return deleted, err
		}
		n, err = res.RowsAffected()
		if err != nil || n == 0 {
			return deleted, err
		}
		deleted += n
		err = s.db.QueryRowContext(ctx, `SELECT bytes, entries FROM owners WHERE owner = ?`, o.owner).Scan(&o.bytes, &o.entries)
		if errors.Is(err, sql.ErrNoRows) {
			return deleted, nil // its last entry went
		}
		if err != nil {
			return deleted, err
		}
	}
	return deleted, nil
}

// sizeLimit is the bytes of pages the database may hold, its file
// holding file: MaxBytes, and while its disk has less than KeepFree free,
// nine tenths of the file as it is. The file then stops growing: deleted
// entries' pages are reused, not given back, so the lines written next
// take the oldest lines' pages rather than the disk's last free space,
// which the metadata and bundles need (journald keeps SystemKeepFree
// so). The lines are not deleted further: that would free no disk. It
// is never below keptAnyway, so that a store made on a disk that is
// already short still keeps some lines.
func (s *Store) sizeLimit(file int64) int64 {
	if free, _, err := disk(s.dir); err != nil || free >= s.opts.KeepFree {
		return s.opts.MaxBytes
	}
	return min(s.opts.MaxBytes, max(file-file/10, keptAnyway))
}

// disk is what is free (to an unprivileged writer) on dir's disk, and its
// size, in bytes.
func disk(dir string) (free, size int64, err error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, 0, err
	}
	return int64(st.Bavail) * st.Bsize, int64(st.Blocks) * st.Bsize, nil
}

// pageBytes is the size of the database's pages that are not free, and
// of all its pages (its file's size).
func (s *Store) pageBytes(ctx context.Context) (used, file int64, err error) {
	var pages, free, size int64
	for q, v := range map[string]*int64{"PRAGMA page_count": &pages, "PRAGMA freelist_count": &free, "PRAGMA page_size": &size} {
		if err := s.db.QueryRowContext(ctx, q).Scan(v); err != nil {
			return 0, 0, err
		}
	}
	return (pages - free) * size, pages * size, nil
}

// deleteBatches runs query, whose last parameter is a LIMIT, until it
// deletes fewer than deleteBatch rows. Each run is its own transaction.
func (s *Store) deleteBatches(ctx context.Context, query string, args ...any) error {
	args = append(args, deleteBatch)
	for {
		res, err := s.db.ExecContext(ctx, query, args...)
		if err != nil {
			return err
		}
		n, err := res.RowsAffected()
		if err != nil {
			return err
		}
		if n < deleteBatch {
			return nil
		}
	}
}

func (s *Store) deleteFunction(dk dropKey) error {
	k := dk.fnKey
	s.gone[dk.id] = s.opts.Now()
	s.queued.Delete(dk.id)
	// Lines it lost are not worth a notice any more.
	s.dropMu.Lock()
	for d := range s.drops {
		if d.fnKey == k {
			delete(s.drops, d)
		}
	}
	s.dropMu.Unlock()
	err := s.deleteBatches(context.Background(),
		`DELETE FROM entries WHERE id IN (
			SELECT id FROM entries WHERE owner = ? AND name = ? ORDER BY id LIMIT ?)`,
		k.owner, k.name)
	if err != nil {
		return errorf(context.Background(), err, "delete logs of %s/%s", k.owner, k.name)
	}
	delete(s.touched, k)
	return nil
}

// functions lists the functions that have entries. Each step seeks the
// index to the next function, so it costs one lookup per function rather
// than a scan of every entry.
func (s *Store) functions(ctx context.Context) ([]fnKey, error) {
	var keys []fnKey
	var k fnKey
	err := s.db.QueryRowContext(ctx,
		`SELECT owner, name FROM entries ORDER BY owner, name LIMIT 1`).Scan(&k.owner, &k.name)
	for err == nil {
		keys = append(keys, k)
		err = s.db.QueryRowContext(ctx,
			`SELECT owner, name FROM entries WHERE (owner, name) > (?, ?)
			 ORDER BY owner, name LIMIT 1`, k.owner, k.name).Scan(&k.owner, &k.name)
	}
	if !errors.Is(err, sql.ErrNoRows) {
		return nil, err
	}
	return keys, nil
}

// errorf gives a driver error its errdefs class and names what it concerns.
func errorf(ctx context.Context, err error, format string, args ...any) error {
	what := fmt.Sprintf(format, args...)
	if ctx.Err() != nil {
		// The driver reports an interrupted statement in its own words;
		// callers should see why it was interrupted.
		return fmt.Errorf("logstore: %s: %w", what, ctx.Err())
	}
	var se *sqlite.Error
	if errors.As(err, &se) {
		switch se.Code() & 0xff {
		case sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED:
			return fmt.Errorf("logstore: %s: database is busy: %w", what, errdefs.ErrUnavailable)
		}
	}
	return fmt.Errorf("logstore: %s: %w", what, err)
}
