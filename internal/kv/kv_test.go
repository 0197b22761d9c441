package kv

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
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

// client is a runtime's end of one connection ServeConn answers, on a
// socket pair.
type client struct {
	t    testing.TB
	conn *net.UnixConn
	r    *bufio.Reader
	id   int
	// done is closed when ServeConn has returned.
	done chan struct{}
}

// dial starts ServeConn for fn on a socket pair, with slots (nil: its
// own bound) and ctx; the test's end closes the client's end and waits
// for ServeConn to return.
func dial(t testing.TB, ctx context.Context, s *Store, fn string, slots chan struct{}) *client {
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
	c := &client{t: t, conn: conns[0], r: bufio.NewReader(conns[0]), done: make(chan struct{})}
	go func() { s.ServeConn(ctx, conns[1], fn, slots); close(c.done) }()
	t.Cleanup(func() {
		c.conn.Close()
		<-c.done
	})
	return c
}

// send writes lines as they are, each with a newline, in order.
func (c *client) send(lines ...string) {
	c.t.Helper()
	var b strings.Builder
	for _, l := range lines {
		b.WriteString(l + "\n")
	}
	if _, err := c.conn.Write([]byte(b.String())); err != nil {
		c.t.Fatal(err)
	}
}

// request sends req, a JSON object, with the next id, and returns the id.
func (c *client) request(req string) int {
	c.id++
	c.send(withID(req, c.id))
	return c.id
}

// withID is req with "id":id first in it.
func withID(req string, id int) string {
	if req == "{}" {
		return fmt.Sprintf(`{"id":%d}`, id)
	}
	return fmt.Sprintf(`{"id":%d,`, id) + strings.TrimPrefix(req, "{")
}

// read returns the next answer line, without its newline, or "" and the
// error that ended the connection.
func (c *client) read() (string, error) {
	line, err := c.r.ReadString('\n')
	if err != nil {
		if line != "" {
			c.t.Fatalf("an answer cut off: %.200q (%v)", line, err)
		}
		return "", err
	}
	return strings.TrimSuffix(line, "\n"), nil
}

// answer reads the next answer, which must be the one to request id,
// and returns it without its id.
func (c *client) answer(id int) string {
	c.t.Helper()
	got, err := c.read()
	if err != nil {
		c.t.Fatalf("the answer to %d: %v", id, err)
	}
	rest, ok := cutID(got, id)
	if !ok {
		c.t.Fatalf("the answer to %d: %.300s", id, got)
	}
	return rest
}

// cutID is answer without its leading "id":id, and whether it had it.
func cutID(answer string, id int) (string, bool) {
	rest, ok := strings.CutPrefix(answer, fmt.Sprintf(`{"id":%d,`, id))
	return "{" + rest, ok
}

// call sends one request on a new connection, as a runtime's first, and
// returns the answer without its id.
func call(t testing.TB, s *Store, fn, req string) string {
	t.Helper()
	c := dial(t, context.Background(), s, fn, nil)
	return c.answer(c.request(req))
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
	c := dial(t, context.Background(), s, "fn-1", nil)
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
		{"no value", `{"op":"set","key":"a"}`, `{"error":{"code":"invalid_argument","message":"kv: a value must be JSON (UTF-8 text)"}}`},
		{"large value", `{"op":"set","key":"a","value":` + big + `}`, `{"error":{"code":"too_large","message":"kv: a value is at most 65536 bytes as JSON; this one is 65538"}}`},
		{"negative expiry", `{"op":"set","key":"a","value":1,"expireIn":-1}`, `{"error":{"code":"invalid_argument","message":"kv: expireIn must be between 0 (never) and 315360000000 ms"}}`},
		{"limit too high", `{"op":"list","limit":1001}`, `{"error":{"code":"invalid_argument","message":"kv: limit must be between 1 and 1000"}}`},
		{"unknown op", `{"op":"drop"}`, `{"error":{"code":"invalid_argument","message":"kv: unknown op \"drop\" (get, set, add, delete, list)"}}`},
		// The longest line there may be (with its two-digit id): a value
		// past its own bound, answered on the connection kept.
		{"a request of MaxRequest bytes", `{"op":"set","key":"a","value":"` + strings.Repeat("x", MaxRequest-len(`{"id":NN,"op":"set","key":"a","value":""}`)) + `"}`, `{"error":{"code":"too_large","message":"kv: a value is at most 65536 bytes as JSON; this one is ` + fmt.Sprint(MaxRequest-len(`{"id":NN,"op":"set","key":"a","value":}`)) + `"}}`},
		{"an empty request", `{}`, `{"error":{"code":"invalid_argument","message":"kv: unknown op \"\" (get, set, add, delete, list)"}}`},
	} {
		// Each row a line on one connection, as one instance's calls.
		t.Run(tt.name, func(t *testing.T) {
			id := c.request(tt.req)
			if got := c.answer(id); got != tt.want {
				t.Errorf("%.200s\n got %.300s\nwant %.300s", tt.req, got, tt.want)
			}
		})
	}
	// An id is any number, given back as it came.
	c.send(`{"id":-1.5e3,"op":"get","key":"z"}`)
	if got, err := c.read(); got != `{"id":-1.5e3,"value":null,"version":null}` {
		t.Errorf("a fractional id: %s (%v)", got, err)
	}
	consistent(t, s, "fn-1")
}

