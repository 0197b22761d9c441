package logstore

import (
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/spry-run/spry/internal/errdefs"
)

// Limits on Query.Limit.
const (
	DefaultLimit = 1000
	MaxLimit     = 10000
)

// MaxQueryBytes bounds the text of the lines one Query returns: lines are
// up to MaxLineBytes long, so MaxLimit of them could hold a reader's
// memory at 160 MiB.
const MaxQueryBytes = 8 << 20

// followPage is how many entries a follower that fell behind reads from
// the database at a time as it catches up.
const followPage = 256

// errLagged is why a follower's subscription ends when its buffer is full;
// the follower then catches up from the database.
var errLagged = errors.New("logstore: follower fell behind")

// Query selects entries of one function.
type Query struct {
	Owner, Function string    // required
	FunctionID      string    // entries of this function, not of one deleted before it of the same name; "": any
	Since           time.Time // entries at or after it; zero: no bound
	Version         int64     // entries of this version; 0: all
	AfterID         int64     // entries with a greater ID, for paging and resuming a follow
	Limit           int       // at most this many, the newest (with AfterID, the oldest); 0: DefaultLimit; at most MaxLimit (and MaxQueryBytes)
}

func (q *Query) check() error {
	switch {
	case q.Owner == "" || q.Function == "":
		return errdefs.Invalid("logstore: owner and function are required")
	case q.Version < 0:
		return errdefs.Invalid("logstore: version %d is negative", q.Version)
	case q.AfterID < 0:
		return errdefs.Invalid("logstore: after ID %d is negative", q.AfterID)
	case q.Limit < 0 || q.Limit > MaxLimit:
		return errdefs.Invalid("logstore: limit %d is not between 0 and %d", q.Limit, MaxLimit)
	}
	if q.Limit == 0 {
		q.Limit = DefaultLimit
	}
	return nil
}

// match reports whether e, an entry of q's function, passes q's filters.
func (q *Query) match(e *Entry) bool {
	return e.ID > q.AfterID &&
		(q.FunctionID == "" || e.FunctionID == q.FunctionID || e.FunctionID == "") &&
		(q.Version == 0 || e.Version == q.Version) &&
		(q.Since.IsZero() || e.Time.UnixMicro() >= q.Since.UnixMicro())
}

const entryColumns = `id, time_us, owner, name, function_id, version, instance, stream, request_id, line`

// Query returns the newest q.Limit stored entries that pass q's filters, in
// ascending ID order, like tail; when their lines hold more than
// MaxQueryBytes, only the newest of them that fit. With q.AfterID it
// returns the oldest instead, those right after it, so that a reader
// paging with the last ID it got skips none. Entries still queued are
// not seen; Flush first to see them.
func (s *Store) Query(ctx context.Context, q Query) ([]Entry, error) {
	entries, _, err := s.QueryMore(ctx, q)
	return entries, err
}

// QueryMore is Query, and also reports whether the limit (or
// MaxQueryBytes) left out entries that pass q's filters: older ones,
// or with q.AfterID newer ones, which a next page after the last ID
// returned would start with.
func (s *Store) QueryMore(ctx context.Context, q Query) ([]Entry, bool, error) {
	if err := q.check(); err != nil {
		return nil, false, err
	}
	if q.AfterID > 0 {
		return s.scan(ctx, &q, "ASC")
	}
	// Walks entries_by_function back from the newest entry.
	entries, more, err := s.scan(ctx, &q, "DESC")
	slices.Reverse(entries)
	return entries, more, err
}

