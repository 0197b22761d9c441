package kv

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/spry-run/spry/internal/errdefs"
	"github.com/spry-run/spry/internal/sqlitedb"
)

// clock is a settable time for expiries.
type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func open(t testing.TB, maxBytes int64) (*Store, *clock) {
	t.Helper()
	c := &clock{t: time.Date(2026, 11, 24, 9, 0, 0, 0, time.UTC)}
	s, err := Open(context.Background(), filepath.Join(t.TempDir(), "kv.db"), Options{MaxBytes: maxBytes, Now: c.now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, c
}

// call sends one request through ServeConn on a socket pair, as a
// runtime does (its write side then closed), and returns the answer.
func call(t testing.TB, s *Store, fn, req string) string {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conns := make([]*net.UnixConn, 2)
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "kv")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		conns[i] = c.(*net.UnixConn)
	}
	client, server := conns[0], conns[1]
	defer client.Close()
	done := make(chan struct{})
	go func() { s.ServeConn(context.Background(), server, fn); close(done) }()
	go func() { _, _ = client.Write([]byte(req)); _ = client.CloseWrite() }()
	got, err := io.ReadAll(client)
	if err != nil {
		t.Fatal(err)
	}
	<-done
	return string(got)
}

// consistent checks that what a namespace is said to hold is what its
// entries add up to.
func consistent(t testing.TB, s *Store, fn string) {
	t.Helper()
	var sum int64
	if err := s.db.QueryRow(`SELECT coalesce(sum(length(CAST(key AS BLOB)) + length(value) + ?), 0) FROM entries WHERE fn = ?`, EntryOverhead, fn).Scan(&sum); err != nil {
		t.Fatal(err)
	}
	used, err := s.Used(context.Background(), fn)
	if err != nil {
		t.Fatal(err)
	}
	if used != sum {
		t.Errorf("%s is said to hold %d bytes; its entries hold %d", fn, used, sum)
	}
}

