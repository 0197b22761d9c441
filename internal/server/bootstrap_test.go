package server

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spry-run/spry/internal/auth"
	"github.com/spry-run/spry/internal/blob"
	"github.com/spry-run/spry/internal/store"
	"github.com/spry-run/spry/internal/store/sqlite"
)

// There is always a way in: the admin token file is written at first
// start, and again whenever it is missing and no admin holds a token of
// their own (a first start that died half way, admins all gone).
func TestBootstrapAdmin(t *testing.T) {
	tests := []struct {
		name  string
		setup func(t *testing.T, st *sqlite.Store, authn *auth.Service)
		admin string // who gets the new token; "" if none is made
	}{
		{"first start", func(*testing.T, *sqlite.Store, *auth.Service) {}, "admin"},
		{"died before the token", func(t *testing.T, st *sqlite.Store, _ *auth.Service) {
			must(t, st.CreateUser(t.Context(), store.User{Name: "admin", Admin: true, CreatedAt: time.Now()}))
		}, "admin"},
		{"died before the file", func(t *testing.T, st *sqlite.Store, authn *auth.Service) {
			must(t, st.CreateUser(t.Context(), store.User{Name: "admin", Admin: true, CreatedAt: time.Now()}))
			_, _, err := authn.IssueToken(t.Context(), "admin", bootstrapToken, auth.TokenOptions{})
			must(t, err)
		}, "admin"},
		{"no admin left", func(t *testing.T, st *sqlite.Store, _ *auth.Service) {
			must(t, st.CreateUser(t.Context(), store.User{Name: "admin", CreatedAt: time.Now()}))
		}, "admin2"},
		{"an admin has a token of their own", func(t *testing.T, st *sqlite.Store, authn *auth.Service) {
			must(t, st.CreateUser(t.Context(), store.User{Name: "root", Admin: true, CreatedAt: time.Now()}))
			_, _, err := authn.IssueToken(t.Context(), "root", "laptop", auth.TokenOptions{})
			must(t, err)
		}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			st, err := sqlite.Open(t.Context(), filepath.Join(dir, "spry.db"))
			must(t, err)
			defer st.Close()
			authn := auth.New(st, nil)
			tt.setup(t, st, authn)
			s := &Server{store: st, log: slog.New(slog.DiscardHandler)}
			must(t, s.bootstrapAdmin(t.Context(), authn, dir))
			b, err := os.ReadFile(filepath.Join(dir, AdminTokenFile))
			if tt.admin == "" {
				if err == nil {
					t.Fatal("a token was made though an admin has one")
				}
				return
			}
			must(t, err)
			p, err := authn.Authenticate(t.Context(), strings.TrimSpace(string(b)))
			if err != nil || p.User != tt.admin || !p.Admin {
				t.Fatalf("the token file's token is %+v, %v; want admin %s", p, err, tt.admin)
			}
			toks, err := st.ListTokens(t.Context(), tt.admin)
			must(t, err)
			live := 0
			for _, tok := range toks {
				if tok.RevokedAt.IsZero() {
					live++
				}
			}
			if live != 1 {
				t.Errorf("%d live tokens, want only the new one", live)
			}
			// With the file there, a restart changes nothing.
			must(t, s.bootstrapAdmin(t.Context(), authn, dir))
			if again, _ := os.ReadFile(filepath.Join(dir, AdminTokenFile)); string(again) != string(b) {
				t.Error("a restart replaced the token file")
			}
		})
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// Bundles no version names are removed once they are old; those a
// version names stay.
func TestCollectBlobs(t *testing.T) {
	dir := t.TempDir()
	st, err := sqlite.Open(t.Context(), filepath.Join(dir, "spry.db"))
	must(t, err)
	defer st.Close()
	blobs, err := blob.Open(filepath.Join(dir, "blobs"))
	must(t, err)
	named, err := blobs.Put([]byte("named"))
	must(t, err)
	orphan, err := blobs.Put([]byte("orphan"))
	must(t, err)
	_, err = st.Deploy(t.Context(), "id-1", store.Version{Owner: "alice", Name: "f", Digest: named, CreatedAt: time.Now()})
	must(t, err)
	long := time.Now().Add(-2 * time.Hour)
	for _, d := range []string{named, orphan} {
		p, err := blobs.Path(d)
		must(t, err)
		must(t, os.Chtimes(p, long, long))
	}
	s := &Server{store: st, blobs: blobs, log: slog.New(slog.DiscardHandler)}
	must(t, s.collectBlobsOnce(t.Context(), time.Now().Add(-time.Hour)))
	if _, err := blobs.Path(named); err != nil {
		t.Errorf("a named bundle was removed: %v", err)
	}
	if _, err := blobs.Path(orphan); err == nil {
		t.Error("an old bundle no version names is still there")
	}
}
