package logstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/spry-run/spry/internal/disktest"
	"github.com/spry-run/spry/internal/errdefs"
	"github.com/spry-run/spry/internal/sqlitedb"
)

// clock is an injectable Options.Now.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// openAt opens a store at path. Unless the test sets one, the flush interval
// is an hour, so that only Flush writes and tests are deterministic.
func openAt(t *testing.T, path string, opts Options) *Store {
	t.Helper()
	if opts.FlushInterval == 0 {
		opts.FlushInterval = time.Hour
	}
	s, err := Open(t.Context(), path, opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return s
}

func openTemp(t *testing.T, opts Options) *Store {
	t.Helper()
	s := openAt(t, filepath.Join(t.TempDir(), "logs.db"), opts)
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

func flush(t *testing.T, s *Store) {
	t.Helper()
	if err := s.Flush(t.Context()); err != nil {
		t.Fatalf("Flush: %v", err)
	}
}

func query(t *testing.T, s *Store, q Query) []Entry {
	t.Helper()
	entries, err := s.Query(t.Context(), q)
	if err != nil {
		t.Fatalf("Query(%+v): %v", q, err)
	}
	return entries
}

func all(t *testing.T, s *Store, owner, function string) []Entry {
	t.Helper()
	return query(t, s, Query{Owner: owner, Function: function, Limit: MaxLimit})
}

func lines(entries []Entry) []string {
	out := make([]string, len(entries))
	for i, e := range entries {
		out[i] = e.Line
	}
	return out
}

func appendLines(s *Store, owner, function string, n int) {
	appendLinesOf(s, owner, function, "", n)
}

func appendLinesOf(s *Store, owner, function, id string, n int) {
	for i := range n {
		s.Append(Entry{Owner: owner, Function: function, FunctionID: id, Version: 1, Stream: StreamStdout, Line: fmt.Sprintf("line %d", i)})
	}
}

func numbered(prefix string, from, to int) []string {
	var out []string
	for i := from; i < to; i++ {
		out = append(out, fmt.Sprintf("%s%d", prefix, i))
	}
	return out
}

// checkAscending fails unless IDs strictly increase.
func checkAscending(t *testing.T, entries []Entry) {
	t.Helper()
	for i := 1; i < len(entries); i++ {
		if entries[i].ID <= entries[i-1].ID {
			t.Fatalf("entry %d has ID %d after ID %d", i, entries[i].ID, entries[i-1].ID)
		}
	}
}

func TestQueryFilters(t *testing.T) {
	c := newClock()
	s := openTemp(t, Options{Now: c.Now})
	t0 := c.Now()
	for i := range 10 {
		version := int64(1)
		if i >= 5 {
			version = 2
		}
		s.Append(Entry{
			Time: t0.Add(time.Duration(i) * time.Minute), Owner: "alice", Function: "hello",
			Version: version, Instance: "i1", Stream: StreamStdout, RequestID: fmt.Sprint("r", i),
			Line: fmt.Sprint("line ", i),
		})
		// Another function of the same name and one of the same owner,
		// interleaved, must not show up.
		s.Append(Entry{Owner: "bob", Function: "hello", Version: version, Line: "bob's"})
		s.Append(Entry{Owner: "alice", Function: "other", Version: version, Line: "other"})
	}
	flush(t, s)

	stored := all(t, s, "alice", "hello")
	if len(stored) != 10 {
		t.Fatalf("stored %d entries, want 10", len(stored))
	}
	checkAscending(t, stored)
	want := Entry{
		ID: stored[3].ID, Time: t0.Add(3 * time.Minute), Owner: "alice", Function: "hello",
		Version: 1, Instance: "i1", Stream: StreamStdout, RequestID: "r3", Line: "line 3",
	}
	if !reflect.DeepEqual(stored[3], want) {
		t.Errorf("entry 3 = %+v, want %+v", stored[3], want)
	}

	tests := []struct {
		name string
		q    Query
		want []string
	}{
		{"all", Query{}, numbered("line ", 0, 10)},
		{"since", Query{Since: t0.Add(7 * time.Minute)}, numbered("line ", 7, 10)},
		{"since between entries", Query{Since: t0.Add(6*time.Minute + time.Second)}, numbered("line ", 7, 10)},
		{"since after all", Query{Since: t0.Add(time.Hour)}, nil},
		{"version", Query{Version: 1}, numbered("line ", 0, 5)},
		{"version and since", Query{Version: 2, Since: t0.Add(8 * time.Minute)}, numbered("line ", 8, 10)},
		{"unknown version", Query{Version: 3}, nil},
		{"limit takes newest", Query{Limit: 3}, numbered("line ", 7, 10)},
		{"limit over count", Query{Limit: 50}, numbered("line ", 0, 10)},
		{"limit and version", Query{Version: 1, Limit: 2}, numbered("line ", 3, 5)},
		{"after ID", Query{AfterID: stored[5].ID}, numbered("line ", 6, 10)},
		{"after ID and limit takes oldest", Query{AfterID: stored[2].ID, Limit: 2}, numbered("line ", 3, 5)},
		{"after last ID", Query{AfterID: stored[9].ID}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.q.Owner, tt.q.Function = "alice", "hello"
			got := query(t, s, tt.q)
			checkAscending(t, got)
			if !reflect.DeepEqual(lines(got), tt.want) && !(len(got) == 0 && len(tt.want) == 0) {
				t.Errorf("got %q, want %q", lines(got), tt.want)
			}
		})
	}
}

func TestQueryInvalid(t *testing.T) {
	s := openTemp(t, Options{})
	tests := []struct {
		name string
		q    Query
	}{
		{"no owner", Query{Function: "f"}},
		{"no function", Query{Owner: "o"}},
		{"negative limit", Query{Owner: "o", Function: "f", Limit: -1}},
		{"limit over max", Query{Owner: "o", Function: "f", Limit: MaxLimit + 1}},
		{"negative version", Query{Owner: "o", Function: "f", Version: -1}},
		{"negative after ID", Query{Owner: "o", Function: "f", AfterID: -1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := s.Query(t.Context(), tt.q); !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Errorf("Query: got %v, want invalid argument", err)
			}
			ch, errf := s.Follow(t.Context(), tt.q)
			if _, ok := <-ch; ok {
				t.Error("Follow sent an entry")
			}
			if err := errf(); !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Errorf("Follow: got %v, want invalid argument", err)
			}
		})
	}
}

func TestOpenInvalid(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name string
		path string
		opts Options
	}{
		{"empty path", "", Options{}},
		{"negative count", filepath.Join(dir, "a.db"), Options{MaxEntriesPerFunction: -1}},
		{"negative age", filepath.Join(dir, "b.db"), Options{MaxAge: -time.Hour}},
		{"negative buffer", filepath.Join(dir, "c.db"), Options{BufferSize: -1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := Open(t.Context(), tt.path, tt.opts)
			if err == nil {
				s.Close()
			}
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Errorf("got %v, want invalid argument", err)
			}
		})
	}
}