// A line that is not a request (too long, not JSON, no id, cut) is
// answered with an error, with its id if it has one, after the requests
// read before it; then the connection is closed, and nothing is stored.
func TestBadLines(t *testing.T) {
	tooLarge := `{"error":{"code":"too_large","message":"kv: a request is at most ` + fmt.Sprint(MaxRequest) + ` bytes"}}`
	for _, tt := range []struct {
		name  string
		lines []string // sent, each with a newline
		last  string   // sent after them, without one, then the write side closed
		want  []string // the answers, then the connection's end
	}{
		{"not JSON", []string{`{"id":1,"op":"set","key":"a","value":1}`, `get a`, `{"id":3,"op":"set","key":"b","value":1}`}, "", []string{
			`{"id":1,"ok":true,"version":"0000000000000001"}`,
			`{"error":{"code":"invalid_argument","message":"kv: the request is not a JSON object: invalid character 'g' looking for beginning of value"}}`,
		}},
		{"no id", []string{`{"op":"set","key":"a","value":1}`}, "", []string{
			`{"error":{"code":"invalid_argument","message":"kv: a request needs an id, a number"}}`,
		}},
		{"an id not a number", []string{`{"id":"1","op":"set","key":"a","value":1}`}, "", []string{
			`{"error":{"code":"invalid_argument","message":"kv: a request needs an id, a number"}}`,
		}},
		{"an empty line", []string{``}, "", []string{
			`{"error":{"code":"invalid_argument","message":"kv: the request is not a JSON object: unexpected end of JSON input"}}`,
		}},
		{"not an object", []string{`[1]`}, "", []string{
			`{"error":{"code":"invalid_argument","message":"kv: the request is not a JSON object: json: cannot unmarshal array into Go value of type kv.Request"}}`,
		}},
		{"a key of bad type", []string{`{"id":7,"op":"get","key":1}`}, "", []string{
			`{"id":7,"error":{"code":"invalid_argument","message":"kv: the request is not a JSON object: json: cannot unmarshal number into Go struct field Request.key of type string"}}`,
		}},
		{"two objects on a line", []string{`{"id":1,"op":"get","key":"a"}{"id":2,"op":"get","key":"b"}`}, "", []string{
			`{"error":{"code":"invalid_argument","message":"kv: the request is not a JSON object: invalid character '{' after top-level value"}}`,
		}},
		{"too large", []string{`{"id":1,"op":"set","key":"a","value":"` + strings.Repeat("x", MaxRequest) + `"}`, `{"id":2,"op":"set","key":"b","value":1}`}, "", []string{tooLarge}},
		{"too large by one byte", []string{`{"id":1,"op":"get","key":"a"}`, `{"id":2,"op":"set","key":"a","value":"` + strings.Repeat("x", MaxRequest-len(`{"id":2,"op":"set","key":"a","value":""}`)+1) + `"}`}, "", []string{
			`{"id":1,"value":null,"version":null}`, tooLarge,
		}},
		{"too large, and no newline", nil, strings.Repeat("x", MaxRequest+1), []string{tooLarge}},
		{"cut at the end", []string{`{"id":1,"op":"get","key":"a"}`}, `{"id":2,"op":"set","key":"a`, []string{
			`{"id":1,"value":null,"version":null}`,
			`{"error":{"code":"invalid_argument","message":"kv: the request is not a JSON object: unexpected end of JSON input"}}`,
		}},
		// Not bad: a last line without its newline is a request too.
		{"a last line without its newline", nil, `{"id":1,"op":"get","key":"a"}`, []string{`{"id":1,"value":null,"version":null}`}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s, _ := open(t, 0)
			c := dial(t, context.Background(), s, "f", nil)
			var b strings.Builder
			for _, l := range tt.lines {
				b.WriteString(l + "\n")
			}
			b.WriteString(tt.last)
			go func() {
				_, _ = c.conn.Write([]byte(b.String()))
				_ = c.conn.CloseWrite()
			}()
			for _, want := range tt.want {
				if got, err := c.read(); got != want {
					t.Errorf(" got %.300s (%v)\nwant %.300s", got, err, want)
				}
			}
			if got, err := c.read(); err == nil {
				t.Errorf("the connection goes on: %.300s", got)
			}
			<-c.done
			if _, ok, _ := s.Get(context.Background(), "f", "b"); ok {
				t.Error("a request after a bad line was stored")
			}
			consistent(t, s, "f")
		})
	}
}

