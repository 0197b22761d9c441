package kv

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// A snapshot taken while values are written opens as a store of its
// own that holds what was there before it, and whole writes only: a
// namespace's entries and its usage, written in one transaction, agree.
func TestSnapshot(t *testing.T) {
	s, _ := open(t, 0)
	ctx := t.Context()
	if err := s.Set(ctx, "fn1", "before", json.RawMessage(`"kept"`), 0); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			v, _ := json.Marshal(strings.Repeat("x", i%500))
			if err := s.Set(ctx, "fn2", fmt.Sprintf("k%d", i%50), v, 0); err != nil {
				t.Error(err)
				return
			}
		}
	})
	dir := t.TempDir()
	var paths []string
	for i := range 3 {
		p := filepath.Join(dir, fmt.Sprintf("kv%d.db", i))
		if err := s.Snapshot(ctx, p); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	close(stop)
	wg.Wait()
	for _, p := range paths {
		snap, err := Open(ctx, p, Options{})
		if err != nil {
			t.Fatal(err)
		}
		v, ok, err := snap.Get(ctx, "fn1", "before")
		if err != nil || !ok || string(v) != `"kept"` {
			t.Errorf("%s: before = %s %v %v", p, v, ok, err)
		}
		consistent(t, snap, "fn2")
		snap.Close()
	}
	// The source goes on.
	if err := s.Set(ctx, "fn1", "after", json.RawMessage(`1`), 0); err != nil {
		t.Fatal(err)
	}
	consistent(t, s, "fn2")
}

// A store restored from a snapshot gives versions that none of the
// source's writes since had.
func TestRestoredVersionsAreNew(t *testing.T) {
	s, _ := open(t, 0)
	ctx := t.Context()
	if err := s.Set(ctx, "f", "k", json.RawMessage(`1`), 0); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "kv.db")
	if err := s.Snapshot(ctx, p); err != nil {
		t.Fatal(err)
	}
	var given []string
	for i := range 5 {
		v, err := s.SetIf(ctx, "f", "k", json.RawMessage(fmt.Sprint(i)), 0, nil)
		if err != nil {
			t.Fatal(err)
		}
		given = append(given, v)
	}
	restored, err := Open(ctx, p, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer restored.Close()
	if err := restored.Restored(ctx); err != nil {
		t.Fatal(err)
	}
	v, err := restored.SetIf(ctx, "f", "k", json.RawMessage(`9`), 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if v <= given[len(given)-1] {
		t.Errorf("the restored store's write has version %s; the source gave %v since the snapshot", v, given)
	}
	// Again (a second restore): the clock does not go back.
	if err := restored.Restored(ctx); err != nil {
		t.Fatal(err)
	}
	if w, err := restored.SetIf(ctx, "f", "k", json.RawMessage(`10`), 0, nil); err != nil || w <= v {
		t.Errorf("after a second Restored: %s %v, want past %s", w, err, v)
	}
}