func TestReopen(t *testing.T) {
	// Odd characters check that the path survives the trip through the DSN.
	dir := filepath.Join(t.TempDir(), "a dir?#%")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "logs.db")
	s := openAt(t, path, Options{})
	appendLines(s, "alice", "hello", 3)
	appendLines(s, "alice", "doomed", 2)
	// Appended but not flushed: Close must store them.
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	for _, p := range []string{path, path + "-wal"} {
		fi, err := os.Stat(p)
		if err != nil {
			if p != path && errors.Is(err, os.ErrNotExist) {
				continue // checkpointed and removed on close
			}
			t.Fatal(err)
		}
		if mode := fi.Mode().Perm(); mode != 0o600 {
			t.Errorf("%s has mode %v, want 0600", filepath.Base(p), mode)
		}
	}

	s = openAt(t, path, Options{})
	before := all(t, s, "alice", "hello")
	if got, want := lines(before), numbered("line ", 0, 3); !reflect.DeepEqual(got, want) {
		t.Fatalf("after reopen got %q, want %q", got, want)
	}
	doomed := all(t, s, "alice", "doomed")
	if len(doomed) != 2 {
		t.Fatalf("got %d entries of doomed, want 2", len(doomed))
	}
	// Deleting the newest entries must not free their IDs for reuse, even
	// across a restart: followers resume after an ID.
	if err := s.DeleteFunction(t.Context(), "alice", "doomed", "id-doomed"); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = openTemp(t, Options{}) // a different file must not see them
	if got := all(t, s, "alice", "hello"); len(got) != 0 {
		t.Errorf("fresh file has %d entries", len(got))
	}
	s = openAt(t, path, Options{})
	defer s.Close()
	if got := all(t, s, "alice", "hello"); !reflect.DeepEqual(got, before) {
		t.Errorf("after second reopen got %+v, want %+v", got, before)
	}
	appendLines(s, "alice", "hello", 1)
	flush(t, s)
	after := all(t, s, "alice", "hello")
	if last := after[len(after)-1].ID; last <= doomed[len(doomed)-1].ID {
		t.Errorf("new entry has ID %d, not above the deleted ID %d", last, doomed[len(doomed)-1].ID)
	}
}

func TestRetentionByCount(t *testing.T) {
	path := filepath.Join(t.TempDir(), "logs.db")
	s := openAt(t, path, Options{MaxEntriesPerFunction: 10})
	// More than several delete batches' worth.
	appendLines(s, "alice", "chatty", 3*deleteBatch+17)
	appendLines(s, "alice", "quiet", 5)
	flush(t, s)
	if got, want := lines(all(t, s, "alice", "chatty")), numbered("line ", 3*deleteBatch+7, 3*deleteBatch+17); !reflect.DeepEqual(got, want) {
		t.Errorf("chatty keeps %q, want %q", got, want)
	}
	if got := all(t, s, "alice", "quiet"); len(got) != 5 {
		t.Errorf("quiet keeps %d entries, want 5", len(got))
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	// A lower limit applies to what is already stored, not only to
	// functions that print again.
	s = openAt(t, path, Options{MaxEntriesPerFunction: 3})
	defer s.Close()
	flush(t, s)
	if got, want := lines(all(t, s, "alice", "chatty")), numbered("line ", 3*deleteBatch+14, 3*deleteBatch+17); !reflect.DeepEqual(got, want) {
		t.Errorf("after reopen chatty keeps %q, want %q", got, want)
	}
	if got, want := lines(all(t, s, "alice", "quiet")), numbered("line ", 2, 5); !reflect.DeepEqual(got, want) {
		t.Errorf("after reopen quiet keeps %q, want %q", got, want)
	}
}

func TestRetentionByAge(t *testing.T) {
	c := newClock()
	s := openTemp(t, Options{Now: c.Now, MaxAge: time.Hour})
	for range 2*deleteBatch + 3 {
		s.Append(Entry{Owner: "alice", Function: "hello", Line: "old"})
	}
	// Entries may carry their own time; one already past MaxAge goes at the
	// next pass.
	s.Append(Entry{Owner: "alice", Function: "hello", Line: "stale", Time: c.Now().Add(-2 * time.Hour)})
	s.Append(Entry{Owner: "bob", Function: "hello", Line: "old"})
	flush(t, s)
	if got := all(t, s, "alice", "hello"); len(got) != 2*deleteBatch+3 {
		t.Fatalf("kept %d entries, want %d", len(got), 2*deleteBatch+3)
	}

	c.Add(30 * time.Minute)
	s.Append(Entry{Owner: "alice", Function: "hello", Line: "new"})
	flush(t, s)
	if got := all(t, s, "alice", "hello"); len(got) != 2*deleteBatch+4 {
		t.Fatalf("after 30m kept %d entries, want %d", len(got), 2*deleteBatch+4)
	}

	c.Add(31 * time.Minute) // the old ones are 61m old, the new one 31m
	flush(t, s)
	if got, want := lines(all(t, s, "alice", "hello")), []string{"new"}; !reflect.DeepEqual(got, want) {
		t.Errorf("after 61m kept %q, want %q", got, want)
	}
	if got := all(t, s, "bob", "hello"); len(got) != 0 {
		t.Errorf("bob's old entry was kept")
	}
}

func TestDeleteFunction(t *testing.T) {
	s := openTemp(t, Options{})
	appendLines(s, "alice", "hello", 3)
	flush(t, s)
	// Queued and not yet stored: deleted too.
	appendLines(s, "alice", "hello", 2)
	appendLines(s, "alice", "kept", 2)
	appendLines(s, "bob", "hello", 2)
	if err := s.DeleteFunction(t.Context(), "alice", "hello", "id-hello"); err != nil {
		t.Fatal(err)
	}
	flush(t, s)
	if got := all(t, s, "alice", "hello"); len(got) != 0 {
		t.Errorf("deleted function has %d entries", len(got))
	}
	for _, fn := range [][2]string{{"alice", "kept"}, {"bob", "hello"}} {
		if got := all(t, s, fn[0], fn[1]); len(got) != 2 {
			t.Errorf("%s/%s has %d entries, want 2", fn[0], fn[1], len(got))
		}
	}
	// A function of the same name later starts afresh.
	appendLines(s, "alice", "hello", 1)
	flush(t, s)
	if got, want := lines(all(t, s, "alice", "hello")), []string{"line 0"}; !reflect.DeepEqual(got, want) {
		t.Errorf("recreated function has %q, want %q", got, want)
	}
	for _, args := range [][3]string{{"", "hello", "id"}, {"alice", "", "id"}, {"alice", "hello", ""}} {
		if err := s.DeleteFunction(t.Context(), args[0], args[1], args[2]); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("DeleteFunction%q: got %v, want invalid argument", args, err)
		}
	}
}

// receive reads n entries from ch, failing if it closes first.
func receive(t *testing.T, ch <-chan Entry, errf func() error, n int) []Entry {
	t.Helper()
	var got []Entry
	for len(got) < n {
		e, ok := <-ch
		if !ok {
			t.Fatalf("follow ended after %d of %d entries: %v", len(got), n, errf())
		}
		got = append(got, e)
	}
	return got
}

// drain reads ch until it closes.
func drain(ch <-chan Entry) []Entry {
	var got []Entry
	for e := range ch {
		got = append(got, e)
	}
	return got
}

