package functions

import (
	"context"
	"testing"
	"time"

	"github.com/spry-run/spry/internal/store"
	"github.com/spry-run/spry/internal/store/sqlite"
)

// hangUp is the real store, but it cancels the request's context once
// a change has been committed: the client hung up just then.
type hangUp struct {
	*sqlite.Store
	cancel context.CancelFunc
}

func (h *hangUp) Deploy(ctx context.Context, id string, v store.Version) (store.Version, error) {
	out, err := h.Store.Deploy(ctx, id, v)
	h.cancel()
	return out, err
}

func (h *hangUp) SetLive(ctx context.Context, owner, name string, n int64, at time.Time) error {
	err := h.Store.SetLive(ctx, owner, name, n, at)
	h.cancel()
	return err
}

func (h *hangUp) DeleteFunction(ctx context.Context, owner, name string) error {
	err := h.Store.DeleteFunction(ctx, owner, name)
	h.cancel()
	return err
}

// ctxLogs fails, as the log store does, on a cancelled context.
type ctxLogs struct{ deleted int }

func (l *ctxLogs) DeleteFunction(ctx context.Context, owner, name, id string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	l.deleted++
	return nil
}

func (h *hangUp) SetRouting(ctx context.Context, owner, name string, r store.Routing, at time.Time) error {
	err := h.Store.SetRouting(ctx, owner, name, r, at)
	h.cancel()
	return err
}

// A change the store has committed is the one served, even when the
// client that asked for it hangs up right after the commit: the router
// must not go on serving what the store no longer says is live. A
// deleted function's logs go with it likewise.
func TestCommittedChangeServedAfterHangUp(t *testing.T) {
	ctx := t.Context()
	st, blobs := stores(t)
	h := &hangUp{Store: st, cancel: func() {}}
	logs := &ctxLogs{}
	s := New(h, blobs, retirer{}, box(t), logs, Config{DefaultRuntime: "deno", Runtimes: []string{"deno"}, MaxCodeBytes: 1 << 20})
	code := []byte("export default { fetch() { return new Response('hi') } }")
	for i := 0; i < 2; i++ {
		if _, err := s.Deploy(ctx, DeployRequest{Owner: "alice", Name: "f", Code: code, By: "alice"}); err != nil {
			t.Fatal(err)
		}
	}
	live := func(want int64, tag string) {
		t.Helper()
		fn, err := st.GetFunction(ctx, "alice", "f")
		if err != nil {
			t.Fatal(err)
		}
		if fn.LiveVersion != want && tag == "" {
			t.Fatalf("store: live version %d, want %d", fn.LiveVersion, want)
		}
		if sp := s.Cached("alice", "f", tag); sp == nil || sp.Version != want {
			t.Errorf("served %+v for tag %q, want version %d", sp, tag, want)
		}
	}
	live(2, "")

	hung := func() context.Context {
		c, cancel := context.WithCancel(ctx)
		h.cancel = cancel
		return c
	}
	_, _ = s.Deploy(hung(), DeployRequest{Owner: "alice", Name: "f", Code: code, By: "alice"})
	live(3, "")
	_, _ = s.Reconfigure(hung(), "alice", "f", "alice", Change{SetEnv: map[string]string{"K": "v"}})
	live(4, "")
	_, _ = s.Rollback(hung(), "alice", "f", 2)
	live(2, "")
	_, _ = s.SetTraffic(hung(), "alice", "f", []store.Split{{Version: 3, Percent: 100}})
	live(3, "")
	_, _ = s.SetTag(hung(), "alice", "f", "stable", 1)
	live(1, "stable")
	if err := s.Delete(hung(), "alice", "f"); err != nil {
		t.Fatal(err)
	}
	if logs.deleted != 1 {
		t.Errorf("the deleted function's logs were kept")
	}
}