func TestProtocol(t *testing.T) {
	s, _ := open(t, 0)
	big := `"` + strings.Repeat("x", MaxValueBytes) + `"`
	for _, tt := range []struct {
		name, req, want string
	}{
		{"get of nothing", `{"op":"get","key":"a"}`, `{"value":null,"version":null}`},
		{"set", `{"op":"set","key":"a","value":{"n": 1, "s": "é"}}`, `{"ok":true,"version":"0000000000000001"}`},
		{"get", `{"op":"get","key":"a"}`, `{"value":{"n":1,"s":"é"},"version":"0000000000000001"}`},
		{"set a string", `{"op":"set","key":"b/1","value":"one"}`, `{"ok":true,"version":"0000000000000002"}`},
		{"set a number", `{"op":"set","key":"b/2","value":2}`, `{"ok":true,"version":"0000000000000003"}`},
		{"set null", `{"op":"set","key":"c","value":null}`, `{"ok":true,"version":"0000000000000004"}`},
		{"list", `{"op":"list"}`, `{"entries":[{"key":"a","value":{"n":1,"s":"é"},"version":"0000000000000001"},{"key":"b/1","value":"one","version":"0000000000000002"},{"key":"b/2","value":2,"version":"0000000000000003"},{"key":"c","value":null,"version":"0000000000000004"}],"cursor":null}`},
		{"list a prefix", `{"op":"list","prefix":"b/"}`, `{"entries":[{"key":"b/1","value":"one","version":"0000000000000002"},{"key":"b/2","value":2,"version":"0000000000000003"}],"cursor":null}`},
		{"list a page", `{"op":"list","limit":2}`, `{"entries":[{"key":"a","value":{"n":1,"s":"é"},"version":"0000000000000001"},{"key":"b/1","value":"one","version":"0000000000000002"}],"cursor":"b/1"}`},
		{"list the next page", `{"op":"list","limit":2,"cursor":"b/1"}`, `{"entries":[{"key":"b/2","value":2,"version":"0000000000000003"},{"key":"c","value":null,"version":"0000000000000004"}],"cursor":null}`},
		{"list a prefix's next page", `{"op":"list","prefix":"b/","limit":1,"cursor":"b/1"}`, `{"entries":[{"key":"b/2","value":2,"version":"0000000000000003"}],"cursor":null}`},
		{"list nothing", `{"op":"list","prefix":"z"}`, `{"entries":[],"cursor":null}`},
		{"add to nothing", `{"op":"add","key":"count","delta":2}`, `{"value":2}`},
		{"add", `{"op":"add","key":"count","delta":-0.5}`, `{"value":1.5}`},
		{"get the sum", `{"op":"get","key":"count"}`, `{"value":1.5,"version":"0000000000000006"}`},
		{"add to a string", `{"op":"add","key":"b/1","delta":1}`, `{"error":{"code":"invalid_argument","message":"kv: the value of \"b/1\" is not a number, to add to"}}`},
		{"add past a number's bound", `{"op":"add","key":"count","delta":1.7e308}`, `{"value":1.7e+308}`},
		{"add past it again", `{"op":"add","key":"count","delta":1.7e308}`, `{"error":{"code":"invalid_argument","message":"kv: the sum is past what a number holds"}}`},
		{"delete the sum", `{"op":"delete","key":"count"}`, `{"ok":true}`},
		{"delete", `{"op":"delete","key":"a"}`, `{"ok":true}`},
		{"delete again", `{"op":"delete","key":"a"}`, `{"ok":true}`},
		{"get deleted", `{"op":"get","key":"a"}`, `{"value":null,"version":null}`},
		// Conditional writes: made only if the key is as the code read it.
		{"set if absent", `{"op":"set","key":"cas","value":1,"ifVersion":null}`, `{"ok":true,"version":"0000000000000008"}`},
		{"set if absent, present", `{"op":"set","key":"cas","value":2,"ifVersion":null}`, `{"ok":false}`},
		{"set if the version read", `{"op":"set","key":"cas","value":3,"ifVersion":"0000000000000008"}`, `{"ok":true,"version":"0000000000000009"}`},
		{"set if a version gone", `{"op":"set","key":"cas","value":4,"ifVersion":"0000000000000008"}`, `{"ok":false}`},
		{"delete if a version gone", `{"op":"delete","key":"cas","ifVersion":"0000000000000008"}`, `{"ok":false}`},
		{"the entry the failed writes left", `{"op":"get","key":"cas"}`, `{"value":3,"version":"0000000000000009"}`},
		{"delete if the version read", `{"op":"delete","key":"cas","ifVersion":"0000000000000009"}`, `{"ok":true}`},
		{"set if a version, deleted", `{"op":"set","key":"cas","value":5,"ifVersion":"0000000000000009"}`, `{"ok":false}`},
		{"delete if absent, absent", `{"op":"delete","key":"cas","ifVersion":null}`, `{"ok":true}`},
		{"set again after a delete", `{"op":"set","key":"cas","value":6}`, `{"ok":true,"version":"000000000000000a"}`},
		{"a version not of this store's form", `{"op":"set","key":"cas","value":1,"ifVersion":"zz"}`, `{"error":{"code":"invalid_argument","message":"kv: \"zz\" is not a version (16 hex digits, as a read gives)"}}`},
		{"a version of bad type", `{"op":"delete","key":"cas","ifVersion":9}`, `{"error":{"code":"invalid_argument","message":"kv: ifVersion must be a version (a string, as a read gives) or null"}}`},
		{"an empty version", `{"op":"set","key":"cas","value":1,"ifVersion":""}`, `{"error":{"code":"invalid_argument","message":"kv: ifVersion must be a version (a string, as a read gives) or null"}}`},
		{"what the refused writes left", `{"op":"get","key":"cas"}`, `{"value":6,"version":"000000000000000a"}`},
		{"empty key", `{"op":"set","key":"","value":1}`, `{"error":{"code":"invalid_argument","message":"kv: a key must not be empty"}}`},
		{"long key", `{"op":"get","key":"` + strings.Repeat("k", MaxKeyBytes+1) + `"}`, `{"error":{"code":"too_large","message":"kv: a key is at most 512 bytes; this one is 513"}}`},
		{"no value", `{"op":"set","key":"a"}`, `{"error":{"code":"invalid_argument","message":"kv: a value must be JSON"}}`},
		{"large value", `{"op":"set","key":"a","value":` + big + `}`, `{"error":{"code":"too_large","message":"kv: a value is at most 65536 bytes as JSON; this one is 65538"}}`},
		{"negative expiry", `{"op":"set","key":"a","value":1,"expireIn":-1}`, `{"error":{"code":"invalid_argument","message":"kv: expireIn must be between 0 (never) and 315360000000 ms"}}`},
		{"limit too high", `{"op":"list","limit":1001}`, `{"error":{"code":"invalid_argument","message":"kv: limit must be between 1 and 1000"}}`},
		{"unknown op", `{"op":"drop"}`, `{"error":{"code":"invalid_argument","message":"kv: unknown op \"drop\" (get, set, add, delete, list)"}}`},
		{"not JSON", `get a`, `{"error":{"code":"invalid_argument","message":"kv: the request is not a JSON object: invalid character 'g' looking for beginning of value"}}`},
		{"cut", `{"op":"get","key":"a`, `{"error":{"code":"invalid_argument","message":"kv: the request is not a JSON object: unexpected EOF"}}`},
		{"too large", `{"op":"set","key":"a","value":"` + strings.Repeat("x", maxRequest) + `"}`, `{"error":{"code":"too_large","message":"kv: a request is at most ` + fmt.Sprint(maxRequest) + ` bytes"}}`},
		{"a key of bad type", `{"op":"get","key":1}`, `{"error":{"code":"invalid_argument","message":"kv: the request is not a JSON object: json: cannot unmarshal number into Go struct field Request.key of type string"}}`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := call(t, s, "fn-1", tt.req); got != tt.want {
				t.Errorf("%.200s\n got %.300s\nwant %.300s", tt.req, got, tt.want)
			}
		})
	}
	consistent(t, s, "fn-1")
}

