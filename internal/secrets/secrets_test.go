package secrets

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSealOpen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "secret.key")
	b, err := OpenKeyFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v", fi.Mode())
	}
	s, err := b.Seal("hunter2", "alice/db/PASSWORD")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(s, "hunter2") {
		t.Fatal("sealed value holds the plaintext")
	}
	// The same key file reopens to the same key.
	b2, err := OpenKeyFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := b2.Open(s, "alice/db/PASSWORD"); err != nil || got != "hunter2" {
		t.Fatalf("Open = %q, %v", got, err)
	}
	if _, err := b2.Open(s, "bob/db/PASSWORD"); err == nil {
		t.Fatal("a secret opened in another function's context")
	}
	other, _ := New(make([]byte, 32))
	if _, err := other.Open(s, "alice/db/PASSWORD"); err == nil {
		t.Fatal("a secret opened with another key")
	}
	for _, bad := range []string{"", "enc:v1:", "enc:v1:!!!", "plain"} {
		if _, err := b.Open(bad, "x"); err == nil {
			t.Errorf("Open(%q) succeeded", bad)
		}
	}
}