// Requests on one connection are answered at once, and their answers
// come as they are ready: reads while a write waits for the writers'
// lock; and no more at once than the slots, shared by an instance's
// connections.
func TestConnConcurrent(t *testing.T) {
	s, _ := open(t, 0)
	ctx := context.Background()
	if err := s.Set(ctx, "f", "a", json.RawMessage(`1`), 0); err != nil {
		t.Fatal(err)
	}
	slots := make(chan struct{}, 3)
	c := dial(t, ctx, s, "f", slots)
	other := dial(t, ctx, s, "f", slots)
	// Writes wait while the test holds the writers' lock.
	s.wmu.Lock()
	set1 := c.request(`{"op":"set","key":"a","value":2}`)
	set2 := other.request(`{"op":"add","key":"n","delta":1}`)
	get := c.request(`{"op":"get","key":"a"}`)
	list := c.request(`{"op":"list"}`)
	for range 2 {
		got, err := c.read()
		if err != nil {
			t.Fatal(err)
		}
		if rest, ok := cutID(got, get); ok && rest == `{"value":1,"version":"0000000000000001"}` {
			continue
		}
		if rest, ok := cutID(got, list); ok && rest == `{"entries":[{"key":"a","value":1,"version":"0000000000000001"}],"cursor":null}` {
			continue
		}
		t.Fatalf("while a write waits: %s", got)
	}
	// The two writes hold two of three slots: a third takes the last,
	// and a fourth is not read until one of them is done.
	set3 := c.request(`{"op":"set","key":"b","value":3}`)
	late := c.request(`{"op":"set","key":"d","value":4}`)
	for deadline := time.Now().Add(10 * time.Second); len(slots) < 3; runtime.Gosched() {
		if time.Now().After(deadline) {
			t.Fatalf("%d slots taken, want 3", len(slots))
		}
	}
	s.wmu.Unlock()
	if got := other.answer(set2); got != `{"value":1}` {
		t.Errorf("the other connection's add: %s", got)
	}
	versions := map[int]string{}
	for range 3 {
		got, err := c.read()
		if err != nil {
			t.Fatal(err)
		}
		var a struct {
			ID      int
			OK      bool
			Version string
		}
		if json.Unmarshal([]byte(got), &a) != nil || !a.OK {
			t.Fatalf("a write's answer: %s", got)
		}
		versions[a.ID] = a.Version
	}
	n, _, err := s.GetEntry(ctx, "f", "n")
	if err != nil || len(versions) != 3 {
		t.Fatalf("the add's entry: %v; the writes' versions: %v", err, versions)
	}
	// Writes take versions in turn: the fourth, read only once a slot
	// was given back, came after one of the three at least.
	if v := versions[late]; v < versions[set1] && v < versions[set3] && v < n.Version {
		t.Errorf("the write past the slots went first: %s, the others %s %s %s", v, versions[set1], versions[set3], n.Version)
	}
	// Each is given back once its answer is written.
	for deadline := time.Now().Add(10 * time.Second); len(slots) != 0; runtime.Gosched() {
		if time.Now().After(deadline) {
			t.Fatalf("%d slots still taken", len(slots))
		}
	}
	consistent(t, s, "f")
}

// ServeConn ends when its context does (its instance's end), closing
// the connection, whether it is idle or has a request in flight, which
// it waits for; and leaves no goroutine behind.
func TestServeConnEnds(t *testing.T) {
	s, _ := open(t, 0)
	before := runtime.NumGoroutine()
	// waitSlots spins until n slots are taken.
	waitSlots := func(slots chan struct{}, n int) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); len(slots) != n; runtime.Gosched() {
			if time.Now().After(deadline) {
				t.Fatalf("%d slots taken, want %d", len(slots), n)
			}
		}
	}
	for _, busy := range []bool{false, true} {
		ctx, cancel := context.WithCancel(context.Background())
		slots := make(chan struct{}, ConnInFlight)
		c := dial(t, ctx, s, "f", slots)
		c.answer(c.request(`{"op":"get","key":"a"}`))
		waitSlots(slots, 0)
		if busy {
			s.wmu.Lock()
			c.request(`{"op":"set","key":"a","value":1}`)
			waitSlots(slots, 1)
		}
		cancel()
		if got, err := c.read(); err == nil {
			t.Errorf("busy %v: the connection goes on after its context: %s", busy, got)
		}
		if busy {
			select {
			case <-c.done:
				t.Error("ServeConn returned with a request in flight")
			default:
			}
			s.wmu.Unlock()
		}
		<-c.done
	}
	for deadline := time.Now().Add(10 * time.Second); runtime.NumGoroutine() > before; runtime.Gosched() {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines, %d before", runtime.NumGoroutine(), before)
		}
	}
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

// Whatever a function's code sends on a connection, every answer is a
// JSON object on a line of its own, carrying the id of a request sent
// (each answered once at most), but for one error at the end; and what
// its namespace is said to hold stays what its entries add up to.
func FuzzServe(f *testing.F) {
	for _, seed := range []string{
		`{"id":1,"op":"set","key":"a","value":1}`,
		"{\"id\":1,\"op\":\"set\",\"key\":\"a\",\"value\":\"xx\",\"expireIn\":5}\n{\"id\":2,\"op\":\"get\",\"key\":\"a\"}\n",
		"{\"id\":1,\"op\":\"delete\",\"key\":\"a\"}\n{\"id\":1,\"op\":\"delete\",\"key\":\"a\"}\n",
		"{\"id\":3,\"op\":\"list\",\"prefix\":\"a\",\"limit\":1}\n{\"id\":4,\"op\":\"add\",\"key\":\"n\",\"delta\":2}\n",
		`{"id":5,"op":"get","key":"\u00e9"}`,
		`{"id":6,"op":"set","key":"a\xff","value":[1,2]}`,
		"{\"id\":7,\"op\":\"set\",\"key\":\"c\",\"value\":1,\"ifVersion\":null}\n{\"op\":\"get\"}\n{\"id\":8,\"op\":\"get\",\"key\":\"c\"}\n",
		"\n",
		`{`,
	} {
		f.Add(seed)
	}
	s, _ := open(f, 4096)
	f.Fuzz(func(t *testing.T, in string) {
		sent := map[string]int{}
		for line := range strings.Lines(in) {
			var r struct{ ID json.RawMessage }
			if json.Unmarshal([]byte(strings.TrimSuffix(line, "\n")), &r) == nil && r.ID != nil {
				sent[string(r.ID)]++
			}
		}
		c := dial(t, context.Background(), s, "f", nil)
		go func() {
			_, _ = c.conn.Write([]byte(in))
			_ = c.conn.CloseWrite()
		}()
		idless := false
		for {
			got, err := c.read()
			if err != nil {
				break
			}
			var a struct{ ID json.RawMessage }
			if !strings.HasPrefix(got, "{") || json.Unmarshal([]byte(got), &a) != nil {
				t.Fatalf("%q: the answer %q is not a JSON object", in, got)
			}
			if idless {
				t.Fatalf("%q: an answer after one without an id: %q", in, got)
			}
			switch {
			case a.ID == nil:
				idless = true
			case sent[string(a.ID)] == 0:
				t.Fatalf("%q: an answer to an id not sent, or answered already: %q", in, got)
			default:
				sent[string(a.ID)]--
			}
		}
		<-c.done
		consistent(t, s, "f")
	})
}