// scan returns up to q.Limit entries passing q's filters, in the order
// given (by ID), stopping early when their lines pass MaxQueryBytes,
// and whether it left any out: it reads one row past the limit to know.
func (s *Store) scan(ctx context.Context, q *Query, order string) ([]Entry, bool, error) {
	if s.closed.Load() {
		return nil, false, ErrClosed
	}
	where := `owner = ? AND name = ? AND id > ?`
	args := []any{q.Owner, q.Function, q.AfterID}
	if q.FunctionID != "" {
		where += ` AND function_id IN (?, '')`
		args = append(args, q.FunctionID)
	}
	if !q.Since.IsZero() {
		where += ` AND time_us >= ?`
		args = append(args, q.Since.UnixMicro())
	}
	if q.Version != 0 {
		where += ` AND version = ?`
		args = append(args, q.Version)
	}
	args = append(args, q.Limit+1)
	rows, err := s.db.QueryContext(ctx, `SELECT `+entryColumns+` FROM entries WHERE `+where+` ORDER BY id `+order+` LIMIT ?`, args...)
	if err != nil {
		return nil, false, errorf(ctx, err, "query logs of %s/%s", q.Owner, q.Function)
	}
	defer rows.Close()
	var entries []Entry
	size, more := 0, false
	for rows.Next() {
		var e Entry
		var us int64
		if err := rows.Scan(&e.ID, &us, &e.Owner, &e.Function, &e.FunctionID, &e.Version,
			&e.Instance, &e.Stream, &e.RequestID, &e.Line); err != nil {
			return nil, false, errorf(ctx, err, "query logs of %s/%s", q.Owner, q.Function)
		}
		if size += len(e.Line); len(entries) == q.Limit || size > MaxQueryBytes && len(entries) > 0 {
			more = true
			break
		}
		e.Time = time.UnixMicro(us).UTC()
		entries = append(entries, e)
	}
	if err := rows.Err(); err != nil {
		return nil, false, errorf(ctx, err, "query logs of %s/%s", q.Owner, q.Function)
	}
	return entries, more, nil
}

// subscriber receives the entries of one function as the writer stores them.
type subscriber struct {
	q   Query
	ch  chan Entry // closed by the writer, under subMu, after setting err
	err error      // why ch was closed
}

// Follow sends the entries Query(ctx, q) returns (with q.AfterID, every
// stored entry after it, however many), then each entry passing q's
// filters as it is stored, in ID order, with no gaps or repeats. It
// goes on until ctx ends, the store closes (ErrClosed) or the function is
// deleted (ErrDeleted). The channel is then closed, and the returned
// function reports why: ctx.Err() when ctx ended. Call it after the
// channel is closed.
//
// Live entries arrive once the writer stores them, so up to a flush
// interval after Append. A reader that falls more than
// Options.FollowBuffer entries behind is not cut off: it goes on from the
// database, where it left off, until it has caught up. Only entries that
// retention deleted before it read them are missed.
func (s *Store) Follow(ctx context.Context, q Query) (<-chan Entry, func() error) {
	// Buffered, so that a reader can tell (len) that more is ready and
	// write it out in one go rather than a flush a line.
	out := make(chan Entry, 64)
	var (
		mu     sync.Mutex
		result error
	)
	finish := func(err error) {
		mu.Lock()
		result = err
		mu.Unlock()
	}
	errFunc := func() error {
		mu.Lock()
		defer mu.Unlock()
		return result
	}

	err := q.check()
	var sub *subscriber
	if err == nil {
		sub, err = s.subscribe(q)
	}
	if err != nil {
		finish(err)
		close(out)
		return out, errFunc
	}
	go func() {
		defer close(out)
		finish(s.follow(ctx, q, sub, out))
	}()
	return out, errFunc
}

