package server

import (
	"context"
	"encoding/json"
	"log/slog"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spry-run/spry/internal/async"
	"github.com/spry-run/spry/internal/kv"
	"github.com/spry-run/spry/internal/metrics"
	"github.com/spry-run/spry/internal/store"
	"github.com/spry-run/spry/internal/store/sqlite"
)

// pruneKV removes the entries of functions the store no longer has (a
// write that landed after its function's deletion took its entries),
// and keeps every live function's.
func TestPruneKV(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	st, err := sqlite.Open(ctx, filepath.Join(dir, "spry.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	kvs, err := kv.Open(ctx, filepath.Join(dir, "kv.db"), kv.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer kvs.Close()
	if err := st.CreateUser(ctx, store.User{Name: "alice", CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Deploy(ctx, "fn-live", store.Version{Owner: "alice", Name: "hello", Digest: "sha256:1", Config: store.Config{Runtime: "deno"}, CreatedAt: time.Now(), CreatedBy: "alice"}); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"fn-live", "fn-gone"} {
		if err := kvs.Set(ctx, id, "k", json.RawMessage(`1`), 0); err != nil {
			t.Fatal(err)
		}
	}
	s := &Server{store: st, kv: kvs, log: slog.New(slog.DiscardHandler)}
	if err := s.pruneKV(ctx); err != nil {
		t.Fatal(err)
	}
	spaces, err := kvs.Namespaces(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(spaces, []string{"fn-live"}) {
		t.Errorf("namespaces after the prune: %v, want [fn-live]", spaces)
	}
}

// A deleted function's entries and asynchronous invocations are removed
// in the background (the deletion holds every deploy), and a server
// closing waits for that.
func TestForgetRemovesKV(t *testing.T) {
	ctx := t.Context()
	kvs, err := kv.Open(ctx, filepath.Join(t.TempDir(), "kv.db"), kv.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer kvs.Close()
	for _, id := range []string{"fn-gone", "fn-kept"} {
		if err := kvs.Set(ctx, id, "k", json.RawMessage(`1`), 0); err != nil {
			t.Fatal(err)
		}
	}
	invs, err := async.Open(ctx, filepath.Join(t.TempDir(), InvocationsFile))
	if err != nil {
		t.Fatal(err)
	}
	defer invs.Close()
	for _, id := range []string{"fn-gone", "fn-kept"} {
		if err := invs.Add(ctx, &async.Invocation{ID: async.NewID(), Owner: "alice", FunctionID: id, Function: id, Path: "/"}, async.Bounds{}); err != nil {
			t.Fatal(err)
		}
	}
	s := &Server{kv: kvs, invocations: invs, log: slog.New(slog.DiscardHandler), metrics: metrics.New(nil)}
	s.forget("alice", "gone", "fn-gone")
	s.kvDeletes.Wait()
	if fns, err := invs.Functions(ctx); err != nil || !slices.Equal(fns, []string{"fn-kept"}) {
		t.Errorf("invocations' functions after the deletion: %v %v, want [fn-kept]", fns, err)
	}
	spaces, err := kvs.Namespaces(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(spaces, []string{"fn-kept"}) {
		t.Errorf("namespaces after the deletion: %v, want [fn-kept]", spaces)
	}
}

// The server's sweep removes expired entries every interval, and their
// bytes stop counting against the bounds.
func TestSweepKV(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	dir := t.TempDir()
	st, err := sqlite.Open(ctx, filepath.Join(dir, "spry.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := st.CreateUser(ctx, store.User{Name: "alice", CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Deploy(ctx, "fn-1", store.Version{Owner: "alice", Name: "hello", Digest: "sha256:1", Config: store.Config{Runtime: "deno"}, CreatedAt: time.Now(), CreatedBy: "alice"}); err != nil {
		t.Fatal(err)
	}
	var now atomic.Int64
	now.Store(time.Now().UnixMilli())
	kvs, err := kv.Open(ctx, filepath.Join(dir, "kv.db"), kv.Options{Now: func() time.Time { return time.UnixMilli(now.Load()) }})
	if err != nil {
		t.Fatal(err)
	}
	defer kvs.Close()
	for _, k := range []string{"a", "b"} {
		if err := kvs.Set(ctx, "fn-1", k, json.RawMessage(`1`), time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	if err := kvs.Set(ctx, "fn-1", "kept", json.RawMessage(`1`), 0); err != nil {
		t.Fatal(err)
	}
	s := &Server{store: st, kv: kvs, log: slog.New(slog.DiscardHandler)}
	done := make(chan struct{})
	go func() { s.sweepKV(ctx, time.Millisecond); close(done) }()
	defer func() { cancel(); <-done }()
	now.Add((2 * time.Minute).Milliseconds())
	want := int64(len("kept") + 1 + kv.EntryOverhead)
	deadline := time.Now().Add(5 * time.Second)
	for {
		used, err := kvs.Used(ctx, "fn-1")
		if err != nil {
			t.Fatal(err)
		}
		if used == want {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("fn-1 holds %d bytes 5s after its entries expired, want %d", used, want)
		}
		time.Sleep(time.Millisecond)
	}
}
