package secrets

import (
	"os"
	"path/filepath"
	"strings"
	"sync"
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

// Starts that find no key at once all end up with the same key: none
// fails on the file another is making, nor reads it half written.
func TestOpenKeyFileConcurrent(t *testing.T) {
	for round := range 50 {
		path := filepath.Join(t.TempDir(), "secret.key")
		const n = 8
		boxes := make([]*Box, n)
		errs := make([]error, n)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range n {
			wg.Go(func() {
				<-start
				boxes[i], errs[i] = OpenKeyFile(path)
			})
		}
		close(start)
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("round %d: OpenKeyFile %d: %v", round, i, err)
			}
		}
		sealed, err := boxes[0].Seal("v", "c")
		if err != nil {
			t.Fatal(err)
		}
		for i, b := range boxes {
			if _, err := b.Open(sealed, "c"); err != nil {
				t.Fatalf("round %d: OpenKeyFile %d got another key: %v", round, i, err)
			}
		}
		if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 || fi.Size() != 32 {
			t.Fatalf("round %d: key file %v, %v", round, fi, err)
		}
		if entries, _ := os.ReadDir(filepath.Dir(path)); len(entries) != 1 {
			t.Fatalf("round %d: the key's directory holds %d files, want only the key", round, len(entries))
		}
	}
}

// A key file of the wrong size is refused, by its name.
func TestOpenKeyFileBroken(t *testing.T) {
	path := filepath.Join(t.TempDir(), "secret.key")
	if err := os.WriteFile(path, []byte("short"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := OpenKeyFile(path)
	if err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("err = %v, want one naming %s", err, path)
	}
}

// A key's check opens with that key only, and no sealed secret passes
// for a check.
func TestKeyCheck(t *testing.T) {
	a, _ := New(make([]byte, 32))
	b, _ := New([]byte(strings.Repeat("b", 32)))
	check, err := a.KeyCheck()
	if err != nil {
		t.Fatal(err)
	}
	if !a.CheckKey(check) {
		t.Error("a key does not pass its own check")
	}
	if b.CheckKey(check) {
		t.Error("another key passes the check")
	}
	secret, _ := a.Seal("spry", "alice/f/KEY")
	for _, bad := range []string{"", "enc:v1:", secret} {
		if a.CheckKey(bad) {
			t.Errorf("CheckKey(%q) passes", bad)
		}
	}
}
