// Package blob is the content-addressed store for function bundles: one
// immutable file per digest under the data directory. Writes are atomic
// (temp file, fsync, rename, fsync of the directory), so a crash never
// leaves a half-written bundle under a valid name, nor loses a bundle Put
// returned.
package blob

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/spry-run/spry/internal/errdefs"
)

// Store keeps blobs in dir/sha256/<hex>.
type Store struct {
	dir string
	// mu orders Put's touch of an existing blob and Collect's look at
	// it, so that a blob put again is never collected under it.
	mu sync.Mutex
	// holds counts Hold's callers not yet released; Collect removes
	// nothing while there are any. Under mu.
	holds int
}

// Open opens (creating if needed) the blob store in dir.
func Open(dir string) (*Store, error) {
	if err := os.MkdirAll(filepath.Join(dir, "sha256"), 0o700); err != nil {
		return nil, err
	}
	// A Put cut off by a kill left its temporary file; only one Store
	// (the server holding the data directory's lock) uses dir.
	tmps, err := filepath.Glob(filepath.Join(dir, "sha256", ".tmp-*"))
	if err != nil {
		return nil, err
	}
	for _, p := range tmps {
		if err := os.Remove(p); err != nil {
			return nil, err
		}
	}
	return &Store{dir: dir}, nil
}

// Digest returns the digest of data, "sha256:<hex>".
func Digest(data []byte) string {
	sum := sha256.Sum256(data)
	return "sha256:" + hex.EncodeToString(sum[:])
}

func (s *Store) path(digest string) (string, error) {
	hexPart, ok := strings.CutPrefix(digest, "sha256:")
	if !ok || len(hexPart) != 64 {
		return "", errdefs.Invalid("bad digest %q", digest)
	}
	if _, err := hex.DecodeString(hexPart); err != nil || strings.ToLower(hexPart) != hexPart {
		return "", errdefs.Invalid("bad digest %q", digest)
	}
	return filepath.Join(s.dir, "sha256", hexPart), nil
}

// Put stores data under its digest. Storing an existing blob only marks
// it as new, for Collect's grace.
func (s *Store) Put(data []byte) (string, error) {
	digest := Digest(data)
	p, _ := s.path(digest)
	s.mu.Lock()
	now := time.Now()
	err := os.Chtimes(p, now, now)
	s.mu.Unlock()
	if err == nil {
		return digest, nil
	}
	tmp, err := os.CreateTemp(filepath.Dir(p), ".tmp-*")
	if err != nil {
		return "", err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return "", err
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return "", err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return "", err
	}
	if err := tmp.Close(); err != nil {
		return "", err
	}
	if err := os.Rename(tmp.Name(), p); err != nil {
		return "", err
	}
	// The rename is durable only once the directory is: the version that
	// names the blob is committed next, and must not outlive it.
	if err := syncDir(filepath.Dir(p)); err != nil {
		return "", err
	}
	return digest, nil
}

// syncDir fsyncs a directory, making the names in it durable. A variable,
// so a test can see it called.
var syncDir = func(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// Path returns the file holding digest, checking it exists.
func (s *Store) Path(digest string) (string, error) {
	p, err := s.path(digest)
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(p); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("blob %s: %w", digest, errdefs.ErrNotFound)
		}
		return "", err
	}
	return p, nil
}

// Get returns the blob's bytes.
func (s *Store) Get(digest string) ([]byte, error) {
	p, err := s.Path(digest)
	if err != nil {
		return nil, err
	}
	return os.ReadFile(p)
}

// Collect removes every blob not in keep, and what writes that died
// left, unless put since before (zero: no grace, for a caller that puts
// nothing meanwhile): a deploy stores its blob before the version that
// names it, and keep, read before, cannot name it. It returns how many
// files it removed.
func (s *Store) Collect(keep map[string]bool, before time.Time) (int, error) {
	entries, err := os.ReadDir(filepath.Join(s.dir, "sha256"))
	if err != nil {
		return 0, err
	}
	n := 0
	for _, e := range entries {
		if keep["sha256:"+e.Name()] {
			continue
		}
		p := filepath.Join(s.dir, "sha256", e.Name())
		s.mu.Lock()
		if s.holds > 0 {
			s.mu.Unlock()
			return n, nil
		}
		fi, err := os.Lstat(p)
		if err == nil && (before.IsZero() || fi.ModTime().Before(before)) && os.Remove(p) == nil {
			n++
		}
		s.mu.Unlock()
	}
	return n, nil
}

// Holds counts the holds not released: while there is one, Collect
// removes nothing.
func (s *Store) Holds() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.holds
}

// Hold keeps Collect from removing anything until release is called: a
// backup copies the blobs its snapshot of the versions names, and a
// function deleted since would leave them to be collected under it.
// Collect passes that meet a hold end early; the next pass does their
// work.
func (s *Store) Hold() (release func()) {
	s.mu.Lock()
	s.holds++
	s.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			s.holds--
			s.mu.Unlock()
		})
	}
}
