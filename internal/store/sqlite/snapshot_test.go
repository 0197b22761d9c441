package sqlite_test

import (
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/spry-run/spry/internal/store"
)

// A snapshot taken while functions are deployed opens as a store of its
// own that holds the users and versions written before it, each deploy
// whole (its function and version rows, one transaction), and what its
// versions name (Digests, which a backup copies the blobs of).
func TestSnapshot(t *testing.T) {
	ctx := t.Context()
	s := open(t, filepath.Join(t.TempDir(), "spry.db"))
	defer s.Close()
	if err := s.CreateUser(ctx, store.User{Name: "alice", CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	deploy := func(i int) error {
		_, err := s.Deploy(ctx, fmt.Sprintf("id%05d", i), store.Version{
			Owner: "alice", Name: fmt.Sprintf("fn%d", i), Digest: fmt.Sprintf("sha256:%064x", i),
			Size: 10, CreatedAt: time.Now(), CreatedBy: "alice",
		})
		return err
	}
	if err := deploy(0); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 1; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if err := deploy(i); err != nil {
				t.Error(err)
				return
			}
		}
	})
	p := filepath.Join(t.TempDir(), "snap.db")
	err := s.Snapshot(ctx, p)
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	snap := open(t, p)
	defer snap.Close()
	if _, err := snap.GetUser(ctx, "alice"); err != nil {
		t.Errorf("the snapshot lacks the user: %v", err)
	}
	fns, err := snap.ListFunctions(ctx, "", store.Page{})
	if err != nil {
		t.Fatal(err)
	}
	digests, err := snap.Digests(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(fns) == 0 || len(digests) != len(fns) || !digests[fmt.Sprintf("sha256:%064x", 0)] {
		t.Errorf("the snapshot holds %d functions and %d digests; want the same, the first's among them", len(fns), len(digests))
	}
	for _, fn := range fns {
		if _, err := snap.GetVersion(ctx, fn.Owner, fn.Name, fn.LiveVersion); err != nil {
			t.Errorf("function %s without its version: %v", fn.Name, err)
		}
	}
}
