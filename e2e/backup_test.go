package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// TestBackupRestore: a backup made while the server serves, restored
// into a new data directory, serves the same function with the same
// secret and kv value on a second server; what changed after the backup
// (a deploy, a kv write) is not there.
func TestBackupRestore(t *testing.T) {
	s := startServer(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "keeper.ts")
	code := `export default {
  async fetch(req, ctx) {
    return Response.json({ secret: ctx.env.SECRET ?? null, kv: await ctx.kv.get("k") });
  },
};
`
	if err := os.WriteFile(src, []byte(code), 0o644); err != nil {
		t.Fatal(err)
	}
	s.mustSpry("deploy", src)
	const secret = "backed-up-secret-41"
	if out, errOut, code := s.spryIn("", strings.NewReader(secret+"\n"), "secret", "set", "keeper", "SECRET"); code != 0 {
		t.Fatalf("secret set: %d %s %s", code, out, errOut)
	}
	s.mustSpry("kv", "set", "keeper", "k", `{"n":1}`)
	type answer struct {
		Secret *string         `json:"secret"`
		KV     json.RawMessage `json:"kv"`
	}
	call := func(s *server, path string) (int, answer) {
		r := s.get(path)
		var a answer
		if r.status == 200 {
			if err := json.Unmarshal(r.body, &a); err != nil {
				t.Fatalf("%s: %s", path, r.body)
			}
		}
		return r.status, a
	}
	if st, a := call(s, "/fn/admin/keeper"); st != 200 || a.Secret == nil || *a.Secret != secret || string(a.KV) != `{"n":1}` {
		t.Fatalf("before the backup: %d %+v", st, a)
	}

	// The backup is made while requests go on.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var served, failed atomic.Int64
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				if r := s.get("/fn/admin/keeper"); r.status == 200 {
					served.Add(1)
				} else {
					failed.Add(1)
				}
			}
		})
	}
	file := filepath.Join(dir, "backup.tar.gz")
	out := s.mustSpry("backup", file)
	close(stop)
	wg.Wait()
	if !strings.Contains(out, "1 bundles, secret.key") || failed.Load() != 0 || served.Load() == 0 {
		t.Fatalf("backup: %q; requests during it: %d served, %d failed", out, served.Load(), failed.Load())
	}

	// After the backup: another function, another value.
	s.deployCode(t, "late", []byte(`export default { fetch() { return new Response("late") } }`), "")
	s.mustSpry("kv", "set", "keeper", "k", `{"n":2}`)
	oldToken := s.token
	s.stop()

	data := filepath.Join(dir, "restored")
	if out := s.mustSpry("restore", file, "--data", data); !strings.Contains(out, "spry serve --data "+data) {
		t.Errorf("restore: %q", out)
	}
	s2 := startServerOn(t, data, "")
	if st, a := call(s2, "/fn/admin/keeper"); st != 200 || a.Secret == nil || *a.Secret != secret || string(a.KV) != `{"n":1}` {
		t.Fatalf("restored: %d %+v", st, a)
	}
	if r := s2.get("/fn/admin/late"); r.status != 404 {
		t.Errorf("a function deployed after the backup: %d %s", r.status, r.body)
	}
	// The restored server made its own admin token; the old one, made
	// at the first server's start, was revoked for it.
	if s2.token == oldToken {
		t.Error("the restored server kept the old admin.token")
	}
	if r := s2.do("GET", "/api/v1/whoami", oldToken, nil, nil); r.status != 401 {
		t.Errorf("the old start's token on the restored server: %d", r.status)
	}
	if out := s2.mustSpry("kv", "get", "keeper", "k"); strings.TrimSpace(out) != `{"n":1}` {
		t.Errorf("kv get on the restored server: %q", out)
	}
	// Restoring again into the same directory is refused.
	if _, errOut, code := s2.spry("", "restore", file, "--data", data); code == 0 || !strings.Contains(errOut, "already") && !strings.Contains(errOut, "using") {
		t.Errorf("a second restore: %d %q", code, errOut)
	}
}
