package e2e

import (
	"bufio"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
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
	late := s.do("GET", "/api/v1/functions/keeper/kv/k", s.token, nil, nil).header.Get("ETag")
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
	// A write on the restored server has a version none had, not the
	// one a write after the backup had: a write made for that version
	// would go through against another value.
	if r := s2.do("PUT", "/api/v1/functions/keeper/kv/k", s2.token, strings.NewReader(`{"n":3}`), nil); r.status != 204 || r.header.Get("ETag") <= late {
		t.Errorf("a write on the restored server: %d %s, version %s; the version given after the backup: %s", r.status, r.body, r.header.Get("ETag"), late)
	}
	// Restoring again into the same directory is refused.
	if _, errOut, code := s2.spry("", "restore", file, "--data", data); code == 0 || !strings.Contains(errOut, "already") && !strings.Contains(errOut, "using") {
		t.Errorf("a second restore: %d %q", code, errOut)
	}
}

// TestBackupClientHangsUp: a client that reads the start of a backup of
// a server with much to send (bundles of incompressible code) and hangs
// up ends it: the hold on bundle collection is released
// (spry_bundle_collection_holds back to 0), its snapshots are removed
// from the data directory and nothing is left in the temporary
// directory, the server goes on serving, and the next backup is made
// (not refused as one under way) and restores.
func TestBackupClientHangsUp(t *testing.T) {
	s := startServer(t)
	tmp := t.TempDir()
	s.env = []string{"TMPDIR=" + tmp}
	s.restart()

	// 8 bundles of 3 MiB each that gzip cannot shrink much: far more
	// than the sockets' buffers hold, so the backup is still being
	// sent when the client goes.
	const n = 8
	for i := range n {
		data := make([]byte, 3<<20*3/4)
		if _, err := rand.Read(data); err != nil {
			t.Fatal(err)
		}
		code := fmt.Sprintf("const data = %q;\nexport default { fetch() { return new Response(\"f%d \" + data.length) } };\n",
			base64.StdEncoding.EncodeToString(data), i)
		s.deployCode(t, fmt.Sprintf("f%d", i), []byte(code), "")
	}
	want := fmt.Sprintf("f3 %d", 4*(3<<20*3/4)/3)
	if r := s.get("/fn/admin/f3"); r.status != 200 || string(r.body) != want {
		t.Fatalf("f3: %d %q, want %q", r.status, r.body, want)
	}
	holds := func() string {
		t.Helper()
		r := s.do("GET", "/metrics", s.token, nil, nil)
		for _, line := range strings.Split(string(r.body), "\n") {
			if v, ok := strings.CutPrefix(line, "spry_bundle_collection_holds "); ok {
				return v
			}
		}
		t.Fatalf("/metrics: %d, no spry_bundle_collection_holds", r.status)
		return ""
	}
	if h := holds(); h != "0" {
		t.Fatalf("holds before the backup: %s", h)
	}
	leftovers := func() []string {
		var out []string
		for _, dir := range []string{s.data, tmp} {
			entries, err := os.ReadDir(dir)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range entries {
				p := filepath.Join(dir, e.Name())
				if dir == tmp && e.IsDir() && strings.HasPrefix(e.Name(), "spry-") {
					// The server's own scratch directory: what is in it
					// counts.
					inside, err := os.ReadDir(p)
					if err != nil {
						t.Fatal(err)
					}
					for _, e := range inside {
						out = append(out, filepath.Join(p, e.Name()))
					}
					continue
				}
				if dir == tmp || strings.HasPrefix(e.Name(), ".backup-") {
					out = append(out, p)
				}
			}
		}
		return out
	}

	// The client hangs up once it has read the backup's first MiB, or
	// at once, while the server is still taking the snapshots.
	for i, read := range []bool{true, false} {
		conn, err := net.Dial("tcp", s.addr)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := fmt.Fprintf(conn, "GET /api/v1/backup HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n\r\n", s.addr, s.token); err != nil {
			t.Fatal(err)
		}
		if read {
			res, err := http.ReadResponse(bufio.NewReader(conn), nil)
			if err != nil || res.StatusCode != 200 {
				t.Fatalf("backup: %v %v", res, err)
			}
			if _, err := io.CopyN(io.Discard, res.Body, 1<<20); err != nil {
				t.Fatalf("the backup's first MiB: %v", err)
			}
			// Under way: the hold is on, and its snapshots are on disk.
			if h := holds(); h != "1" {
				t.Errorf("holds during the backup: %s", h)
			}
			if left := leftovers(); len(left) != 1 || !strings.HasPrefix(filepath.Base(left[0]), ".backup-") {
				t.Errorf("during the backup, in the data and temporary directories: %q", left)
			}
		}
		conn.Close()

		eventually(t, 30*time.Second, "the hold to be released", func() bool { return holds() == "0" })
		eventually(t, 10*time.Second, "the backup's files to be removed", func() bool { return len(leftovers()) == 0 })
		eventually(t, 10*time.Second, "the log line", func() bool {
			return strings.Count(s.logs.String(), "backup ended: the client went away") == i+1
		})
		if r := s.get("/fn/admin/f3"); r.status != 200 || string(r.body) != want {
			t.Errorf("f3 after the hang-up: %d %q", r.status, r.body)
		}
	}
	s.deployCode(t, "late", []byte(`export default { fetch() { return new Response("late") } }`), "")

	file := filepath.Join(t.TempDir(), "backup.tar.gz")
	if out := s.mustSpry("backup", file); !strings.Contains(out, fmt.Sprintf("%d bundles", n+1)) {
		t.Errorf("the next backup: %q", out)
	}
	if h := holds(); h != "0" {
		t.Errorf("holds after the next backup: %s", h)
	}
	if left := leftovers(); len(left) != 0 {
		t.Errorf("left after the next backup: %q", left)
	}
	s.stop()
	data := filepath.Join(t.TempDir(), "restored")
	s.mustSpry("restore", file, "--data", data)
	s2 := startServerOn(t, data, "")
	if r := s2.get("/fn/admin/f3"); r.status != 200 || string(r.body) != want {
		t.Errorf("f3 restored: %d %q", r.status, r.body)
	}
	if r := s2.get("/fn/admin/late"); r.status != 200 || string(r.body) != "late" {
		t.Errorf("late restored: %d %q", r.status, r.body)
	}
}