func TestFollowConcurrent(t *testing.T) {
	const writers, perWriter = 4, 500
	// A short interval, so that writes interleave with the follow's start.
	s := openTemp(t, Options{FlushInterval: time.Millisecond, FollowBuffer: writers * perWriter})

	var wg sync.WaitGroup
	started := make(chan struct{})
	for w := range writers {
		wg.Go(func() {
			for i := range perWriter {
				if w == 0 && i == perWriter/5 {
					close(started)
				}
				s.Append(Entry{Owner: "alice", Function: "hello", Version: 1, Line: fmt.Sprintf("%d-%d", w, i)})
			}
		})
	}
	<-started
	ctx, cancel := context.WithCancel(t.Context())
	ch, errf := s.Follow(ctx, Query{Owner: "alice", Function: "hello", Limit: 50})
	wg.Wait()
	flush(t, s)

	stored := all(t, s, "alice", "hello")
	if len(stored) != writers*perWriter {
		t.Fatalf("stored %d entries, want %d (dropped %d)", len(stored), writers*perWriter, s.Dropped())
	}
	// Each writer's lines are stored in the order it appended them.
	next := make([]int, writers)
	for _, e := range stored {
		var w, i int
		if _, err := fmt.Sscanf(e.Line, "%d-%d", &w, &i); err != nil {
			t.Fatal(err)
		}
		if i != next[w] {
			t.Fatalf("writer %d: line %d stored where %d was due", w, i, next[w])
		}
		next[w]++
	}

	// The follower gets the newest 50 at its start and everything after,
	// which is a suffix of what is stored: no gaps, no repeats.
	var got []Entry
	last := stored[len(stored)-1].ID
	for len(got) == 0 || got[len(got)-1].ID < last {
		got = append(got, receive(t, ch, errf, 1)...)
	}
	if len(got) < 50 || len(got) > len(stored) {
		t.Fatalf("follower got %d entries", len(got))
	}
	if want := stored[len(stored)-len(got):]; !reflect.DeepEqual(got, want) {
		checkAscending(t, got)
		t.Fatalf("follower's entries are not the stored suffix: first ID %d, want %d", got[0].ID, want[0].ID)
	}

	cancel()
	if extra := drain(ch); len(extra) != 0 {
		t.Errorf("follower got %d entries past the last", len(extra))
	}
	if err := errf(); !errors.Is(err, context.Canceled) {
		t.Errorf("follow ended with %v, want context.Canceled", err)
	}
}

func TestFollowFilters(t *testing.T) {
	c := newClock()
	s := openTemp(t, Options{Now: c.Now})
	t0 := c.Now()
	s.Append(Entry{Owner: "alice", Function: "hello", Version: 2, Time: t0, Line: "stored v2"})
	s.Append(Entry{Owner: "alice", Function: "hello", Version: 1, Time: t0, Line: "stored v1"})
	flush(t, s)
	stored := all(t, s, "alice", "hello")

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	ch, errf := s.Follow(ctx, Query{Owner: "alice", Function: "hello", Version: 2, Since: t0.Add(time.Minute), AfterID: stored[0].ID - 1})
	for _, e := range []Entry{
		{Version: 2, Time: t0.Add(2 * time.Minute), Line: "live v2"},
		{Version: 1, Time: t0.Add(2 * time.Minute), Line: "live v1"},
		{Version: 2, Time: t0, Line: "live v2 too early"},
		{Version: 2, Time: t0.Add(3 * time.Minute), Line: "live v2 again"},
	} {
		e.Owner, e.Function = "alice", "hello"
		s.Append(e)
		s.Append(Entry{Owner: "bob", Function: "hello", Version: 2, Time: e.Time, Line: "bob's"})
	}
	flush(t, s)
	if got, want := lines(receive(t, ch, errf, 2)), []string{"live v2", "live v2 again"}; !reflect.DeepEqual(got, want) {
		t.Errorf("follower got %q, want %q", got, want)
	}
}

func TestFollowWithoutFlush(t *testing.T) {
	s := openTemp(t, Options{FlushInterval: time.Millisecond})
	ch, errf := s.Follow(t.Context(), Query{Owner: "alice", Function: "hello"})
	appendLines(s, "alice", "hello", 3)
	// The writer's own ticks deliver them.
	if got, want := lines(receive(t, ch, errf, 3)), numbered("line ", 0, 3); !reflect.DeepEqual(got, want) {
		t.Errorf("follower got %q, want %q", got, want)
	}
}

// The flush timer runs only while entries wait: after a quiet spell the
// next entry still reaches a follower without a Flush, within a flush
// interval, long before retention's pass (25 intervals) would write it.
func TestFollowAfterAQuietSpell(t *testing.T) {
	const interval = time.Second
	s := openTemp(t, Options{FlushInterval: interval})
	ch, _ := s.Follow(t.Context(), Query{Owner: "alice", Function: "hello"})
	for i := range 2 {
		line := fmt.Sprint("line ", i)
		s.Append(Entry{Owner: "alice", Function: "hello", Time: time.Unix(int64(1000+i), 0), Line: line})
		select {
		case e := <-ch:
			if e.Line != line {
				t.Errorf("follower got %q, want %q", e.Line, line)
			}
		case <-time.After(5 * interval):
			t.Fatalf("%q not written within %v", line, 5*interval)
		}
		time.Sleep(interval / 10)
	}
}

func TestFollowEnds(t *testing.T) {
	t.Run("cancel", func(t *testing.T) {
		s := openTemp(t, Options{})
		appendLines(s, "alice", "hello", 2)
		flush(t, s)
		ctx, cancel := context.WithCancel(t.Context())
		ch, errf := s.Follow(ctx, Query{Owner: "alice", Function: "hello"})
		receive(t, ch, errf, 1)
		// Cancelled while it waits to send the second entry, then while it
		// waits for live ones.
		cancel()
		if got := drain(ch); len(got) > 1 {
			t.Errorf("got %d entries after cancel", len(got))
		}
		if err := errf(); !errors.Is(err, context.Canceled) {
			t.Errorf("got %v, want context.Canceled", err)
		}
		// Its subscription is gone.
		s.subMu.Lock()
		n := len(s.subs)
		s.subMu.Unlock()
		if n != 0 {
			t.Errorf("%d subscriptions left", n)
		}
	})
	// A deleted function's followers end: a function made later under the
	// same name is not the one they were allowed to read.
	t.Run("delete", func(t *testing.T) {
		s := openTemp(t, Options{})
		ch, errf := s.Follow(t.Context(), Query{Owner: "alice", Function: "hello", FunctionID: "id-hello"})
		other, othererr := s.Follow(t.Context(), Query{Owner: "alice", Function: "other"})
		if err := s.DeleteFunction(t.Context(), "alice", "hello", "id-hello"); err != nil {
			t.Fatal(err)
		}
		// Late lines of the deleted function, and a new one's.
		appendLinesOf(s, "alice", "hello", "id-hello", 2)
		appendLinesOf(s, "alice", "hello", "id-new", 2)
		flush(t, s)
		if got := drain(ch); len(got) != 0 {
			t.Errorf("a follower of the deleted function got %d entries", len(got))
		}
		if err := errf(); !errors.Is(err, ErrDeleted) {
			t.Errorf("got %v, want ErrDeleted", err)
		}
		appendLines(s, "alice", "other", 1)
		flush(t, s)
		receive(t, other, othererr, 1)
	})
	// A server shutting down ends its follows, and the store still stores.
	t.Run("end follows", func(t *testing.T) {
		s := openTemp(t, Options{})
		ch, errf := s.Follow(t.Context(), Query{Owner: "alice", Function: "hello"})
		s.EndFollows()
		drain(ch)
		if err := errf(); !errors.Is(err, ErrClosed) {
			t.Errorf("got %v, want ErrClosed", err)
		}
		ch, errf = s.Follow(t.Context(), Query{Owner: "alice", Function: "hello"})
		drain(ch)
		if err := errf(); !errors.Is(err, ErrClosed) {
			t.Errorf("a follow after EndFollows: got %v, want ErrClosed", err)
		}
		appendLines(s, "alice", "hello", 2)
		flush(t, s)
		if n := len(all(t, s, "alice", "hello")); n != 2 {
			t.Errorf("stored %d lines after EndFollows, want 2", n)
		}
	})
	t.Run("close", func(t *testing.T) {
		s := openAt(t, filepath.Join(t.TempDir(), "logs.db"), Options{})
		ch, errf := s.Follow(t.Context(), Query{Owner: "alice", Function: "hello"})
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		drain(ch)
		if err := errf(); !errors.Is(err, ErrClosed) {
			t.Errorf("got %v, want ErrClosed", err)
		}
	})
}

