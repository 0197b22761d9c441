package functions

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/spry-run/spry/internal/backend"
	"github.com/spry-run/spry/internal/errdefs"
	"github.com/spry-run/spry/internal/store"
)

// keeps records what a Retirer is told to keep running.
type keeps struct {
	retirer
	mu   sync.Mutex
	keep []string
}

func (k *keeps) RetireExcept(_ string, keep ...string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.keep = slices.Clone(keep)
}

func (k *keeps) kept() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.keep
}

// Deleting a version retires its instances the way a deploy retires the
// versions it replaces (RetireExcept without it), drops it from the
// cached routing a request by number filled, and leaves what routes as
// it was.
func TestDeleteVersionRetires(t *testing.T) {
	ctx := t.Context()
	st, _ := stores(t)
	if err := st.CreateUser(ctx, store.User{Name: "alice"}); err != nil {
		t.Fatal(err)
	}
	k := &keeps{}
	s := New(st, nil, k, box(t), noLogs{}, Config{DefaultRuntime: "deno"})
	for n := 1; n <= 3; n++ {
		if _, err := st.Deploy(ctx, "fid", store.Version{Owner: "alice", Name: "f", Digest: fmt.Sprintf("sha256:%d", n), Size: 1,
			Config: store.Config{Runtime: "deno"}, CreatedAt: time.Now(), CreatedBy: "alice"}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.SetTag(ctx, "alice", "f", "stable", 2); err != nil {
		t.Fatal(err)
	}
	// Asked for by number: cached, and allowed to run.
	one, err := s.Resolve(ctx, "alice", "f", "1")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteVersion(ctx, "alice", "f", 1); err != nil {
		t.Fatal(err)
	}
	key := func(n int64) string { return (&backend.Spec{FunctionID: one.FunctionID, Version: n}).Key() }
	if kept := k.kept(); slices.Contains(kept, key(1)) || !slices.Contains(kept, key(3)) || !slices.Contains(kept, key(2)) {
		t.Errorf("kept running after deleting version 1: %v; want 3 and 2, not 1", kept)
	}
	if _, err := s.Resolve(ctx, "alice", "f", "1"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("@1 after its deletion: %v, want not found", err)
	}
	for tag, want := range map[string]int64{"": 3, "stable": 2, "2": 2} {
		if sp, err := s.Resolve(ctx, "alice", "f", tag); err != nil || sp.Version != want {
			t.Errorf("@%s after deleting 1: %+v, %v; want version %d", tag, sp, err, want)
		}
	}
	// A refused deletion retires nothing.
	before := k.kept()
	if err := s.DeleteVersion(ctx, "alice", "f", 2); !errors.Is(err, errdefs.ErrConflict) {
		t.Errorf("deleting the tagged version: %v, want conflict", err)
	}
	if !slices.Equal(k.kept(), before) {
		t.Errorf("a refused deletion changed what runs: %v, was %v", k.kept(), before)
	}
}