// Each function sees its own namespace only, and a deleted function's
// goes with it.
func TestNamespaces(t *testing.T) {
	s, _ := open(t, 0)
	ctx := context.Background()
	for _, fn := range []string{"a", "b"} {
		if err := s.Set(ctx, fn, "k", json.RawMessage(`"`+fn+`"`), 0); err != nil {
			t.Fatal(err)
		}
	}
	if got := call(t, s, "a", `{"op":"get","key":"k"}`); got != `{"value":"a","version":"0000000000000001"}` {
		t.Errorf("a reads %s", got)
	}
	if got := call(t, s, "b", `{"op":"list"}`); got != `{"entries":[{"key":"k","value":"b","version":"0000000000000002"}],"cursor":null}` {
		t.Errorf("b lists %s", got)
	}
	if err := s.DeleteFunction(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if got := call(t, s, "a", `{"op":"get","key":"k"}`); got != `{"value":null,"version":null}` {
		t.Errorf("deleted a reads %s", got)
	}
	if got := call(t, s, "b", `{"op":"get","key":"k"}`); got != `{"value":"b","version":"0000000000000002"}` {
		t.Errorf("b reads %s after a was deleted", got)
	}
	if used, _ := s.Used(ctx, "a"); used != 0 {
		t.Errorf("deleted a holds %d bytes", used)
	}
	consistent(t, s, "b")
}

// A namespace stays within its bound: a write past it fails and
// changes nothing, a write that shrinks it is let through, and deletes
// make room.
func TestBound(t *testing.T) {
	// Three entries of 300 bytes (a one-byte key, 299 of value) and
	// their overhead fit, a fourth does not, and a shrunk one (102) and
	// three leave it room.
	const bound = 3*(300+EntryOverhead) + 150
	s, _ := open(t, bound)
	ctx := context.Background()
	value := json.RawMessage(`"` + strings.Repeat("v", 297) + `"`)
	for i := range 3 {
		if err := s.Set(ctx, "f", fmt.Sprint(i), value, 0); err != nil {
			t.Fatal(err)
		}
	}
	err := s.Set(ctx, "f", "3", value, 0)
	if !errors.Is(err, errdefs.ErrQuotaExceeded) {
		t.Fatalf("a write past the bound: %v, want quota_exceeded", err)
	}
	if _, ok, _ := s.Get(ctx, "f", "3"); ok {
		t.Error("the refused write was stored")
	}
	// Another function has a bound of its own.
	if err := s.Set(ctx, "g", "3", value, 0); err != nil {
		t.Errorf("another function's write: %v", err)
	}
	// Overwriting a key with a value no larger is let through.
	if err := s.Set(ctx, "f", "0", json.RawMessage(`1`), 0); err != nil {
		t.Errorf("a write that shrinks: %v", err)
	}
	if err := s.Set(ctx, "f", "3", value, 0); err != nil {
		t.Errorf("a write that fits after the shrink: %v", err)
	}
	if err := s.Delete(ctx, "f", "1"); err != nil {
		t.Fatal(err)
	}
	if err := s.Set(ctx, "f", "4", value, 0); err != nil {
		t.Errorf("a write after a delete: %v", err)
	}
	consistent(t, s, "f")
	consistent(t, s, "g")
}

// An entry with an expiry is gone for reads once it has passed, and
// Sweep frees its bytes.
func TestExpiry(t *testing.T) {
	s, c := open(t, 0)
	ctx := context.Background()
	if err := s.Set(ctx, "f", "short", json.RawMessage(`1`), time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := s.Set(ctx, "f", "long", json.RawMessage(`2`), time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := s.Set(ctx, "f", "never", json.RawMessage(`3`), 0); err != nil {
		t.Fatal(err)
	}
	c.t = c.t.Add(2 * time.Minute)
	if _, ok, _ := s.Get(ctx, "f", "short"); ok {
		t.Error("an expired entry is read")
	}
	if got := call(t, s, "f", `{"op":"list"}`); got != `{"entries":[{"key":"long","value":2,"version":"0000000000000002"},{"key":"never","value":3,"version":"0000000000000003"}],"cursor":null}` {
		t.Errorf("list after the expiry: %s", got)
	}
	n, err := s.Sweep(ctx)
	if err != nil || n != 1 {
		t.Errorf("Sweep: %d, %v; want 1", n, err)
	}
	consistent(t, s, "f")
	// Set again, an expired key's expiry is the new one's.
	if err := s.Set(ctx, "f", "long", json.RawMessage(`4`), 0); err != nil {
		t.Fatal(err)
	}
	c.t = c.t.Add(2 * time.Hour)
	if v, ok, _ := s.Get(ctx, "f", "long"); !ok || string(v) != "4" {
		t.Errorf("a key set again without an expiry: %s, %v", v, ok)
	}
}

func TestPrefixEnd(t *testing.T) {
	for _, tt := range []struct {
		p, want string
		ok      bool
	}{
		{"", "", false},
		{"a", "b", true},
		{"ab", "ac", true},
		{"a\xff", "b", true},
		{"\xff\xff", "", false},
	} {
		if got, ok := prefixEnd(tt.p); got != tt.want || ok != tt.ok {
			t.Errorf("prefixEnd(%q) = %q, %v; want %q, %v", tt.p, got, ok, tt.want, tt.ok)
		}
	}
}

// Whatever a function's code sends, the answer is JSON, and what its
// namespace is said to hold stays what its entries add up to.
func FuzzServe(f *testing.F) {
	for _, seed := range []string{
		`{"op":"set","key":"a","value":1}`,
		`{"op":"set","key":"a","value":"xx","expireIn":5}`,
		`{"op":"delete","key":"a"}`,
		`{"op":"list","prefix":"a","limit":1}`,
		`{"op":"get","key":"\u00e9"}`,
		`{"op":"set","key":"a\xff","value":[1,2]}`,
		`{`,
	} {
		f.Add(seed)
	}
	s, _ := open(f, 4096)
	f.Fuzz(func(t *testing.T, req string) {
		got := call(t, s, "f", req)
		if !json.Valid([]byte(got)) {
			t.Fatalf("%q: the answer %q is not JSON", req, got)
		}
		consistent(t, s, "f")
	})
}

// BenchmarkServeConn: one ctx.kv call as the server answers it, on a
// socket pair (the runtime's side, and the sandbox's socket, not
// included).
func BenchmarkServeConn(b *testing.B) {
	s, _ := open(b, 0)
	if err := s.Set(context.Background(), "f", "k", json.RawMessage(`{"n":1}`), 0); err != nil {
		b.Fatal(err)
	}
	for _, bm := range []struct{ name, req string }{
		{"get", `{"op":"get","key":"k"}`},
		{"set", `{"op":"set","key":"k","value":{"n":2}}`},
	} {
		b.Run(bm.name, func(b *testing.B) {
			for b.Loop() {
				call(b, s, "f", bm.req)
			}
		})
	}
	// The store alone.
	b.Run("store-get", func(b *testing.B) {
		for b.Loop() {
			if _, _, err := s.Get(context.Background(), "f", "k"); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// A page is bounded in bytes as well as entries: a thousand values of
// 64 KiB (and '<' sent as \u003c, six times its byte) would make one
// answer of up to 384 MB, built in the server's memory, eight at once
// per instance. Past MaxListBytes a page ends early, with its cursor.
func TestListPageBytes(t *testing.T) {
	s, _ := open(t, 0)
	ctx := context.Background()
	value := json.RawMessage(`"` + strings.Repeat("<", 60000) + `"`)
	const n = 40
	for i := range n {
		if err := s.Set(ctx, "f", fmt.Sprintf("k%02d", i), value, 0); err != nil {
			t.Fatal(err)
		}
	}
	var keys []string
	cursor := ""
	for pages := 0; ; pages++ {
		if pages > n {
			t.Fatal("the pages do not end")
		}
		req, _ := json.Marshal(Request{Op: "list", Cursor: cursor, Limit: MaxList})
		answer := call(t, s, "f", string(req))
		if len(answer) > MaxListBytes+len(value)+1024 {
			t.Fatalf("a page of %d bytes", len(answer))
		}
		var page struct {
			Entries []Entry
			Cursor  *string
		}
		if err := json.Unmarshal([]byte(answer), &page); err != nil {
			t.Fatalf("%v: %.200s", err, answer)
		}
		for _, e := range page.Entries {
			if string(e.Value) != string(value) {
				t.Fatalf("%s: %.50s...", e.Key, e.Value)
			}
			keys = append(keys, e.Key)
		}
		if page.Cursor == nil {
			break
		}
		cursor = *page.Cursor
	}
	if len(keys) != n || keys[0] != "k00" || keys[n-1] != fmt.Sprintf("k%02d", n-1) {
		t.Errorf("the pages have %d keys, %v", len(keys), keys)
	}
}

// bulk gives fn n entries expiring at exp (Unix ms; 0: never) straight in
// the file, as a function's code could make them one write at a time
// (a few bytes each; counted with EntryOverhead, some 600,000 fit in a
// 64 MiB bound, and a bound raised a few times holds millions).
func bulk(t testing.TB, s *Store, fn string, n int, exp int64) {
	t.Helper()
	var expires any
	if exp != 0 {
		expires = exp
	}
	_, err := s.db.Exec(`WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < ?)
		INSERT INTO entries (fn, key, value, expires, size) SELECT ?, printf('%x', i), '1', ?, length(printf('%x', i)) + 1 + ? FROM n`, n, fn, expires, EntryOverhead)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.db.Exec(`INSERT INTO usage SELECT fn, sum(size) FROM entries WHERE fn = ? GROUP BY fn
		ON CONFLICT (fn) DO UPDATE SET bytes = excluded.bytes`, fn); err != nil {
		t.Fatal(err)
	}
}

// Sweeping many expired entries, or deleting a function with many,
// does not hold the one writer's lock throughout: in one transaction,
// two million of one function's took 16 s, during which every other
// function's write waited, and past the busy timeout (10 s) failed.
// Other writes go through between batches.
func TestLongDeletesLetOthersWrite(t *testing.T) {
	for _, op := range []string{"sweep", "delete"} {
		t.Run(op, func(t *testing.T) {
			s, c := open(t, 0)
			ctx := context.Background()
			bulk(t, s, "f", 20*deleteBatch, c.t.Add(time.Minute).UnixMilli())
			c.t = c.t.Add(2 * time.Minute)
			// Another function writes all along; the longest any of its
			// writes waits is about a batch's time, not the whole.
			stop := make(chan struct{})
			longest := make(chan time.Duration)
			go func() {
				var most time.Duration
				for i := 0; ; i++ {
					select {
					case <-stop:
						longest <- most
						return
					default:
					}
					start := time.Now()
					if err := s.Set(ctx, "g", fmt.Sprint(i%100), json.RawMessage(`1`), 0); err != nil {
						t.Error(err)
					}
					most = max(most, time.Since(start))
				}
			}()
			time.Sleep(10 * time.Millisecond)
			start := time.Now()
			var err error
			if op == "sweep" {
				_, err = s.Sweep(ctx)
			} else {
				err = s.DeleteFunction(ctx, "f")
			}
			took := time.Since(start)
			close(stop)
			most := <-longest
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("the %s took %v; another function's writes waited at most %v", op, took, most)
			if most > took/2 {
				t.Errorf("the %s took %v; another function's write waited %v", op, took, most)
			}
			consistent(t, s, "f")
			consistent(t, s, "g")
			if n, err := s.Namespaces(ctx); op == "delete" && (err != nil || len(n) != 1) {
				t.Errorf("namespaces after the delete: %v, %v", n, err)
			}
		})
	}
}

// Add is atomic: concurrent adds lose no update, as a get and a set
// would; it keeps the entry's expiry unless given one, and starts an
// expired entry again from 0.
func TestAdd(t *testing.T) {
	s, c := open(t, 0)
	ctx := context.Background()
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			for range 10 {
				if _, err := s.Add(ctx, "f", "n", 1, 0); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	if v, _, _ := s.Get(ctx, "f", "n"); string(v) != "200" {
		t.Errorf("after 200 concurrent adds of 1: %s", v)
	}
	if _, err := s.Add(ctx, "f", "w", 1, time.Minute); err != nil {
		t.Fatal(err)
	}
	c.t = c.t.Add(30 * time.Second)
	if sum, err := s.Add(ctx, "f", "w", 1, 0); err != nil || sum != 2 {
		t.Errorf("add within the window: %v, %v; want 2", sum, err)
	}
	c.t = c.t.Add(31 * time.Second)
	if _, ok, _ := s.Get(ctx, "f", "w"); ok {
		t.Error("an add without expireIn moved the entry's expiry")
	}
	if sum, err := s.Add(ctx, "f", "w", 1, time.Minute); err != nil || sum != 1 {
		t.Errorf("add to an expired entry: %v, %v; want 1", sum, err)
	}
	for _, bad := range []float64{math.NaN(), math.Inf(1)} {
		if _, err := s.Add(ctx, "f", "n", bad, 0); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("add %v: %v", bad, err)
		}
	}
	consistent(t, s, "f")
}

// Concurrent read-modify-writes made with SetIf lose no update: each
// retries when another wrote between its read and its write.
func TestSetIfUnderContention(t *testing.T) {
	s, _ := open(t, 0)
	ctx := context.Background()
	const writers, each = 8, 25
	var wg sync.WaitGroup
	var conflicts sync.Map
	for w := range writers {
		wg.Go(func() {
			for range each {
				for {
					e, ok, err := s.GetEntry(ctx, "f", "n")
					if err != nil {
						t.Error(err)
						return
					}
					var n int
					pre := &Precondition{Absent: true}
					if ok {
						_ = json.Unmarshal(e.Value, &n)
						pre = &Precondition{Version: e.Version}
					}
					_, err = s.SetIf(ctx, "f", "n", json.RawMessage(fmt.Sprint(n+1)), 0, pre)
					if errors.Is(err, errdefs.ErrPrecondition) {
						conflicts.Store(w, true)
						continue
					}
					if err != nil {
						t.Error(err)
						return
					}
					break
				}
			}
		})
	}
	wg.Wait()
	if v, _, _ := s.Get(ctx, "f", "n"); string(v) != fmt.Sprint(writers*each) {
		t.Errorf("the count is %s, want %d", v, writers*each)
	}
	n := 0
	conflicts.Range(func(any, any) bool { n++; return true })
	t.Logf("%d of %d writers met a conflict", n, writers)
	consistent(t, s, "f")
}

// A key's versions are never given again: not after the key is deleted
// and set again, nor after the store is opened again with the newest
// entry gone; and entries written before versions existed have one
// (0), which the next write moves on.
func TestVersionsNeverRepeat(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "kv.db")
	// A file of the store as it was before versions.
	db, err := sqlitedb.Open(ctx, path, nil, migrations[:1])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`INSERT INTO entries (fn, key, value, size) VALUES ('f', 'old', '1', 104); INSERT INTO usage VALUES ('f', 104)`); err != nil {
		t.Fatal(err)
	}
	db.Close()
	s, err := Open(ctx, path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	e, ok, err := s.GetEntry(ctx, "f", "old")
	if err != nil || !ok || e.Version != "0000000000000000" || string(e.Value) != "1" {
		t.Fatalf("an entry from before versions: %+v %v %v", e, ok, err)
	}
	if _, err := s.SetIf(ctx, "f", "old", json.RawMessage(`2`), 0, &Precondition{Version: e.Version}); err != nil {
		t.Fatalf("a write for its version: %v", err)
	}
	seen := map[string]bool{e.Version: true}
	write := func() string {
		t.Helper()
		v, err := s.SetIf(ctx, "f", "k", json.RawMessage(`1`), 0, nil)
		if err != nil {
			t.Fatal(err)
		}
		if seen[v] {
			t.Fatalf("version %s given twice", v)
		}
		seen[v] = true
		return v
	}
	write()
	last := write()
	if err := s.Delete(ctx, "f", "k"); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if s, err = Open(ctx, path, Options{}); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if v := write(); v <= last {
		t.Errorf("after a delete and a restart the key's version is %s, not past %s", v, last)
	}
	consistent(t, s, "f")
}
