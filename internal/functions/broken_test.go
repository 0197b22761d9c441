package functions

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/spry-run/spry/internal/backend"
	"github.com/spry-run/spry/internal/errdefs"
	"github.com/spry-run/spry/internal/secrets"
	"github.com/spry-run/spry/internal/store"
)

// retirer records nothing: this test is about the routing.
type retirer struct{}

func (retirer) Admit(string, ...string)        {}
func (retirer) RetireExcept(string, ...string) {}
func (retirer) Remove(string)                  {}
func (retirer) Ensure(*backend.Spec)           {}

type noLogs struct{}

func (noLogs) DeleteFunction(context.Context, string, string, string) error { return nil }

func box(t *testing.T) *secrets.Box {
	t.Helper()
	key := make([]byte, 32)
	for i := range key {
		key[i] = byte(i * 7)
	}
	b, err := secrets.New(key)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A version whose secrets do not open with the server's key (the key
// was lost) cannot run; the function's other versions still route, and
// changes to the function go on, while requests for the lost version
// by number come (under the race detector: they add to the route's
// record of broken versions while changes publish new routes).
func TestVersionWithLostSecrets(t *testing.T) {
	ctx := t.Context()
	st, _ := stores(t)
	if err := st.CreateUser(ctx, store.User{Name: "alice"}); err != nil {
		t.Fatal(err)
	}
	good := box(t)
	lostKey := make([]byte, 32) // a key the server no longer has
	lost, _ := secrets.New(lostKey)
	deploy := func(n int, sealer *secrets.Box, limits store.Limits) {
		cfg := store.Config{Runtime: "deno", Limits: limits}
		if sealer != nil {
			sealed, err := sealer.Seal("v", secretContext("alice", "f", "KEY"))
			if err != nil {
				t.Fatal(err)
			}
			cfg.Secrets = map[string]string{"KEY": sealed}
		}
		if _, err := st.Deploy(ctx, "fid", store.Version{Owner: "alice", Name: "f", Digest: fmt.Sprintf("sha256:%d", n), Size: 1, Config: cfg, CreatedAt: time.Now(), CreatedBy: "alice"}); err != nil {
			t.Fatal(err)
		}
	}
	for n := 1; n <= 30; n++ {
		deploy(n, lost, store.Limits{MinScale: 1}) // versions 1-30: lost
	}
	deploy(31, good, store.Limits{MinScale: 1}) // 31, live: opens
	s := New(st, nil, retirer{}, good, noLogs{}, Config{DefaultRuntime: "deno"})
	if err := s.Load(ctx); err != nil {
		t.Fatal(err)
	}
	if sp, err := s.Resolve(ctx, "alice", "f", ""); err != nil || sp.Version != 31 || sp.Env["KEY"] != "v" {
		t.Fatalf("live version: %+v, %v", sp, err)
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for n := 1; n <= 30; n++ {
			_, err := s.Resolve(ctx, "alice", "f", fmt.Sprint(n))
			if !errors.Is(err, errdefs.ErrInternal) {
				t.Errorf("version %d: %v, want an internal error", n, err)
			}
		}
	}()
	go func() {
		defer wg.Done()
		for i := 0; i < 30; i++ {
			if _, err := s.SetTag(ctx, "alice", "f", "t", int64(1+i%30)); err != nil {
				t.Errorf("SetTag: %v", err)
			}
		}
	}()
	wg.Wait()
	if sp := s.Cached("alice", "f", "t"); sp != nil {
		t.Errorf("Cached gave the tagged version whose secrets are lost: %+v", sp)
	}
	if sp := s.Cached("alice", "f", ""); sp == nil || sp.Version != 31 {
		t.Errorf("Cached live: %+v", sp)
	}
	if _, err := s.Resolve(ctx, "alice", "f", "t"); !errors.Is(err, errdefs.ErrInternal) {
		t.Errorf("tag t: %v", err)
	}
}
