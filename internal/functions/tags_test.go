package functions

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/spry-run/spry/internal/errdefs"
	"github.com/spry-run/spry/internal/store"
)

// TestTagsAreBounded: a function has at most MaxTags tags. Every tag keeps
// its version from being pruned, so with no bound a user could keep every
// version ever deployed (each a bundle on the server's disk) by tagging
// each one.
func TestTagsAreBounded(t *testing.T) {
	ctx := t.Context()
	st, _ := stores(t)
	if err := st.CreateUser(ctx, store.User{Name: "alice"}); err != nil {
		t.Fatal(err)
	}
	s := New(st, nil, retirer{}, box(t), noLogs{}, Config{DefaultRuntime: "deno"})
	if err := s.Load(ctx); err != nil {
		t.Fatal(err)
	}
	deploy := func(n int) {
		t.Helper()
		if _, err := st.Deploy(ctx, "fid", store.Version{Owner: "alice", Name: "f", Digest: fmt.Sprintf("sha256:%d", n), Size: 1,
			Config: store.Config{Runtime: "deno"}, CreatedAt: time.Now(), CreatedBy: "alice"}); err != nil {
			t.Fatal(err)
		}
	}
	// Deploy and tag, version after version, as a user keeping them all
	// would.
	n := 0
	for ; n < MaxTags; n++ {
		deploy(n + 1)
		if _, err := s.SetTag(ctx, "alice", "f", fmt.Sprintf("t%d", n+1), int64(n+1)); err != nil {
			t.Fatalf("tag %d: %v", n+1, err)
		}
	}
	deploy(n + 1)
	_, err := s.SetTag(ctx, "alice", "f", fmt.Sprintf("t%d", n+1), int64(n+1))
	if !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("tag %d: %v, want invalid argument", n+1, err)
	}
	fn, err := st.GetFunction(ctx, "alice", "f")
	if err != nil {
		t.Fatal(err)
	}
	if len(fn.Routing.Tags) != MaxTags {
		t.Fatalf("%d tags stored, want %d", len(fn.Routing.Tags), MaxTags)
	}
	// At the limit, a tag may still move and go; then one more fits.
	if _, err := s.SetTag(ctx, "alice", "f", "t1", int64(n+1)); err != nil {
		t.Fatalf("move a tag at the limit: %v", err)
	}
	if _, err := s.SetTag(ctx, "alice", "f", "t2", 0); err != nil {
		t.Fatalf("remove a tag at the limit: %v", err)
	}
	if _, err := s.SetTag(ctx, "alice", "f", "new", 1); err != nil {
		t.Fatalf("a tag after one was removed: %v", err)
	}
	// So the versions kept stay bounded however long this goes on.
	for i := 0; i < store.MaxVersions+MaxTags; i++ {
		n++
		deploy(n + 1)
		_, _ = s.SetTag(ctx, "alice", "f", fmt.Sprintf("t%d", n+1), int64(n+1))
	}
	vs, err := st.ListVersions(ctx, "alice", "f")
	if err != nil {
		t.Fatal(err)
	}
	if len(vs) > store.MaxVersions+MaxTags {
		t.Fatalf("%d versions kept, want at most %d", len(vs), store.MaxVersions+MaxTags)
	}
}