// BenchmarkServeConn: ctx.kv calls as the server answers them, on one
// connection kept (a socket pair; the runtime's side, and the sandbox's
// socket, not included): one at a time, each sent when the last was
// answered, and eight in flight at once.
func BenchmarkServeConn(b *testing.B) {
	s, _ := open(b, 0)
	if err := s.Set(context.Background(), "f", "k", json.RawMessage(`{"n":1}`), 0); err != nil {
		b.Fatal(err)
	}
	for _, bm := range []struct {
		name, req string
		inFlight  int
	}{
		{"get", `{"op":"get","key":"k"}`, 1},
		{"set", `{"op":"set","key":"k","value":{"n":2}}`, 1},
		{"get-8", `{"op":"get","key":"k"}`, 8},
	} {
		b.Run(bm.name, func(b *testing.B) {
			c := dial(b, context.Background(), s, "f", nil)
			line := []byte(withID(bm.req, 1) + "\n")
			sent, answered := 0, 0
			for b.Loop() {
				for sent-answered < bm.inFlight {
					if _, err := c.conn.Write(line); err != nil {
						b.Fatal(err)
					}
					sent++
				}
				if _, err := c.r.ReadSlice('\n'); err != nil {
					b.Fatal(err)
				}
				answered++
			}
			for ; answered < sent; answered++ {
				if _, err := c.r.ReadSlice('\n'); err != nil {
					b.Fatal(err)
				}
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
		req, _ := json.Marshal(map[string]any{"op": "list", "cursor": cursor, "limit": MaxList})
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
	if _, err := s.db.Exec(`INSERT INTO usage (fn, bytes) SELECT fn, sum(size) FROM entries WHERE fn = ? GROUP BY fn
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
// A conditional write or delete that is refused says why: the key has
// no value, has one, or has another version than the one it was made
// for; and it changes nothing.
func TestPreconditionFailures(t *testing.T) {
	ctx := context.Background()
	s, err := Open(ctx, filepath.Join(t.TempDir(), "kv.db"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	v, err := s.SetIf(ctx, "f", "k", json.RawMessage(`1`), 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	other := "00000000000000ff"
	for _, tc := range []struct {
		name, key string
		pre       Precondition
		want      string
	}{
		{"a value, none there", "missing", Precondition{}, `kv: the key "missing" has no value (the %s was made for one)`},
		{"a version, none there", "missing", Precondition{Version: v}, `kv: the key "missing" has no value (the %s was made for one)`},
		{"none, one there", "k", Precondition{Absent: true}, `kv: the key "k" has a value (the %s was made for none)`},
		{"another version", "k", Precondition{Version: other}, `kv: the key "k" has changed (its version is not the one the %s was made for)`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := s.SetIf(ctx, "f", tc.key, json.RawMessage(`2`), 0, &tc.pre)
			if !errors.Is(err, errdefs.ErrPrecondition) || err.Error() != fmt.Sprintf(tc.want, "write") {
				t.Errorf("write: %v, want %q", err, fmt.Sprintf(tc.want, "write"))
			}
			err = s.DeleteIf(ctx, "f", tc.key, &tc.pre)
			if !errors.Is(err, errdefs.ErrPrecondition) || err.Error() != fmt.Sprintf(tc.want, "delete") {
				t.Errorf("delete: %v, want %q", err, fmt.Sprintf(tc.want, "delete"))
			}
			if e, ok, err := s.GetEntry(ctx, "f", "k"); err != nil || !ok || string(e.Value) != "1" || e.Version != v {
				t.Errorf("k is now %+v %v %v, want 1 at %s", e, ok, err, v)
			}
		})
	}
}

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

// ownerConsistent checks that what owner's namespaces are said to hold
// together is what their entries add up to.
func ownerConsistent(t testing.TB, s *Store, owner string) {
	t.Helper()
	var sum int64
	if err := s.db.QueryRow(`SELECT coalesce(sum(length(CAST(key AS BLOB)) + length(value) + ?), 0) FROM entries WHERE fn IN (SELECT fn FROM usage WHERE owner = ?)`, EntryOverhead, owner).Scan(&sum); err != nil {
		t.Fatal(err)
	}
	used, err := s.OwnerUsed(context.Background(), owner)
	if err != nil {
		t.Fatal(err)
	}
	if used != sum {
		t.Errorf("%s's functions are said to hold %d bytes; their entries hold %d", owner, used, sum)
	}
}

// owners resolves the test's function ids: f, g and gone's are alice's
// (gone never resolves: a deleted function), h is bob's.
func owners(ids []string) map[string]string {
	known := map[string]string{"f": "alice", "g": "alice", "h": "bob"}
	out := map[string]string{}
	for _, id := range ids {
		if o, ok := known[id]; ok {
			out[id] = o
		}
	}
	return out
}

func openOwned(t testing.TB, path string, perOwner int64) *Store {
	t.Helper()
	s, err := Open(context.Background(), path, Options{MaxBytesPerOwner: perOwner, Owners: owners})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// All of one owner's functions together hold at most the owner's bound:
// a write past it fails with quota_exceeded naming the flag, another
// owner's is not counted, and writes that shrink, deletes, sweeps and
// a function's deletion give room back.
func TestOwnerBound(t *testing.T) {
	const entry = 300 + EntryOverhead // a one-byte key and 299 of value
	const bound = 3*entry + 150
	ctx := context.Background()
	s := openOwned(t, filepath.Join(t.TempDir(), "kv.db"), bound)
	value := json.RawMessage(`"` + strings.Repeat("v", 297) + `"`)
	for i, fn := range []string{"f", "g", "f"} {
		if err := s.Set(ctx, fn, fmt.Sprint(i), value, 0); err != nil {
			t.Fatal(err)
		}
	}
	err := s.Set(ctx, "g", "3", value, 0)
	if !errors.Is(err, errdefs.ErrQuotaExceeded) || !strings.Contains(err.Error(), "--kv-max-bytes-per-user") {
		t.Fatalf("a write past the owner's bound: %v, want quota_exceeded naming --kv-max-bytes-per-user", err)
	}
	if _, err := s.Add(ctx, "g", strings.Repeat("n", 100), 1, 0); !errors.Is(err, errdefs.ErrQuotaExceeded) {
		t.Fatalf("an add past the owner's bound: %v", err)
	}
	if err := s.Set(ctx, "h", "3", value, 0); err != nil {
		t.Fatalf("bob's write: %v", err)
	}
	if err := s.Set(ctx, "f", "0", json.RawMessage(`1`), 0); err != nil {
		t.Fatalf("a write that shrinks: %v", err)
	}
	if err := s.Set(ctx, "g", "3", value, 0); err != nil {
		t.Fatalf("a write that fits after the shrink: %v", err)
	}
	if err := s.Delete(ctx, "g", "1"); err != nil {
		t.Fatal(err)
	}
	if err := s.Set(ctx, "g", "4", value, time.Minute); err != nil {
		t.Fatalf("a write after a delete: %v", err)
	}
	for _, fn := range []string{"f", "g", "h"} {
		consistent(t, s, fn)
	}
	ownerConsistent(t, s, "alice")
	ownerConsistent(t, s, "bob")

	// An expired entry swept, and a function deleted, give back theirs.
	s.now = func() time.Time { return time.Now().Add(2 * time.Minute) }
	if n, err := s.Sweep(ctx); err != nil || n != 1 {
		t.Fatalf("sweep: %d, %v", n, err)
	}
	ownerConsistent(t, s, "alice")
	if err := s.DeleteFunction(ctx, "f"); err != nil {
		t.Fatal(err)
	}
	ownerConsistent(t, s, "alice")
	if used, _ := s.OwnerUsed(ctx, "alice"); used != entry {
		t.Fatalf("alice holds %d bytes with g's one entry left, want %d", used, entry)
	}
}

// A file from before owners were kept: its namespaces' bytes count
// against their owners' bound from the first write after it is opened
// (the owners learnt then), and a reopen counts them again from what
// each namespace holds.
func TestOwnerBoundOfAnOlderFile(t *testing.T) {
	const entry = 300 + EntryOverhead
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "kv.db")
	db, err := sqlitedb.Open(ctx, path, nil, migrations[:2])
	if err != nil {
		t.Fatal(err)
	}
	v := strings.Repeat("v", 299)
	if _, err := db.Exec(`INSERT INTO entries (fn, key, value, size) VALUES ('f', 'a', ?1, ?2), ('g', 'a', ?1, ?2), ('gone', 'a', ?1, ?2);
		INSERT INTO usage (fn, bytes) VALUES ('f', ?2), ('g', ?2), ('gone', ?2)`, v, entry); err != nil {
		t.Fatal(err)
	}
	db.Close()

	s := openOwned(t, path, 3*entry)
	// The first write, bob's, learns alice's too: her two functions'
	// entries and one more fill her bound.
	if err := s.Set(ctx, "h", "a", json.RawMessage(`1`), 0); err != nil {
		t.Fatal(err)
	}
	if used, _ := s.OwnerUsed(ctx, "alice"); used != 2*entry {
		t.Fatalf("alice holds %d bytes after the first write, want her two older entries' %d", used, 2*entry)
	}
	value := json.RawMessage(`"` + strings.Repeat("v", 297) + `"`)
	if err := s.Set(ctx, "f", "b", value, 0); err != nil {
		t.Fatal(err)
	}
	if err := s.Set(ctx, "g", "b", value, 0); !errors.Is(err, errdefs.ErrQuotaExceeded) {
		t.Fatalf("past alice's bound with her older entries: %v", err)
	}
	ownerConsistent(t, s, "alice")
	ownerConsistent(t, s, "bob")
	s.Close()

	// Reopened, with the totals off (as a crash between versions of the
	// code could leave them): recounted from the namespaces.
	db, err = sqlitedb.Open(ctx, path, nil, migrations)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`UPDATE owners SET bytes = 1`); err != nil {
		t.Fatal(err)
	}
	db.Close()
	s = openOwned(t, path, 3*entry)
	ownerConsistent(t, s, "alice")
	ownerConsistent(t, s, "bob")
	if err := s.Set(ctx, "g", "b", value, 0); !errors.Is(err, errdefs.ErrQuotaExceeded) {
		t.Fatalf("past alice's bound after a reopen: %v", err)
	}
}

// Writers of one owner's functions at once never take it past its bound
// together, and its total stays the sum of its namespaces.
func TestOwnerBoundUnderContention(t *testing.T) {
	const entry = 3 + 299 + EntryOverhead // keys "w-i"
	const bound = 40 * entry
	ctx := context.Background()
	s := openOwned(t, filepath.Join(t.TempDir(), "kv.db"), bound)
	value := json.RawMessage(`"` + strings.Repeat("v", 297) + `"`)
	const writers, each = 8, 10
	var wg sync.WaitGroup
	var stored, refused atomic.Int32
	for w := range writers {
		fn := []string{"f", "g"}[w%2]
		wg.Go(func() {
			for i := range each {
				err := s.Set(ctx, fn, fmt.Sprintf("%d-%d", w, i), value, 0)
				switch {
				case errors.Is(err, errdefs.ErrQuotaExceeded):
					refused.Add(1)
				case err != nil:
					t.Error(err)
					return
				default:
					stored.Add(1)
				}
			}
		})
	}
	wg.Wait()
	if stored.Load() != 40 || refused.Load() != writers*each-40 {
		t.Errorf("%d writes stored and %d refused, want 40 and %d", stored.Load(), refused.Load(), writers*each-40)
	}
	if used, _ := s.OwnerUsed(ctx, "alice"); used != bound {
		t.Errorf("alice holds %d bytes, want her bound's %d", used, bound)
	}
	consistent(t, s, "f")
	consistent(t, s, "g")
	ownerConsistent(t, s, "alice")
}

// A kept connection is closed once no request begins on it for the idle
// bound, or a line that began does not end within the line bound; one
// whose requests keep coming, or whose lines come in pieces within the
// bound, stays. (The bounds are shortened here: a minute and 10 s.)
func TestConnTimeouts(t *testing.T) {
	const short, long = 150 * time.Millisecond, time.Minute
	tests := []struct {
		name           string
		idle, line     time.Duration
		talk           func(c *client)
		closed         bool
		atLeast, below time.Duration // when the close came, from the talk's end
	}{
		{"quiet, past the idle bound", short, long, func(c *client) {}, true, short, long / 2},
		{"a partial line, past the line bound", long, short, func(c *client) {
			if _, err := c.conn.Write([]byte(`{"id":1,"op":"get","ke`)); err != nil {
				c.t.Fatal(err)
			}
		}, true, short, long / 2},
		{"a partial line after a request, past the line bound", long, short, func(c *client) {
			if got := c.answer(c.request(`{"op":"get","key":"k"}`)); got != `{"value":null,"version":null}` {
				c.t.Fatalf("get: %s", got)
			}
			if _, err := c.conn.Write([]byte(`{"id":2,`)); err != nil {
				c.t.Fatal(err)
			}
		}, true, short, long / 2},
		{"requests within the idle bound, for twice it", 2 * short, 2 * short, func(c *client) {
			for start := time.Now(); time.Since(start) < 4*short; time.Sleep(short / 8) {
				if got := c.answer(c.request(`{"op":"add","key":"n"}`)); !strings.HasPrefix(got, `{"value":`) {
					c.t.Fatalf("add: %s", got)
				}
			}
		}, false, 0, 0},
		{"a line in pieces within the line bound", 2 * short, 2 * short, func(c *client) {
			c.id++
			for _, piece := range []string{fmt.Sprintf(`{"id":%d,`, c.id), `"op":"get",`, `"key":"k"}` + "\n"} {
				if _, err := c.conn.Write([]byte(piece)); err != nil {
					c.t.Fatal(err)
				}
				time.Sleep(short / 4)
			}
			if got := c.answer(c.id); got != `{"value":null,"version":null}` {
				c.t.Fatalf("get: %s", got)
			}
		}, false, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s, _ := open(t, 0)
			s.connIdle, s.lineTime = tt.idle, tt.line
			c := dial(t, context.Background(), s, "f", nil)
			tt.talk(c)
			start := time.Now()
			if !tt.closed {
				// Still open: one more request is answered on it.
				if got := c.answer(c.request(`{"op":"get","key":"k"}`)); got != `{"value":null,"version":null}` {
					t.Fatalf("the connection was closed, or answered %s", got)
				}
				return
			}
			_ = c.conn.SetReadDeadline(time.Now().Add(tt.below))
			line, err := c.r.ReadString('\n')
			took := time.Since(start)
			if !errors.Is(err, io.EOF) {
				t.Fatalf("read %q, %v after %v; want the server's close", line, err, took)
			}
			if line != "" {
				t.Fatalf("an answer to a line that never ended: %q", line)
			}
			if took < tt.atLeast-short/10 {
				t.Fatalf("closed after %v, before the bound %v", took, tt.atLeast)
			}
			select {
			case <-c.done:
			case <-time.After(tt.below):
				t.Fatal("ServeConn did not return after the close")
			}
		})
	}
}

// Values are JSON text, UTF-8 as JSON must be: bytes that are not (an
// API body's, a raw socket's) were stored as they came, and read back
// as they were by the API but as U+FFFD by the function. And add's
// "not a number" includes null, which it took for 0.
func TestValuesNotStored(t *testing.T) {
	s, _ := open(t, 0)
	ctx := context.Background()
	for _, v := range []string{"\"\xff\"", "{\"a\xc3\":1}", "\"\xed\xa0\x80\""} {
		if err := s.Set(ctx, "f", "k", json.RawMessage(v), 0); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("set %q: %v, want invalid_argument", v, err)
		}
	}
	if _, ok, _ := s.Get(ctx, "f", "k"); ok {
		t.Error("a value not UTF-8 was stored")
	}
	// A number a double cannot hold is valid JSON, but the function
	// would read it as Infinity; one that underflows reads as 0, as
	// JSON.parse reads it.
	for _, v := range []string{`1e400`, `-1E+309`, `{"a":[1,2e999]}`, strings.Repeat("9", 400)} {
		if err := s.Set(ctx, "f", "k", json.RawMessage(v), 0); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("set %.20s: %v, want invalid_argument", v, err)
		}
	}
	for _, v := range []string{`1e-400`, `"1e400"`, `{"e":1.5e300}`, strings.Repeat("9", 300)} {
		if err := s.Set(ctx, "f", "k2", json.RawMessage(v), 0); err != nil {
			t.Errorf("set %.20s: %v", v, err)
		}
	}
	// An escaped lone surrogate is JSON's own, as JSON.stringify writes it.
	if err := s.Set(ctx, "f", "k", json.RawMessage(`"\ud800"`), 0); err != nil {
		t.Errorf("an escaped lone surrogate: %v", err)
	}
	if err := s.Set(ctx, "f", "null", json.RawMessage(`null`), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Add(ctx, "f", "null", 1, 0); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("add to null: %v, want invalid_argument", err)
	}
	if v, _, _ := s.Get(ctx, "f", "null"); string(v) != "null" {
		t.Errorf("null after a refused add: %s", v)
	}
	consistent(t, s, "f")
}

