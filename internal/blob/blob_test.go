package blob

import (
	"bytes"
	"errors"
	"testing"

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
	if n, err := s.Collect(map[string]bool{a: true}); err != nil || n != 1 {
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
