package async

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spry-run/spry/internal/errdefs"
)

// forwards collects OnForward's calls.
type forwards chan string

func (f forwards) on(inv *Invocation, dest string, fwd *Invocation, err error) {
	if fwd != nil {
		f <- fmt.Sprintf("%s %s -> %s %s", inv.Function, inv.ID, dest, fwd.ID)
		return
	}
	f <- fmt.Sprintf("%s %s -> %s: %v", inv.Function, inv.ID, dest, err)
}

// A failed invocation of a function with an on-failure destination is
// sent on to it, once, as an event carrying its request; one that
// succeeds is not; a destination that does not exist is said, and
// nothing is sent; and the destination's own failure (it has a
// destination too) is never sent on again.
func TestWorkerForward(t *testing.T) {
	ctx := t.Context()
	st := openStore(t, filepath.Join(t.TempDir(), "invocations.db"))
	// f and x send failures on; g, f's destination, sends its own on to
	// h, which must never get one.
	onFailure := map[string]string{"f": "g", "x": "missing", "g": "h"}
	ids := map[string]string{"f": "id-f", "g": "id-g", "h": "id-h", "x": "id-x"}
	var mu sync.Mutex
	got := map[string][]*Invocation{} // by function, the attempts it got
	send := func(_ context.Context, inv *Invocation) Result {
		mu.Lock()
		c := *inv
		got[inv.Function] = append(got[inv.Function], &c)
		mu.Unlock()
		r := Result{Status: 200, Duration: 1500 * time.Microsecond, OnFailure: onFailure[inv.Function]}
		switch {
		case inv.Function == "g":
			r.Status, r.Error, r.MaxAttempts = 500, "the function answered 500", 1
		case !strings.HasPrefix(string(inv.Body), "ok"):
			r.Status, r.Error = 400, "the function answered 400 Bad Request"
		}
		return r
	}
	dest := func(_ context.Context, owner, name string) (string, error) {
		if id, ok := ids[name]; ok && owner == "alice" {
			return id, nil
		}
		return "", errdefs.New(errdefs.ErrNotFound, "no function %s", name)
	}
	ev := make(events, 100)
	fw := make(forwards, 100)
	w := NewWorker(st, Config{Send: send, OnAttempt: ev.on, Destination: dest, OnForward: fw.on,
		Policy: Policy{Delays: []time.Duration{time.Millisecond, 2 * time.Millisecond}}})
	runWorker(t, w)

	enqueue := func(fn, body string) *Invocation {
		inv := newInv("alice", fn, body)
		if err := w.Enqueue(ctx, inv); err != nil {
			t.Fatal(err)
		}
		return inv
	}
	bad := enqueue("f", "bad request")
	binary := enqueue("f", "\xff\x00")
	ok := enqueue("f", "ok")
	lost := enqueue("x", "bad too")

	want := map[string]bool{
		fmt.Sprintf("x %s -> missing: no function missing", lost.ID): true,
	}
	var fwdIDs []string
	for range 3 {
		select {
		case s := <-fw:
			if want[s] {
				delete(want, s)
				continue
			}
			var src, id string
			if _, err := fmt.Sscanf(s, "f %s -> g %s", &src, &id); err != nil || (src != bad.ID && src != binary.ID) {
				t.Fatalf("OnForward: %q", s)
			}
			fwdIDs = append(fwdIDs, id)
		case <-time.After(10 * time.Second):
			t.Fatalf("OnForward: still waiting for %v", want)
		}
	}
	// g's two events fail: not sent on to h.
	attempts := map[string]bool{"bad request #1 400 failed": false, "\xff\x00 #1 400 failed": false, "ok #1 200 succeeded": false, "bad too #1 400 failed": false}
	gFailed := 0
	for range len(attempts) + 2 {
		select {
		case e := <-ev:
			if _, ok := attempts[e]; ok {
				attempts[e] = true
			} else if strings.HasPrefix(e, `{"invocation":`) && strings.HasSuffix(e, "#1 500 failed") {
				gFailed++
			} else {
				t.Errorf("attempt: %q", e)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("attempts: %v, and %d of g's", attempts, gFailed)
		}
	}
	if gFailed != 2 {
		t.Errorf("attempts: %v, and %d of g's", attempts, gFailed)
	}
	select {
	case s := <-fw:
		t.Errorf("the destination's failure was sent on: %q", s)
	case <-time.After(50 * time.Millisecond):
	}

	mu.Lock()
	defer mu.Unlock()
	if len(got["h"]) != 0 || len(got["g"]) != 2 {
		t.Fatalf("g got %d, h got %d", len(got["g"]), len(got["h"]))
	}
	for _, src := range []*Invocation{bad, binary} {
		var evt *Invocation
		for _, g := range got["g"] {
			if g.FailureOf == src.ID {
				evt = g
			}
		}
		if evt == nil || evt.ContentType != "application/json" || evt.Path != "/" || evt.FunctionID != "id-g" || evt.Owner != "alice" {
			t.Fatalf("the event of %s: %+v", src.Body, evt)
		}
		var e FailureEvent
		if err := json.Unmarshal(evt.Body, &e); err != nil {
			t.Fatal(err)
		}
		body := e.Request.Body
		if e.Request.Encoding == "base64" {
			b, _ := base64.StdEncoding.DecodeString(body)
			body = string(b)
		}
		wantEnc := "text"
		if src == binary {
			wantEnc = "base64"
		}
		if e.Invocation.ID != src.ID || e.Invocation.Function != "f" || e.Invocation.Path != "/x?y=1" || e.Invocation.Attempts != 1 ||
			!e.Invocation.CreatedAt.Equal(src.CreatedAt) || e.LastAttempt.Status != 400 || e.LastAttempt.Error != "the function answered 400 Bad Request" ||
			e.LastAttempt.DurationMS != 1.5 || e.Request.ContentType != "text/plain" || e.Request.Encoding != wantEnc || body != string(src.Body) {
			t.Errorf("the event of %q: %s", src.Body, evt.Body)
		}
		// The source shows where it went, and its body is dropped all
		// the same.
		s, err := w.Get(ctx, "id-f", src.ID)
		if err != nil || s.Status != StatusFailed || s.ForwardedTo != evt.ID || !slices.Contains(fwdIDs, evt.ID) {
			t.Errorf("the source: %+v %v", s, err)
		}
		g, err := w.Get(ctx, "id-g", evt.ID)
		if err != nil || g.FailureOf != src.ID || g.ForwardedTo != "" || g.Status != StatusFailed {
			t.Errorf("the event: %+v %v", g, err)
		}
	}
	for _, inv := range []*Invocation{ok, lost} {
		s, err := w.Get(ctx, ids[inv.Function], inv.ID)
		if err != nil || s.ForwardedTo != "" {
			t.Errorf("%s: %+v %v", inv.Body, s, err)
		}
	}
	if u, err := w.Usage(ctx, "alice"); err != nil || u.Pending != 0 {
		t.Errorf("usage at the end: %+v %v", u, err)
	}
}

// Forward holds the event to its owner's bounds: past them the failed
// invocation is recorded all the same, and nothing else stored; and an
// invocation gone meanwhile (its function deleted) sends nothing on.
func TestStoreForward(t *testing.T) {
	ctx := t.Context()
	st := openStore(t, filepath.Join(t.TempDir(), "invocations.db"))
	t0 := time.Unix(1000, 0)
	for _, tc := range []struct {
		name     string
		bounds   Bounds
		gone     bool
		other    bool // another of the owner's queued
		refused  error
		forwards bool
	}{
		{name: "within", bounds: Bounds{Pending: 2}, forwards: true},
		{name: "past pending", bounds: Bounds{Pending: 1}, other: true, refused: errdefs.ErrRateLimited},
		{name: "past bytes", bounds: Bounds{Bytes: MaxResponse + 10}, refused: errdefs.ErrRateLimited},
		{name: "gone", bounds: Bounds{}, gone: true, refused: ErrGone},
	} {
		t.Run(tc.name, func(t *testing.T) {
			owner := strings.ReplaceAll(tc.name, " ", "-")
			inv := newInv(owner, "f", "the request")
			inv.ID, inv.CreatedAt, inv.NextAt = NewID(), t0, t0
			if err := st.Add(ctx, inv, Bounds{}); err != nil {
				t.Fatal(err)
			}
			claimed, err := st.Claim(ctx, owner, t0)
			if err != nil || claimed == nil {
				t.Fatal(claimed, err)
			}
			if tc.other {
				// The failed one no longer counts once finished (it is
				// recorded first); this one does.
				o := newInv(owner, "f", "another")
				o.ID, o.CreatedAt, o.NextAt = NewID(), t0, t0
				if err := st.Add(ctx, o, Bounds{}); err != nil {
					t.Fatal(err)
				}
			}
			if tc.gone {
				if err := st.DeleteFunction(ctx, "id-f"); err != nil {
					t.Fatal(err)
				}
			}
			r := Result{Status: 400, Error: "bad"}
			ev, err := failureEvent(claimed, r, MaxBody)
			if err != nil {
				t.Fatal(err)
			}
			fwd := &Invocation{ID: NewID(), Owner: owner, FunctionID: "id-g", Function: "g", Path: "/", ContentType: "application/json",
				Body: ev, CreatedAt: t0, NextAt: t0, FailureOf: inv.ID}
			refused, err := st.Forward(ctx, inv.ID, r, t0, fwd, tc.bounds)
			if err != nil {
				t.Fatal(err)
			}
			if tc.refused != nil {
				if !errors.Is(refused, tc.refused) {
					t.Fatalf("refused: %v, want %s", refused, tc.refused)
				}
			} else if refused != nil {
				t.Fatalf("refused: %v", refused)
			}
			events, _ := st.List(ctx, "id-g", 0, 10)
			n := 0
			for _, e := range events {
				if e.Owner == owner {
					n++
				}
			}
			if got := n == 1; got != tc.forwards {
				t.Fatalf("events stored: %d", n)
			}
			if tc.gone {
				return
			}
			src, err := st.Get(ctx, "id-f", inv.ID)
			wantTo := ""
			if tc.forwards {
				wantTo = fwd.ID
			}
			if err != nil || src.Status != StatusFailed || src.FinishedAt.IsZero() || src.ForwardedTo != wantTo {
				t.Fatalf("the source: %+v %v", src, err)
			}
		})
	}
}

// A worker whose bound on bodies leaves no room for a failure's event
// (its path and error alone pass it) records the failure and says why
// nothing was sent on; one whose bound leaves some cuts the event to
// it.
func TestWorkerForwardBound(t *testing.T) {
	for _, tc := range []struct {
		name    string
		maxBody int64
		sent    bool
	}{
		{"no room", 64, false},
		{"cut", 1 << 10, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := t.Context()
			st := openStore(t, filepath.Join(t.TempDir(), "invocations.db"))
			send := func(_ context.Context, inv *Invocation) Result {
				r := Result{Status: 400, Error: "the function answered 400 Bad Request", Body: []byte(strings.Repeat("r", 2<<10))}
				if inv.Function == "f" {
					r.OnFailure = "g"
				} else {
					r.Status, r.Error = 200, ""
				}
				return r
			}
			dest := func(context.Context, string, string) (string, error) { return "id-g", nil }
			fw := make(forwards, 10)
			gotEvent := make(chan []byte, 10)
			w := NewWorker(st, Config{Send: func(ctx context.Context, inv *Invocation) Result {
				if inv.Function == "g" {
					gotEvent <- inv.Body
				}
				return send(ctx, inv)
			}, Destination: dest, OnForward: fw.on, MaxBody: tc.maxBody})
			runWorker(t, w)
			inv := newInv("alice", "f", strings.Repeat("a", 2<<10))
			if err := w.Enqueue(ctx, inv); err != nil {
				t.Fatal(err)
			}
			var s string
			select {
			case s = <-fw:
			case <-time.After(10 * time.Second):
				t.Fatal("OnForward: not called")
			}
			if sent := !strings.Contains(s, ":"); sent != tc.sent || !tc.sent && !strings.Contains(s, "past the 64") {
				t.Fatalf("OnForward: %q", s)
			}
			src, err := w.Get(ctx, "id-f", inv.ID)
			if err != nil || src.Status != StatusFailed || (src.ForwardedTo != "") != tc.sent {
				t.Fatalf("the failed one: %+v %v", src, err)
			}
			if !tc.sent {
				return
			}
			var got []byte
			select {
			case got = <-gotEvent:
			case <-time.After(10 * time.Second):
				t.Fatal("g got no event")
			}
			var e FailureEvent
			if err := json.Unmarshal(got, &e); err != nil || len(got) > int(tc.maxBody) || !e.Request.Truncated || e.Request.Size != 2<<10 ||
				e.LastAttempt.Response == nil || !e.LastAttempt.Response.Truncated || e.LastAttempt.Response.Body != "" {
				t.Errorf("the event (%d bytes): %s %v", len(got), got, err)
			}
		})
	}
}
