package blob

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spry-run/spry/internal/errdefs"
)

func TestPutGetCollect(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	a, err := s.Put([]byte("export default {}"))
	if err != nil {
		t.Fatal(err)
	}
	if a2, _ := s.Put([]byte("export default {}")); a2 != a {
		t.Fatalf("same content, different digest: %s %s", a, a2)
	}
	b, _ := s.Put([]byte("other"))
	got, err := s.Get(a)
	if err != nil || !bytes.Equal(got, []byte("export default {}")) {
		t.Fatalf("Get = %q, %v", got, err)
	}
	if n, err := s.Collect(map[string]bool{a: true}, time.Time{}); err != nil || n != 1 {
		t.Fatalf("Collect = %d, %v", n, err)
	}
	if _, err := s.Get(b); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("collected blob: err = %v", err)
	}
	for _, bad := range []string{"", "sha256:xyz", "md5:" + a[7:], "sha256:../../etc/passwd", "sha256:" + a[7:39] + "/" + a[40:]} {
		if _, err := s.Path(bad); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("Path(%q) = %v, want invalid argument", bad, err)
		}
	}
}

// A blob put since the grace's start is kept though nothing names it
// yet (its deploy has not stored its version); so is one put again, and
// a write that died is swept once it is old.
func TestCollectGrace(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	old, _ := s.Put([]byte("old"))
	again, _ := s.Put([]byte("again"))
	dead := filepath.Join(dir, "sha256", ".tmp-123")
	if err := os.WriteFile(dead, []byte("half"), 0o600); err != nil {
		t.Fatal(err)
	}
	long := time.Now().Add(-2 * time.Hour)
	for _, d := range []string{old, again} {
		p, _ := s.Path(d)
		if err := os.Chtimes(p, long, long); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chtimes(dead, long, long); err != nil {
		t.Fatal(err)
	}
	s.Put([]byte("again")) // a deploy of the same code
	fresh, _ := s.Put([]byte("fresh"))
	n, err := s.Collect(map[string]bool{}, time.Now().Add(-time.Hour))
	if err != nil || n != 2 {
		t.Fatalf("Collect = %d, %v; want the old blob and the dead write", n, err)
	}
	for _, d := range []string{again, fresh} {
		if _, err := s.Get(d); err != nil {
			t.Errorf("%s was collected: %v", d, err)
		}
	}
	if _, err := s.Get(old); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("the old blob is still there: %v", err)
	}
	if _, err := os.Stat(dead); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the dead write is still there: %v", err)
	}
}

// A new blob's name is made durable too: the deploy that names it is
// committed next, and after a power cut must not find its bundle gone.
func TestPutSyncsDirectory(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	data := []byte("export default { fetch() {} }")
	final, _ := s.path(Digest(data))
	var synced []string
	orig := syncDir
	t.Cleanup(func() { syncDir = orig })
	syncDir = func(dir string) error {
		if _, err := os.Stat(final); err == nil {
			synced = append(synced, dir) // after the rename, as it must be
		}
		return orig(dir)
	}
	if _, err := s.Put(data); err != nil {
		t.Fatal(err)
	}
	if len(synced) != 1 || synced[0] != filepath.Dir(final) {
		t.Fatalf("directories synced after the blob got its name: %v, want [%s]", synced, filepath.Dir(final))
	}
}

// While a hold is kept Collect removes nothing; once every hold is
// released (twice is once), it removes what it would have.
func TestHold(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	a, _ := s.Put([]byte("a"))
	b, _ := s.Put([]byte("b"))
	r1, r2 := s.Hold(), s.Hold()
	if n, err := s.Collect(map[string]bool{}, time.Time{}); err != nil || n != 0 {
		t.Fatalf("Collect under two holds = %d, %v", n, err)
	}
	r1()
	r1()
	if n, err := s.Collect(map[string]bool{}, time.Time{}); err != nil || n != 0 {
		t.Fatalf("Collect under one hold = %d, %v", n, err)
	}
	for _, d := range []string{a, b} {
		if _, err := s.Path(d); err != nil {
			t.Fatalf("held blob %s: %v", d, err)
		}
	}
	r2()
	if n, err := s.Collect(map[string]bool{a: true}, time.Time{}); err != nil || n != 1 {
		t.Fatalf("Collect after release = %d, %v", n, err)
	}
}

// TestOpenRemovesCutOffPuts: a Put's temporary file, left by a kill,
// is gone once the store is opened again; blobs stay.
func TestOpenRemovesCutOffPuts(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	d, err := s.Put([]byte("kept"))
	if err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(dir, "sha256", ".tmp-123")
	if err := os.WriteFile(tmp, []byte("half"), 0o600); err != nil {
		t.Fatal(err)
	}
	if s, err = Open(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(tmp); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the cut-off Put's file is still there: %v", err)
	}
	if got, err := s.Get(d); err != nil || string(got) != "kept" {
		t.Errorf("Get = %q, %v", got, err)
	}
}