// A follower that falls behind is not cut off: it catches up from the
// database, with no gap and no repeat.
func TestSlowFollower(t *testing.T) {
	const n = 1000
	s := openTemp(t, Options{FollowBuffer: 16})
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	ch, errf := s.Follow(ctx, Query{Owner: "alice", Function: "hello"})
	// Nothing reads ch yet. Appending and storing must go on regardless;
	// the test hangs if they wait for the follower.
	for range 4 {
		appendLines(s, "alice", "hello", n/4)
		flush(t, s)
	}
	if d := s.Dropped(); d != 0 {
		t.Fatalf("dropped %d entries", d)
	}
	stored := all(t, s, "alice", "hello")
	if len(stored) != n {
		t.Fatalf("stored %d entries, want %d", len(stored), n)
	}
	got := receive(t, ch, errf, n)
	if !reflect.DeepEqual(got, stored) {
		t.Fatal("the slow follower's entries are not those stored, in order")
	}
	// And it is still following.
	appendLines(s, "alice", "hello", 1)
	flush(t, s)
	if e := receive(t, ch, errf, 1); e[0].ID <= stored[n-1].ID {
		t.Errorf("after catching up, got ID %d again", e[0].ID)
	}
}

func TestAppendWhenFull(t *testing.T) {
	const buffer, extra = 8, 92
	entered, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	stall := func() { once.Do(func() { close(entered); <-release }) }
	s, err := open(t.Context(), filepath.Join(t.TempDir(), "logs.db"),
		Options{BufferSize: buffer, MaxQueuedPerFunction: buffer, FlushInterval: time.Hour}, stall)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	// Get the writer stuck in its first write, with an empty queue.
	s.Append(Entry{Owner: "alice", Function: "hello", Version: 1, Line: "first"})
	flushed := make(chan error, 1)
	go func() { flushed <- s.Flush(t.Context()) }()
	<-entered

	// The queue fills; the rest are dropped without waiting.
	for i := range buffer + extra {
		s.Append(Entry{Owner: "alice", Function: "hello", Version: 7, Instance: "i9", Line: fmt.Sprint("line ", i)})
	}
	if d := s.Dropped(); d != extra {
		t.Errorf("Dropped() = %d, want %d", d, extra)
	}
	close(release)
	if err := <-flushed; err != nil {
		t.Fatal(err)
	}
	flush(t, s)

	got := all(t, s, "alice", "hello")
	want := append([]string{"first"}, numbered("line ", 0, buffer)...)
	want = append(want, fmt.Sprintf("spry: %d log lines were dropped because the log store fell behind", extra))
	if !reflect.DeepEqual(lines(got), want) {
		t.Fatalf("stored %q, want %q", lines(got), want)
	}
	notice := got[len(got)-1]
	if notice.Stream != StreamSystem || notice.Version != 7 || notice.Instance != "i9" {
		t.Errorf("notice is %+v, want a system line of version 7, instance i9", notice)
	}
	// Told once.
	flush(t, s)
	if n := len(all(t, s, "alice", "hello")); n != len(want) {
		t.Errorf("%d entries after another flush, want %d", n, len(want))
	}
}

func TestClosed(t *testing.T) {
	s := openAt(t, filepath.Join(t.TempDir(), "logs.db"), Options{})
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	s.Append(Entry{Owner: "alice", Function: "hello", Line: "late"})
	if d := s.Dropped(); d != 1 {
		t.Errorf("Dropped() = %d, want 1", d)
	}
	q := Query{Owner: "alice", Function: "hello"}
	if _, err := s.Query(t.Context(), q); !errors.Is(err, ErrClosed) {
		t.Errorf("Query: got %v, want ErrClosed", err)
	}
	if err := s.Flush(t.Context()); !errors.Is(err, ErrClosed) {
		t.Errorf("Flush: got %v, want ErrClosed", err)
	}
	if err := s.DeleteFunction(t.Context(), "alice", "hello", "id-hello"); !errors.Is(err, ErrClosed) {
		t.Errorf("DeleteFunction: got %v, want ErrClosed", err)
	}
	ch, errf := s.Follow(t.Context(), q)
	drain(ch)
	if err := errf(); !errors.Is(err, ErrClosed) {
		t.Errorf("Follow: got %v, want ErrClosed", err)
	}
}

func TestCleanLine(t *testing.T) {
	long := strings.Repeat("x", MaxLineBytes+1)
	accents := strings.Repeat("é", MaxLineBytes) // 2 bytes each
	tests := []struct {
		name      string
		in        string
		want      string // exact, when not truncated
		truncated bool
		prefix    string
	}{
		{"short", "hello", "hello", false, ""},
		{"empty", "", "", false, ""},
		{"at the limit", long[:MaxLineBytes], long[:MaxLineBytes], false, ""},
		{"invalid byte", "a\xffb", "a\uFFFDb", false, ""},
		{"invalid run", "a\xff\xfe\xfdb", "a\uFFFDb", false, ""},
		{"cut rune", "ab\xc3", "ab\uFFFD", false, ""},
		{"NUL", "a\x00b", "a\x00b", false, ""},
		{"one over", long, "", true, "xxxx"},
		{"huge", strings.Repeat("y", 10*MaxLineBytes), "", true, "yyyy"},
		{"multibyte", accents, "", true, "éééé"},
		{"all invalid", strings.Repeat("\xff", 2*MaxLineBytes), "", true, "\uFFFD"},
		// Short enough in bytes, but U+FFFD makes it longer than allowed.
		{"grows past the limit", strings.Repeat("\xffa", MaxLineBytes/2), "", true, "\uFFFDa\uFFFDa"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := cleanLine(tt.in)
			if !utf8.ValidString(got) {
				t.Errorf("result is not valid UTF-8")
			}
			if len(got) > MaxLineBytes {
				t.Errorf("result has %d bytes, over %d", len(got), MaxLineBytes)
			}
			if !tt.truncated {
				if got != tt.want {
					t.Errorf("got %q, want %q", got, tt.want)
				}
				return
			}
			marker := fmt.Sprintf("…[truncated, %d bytes in all]", len(tt.in))
			if !strings.HasSuffix(got, marker) || !strings.HasPrefix(got, tt.prefix) {
				t.Errorf("got %q…%q, want prefix %q and suffix %q", got[:min(20, len(got))], got[max(0, len(got)-40):], tt.prefix, marker)
			}
			if len(got) < MaxLineBytes/2 && tt.name != "all invalid" {
				t.Errorf("kept only %d bytes", len(got))
			}
		})
	}
}

func TestLinesStoredSafely(t *testing.T) {
	s := openTemp(t, Options{})
	long := strings.Repeat("z", 3*MaxLineBytes)
	ins := []string{"bad \xff\xfe byte", "nul \x00 inside", "emoji 🙂", long}
	for _, l := range ins {
		s.Append(Entry{Owner: "alice", Function: "hello", Stream: StreamStderr, Line: l})
	}
	flush(t, s)
	got := lines(all(t, s, "alice", "hello"))
	want := []string{"bad \uFFFD byte", "nul \x00 inside", "emoji 🙂", cleanLine(long)}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("stored %q, want %q", got, want)
	}
	if len(got) == 4 && (len(got[3]) > MaxLineBytes || !strings.Contains(got[3], "truncated")) {
		t.Errorf("long line stored with %d bytes", len(got[3]))
	}
}