// follow is Follow's goroutine. The subscription is taken before each
// query of the database, so every entry stored after the query's snapshot
// reaches it; those the query also returned are skipped by ID.
func (s *Store) follow(ctx context.Context, q Query, sub *subscriber, out chan<- Entry) error {
	defer func() { s.unsubscribe(sub) }()
	last := q.AfterID
	send := func(e Entry) error {
		select {
		case out <- e:
			last = e.ID
			return nil
		case <-ctx.Done():
			return ctx.Err()
		case <-s.done:
			return ErrClosed
		}
	}
	if s.followHook != nil {
		s.followHook("subscribed")
	}
	if q.AfterID > 0 {
		// A resumed follow goes on where it left off: a page of the
		// oldest after it and then the live entries would skip the rest.
		if err := s.catchUp(ctx, q, q.AfterID, send); err != nil {
			return err
		}
		if s.followHook != nil {
			s.followHook("queried")
		}
	} else {
		backlog, err := s.Query(ctx, q)
		if err != nil {
			return err
		}
		if s.followHook != nil {
			s.followHook("queried")
		}
		for _, e := range backlog {
			if err := send(e); err != nil {
				return err
			}
		}
	}
	for {
		select {
		case e, ok := <-sub.ch:
			if !ok {
				if sub.err != errLagged {
					return sub.err
				}
				// The store was closed or the function deleted meanwhile:
				// the subscription the deferred call drops stays the old one.
				next, err := s.subscribe(q)
				if err != nil {
					return err
				}
				sub = next
				if err := s.catchUp(ctx, q, last, send); err != nil {
					return err
				}
				continue
			}
			if e.ID <= last {
				continue
			}
			if err := send(e); err != nil {
				return err
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// catchUp sends, oldest first, the stored entries passing q's filters
// after ID after, a page at a time.
func (s *Store) catchUp(ctx context.Context, q Query, after int64, send func(Entry) error) error {
	q.Limit = followPage
	for {
		q.AfterID = after
		page, more, err := s.scan(ctx, &q, "ASC")
		if err != nil {
			return err
		}
		for _, e := range page {
			if err := send(e); err != nil {
				return err
			}
			after = e.ID
		}
		if !more {
			return nil
		}
	}
}

func (s *Store) subscribe(q Query) (*subscriber, error) {
	s.subMu.Lock()
	defer s.subMu.Unlock()
	if s.subsClosed {
		return nil, ErrClosed
	}
	if _, ok := s.deleted[q.FunctionID]; ok && q.FunctionID != "" {
		return nil, ErrDeleted
	}
	sub := &subscriber{q: q, ch: make(chan Entry, s.opts.FollowBuffer)}
	k := fnKey{q.Owner, q.Function}
	m := s.subs[k]
	if m == nil {
		m = make(map[*subscriber]struct{})
		s.subs[k] = m
	}
	m[sub] = struct{}{}
	return sub, nil
}

func (s *Store) unsubscribe(sub *subscriber) {
	s.subMu.Lock()
	defer s.subMu.Unlock()
	k := fnKey{sub.q.Owner, sub.q.Function}
	if m := s.subs[k]; m != nil {
		delete(m, sub)
		if len(m) == 0 {
			delete(s.subs, k)
		}
	}
}

// publish hands stored entries to their followers without waiting: a
// follower whose buffer is full loses its subscription (errLagged) and
// catches up from the database.
func (s *Store) publish(batch []pending) {
	s.subMu.Lock()
	defer s.subMu.Unlock()
	if len(s.subs) == 0 {
		return
	}
	for i := range batch {
		e := &batch[i].e
		k := keyOf(e)
		m := s.subs[k]
		for sub := range m {
			if !sub.q.match(e) {
				continue
			}
			select {
			case sub.ch <- *e:
			default:
				sub.err = errLagged
				close(sub.ch)
				delete(m, sub)
			}
		}
		if m != nil && len(m) == 0 {
			delete(s.subs, k)
		}
	}
}

// endDeleted ends the followers of k, whose function id is deleted, with
// ErrDeleted, and refuses id's follows from now on, including those of
// followers that have fallen behind and subscribe again to catch up.
func (s *Store) endDeleted(k fnKey, id string) {
	s.subMu.Lock()
	defer s.subMu.Unlock()
	now := s.opts.Now()
	for d, at := range s.deleted {
		if now.Sub(at) > goneFor {
			delete(s.deleted, d)
		}
	}
	s.deleted[id] = now
	for sub := range s.subs[k] {
		sub.err = ErrDeleted
		close(sub.ch)
	}
	delete(s.subs, k)
}

// EndFollows ends every follow with ErrClosed, and refuses new ones, while
// the store goes on storing: a server shutting down lets its requests
// finish, and a follow would never finish on its own.
func (s *Store) EndFollows() { s.closeSubscribers() }

// closeSubscribers ends every follower with ErrClosed; none can start after.
func (s *Store) closeSubscribers() {
	s.subMu.Lock()
	defer s.subMu.Unlock()
	s.subsClosed = true
	for _, m := range s.subs {
		for sub := range m {
			sub.err = ErrClosed
			close(sub.ch)
		}
	}
	clear(s.subs)
}