// List's bounds on its prefix and cursor hold whatever the limit: a
// limit of 0 (the default) skipped them.
func TestListBounds(t *testing.T) {
	s, _ := open(t, 0)
	long := strings.Repeat("k", MaxKeyBytes+1)
	for _, tt := range []struct {
		prefix, cursor string
		limit          int
	}{
		{long, "", 0}, {"", long, 0}, {long, "", 10}, {"", long, 10},
		{"", "", -1}, {"", "", MaxList + 1},
	} {
		if _, _, err := s.List(context.Background(), "f", tt.prefix, tt.cursor, tt.limit); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("List(prefix %d bytes, cursor %d bytes, limit %d): %v, want invalid_argument", len(tt.prefix), len(tt.cursor), tt.limit, err)
		}
	}
}

// A write that would pass a bound first removes the function's own
// expired entries (all but its key's, which it replaces): they are not
// read, and held the bound until the next sweep, up to a minute, so
// that a store of sessions full of expired ones refused new ones.
func TestExpiredMakeRoom(t *testing.T) {
	const entry = 300 + EntryOverhead // a one-byte key and 299 of value
	value := json.RawMessage(`"` + strings.Repeat("v", 297) + `"`)
	ctx := context.Background()
	t.Run("function", func(t *testing.T) {
		s, c := open(t, 3*entry+150)
		for i := range 3 {
			if err := s.Set(ctx, "f", fmt.Sprint(i), value, time.Duration(i+1)*time.Minute); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.Set(ctx, "f", "3", value, 0); !errors.Is(err, errdefs.ErrQuotaExceeded) {
			t.Fatalf("a write past the bound, none expired: %v", err)
		}
		c.t = c.t.Add(90 * time.Second) // "0" expired
		if err := s.Set(ctx, "f", "3", value, 0); err != nil {
			t.Fatalf("a write past the bound with an entry expired: %v", err)
		}
		consistent(t, s, "f")
		if used, _ := s.Used(ctx, "f"); used != 3*entry {
			t.Errorf("f holds %d bytes, want %d", used, 3*entry)
		}
		c.t = c.t.Add(2 * time.Minute) // "1" and "2" expired
		// Its own key expired too: it is replaced, counted once, so
		// that a value too large even with the others gone is refused.
		if err := s.Set(ctx, "f", "2", json.RawMessage(`"`+strings.Repeat("w", 1000)+`"`), 0); !errors.Is(err, errdefs.ErrQuotaExceeded) {
			t.Fatalf("a write whose key expired, too large even then: %v", err)
		}
		consistent(t, s, "f")
		if err := s.Set(ctx, "f", "4", value, 0); err != nil {
			t.Fatalf("a write past the bound with entries expired: %v", err)
		}
		consistent(t, s, "f")
		if used, _ := s.Used(ctx, "f"); used != 2*entry {
			t.Errorf("f holds %d bytes, want %d", used, 2*entry)
		}
	})
	t.Run("owner", func(t *testing.T) {
		s, c := openPerOwner(t, 3*entry+150)
		for i, fn := range []string{"f", "g", "g"} {
			if err := s.Set(ctx, fn, fmt.Sprint(i), value, time.Minute); err != nil {
				t.Fatal(err)
			}
		}
		c.t = c.t.Add(2 * time.Minute)
		if err := s.Set(ctx, "g", "3", value, 0); err != nil {
			t.Fatalf("a write past the owner's bound with its own entries expired: %v", err)
		}
		for _, fn := range []string{"f", "g"} {
			consistent(t, s, fn)
		}
		ownerConsistent(t, s, "alice")
	})
	// Another of the user's functions' expired entries make room too
	// (they held the bound until the sweep, up to a minute); another
	// user's never do.
	t.Run("owner's other functions", func(t *testing.T) {
		s, c := openPerOwner(t, 3*entry+150)
		for i, fn := range []string{"f", "f", "g", "h", "h", "h"} {
			expire := time.Minute
			if fn == "g" {
				expire = 0 // g's stays
			}
			if err := s.Set(ctx, fn, fmt.Sprint(i), value, expire); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.Set(ctx, "g", "x", value, 0); !errors.Is(err, errdefs.ErrQuotaExceeded) {
			t.Fatalf("a write past the owner's bound, none expired: %v", err)
		}
		c.t = c.t.Add(2 * time.Minute) // f's and bob's h's expired
		if err := s.Set(ctx, "g", "x", value, 0); err != nil {
			t.Fatalf("a write past the owner's bound with another function's entries expired: %v", err)
		}
		for _, fn := range []string{"f", "g", "h"} {
			consistent(t, s, fn)
		}
		ownerConsistent(t, s, "alice")
		ownerConsistent(t, s, "bob")
		if used, _ := s.Used(ctx, "h"); used != 3*entry {
			t.Errorf("bob's h holds %d bytes, want %d: another user's expired entries went", used, 3*entry)
		}
		if used, _ := s.Used(ctx, "f"); used != 0 {
			t.Errorf("f holds %d bytes, want 0", used)
		}
	})
}

// openPerOwner opens a store whose owners (see owners) hold at most
// bound bytes each, on a clock of the test's.
func openPerOwner(t *testing.T, bound int64) (*Store, *clock) {
	t.Helper()
	c := &clock{t: time.Date(2026, 11, 24, 9, 0, 0, 0, time.UTC)}
	s, err := Open(t.Context(), filepath.Join(t.TempDir(), "kv.db"), Options{MaxBytesPerOwner: bound, Owners: owners, Now: c.now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, c
}

// A conditional write reads the time once it holds the writers' turn:
// read before, an entry that expired while the write waited (here for
// its namespace's owner, which the store asks of the server outside
// its lock) was taken as there, and a write made for it went through,
// after reads had seen it gone.
func TestWriteReadsTheTimeInItsTurn(t *testing.T) {
	var now atomic.Int64
	start := time.Date(2026, 11, 24, 9, 0, 0, 0, time.UTC)
	now.Store(start.UnixMilli())
	var asking atomic.Bool
	s, err := Open(context.Background(), filepath.Join(t.TempDir(), "kv.db"), Options{
		Now: func() time.Time { return time.UnixMilli(now.Load()) },
		// The function is not known (no owner recorded): each write asks.
		Owners: func([]string) map[string]string {
			if asking.Load() {
				now.Add(2 * time.Minute.Milliseconds())
			}
			return nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	version, err := s.SetIf(ctx, "f", "k", json.RawMessage(`1`), time.Minute, nil)
	if err != nil {
		t.Fatal(err)
	}
	asking.Store(true)
	if _, err := s.SetIf(ctx, "f", "k", json.RawMessage(`2`), 0, &Precondition{Version: version}); !errors.Is(err, errdefs.ErrPrecondition) {
		t.Errorf("a write for an entry that expired while it waited: %v, want precondition_failed", err)
	}
	asking.Store(false)
	now.Store(start.UnixMilli())
	version, err = s.SetIf(ctx, "f", "d", json.RawMessage(`1`), time.Minute, nil)
	if err != nil {
		t.Fatal(err)
	}
	asking.Store(true)
	if err := s.DeleteIf(ctx, "f", "d", &Precondition{Version: version}); !errors.Is(err, errdefs.ErrPrecondition) {
		t.Errorf("a delete for an entry that expired while it waited: %v, want precondition_failed", err)
	}
	// An expiry counts from the write, not from its wait.
	now.Store(start.UnixMilli())
	if err := s.Set(ctx, "f", "e", json.RawMessage(`1`), time.Minute); err != nil {
		t.Fatal(err)
	}
	asking.Store(false)
	now.Add(time.Minute.Milliseconds() - 1000) // the wait took two minutes: not yet a minute since the write
	if _, ok, _ := s.Get(ctx, "f", "e"); !ok {
		t.Error("an entry expired a minute after its write's wait began, not a minute after the write")
	}
}

// An owner whose namespaces hold nothing any more (their functions
// deleted, their entries deleted or swept, the user deleted) keeps no
// row of owners: one stayed for every owner that ever wrote, at 0.
func TestOwnerRowGoesWithItsLastByte(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name  string
		empty func(s *Store) error
		want  []string // the owners left with a row
	}{
		{"functions deleted", func(s *Store) error {
			if err := s.DeleteFunction(ctx, "f"); err != nil {
				return err
			}
			return s.DeleteFunction(ctx, "g")
		}, []string{"bob"}},
		{"entries deleted", func(s *Store) error {
			for _, k := range [][2]string{{"f", "a"}, {"f", "b"}, {"g", "a"}} {
				if err := s.Delete(ctx, k[0], k[1]); err != nil {
					return err
				}
			}
			return nil
		}, []string{"bob"}},
		{"entries expired", func(s *Store) error {
			s.now = func() time.Time { return time.Now().Add(2 * time.Minute) }
			_, err := s.Sweep(ctx)
			return err
		}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := openOwned(t, filepath.Join(t.TempDir(), "kv.db"), 1<<20)
			for _, k := range [][2]string{{"f", "a"}, {"f", "b"}, {"g", "a"}, {"h", "a"}} {
				if err := s.Set(ctx, k[0], k[1], json.RawMessage(`"v"`), time.Minute); err != nil {
					t.Fatal(err)
				}
			}
			if err := tc.empty(s); err != nil {
				t.Fatal(err)
			}
			rows, err := s.db.Query(`SELECT owner FROM owners ORDER BY owner`)
			if err != nil {
				t.Fatal(err)
			}
			var left []string
			for rows.Next() {
				var o string
				if err := rows.Scan(&o); err != nil {
					t.Fatal(err)
				}
				left = append(left, o)
			}
			rows.Close()
			if !slices.Equal(left, tc.want) {
				t.Fatalf("owners with a row: %q, want %q", left, tc.want)
			}
			ownerConsistent(t, s, "alice")
			ownerConsistent(t, s, "bob")
		})
	}
}