// TestFollowWritesAroundBacklog stores entries at the two moments that
// matter to Follow: after it subscribes but before its initial query (the
// entry reaches it twice and must be sent once), and after the query (the
// entry reaches it only live and must not be missed).
func TestFollowWritesAroundBacklog(t *testing.T) {
	s := openTemp(t, Options{})
	appendLines(s, "alice", "hello", 3)
	flush(t, s)
	s.followHook = func(stage string) {
		s.Append(Entry{Owner: "alice", Function: "hello", Line: "during " + stage})
		if err := s.Flush(context.Background()); err != nil {
			t.Errorf("Flush in %s: %v", stage, err)
		}
	}
	ch, errf := s.Follow(t.Context(), Query{Owner: "alice", Function: "hello"})
	got := receive(t, ch, errf, 5)
	s.Append(Entry{Owner: "alice", Function: "hello", Line: "after"})
	flush(t, s)
	got = append(got, receive(t, ch, errf, 1)...)
	want := append(numbered("line ", 0, 3), "during subscribed", "during queried", "after")
	if !reflect.DeepEqual(lines(got), want) {
		t.Errorf("follower got %q, want %q", lines(got), want)
	}
	if stored := all(t, s, "alice", "hello"); !reflect.DeepEqual(got, stored) {
		t.Errorf("follower's entries differ from those stored")
	}
}

func TestWriteFailure(t *testing.T) {
	s := openAt(t, filepath.Join(t.TempDir(), "logs.db"), Options{})
	appendLines(s, "alice", "hello", 2)
	// Pull the database from under the writer.
	if err := s.db.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Flush(t.Context()); err == nil {
		t.Error("Flush reported no error for a failed write")
	}
	if d := s.Dropped(); d != 2 {
		t.Errorf("Dropped() = %d, want 2", d)
	}
	// The notice of the loss is still pending and fails again at Close.
	if err := s.Close(); err == nil {
		t.Error("Close reported no error for a failed write")
	}
	if d := s.Dropped(); d != 2 {
		t.Errorf("after Close, Dropped() = %d, want 2", d)
	}
}

// Writes that keep failing (a full disk) are logged at the first, then at
// most every failLogEvery, not at each flush; and their notices are tried
// again ever more slowly.
func TestWriteFailuresLoggedOnce(t *testing.T) {
	var logged bytes.Buffer
	s := openAt(t, filepath.Join(t.TempDir(), "logs.db"), Options{Logger: slog.New(slog.NewTextHandler(&logged, nil))})
	if err := s.db.Close(); err != nil {
		t.Fatal(err)
	}
	for range 5 {
		appendLines(s, "alice", "hello", 1)
		if err := s.Flush(t.Context()); err == nil {
			t.Fatal("Flush reported no error for a failed write")
		}
	}
	if n := strings.Count(logged.String(), `msg="logstore: write`); n != 1 {
		t.Errorf("%d error lines of writes for 5 failed writes in a row, want 1:\n%s", n, logged.String())
	}
	_ = s.Close()
}

func TestRetryDelay(t *testing.T) {
	for _, tt := range []struct {
		failures int
		want     time.Duration
	}{
		{0, 200 * time.Millisecond},
		{1, 200 * time.Millisecond},
		{2, 400 * time.Millisecond},
		{4, 1600 * time.Millisecond},
		{8, 25600 * time.Millisecond},
		{9, 30 * time.Second},
		{1000, 30 * time.Second},
	} {
		if got := retryDelay(200*time.Millisecond, tt.failures); got != tt.want {
			t.Errorf("retryDelay(200ms, %d) = %v, want %v", tt.failures, got, tt.want)
		}
	}
}

// Names are reused, function IDs are not: a function made again under a
// deleted one's name sees none of the old one's lines, not even those its
// requests and instances write after the delete.
func TestFunctionIDs(t *testing.T) {
	c := newClock()
	s := openTemp(t, Options{Now: c.Now})
	appendLinesOf(s, "alice", "hello", "id-1", 2)
	flush(t, s)
	if err := s.DeleteFunction(t.Context(), "alice", "hello", "id-1"); err != nil {
		t.Fatal(err)
	}
	appendLinesOf(s, "alice", "hello", "id-1", 3) // late lines of the deleted one
	appendLinesOf(s, "alice", "hello", "id-2", 1) // the new one's
	flush(t, s)
	got := all(t, s, "alice", "hello")
	if len(got) != 1 || got[0].FunctionID != "id-2" {
		t.Fatalf("stored %+v, want only id-2's line", got)
	}
	// Lines of two functions of one name, as when a delete's late lines
	// were stored (before the ID was remembered, or after it is
	// forgotten): a query by ID sees only its own, and those from before
	// IDs were stored.
	c.Add(goneFor + time.Second)
	flush(t, s) // a retention pass forgets id-1
	appendLinesOf(s, "alice", "hello", "id-1", 1)
	appendLinesOf(s, "alice", "hello", "", 1)
	flush(t, s)
	if n := len(all(t, s, "alice", "hello")); n != 3 {
		t.Fatalf("stored %d lines, want 3", n)
	}
	for _, e := range query(t, s, Query{Owner: "alice", Function: "hello", FunctionID: "id-2"}) {
		if e.FunctionID == "id-1" {
			t.Errorf("a query of id-2 returned %+v", e)
		}
	}
}

// Databases from before function IDs were stored keep their lines, and
// every function of the name sees them.
func TestMigrationKeepsLines(t *testing.T) {
	path := filepath.Join(t.TempDir(), "logs.db")
	db, err := sqlitedb.Open(t.Context(), path, nil, migrations[:1])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`INSERT INTO entries (time_us, owner, name, version, instance, stream, request_id, line)
		VALUES (?, 'alice', 'hello', 1, 'i', 'stdout', '', 'old')`, time.Now().UnixMicro()); err != nil {
		t.Fatal(err)
	}
	db.Close()
	s := openAt(t, path, Options{})
	defer s.Close()
	got := query(t, s, Query{Owner: "alice", Function: "hello", FunctionID: "id-1"})
	if len(got) != 1 || got[0].Line != "old" || got[0].FunctionID != "" {
		t.Errorf("got %+v, want the old line", got)
	}
}

// One function's flood fills no more than its share of a queue that is
// past half full: the others' lines still get in.
func TestFloodLeavesRoomForOthers(t *testing.T) {
	const buffer = 64
	entered, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	stall := func() { once.Do(func() { close(entered); <-release }) }
	s, err := open(t.Context(), filepath.Join(t.TempDir(), "logs.db"),
		Options{BufferSize: buffer, FlushInterval: time.Hour}, stall)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.Append(Entry{Owner: "alice", Function: "loud", FunctionID: "loud", Line: "first"})
	flushed := make(chan error, 1)
	go func() { flushed <- s.Flush(t.Context()) }()
	<-entered

	appendLinesOf(s, "alice", "loud", "loud", 1000)
	appendLinesOf(s, "bob", "quiet", "quiet", 8)
	// Half the queue, its own share being less.
	if d := s.Dropped(); d != 1000-buffer/2 {
		t.Errorf("Dropped() = %d, want %d", d, 1000-buffer/2)
	}
	close(release)
	if err := <-flushed; err != nil {
		t.Fatal(err)
	}
	flush(t, s)
	if got := lines(all(t, s, "bob", "quiet")); !reflect.DeepEqual(got, numbered("line ", 0, 8)) {
		t.Errorf("the quiet function kept %q", got)
	}
	loud := all(t, s, "alice", "loud")
	if last := loud[len(loud)-1]; last.Stream != StreamSystem || last.FunctionID != "loud" {
		t.Errorf("the loud function's last line is %+v, want its drop notice", last)
	}
}

