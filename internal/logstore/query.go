package logstore

import (
	"context"
	"sync"
	"time"

	"github.com/spry-run/spry/internal/errdefs"
)

// Limits on Query.Limit.
const (
	DefaultLimit = 1000
	MaxLimit     = 10000
)

// Query selects entries of one function.
type Query struct {
	Owner, Function string    // required
	Since           time.Time // entries at or after it; zero: no bound
	Version         int64     // entries of this version; 0: all
	AfterID         int64     // entries with a greater ID, for paging and resuming a follow
	Limit           int       // at most this many, the newest; 0: DefaultLimit; at most MaxLimit
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
		(q.Version == 0 || e.Version == q.Version) &&
		(q.Since.IsZero() || e.Time.UnixMicro() >= q.Since.UnixMicro())
}

const entryColumns = `id, time_us, owner, name, version, instance, stream, request_id, line`

// Query returns the newest q.Limit stored entries that pass q's filters, in
// ascending ID order, like tail. Entries still queued are not seen; Flush
// first to see them.
func (s *Store) Query(ctx context.Context, q Query) ([]Entry, error) {
	if err := q.check(); err != nil {
		return nil, err
	}
	if s.closed.Load() {
		return nil, ErrClosed
	}
	where := `owner = ? AND name = ? AND id > ?`
	args := []any{q.Owner, q.Function, q.AfterID}
	if !q.Since.IsZero() {
		where += ` AND time_us >= ?`
		args = append(args, q.Since.UnixMicro())
	}
	if q.Version != 0 {
		where += ` AND version = ?`
		args = append(args, q.Version)
	}
	args = append(args, q.Limit)
	// The inner query walks entries_by_function back from the newest entry.
	rows, err := s.db.QueryContext(ctx, `SELECT `+entryColumns+` FROM (
		SELECT `+entryColumns+` FROM entries WHERE `+where+` ORDER BY id DESC LIMIT ?
	) ORDER BY id`, args...)
	if err != nil {
		return nil, errorf(ctx, err, "query logs of %s/%s", q.Owner, q.Function)
	}
	defer rows.Close()
	var entries []Entry
	for rows.Next() {
		var e Entry
		var us int64
		if err := rows.Scan(&e.ID, &us, &e.Owner, &e.Function, &e.Version,
			&e.Instance, &e.Stream, &e.RequestID, &e.Line); err != nil {
			return nil, errorf(ctx, err, "query logs of %s/%s", q.Owner, q.Function)
		}
		e.Time = time.UnixMicro(us).UTC()
		entries = append(entries, e)
	}
	if err := rows.Err(); err != nil {
		return nil, errorf(ctx, err, "query logs of %s/%s", q.Owner, q.Function)
	}
	return entries, nil
}

// subscriber receives the entries of one function as the writer stores them.
type subscriber struct {
	q   Query
	ch  chan Entry // closed by the writer, under subMu, after setting err
	err error      // why ch was closed
}

// Follow sends the entries Query(ctx, q) returns, then each entry passing
// q's filters as it is stored, in ID order, with no gaps or repeats. It
// goes on until ctx ends, the store closes (ErrClosed), or the reader falls
// more than Options.FollowBuffer entries behind (ErrLagged). The channel
// is then closed, and the returned function reports why: ctx.Err() when ctx
// ended. Call it after the channel is closed.
//
// Live entries arrive once the writer stores them, so up to a flush
// interval after Append. Readers that may fall behind can follow again
// with AfterID set to the last ID they received.
func (s *Store) Follow(ctx context.Context, q Query) (<-chan Entry, func() error) {
	out := make(chan Entry)
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
		defer s.unsubscribe(sub)
		finish(s.follow(ctx, q, sub, out))
	}()
	return out, errFunc
}

// follow is Follow's goroutine. The subscription is taken before the
// initial query, so every entry stored after the query's snapshot reaches
// sub; those the query also returned are skipped by ID.
func (s *Store) follow(ctx context.Context, q Query, sub *subscriber, out chan<- Entry) error {
	send := func(e Entry) error {
		select {
		case out <- e:
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
	backlog, err := s.Query(ctx, q)
	if err != nil {
		return err
	}
	if s.followHook != nil {
		s.followHook("queried")
	}
	last := q.AfterID
	for _, e := range backlog {
		if err := send(e); err != nil {
			return err
		}
		last = e.ID
	}
	for {
		select {
		case e, ok := <-sub.ch:
			if !ok {
				return sub.err
			}
			if e.ID <= last {
				continue
			}
			if err := send(e); err != nil {
				return err
			}
			last = e.ID
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (s *Store) subscribe(q Query) (*subscriber, error) {
	s.subMu.Lock()
	defer s.subMu.Unlock()
	if s.subsClosed {
		return nil, ErrClosed
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
// follower whose buffer is full is cut off with ErrLagged.
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
				sub.err = ErrLagged
				close(sub.ch)
				delete(m, sub)
			}
		}
		if m != nil && len(m) == 0 {
			delete(s.subs, k)
		}
	}
}

// endFollowers ends the followers of k with err.
func (s *Store) endFollowers(k fnKey, err error) {
	s.subMu.Lock()
	defer s.subMu.Unlock()
	for sub := range s.subs[k] {
		sub.err = err
		close(sub.ch)
	}
	delete(s.subs, k)
}

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
