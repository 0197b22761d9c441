package server

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spry-run/spry/internal/store"
	"github.com/spry-run/spry/internal/store/sqlite"
)

// openSecretKey at each start: a key that is there but not the one the
// stored secrets were sealed with (another server's, a damaged file of
// the right size) is refused, as a missing one is, rather than taken to
// seal new secrets beside old ones that never open; a key loosely
// readable is made 0600; after --new-secret-key, the next start takes the
// new key without the flag.
func TestOpenSecretKey(t *testing.T) {
	other := bytes.Repeat([]byte{9}, 32)
	tests := []struct {
		name    string
		secrets bool   // a stored version holds secrets
		setup   string // "wrong" (another key in the file), "missing", "loose" (mode 0644)
		newKey  bool   // --new-secret-key
		refused string // the error's words, if the start is refused
	}{
		{"same key", true, "", false, ""},
		{"wrong key", true, "wrong", false, "not the key"},
		{"wrong key, --new-secret-key", true, "wrong", true, "move it aside"},
		{"wrong key, no secrets", false, "wrong", false, ""},
		{"missing", true, "missing", false, "--new-secret-key"},
		{"missing, --new-secret-key", true, "missing", true, ""},
		{"missing, no secrets", false, "missing", false, ""},
		{"loose", true, "loose", false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "secret.key")
			st, err := sqlite.Open(t.Context(), filepath.Join(dir, "spry.db"))
			must(t, err)
			t.Cleanup(func() { st.Close() })
			var logs bytes.Buffer
			s := &Server{store: st, log: slog.New(slog.NewTextHandler(&logs, nil))}
			// The first start makes the key.
			box, err := s.openSecretKey(t.Context(), path)
			must(t, err)
			if tt.secrets {
				sealed, err := box.Seal("v", "alice/f/KEY")
				must(t, err)
				_, err = st.Deploy(t.Context(), "id-f", store.Version{Owner: "alice", Name: "f", Digest: "sha256:x",
					Config: store.Config{Secrets: map[string]string{"KEY": sealed}}, CreatedAt: time.Now(), CreatedBy: "alice"})
				must(t, err)
			}
			before, _ := os.ReadFile(path)
			switch tt.setup {
			case "wrong":
				must(t, os.WriteFile(path, other, 0o600))
			case "missing":
				must(t, os.Remove(path))
			case "loose":
				must(t, os.Chmod(path, 0o644))
			}
			s.cfg.NewSecretKey = tt.newKey
			_, err = s.openSecretKey(t.Context(), path)
			if tt.refused != "" {
				if err == nil || !strings.Contains(err.Error(), tt.refused) || !strings.Contains(err.Error(), path) {
					t.Fatalf("start: %v; want it refused, naming %s and saying %q", err, path, tt.refused)
				}
				if after, _ := os.ReadFile(path); tt.setup == "wrong" && !bytes.Equal(after, other) {
					t.Fatal("a refused start changed the key file")
				}
				return
			}
			if err != nil {
				t.Fatalf("start: %v", err)
			}
			fi, err := os.Stat(path)
			must(t, err)
			if fi.Mode().Perm() != 0o600 {
				t.Errorf("key file mode %v, want 0600", fi.Mode().Perm())
			}
			if tt.setup == "loose" && !strings.Contains(logs.String(), "0600") {
				t.Errorf("a loose key made 0600 in silence: %s", logs.String())
			}
			if tt.setup == "" || tt.setup == "loose" {
				if after, _ := os.ReadFile(path); !bytes.Equal(after, before) {
					t.Error("the key changed")
				}
			}
			// The key that serves now is the one the next start, without
			// --new-secret-key, takes.
			s.cfg.NewSecretKey = false
			if _, err := s.openSecretKey(t.Context(), path); err != nil {
				t.Fatalf("the next start: %v", err)
			}
		})
	}
}