// A query's lines are bounded in bytes as well as in number: the newest
// that fit are returned.
func TestQueryBytes(t *testing.T) {
	s := openTemp(t, Options{})
	long := strings.Repeat("x", MaxLineBytes-10)
	const n = MaxQueryBytes/MaxLineBytes + 50
	for i := range n {
		s.Append(Entry{Owner: "alice", Function: "hello", Line: fmt.Sprintf("%09d %s", i, long)})
	}
	flush(t, s)
	got := query(t, s, Query{Owner: "alice", Function: "hello", Limit: MaxLimit})
	size := 0
	for _, e := range got {
		size += len(e.Line)
	}
	checkAscending(t, got)
	if size > MaxQueryBytes || len(got) < n-60 || len(got) == n {
		t.Errorf("got %d lines of %d bytes in all, want the newest fitting in %d", len(got), size, MaxQueryBytes)
	}
	if last := got[len(got)-1].Line; !strings.HasPrefix(last, fmt.Sprintf("%09d ", n-1)) {
		t.Errorf("the last line is not the newest")
	}
	if _, more, err := s.QueryMore(t.Context(), Query{Owner: "alice", Function: "hello", Limit: MaxLimit}); err != nil || !more {
		t.Errorf("QueryMore cut by bytes: more %v, %v; want true", more, err)
	}
}

// QueryMore says whether the limit left entries out, which a reader
// cannot tell from a page as long as the limit: older ones for the
// tail, newer ones when paging with after.
func TestQueryMore(t *testing.T) {
	s := openTemp(t, Options{})
	appendLines(s, "alice", "hello", 10)
	flush(t, s)
	ids := all(t, s, "alice", "hello")
	for _, c := range []struct {
		name      string
		q         Query
		n         int
		wantFirst string
		wantMore  bool
	}{
		{"tail, fewer", Query{Limit: 20}, 10, "line 0", false},
		{"tail, as many", Query{Limit: 10}, 10, "line 0", false},
		{"tail, cut", Query{Limit: 9}, 9, "line 1", true},
		{"after, rest fits", Query{AfterID: ids[4].ID, Limit: 5}, 5, "line 5", false},
		{"after, cut", Query{AfterID: ids[4].ID, Limit: 4}, 4, "line 5", true},
		{"filtered out", Query{Version: 2, Limit: 1}, 0, "", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			c.q.Owner, c.q.Function = "alice", "hello"
			got, more, err := s.QueryMore(t.Context(), c.q)
			if err != nil {
				t.Fatal(err)
			}
			first := ""
			if len(got) > 0 {
				first = got[0].Line
			}
			if len(got) != c.n || first != c.wantFirst || more != c.wantMore {
				t.Errorf("got %d entries from %q, more %v; want %d from %q, more %v", len(got), first, more, c.n, c.wantFirst, c.wantMore)
			}
		})
	}
}

// drainWithin reads ch until it closes, failing the test if it is still
// open after d (a follow that never ends would hang the test).
func drainWithin(t *testing.T, ch <-chan Entry, d time.Duration) []Entry {
	t.Helper()
	var got []Entry
	timeout := time.After(d)
	for {
		select {
		case e, ok := <-ch:
			if !ok {
				return got
			}
			got = append(got, e)
		case <-timeout:
			t.Fatalf("follow still open after %s (got %q)", d, lines(got))
			return got
		}
	}
}

// A follow ends when its function is deleted even if it had fallen behind
// (its subscription was dropped to catch up from the database) when the
// delete came, and a follow that starts after the delete (the API looked
// the function up just before) ends at once.
func TestFollowEndsOnDeleteWhileBehind(t *testing.T) {
	t.Run("lagging", func(t *testing.T) {
		s := openTemp(t, Options{FollowBuffer: 4})
		q := Query{Owner: "alice", Function: "hello", FunctionID: "id-hello"}
		ch, errf := s.Follow(t.Context(), q)
		// Nothing reads ch: the follower falls behind and its subscription
		// is dropped.
		appendLinesOf(s, "alice", "hello", "id-hello", 20)
		flush(t, s)
		if err := s.DeleteFunction(t.Context(), "alice", "hello", "id-hello"); err != nil {
			t.Fatal(err)
		}
		drainWithin(t, ch, 10*time.Second)
		if err := errf(); !errors.Is(err, ErrDeleted) {
			t.Errorf("got %v, want ErrDeleted", err)
		}
	})
	t.Run("after delete", func(t *testing.T) {
		s := openTemp(t, Options{})
		if err := s.DeleteFunction(t.Context(), "alice", "hello", "id-hello"); err != nil {
			t.Fatal(err)
		}
		ch, errf := s.Follow(t.Context(), Query{Owner: "alice", Function: "hello", FunctionID: "id-hello"})
		if got := drainWithin(t, ch, 10*time.Second); len(got) != 0 {
			t.Errorf("got %d entries", len(got))
		}
		if err := errf(); !errors.Is(err, ErrDeleted) {
			t.Errorf("got %v, want ErrDeleted", err)
		}
		// A function made again under the name is followed as usual.
		ch, errf = s.Follow(t.Context(), Query{Owner: "alice", Function: "hello", FunctionID: "id-new"})
		appendLinesOf(s, "alice", "hello", "id-new", 1)
		flush(t, s)
		receive(t, ch, errf, 1)
	})
}

// A follower that has fallen behind when the server ends its follows
// (EndFollows, at shutdown) ends with ErrClosed: it must not crash the
// process as it fails to subscribe again.
func TestFollowEndsWhileBehind(t *testing.T) {
	s := openTemp(t, Options{FollowBuffer: 4})
	ch, errf := s.Follow(t.Context(), Query{Owner: "alice", Function: "hello"})
	appendLines(s, "alice", "hello", 20)
	flush(t, s)
	s.EndFollows()
	drainWithin(t, ch, 10*time.Second)
	if err := errf(); !errors.Is(err, ErrClosed) {
		t.Errorf("got %v, want ErrClosed", err)
	}
	// The store still stores.
	appendLines(s, "alice", "hello", 1)
	flush(t, s)
	if n := len(all(t, s, "alice", "hello")); n != 21 {
		t.Errorf("stored %d lines, want 21", n)
	}
}

