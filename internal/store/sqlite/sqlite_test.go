package sqlite_test

import (
	"context"
	"database/sql"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spry-run/spry/internal/errdefs"
	"github.com/spry-run/spry/internal/store"
	"github.com/spry-run/spry/internal/store/sqlite"
	"github.com/spry-run/spry/internal/store/storetest"
)

func open(t *testing.T, path string) *sqlite.Store {
	t.Helper()
	s, err := sqlite.Open(t.Context(), path)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return s
}

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		return open(t, filepath.Join(t.TempDir(), "spry.db"))
	})
}

func TestFileMode(t *testing.T) {
	path := filepath.Join(t.TempDir(), "spry.db")
	s := open(t, path)
	defer s.Close()
	// Write something so that the WAL file exists too.
	if err := s.CreateUser(t.Context(), store.User{Name: "alice"}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{path, path + "-wal"} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if mode := fi.Mode().Perm(); mode != 0o600 {
			t.Errorf("%s has mode %v, want 0600", filepath.Base(p), mode)
		}
	}
}

func TestReopen(t *testing.T) {
	// Odd characters check that the path survives the trip through the DSN.
	path := filepath.Join(t.TempDir(), "a dir?#%", "spry.db")
	if err := os.Mkdir(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	s := open(t, path)
	created := time.UnixMilli(1700000000123)
	if err := s.CreateUser(t.Context(), store.User{Name: "alice", CreatedAt: created}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("database is not at the given path: %v", err)
	}

	s = open(t, path)
	defer s.Close()
	u, err := s.GetUser(t.Context(), "alice")
	if err != nil {
		t.Fatalf("GetUser after reopen: %v", err)
	}
	if !u.CreatedAt.Equal(created) {
		t.Errorf("CreatedAt = %v, want %v", u.CreatedAt, created)
	}
}

func TestNewerSchema(t *testing.T) {
	path := filepath.Join(t.TempDir(), "spry.db")
	s := open(t, path)
	s.Close()

	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec("PRAGMA user_version = 1000"); err != nil {
		t.Fatal(err)
	}
	db.Close()

	s, err = sqlite.Open(t.Context(), path)
	if err == nil {
		s.Close()
		t.Fatal("Open of a database with a newer schema succeeded")
	}
	if !strings.Contains(err.Error(), "newer") {
		t.Errorf("Open: got %v, want an error about a newer schema", err)
	}
}

func TestErrorsAreWrapped(t *testing.T) {
	s := open(t, filepath.Join(t.TempDir(), "spry.db"))
	defer s.Close()
	ctx := t.Context()

	err := s.CreateUser(ctx, store.User{Name: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	err = s.CreateUser(ctx, store.User{Name: "alice"})
	if got, want := err.Error(), `user "alice": already exists`; got != want {
		t.Errorf("duplicate user: got %q, want %q", got, want)
	}
	_, err = s.GetFunction(ctx, "alice", "hello")
	if got, want := err.Error(), `function "alice/hello": not found`; got != want {
		t.Errorf("missing function: got %q, want %q", got, want)
	}

	canceled, cancel := context.WithCancel(ctx)
	cancel()
	_, err = s.ListUsers(canceled)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("ListUsers with a canceled context: got %v, want context.Canceled", err)
	}
	if errdefs.Public(err) {
		t.Errorf("ListUsers with a canceled context: error %v is public", err)
	}
}