// The database as a whole stays within MaxBytes: past it, entries go down
// to nine tenths of it, the oldest of the owner holding the most first.
func TestRetentionBySize(t *testing.T) {
	s := openTemp(t, Options{MaxBytes: 1 << 20})
	pad := strings.Repeat("x", 1000)
	for chunk := range 4 { // 2,000 old lines of about 1 KiB, flushed as they go
		for i := range 500 {
			s.Append(Entry{Owner: "alice", Function: "old", Line: fmt.Sprintf("%04d %s", chunk*500+i, pad)})
		}
		flush(t, s)
	}
	for i := range 300 {
		s.Append(Entry{Owner: "bob", Function: "new", Line: fmt.Sprintf("%04d %s", i, pad)})
	}
	flush(t, s)
	used, _, err := s.pageBytes(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if used > 1<<20 {
		t.Errorf("the database holds %d bytes of pages, over the %d bound", used, 1<<20)
	}
	if got := all(t, s, "bob", "new"); len(got) != 300 {
		t.Errorf("the newest function keeps %d of its 300 entries", len(got))
	}
	old := lines(all(t, s, "alice", "old"))
	if len(old) == 0 || len(old) >= 2000 {
		t.Fatalf("the oldest function keeps %d of its 2000 entries", len(old))
	}
	for i, l := range old { // its newest, in order
		if want := fmt.Sprintf("%04d ", 2000-len(old)+i); !strings.HasPrefix(l, want) {
			t.Fatalf("entry %d of those kept is %.5q, want %q", i, l, want)
		}
	}
}

// padLine is a line of about 1 KiB, numbered so that tests can tell which
// of a function's lines were kept.
func padLine(i int) string { return fmt.Sprintf("%05d %s", i, strings.Repeat("x", 1000)) }

// appendPadded appends lines from to to-1 of owner/function, of about 1 KiB each.
func appendPadded(s *Store, owner, function string, from, to int) {
	for i := from; i < to; i++ {
		s.Append(Entry{Owner: owner, Function: function, FunctionID: "id-" + owner + "-" + function, Line: padLine(i)})
	}
}

// checkNewest fails unless got is the newest of lines 0 to n-1 of padLine,
// in order and without a gap, and not none of them.
func checkNewest(t *testing.T, what string, got []Entry, n int) {
	t.Helper()
	if len(got) == 0 || len(got) > n {
		t.Fatalf("%s keeps %d of its %d lines", what, len(got), n)
	}
	for i, e := range got {
		if want := padLine(n - len(got) + i); e.Line != want {
			t.Fatalf("%s: line %d of those kept is %.6q, want %.6q", what, i, e.Line, want)
		}
	}
}

// checkWithinBound fails if the database's pages in use pass max.
func checkWithinBound(t *testing.T, s *Store, max int64) {
	t.Helper()
	used, _, err := s.pageBytes(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if used > max {
		t.Errorf("the database holds %d bytes of pages, over the %d bound", used, max)
	}
}

// checkUsage fails unless what the store holds per owner is what its
// entries hold, counted afresh, and returns it.
func checkUsage(t *testing.T, s *Store) map[string]ownerUsage {
	t.Helper()
	owners, err := s.owners(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	got := make(map[string]ownerUsage)
	for _, o := range owners {
		got[o.owner] = o
	}
	rows, err := s.db.QueryContext(t.Context(), `SELECT `+entryColumns+` FROM entries`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	want := make(map[string]ownerUsage)
	for rows.Next() {
		var e Entry
		var us int64
		if err := rows.Scan(&e.ID, &us, &e.Owner, &e.Function, &e.FunctionID, &e.Version,
			&e.Instance, &e.Stream, &e.RequestID, &e.Line); err != nil {
			t.Fatal(err)
		}
		u := want[e.Owner]
		u.owner = e.Owner
		u.bytes += entryBytes(&e)
		u.entries++
		want[e.Owner] = u
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("the store holds %+v per owner, its entries %+v", got, want)
	}
	return got
}

// Past MaxBytes, lines go from the users holding the most first: a user
// under a fair share keeps every line while another floods, whether its
// lines are older than the flood or written in between.
func TestRetentionBySizeIsFair(t *testing.T) {
	const bound = 1 << 20
	for _, tc := range []struct {
		name string
		// chunk is called for each of 10 chunks of a flood of about 3 MiB,
		// each flushed; it appends the quiet users' lines.
		chunk func(s *Store, i int)
		quiet map[string]int // owner → lines of its function "quiet", to be all kept
	}{
		{"quiet before the flood", func(s *Store, i int) {
			if i == 0 {
				appendPadded(s, "bob", "quiet", 0, 150)
			}
		}, map[string]int{"bob": 150}},
		{"quiet during the flood", func(s *Store, i int) {
			appendPadded(s, "bob", "quiet", i*15, (i+1)*15)
		}, map[string]int{"bob": 150}},
		{"two quiet users", func(s *Store, i int) {
			if i == 0 {
				appendPadded(s, "bob", "quiet", 0, 200)
			}
			appendPadded(s, "carol", "quiet", i*10, (i+1)*10)
		}, map[string]int{"bob": 200, "carol": 100}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := openTemp(t, Options{MaxBytes: bound})
			const perChunk = 300
			for i := range 10 {
				tc.chunk(s, i)
				// The flood is of two functions: the user's oldest lines
				// go first, whichever function they are of.
				appendPadded(s, "alice", "loud", i*perChunk/2, (i+1)*perChunk/2)
				appendPadded(s, "alice", "louder", i*perChunk/2, (i+1)*perChunk/2)
				flush(t, s)
				checkWithinBound(t, s, bound)
			}
			for owner, n := range tc.quiet {
				if got := all(t, s, owner, "quiet"); len(got) != n {
					t.Errorf("%s keeps %d of its %d lines", owner, len(got), n)
				}
			}
			loud, louder := all(t, s, "alice", "loud"), all(t, s, "alice", "louder")
			checkNewest(t, "alice/loud", loud, 10*perChunk/2)
			checkNewest(t, "alice/louder", louder, 10*perChunk/2)
			// Each chunk of loud is older than the same chunk of louder.
			if d := len(louder) - len(loud); d < 0 || d > perChunk/2 {
				t.Errorf("alice keeps %d lines of loud and %d of louder, not her newest", len(loud), len(louder))
			}
			checkUsage(t, s)
		})
	}
}

// flood appends n lines of owner/function from line from on, flushing
// every 300, and checks the bound after each.
func flood(t *testing.T, s *Store, owner, function string, from, n int, bound int64) {
	t.Helper()
	for i := from; i < from+n; i += 300 {
		appendPadded(s, owner, function, i, min(i+300, from+n))
		flush(t, s)
		checkWithinBound(t, s, bound)
	}
}

// What each user holds is kept across a restart, and in a database from
// before it was kept: a flood after either takes no lines of a quiet user.
func TestRetentionBySizeAfterReopen(t *testing.T) {
	const bound = 1 << 20
	for _, tc := range []struct {
		name string
		fill func(t *testing.T, path string) // writes bob's 150 lines and alice's first 300
	}{
		{"reopened", func(t *testing.T, path string) {
			s := openAt(t, path, Options{MaxBytes: bound})
			appendPadded(s, "bob", "quiet", 0, 150)
			appendPadded(s, "alice", "loud", 0, 300)
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
		}},
		{"schema version 2", func(t *testing.T, path string) {
			db, err := sqlitedb.Open(t.Context(), path, nil, migrations[:2])
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			for _, f := range []struct {
				owner, name string
				n           int
			}{{"bob", "quiet", 150}, {"alice", "loud", 300}} {
				for i := range f.n {
					if _, err := db.Exec(`INSERT INTO entries (time_us, owner, name, function_id, version, instance, stream, request_id, line)
						VALUES (?, ?, ?, ?, 1, 'i', 'stdout', '', ?)`,
						time.Now().UnixMicro(), f.owner, f.name, "id-"+f.owner+"-"+f.name, padLine(i)); err != nil {
						t.Fatal(err)
					}
				}
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "logs.db")
			tc.fill(t, path)
			s := openAt(t, path, Options{MaxBytes: bound})
			defer s.Close()
			flush(t, s)
			if u := checkUsage(t, s); u["bob"].entries != 150 || u["alice"].entries != 300 {
				t.Errorf("after opening, the store holds %+v per owner", u)
			}
			flood(t, s, "alice", "loud", 300, 2700, bound)
			if got := all(t, s, "bob", "quiet"); len(got) != 150 {
				t.Errorf("bob keeps %d of his 150 lines", len(got))
			}
			checkNewest(t, "alice/loud", all(t, s, "alice", "loud"), 3000)
			checkUsage(t, s)
		})
	}
}

// A deleted function's lines no longer count against its owner: a user who
// deleted a large function is under a fair share again, and keeps the
// lines of the others while another user floods. A user deleted (each of
// its functions) is not counted at all.
func TestRetentionBySizeAfterDelete(t *testing.T) {
	const bound = 1 << 20
	s := openTemp(t, Options{MaxBytes: bound})
	appendPadded(s, "alice", "big", 0, 700)
	appendPadded(s, "alice", "small", 0, 50)
	// Text of every kind counts: many-byte characters, a line cut short.
	for _, e := range []Entry{
		{Owner: "carol", Function: "one", FunctionID: "id-1", Instance: "inst-1", Stream: StreamStderr, RequestID: "req-1", Line: "héllo ✓ \xff"},
		{Owner: "carol", Function: "two", FunctionID: "id-2", Stream: StreamAccess, Line: strings.Repeat("é", MaxLineBytes)},
	} {
		s.Append(e)
	}
	flush(t, s)
	if u := checkUsage(t, s); len(u) != 2 {
		t.Fatalf("the store holds %+v per owner", u)
	}
	if err := s.DeleteFunction(t.Context(), "alice", "big", "id-alice-big"); err != nil {
		t.Fatal(err)
	}
	if u := checkUsage(t, s); u["alice"].entries != 50 {
		t.Errorf("after deleting alice/big, alice holds %+v", u["alice"])
	}
	for _, fn := range []string{"one", "two"} {
		if err := s.DeleteFunction(t.Context(), "carol", fn, "id-"+fn); err != nil {
			t.Fatal(err)
		}
	}
	if u := checkUsage(t, s); len(u) != 1 {
		t.Errorf("after deleting carol's functions, the store holds %+v per owner", u)
	}
	flood(t, s, "bob", "loud", 0, 2000, bound)
	if got := all(t, s, "alice", "small"); len(got) != 50 {
		t.Errorf("alice keeps %d of the 50 lines of the function she kept", len(got))
	}
	checkNewest(t, "bob/loud", all(t, s, "bob", "loud"), 2000)
	checkUsage(t, s)
}

func TestWaterLevel(t *testing.T) {
	for _, tc := range []struct {
		bytes []int64 // most first
		need  int64
		want  int64
	}{
		{[]int64{100}, 30, 70},
		{[]int64{100, 10}, 30, 70},      // the largest alone
		{[]int64{100, 80, 10}, 30, 75},  // the largest down to below the next: both
		{[]int64{100, 80, 10}, 20, 80},  // the largest down to the next
		{[]int64{50, 50, 50}, 30, 40},   // alike: alike
		{[]int64{100, 80, 10}, 190, 0},  // all
		{[]int64{100, 80, 10}, 500, 0},  // more than all
		{[]int64{100, 80, 10}, 160, 10}, // down to the smallest
		{[]int64{100, 80, 10}, 166, 8},  // below it: all three
		{nil, 10, 0},
	} {
		owners := make([]ownerUsage, len(tc.bytes))
		for i, b := range tc.bytes {
			owners[i] = ownerUsage{owner: fmt.Sprint(i), bytes: b, entries: 1}
		}
		if got := waterLevel(owners, tc.need); got != tc.want {
			t.Errorf("waterLevel(%v, %d) = %d, want %d", tc.bytes, tc.need, got, tc.want)
		}
	}
}

// A deleted function's count of queued lines goes with it, even when its
// requests still write after the delete, whether the writer drops those
// lines or Append does (the queue being full): the store keeps nothing
// per function ID of functions gone, however many are made and deleted.
func TestDeleteFunctionForgetsCounts(t *testing.T) {
	const buffer = 8
	entered, release := make(chan struct{}), make(chan struct{})
	var stalling sync.Mutex
	stall := false
	hook := func() {
		stalling.Lock()
		defer stalling.Unlock()
		if stall {
			stall = false
			close(entered)
			<-release
		}
	}
	s, err := open(t.Context(), filepath.Join(t.TempDir(), "logs.db"),
		Options{BufferSize: buffer, FlushInterval: time.Hour}, hook)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	counted := func(id string) bool {
		_, ok := s.queued.Load(id)
		return ok
	}
	appendLinesOf(s, "alice", "hello", "id-1", 2)
	appendLinesOf(s, "alice", "kept", "id-2", 2)
	flush(t, s)
	if err := s.DeleteFunction(t.Context(), "alice", "hello", "id-1"); err != nil {
		t.Fatal(err)
	}
	appendLinesOf(s, "alice", "hello", "id-1", 3) // late lines, that the writer drops
	flush(t, s)
	if counted("id-1") {
		t.Errorf("the deleted function's count is kept after its late lines")
	}
	if !counted("id-2") {
		t.Errorf("the live function's count is not kept")
	}

	// The writer stalls writing id-2's line, and late lines fill the queue.
	stalling.Lock()
	stall = true
	stalling.Unlock()
	appendLinesOf(s, "alice", "kept", "id-2", 1)
	flushed := make(chan error, 1)
	go func() { flushed <- s.Flush(t.Context()) }()
	<-entered
	before := s.Dropped()
	appendLinesOf(s, "alice", "hello", "id-1", 2*buffer)
	if s.Dropped() == before {
		t.Fatal("no late line was dropped by Append")
	}
	close(release)
	if err := <-flushed; err != nil {
		t.Fatal(err)
	}
	flush(t, s)
	if counted("id-1") {
		t.Errorf("the deleted function's count is kept after Append dropped its late lines")
	}
}

// While its disk has less than KeepFree free, the database's file stops
// growing: lines go on being stored, in the pages of the oldest, and the
// disk's last space stays for the metadata and bundles. Before, the store
// grew to MaxBytes, or until the disk was full.
func TestKeepFree(t *testing.T) {
	dir := disktest.Small(t, 32<<20)
	s := openAt(t, filepath.Join(dir, "logs.db"), Options{KeepFree: 16 << 20, MaxEntriesPerFunction: 1 << 20})
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	pad := strings.Repeat("x", 1000)
	least := disktest.Free(t, dir)
	for chunk := range 40 { // 40 MiB of lines, more than the disk
		for i := range 1000 {
			s.Append(Entry{Owner: "alice", Function: "chatty", Line: fmt.Sprintf("%05d %s", chunk*1000+i, pad)})
		}
		flush(t, s)
		least = min(least, disktest.Free(t, dir))
	}
	// The file may pass the mark by what one pass writes, and the WAL
	// holds up to a checkpoint's pages besides.
	if least < 4<<20 {
		t.Errorf("the disk went down to %d bytes free; the store keeps 16 MiB free", least)
	}
	got := all(t, s, "alice", "chatty")
	t.Logf("least free %d bytes, %d lines kept", least, len(got))
	if len(got) == 0 || !strings.HasPrefix(got[len(got)-1].Line, "39999 ") {
		t.Fatalf("the newest line is not stored: %d lines", len(got))
	}
	if len(got) > 20000 {
		t.Errorf("%d lines kept of 40,000 on a disk that holds about 16,000 beside its free 16 MiB", len(got))
	}
	if n := s.Dropped(); n != 0 {
		t.Errorf("%d lines dropped", n)
	}
}

// Paging with after= the last ID read, and a follow resumed from one,
// skip nothing: with an after ID a page is the oldest entries after it,
// not the newest (which left a gap whenever more than a page followed
// it), while entries go on arriving between pages.
func TestPagingAfterSkipsNothing(t *testing.T) {
	s := openTemp(t, Options{})
	appendLines(s, "alice", "hello", 25)
	flush(t, s)
	var got []string
	after := all(t, s, "alice", "hello")[0].ID // the first page without after is the tail
	for round := 0; ; round++ {
		page := query(t, s, Query{Owner: "alice", Function: "hello", AfterID: after, Limit: 10})
		if len(page) == 0 {
			break
		}
		for _, e := range page {
			got = append(got, e.Line)
		}
		after = page[len(page)-1].ID
		if round == 0 {
			appendLines(s, "alice", "hello", 5) // "line 0".."line 4" again, after the 25
			flush(t, s)
		}
	}
	want := append(numbered("line ", 1, 25), numbered("line ", 0, 5)...)
	if !reflect.DeepEqual(got, want) {
		t.Errorf("paged %q, want %q", got, want)
	}

	stored := all(t, s, "alice", "hello")
	ch, errf := s.Follow(t.Context(), Query{Owner: "alice", Function: "hello", AfterID: stored[1].ID, Limit: 3})
	if got := lines(receive(t, ch, errf, len(stored)-2)); !reflect.DeepEqual(got, lines(stored[2:])) {
		t.Errorf("resumed follow got %q, want every entry after the second", got)
	}
}
