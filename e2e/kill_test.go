package e2e

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spry-run/spry/internal/sqlitedb"
)

// cgroupTree lists the server's cgroup subtrees (cgroupDirs) and every
// group under them.
func (s *server) cgroupTree(t *testing.T) []string {
	t.Helper()
	var dirs []string
	for _, r := range s.cgroupDirs(t) {
		_ = filepath.WalkDir(r, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() && !slices.Contains(dirs, p) {
				dirs = append(dirs, p)
			}
			return nil
		})
	}
	return dirs
}

// hostState is what a server leaves on the host: its run directory's
// entries and its cgroups.
func (s *server) hostState(t *testing.T) []string {
	t.Helper()
	var out []string
	// Instances' directories are in i/.
	for _, dir := range []string{s.runDir(), filepath.Join(s.runDir(), "i")} {
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			out = append(out, filepath.Join(dir, e.Name()))
		}
	}
	return append(out, s.cgroupTree(t)...)
}

// killAndRestart kills the server with SIGKILL, checks that its databases
// are whole as the kill left them, starts it again on its data directory,
// and checks that nothing the killed server had on the host is left but
// what the new one made again (its pool's instances have new names).
func (s *server) killAndRestart(t *testing.T) {
	t.Helper()
	s.kill9()
	s.restartKilled(t)
}

// restartKilled is killAndRestart once the server is killed.
func (s *server) restartKilled(t *testing.T) {
	t.Helper()
	before := s.hostState(t)
	for _, db := range []string{"spry.db", "kv.db", "invocations.db", "logs.db"} {
		if err := sqlitedb.Check(context.Background(), filepath.Join(s.data, db)); err != nil {
			t.Errorf("after kill -9: %v", err)
		}
	}
	s.start()
	now := s.hostState(t)
	for _, p := range before {
		// The run dir's shared parts and the subtree's roots are made
		// again by the new server; instances' are not.
		if slices.Contains(now, p) && strings.Contains(filepath.Base(p), "i-") {
			t.Errorf("left by the killed server: %s", p)
		}
	}
	if left := s.sandboxProcsOlderThan(); len(left) > 0 {
		t.Errorf("sandbox processes of the killed server: %v", left)
	}
	noTempFiles(t, s.data)
	s.noBuildLeftovers(t)
}

// sandboxProcsOlderThan lists sandbox processes whose parent is not the
// running server (those the killed one started).
func (s *server) sandboxProcsOlderThan() []string {
	me := s.cmd.Process.Pid
	var out []string
	for _, p := range s.sandboxProcs() {
		var pid int
		fmt.Sscanf(p, "pid %d", &pid)
		if !descends(pid, me) {
			out = append(out, p)
		}
	}
	return out
}

// descends reports whether pid is a descendant of ancestor.
func descends(pid, ancestor int) bool {
	for range 64 {
		if pid == ancestor {
			return true
		}
		if pid <= 1 {
			return false
		}
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return false
		}
		s := string(stat)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
		if len(f) < 2 {
			return false
		}
		fmt.Sscanf(f[1], "%d", &pid)
	}
	return false
}

// noBuildLeftovers fails t if the server's temporary directory holds a
// deploy's scratch files: only the server's own directory may be there,
// and empty (no build runs).
func (s *server) noBuildLeftovers(t *testing.T) {
	t.Helper()
	sum := sha256.Sum256([]byte(s.data))
	own := "spry-" + hex.EncodeToString(sum[:6])
	for _, e := range s.env {
		dir, ok := strings.CutPrefix(e, "TMPDIR=")
		if !ok {
			continue
		}
		_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
			if err == nil && p != dir && p != filepath.Join(dir, own) {
				t.Errorf("left in the server's TMPDIR: %s", p)
			}
			return nil
		})
	}
}

// bigProject is a project archive (tar) whose bundle is about size bytes.
func bigProject(t *testing.T, size int, tag string) []byte {
	t.Helper()
	letters := make([]byte, size)
	for i := range letters {
		letters[i] = byte('a' + rand.IntN(26))
	}
	files := map[string]string{
		"index.ts": `import { big } from "./big.ts";
export default { fetch() { return new Response("` + tag + ` " + big.length); } };`,
		"big.ts": `export const big = "` + string(letters) + `";`,
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, name := range []string{"index.ts", "big.ts"} {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(files[name])), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(files[name])); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestKill9 kills the server at bad moments (a multi-MiB project deploy
// being uploaded or built, a burst of kv writes, a backup being sent)
// and starts it again on its data directory each time: the databases are
// whole, nothing acknowledged is lost, a version exists whole (it serves)
// or not at all, and nothing of the killed server is left on the host.
func TestKill9(t *testing.T) {
	tmp := t.TempDir()
	s := &server{t: t, bin: binary(t), data: filepath.Join(t.TempDir(), "data"),
		uidBase: 3000000 + int(uidBases.Add(1))*20000, httpc: http.DefaultClient,
		args: []string{"--pool-size", "1", "--node-pool-size", "0"}, env: []string{"TMPDIR=" + tmp}}
	s.launch()
	s.deployCode(t, "hello", []byte(`export default { fetch() { return new Response("hello\n"); } }`), "")
	if r := s.get("/fn/admin/hello/"); r.status != 200 {
		t.Fatalf("hello: %d %s", r.status, r.body)
	}
	tarType := map[string]string{"Content-Type": "application/x-tar"}

	t.Run("deploy", func(t *testing.T) {
		// Killed mid-upload, then at moments after the upload's end (the
		// build, the bundle's write, the version's).
		versions := 0
		for i, delay := range []time.Duration{-1, 0, 30 * time.Millisecond, 80 * time.Millisecond, 150 * time.Millisecond, 300 * time.Millisecond} {
			body := bigProject(t, 3<<20, fmt.Sprint("v", i))
			pr, pw := io.Pipe()
			req, _ := http.NewRequest("PUT", s.url+"/api/v1/functions/big", pr)
			req.Header.Set("Authorization", "Bearer "+s.token)
			req.Header.Set("Content-Type", "application/x-tar")
			req.ContentLength = int64(len(body))
			done := make(chan struct{})
			go func() {
				defer close(done)
				if res, err := http.DefaultClient.Do(req); err == nil {
					io.Copy(io.Discard, res.Body)
					res.Body.Close()
				}
			}()
			if delay < 0 {
				pw.Write(body[:len(body)/2])
			} else {
				pw.Write(body)
				time.Sleep(delay)
			}
			s.killAndRestart(t)
			pw.Close()
			<-done
			r := s.get("/fn/admin/big/")
			switch r.status {
			case 404:
			case 200:
				// A version made before the kill serves whole.
				if !strings.HasSuffix(string(r.body), fmt.Sprint(3<<20)) {
					t.Errorf("kill %d: the live version answers %q", i, r.body)
				}
				versions++
			default:
				t.Errorf("kill %d: %d %s", i, r.status, r.body)
			}
		}
		t.Logf("%d of the killed deploys had made their version", versions)
		// And a deploy goes through after it all.
		if r := s.do("PUT", "/api/v1/functions/big", s.token, bytes.NewReader(bigProject(t, 3<<20, "last")), tarType); r.status >= 300 {
			t.Fatalf("deploy after the kills: %d %s", r.status, r.body)
		}
		if r := s.get("/fn/admin/big/"); string(r.body) != fmt.Sprint("last ", 3<<20) {
			t.Fatalf("after the kills: %d %q", r.status, r.body)
		}
	})

	t.Run("kv", func(t *testing.T) {
		var mu sync.Mutex
		acked := map[string]string{}
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for g := range 8 {
			wg.Go(func() {
				c := &http.Client{Timeout: 10 * time.Second}
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					key, val := fmt.Sprintf("b%d-%d", g, i), fmt.Sprintf(`"%d-%d-%s"`, g, i, strings.Repeat("v", i%2000))
					req, _ := http.NewRequest("PUT", s.url+"/api/v1/functions/hello/kv/"+key, strings.NewReader(val))
					req.Header.Set("Authorization", "Bearer "+s.token)
					res, err := c.Do(req)
					if err != nil {
						return
					}
					res.Body.Close()
					if res.StatusCode == 204 {
						mu.Lock()
						acked[key] = val
						mu.Unlock()
					}
				}
			})
		}
		time.Sleep(500 * time.Millisecond)
		s.kill9()
		close(stop)
		wg.Wait()
		s.restartKilled(t)
		if len(acked) == 0 {
			t.Fatal("no kv write was acknowledged before the kill")
		}
		for key, val := range acked {
			r := s.do("GET", "/api/v1/functions/hello/kv/"+key, s.token, nil, nil)
			if r.status != 200 || fmt.Sprintf("%q", r.json(t)["value"]) != val {
				t.Errorf("acknowledged kv %s lost: %d %.100s", key, r.status, r.body)
			}
		}
		t.Logf("%d acknowledged kv writes, all kept", len(acked))
	})

	t.Run("backup", func(t *testing.T) {
		req, _ := http.NewRequest("GET", s.url+"/api/v1/backup", nil)
		req.Header.Set("Authorization", "Bearer "+s.token)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		// The answer has begun: the snapshots are on disk, being sent.
		if _, err := io.ReadFull(res.Body, make([]byte, 1024)); err != nil {
			t.Fatal(err)
		}
		s.killAndRestart(t)
		res.Body.Close()
		s.mustSpry("backup", filepath.Join(t.TempDir(), "backup.tar.gz"))
	})

	// Everything from before the kills is there.
	if r := s.get("/fn/admin/hello/"); r.status != 200 || string(r.body) != "hello\n" {
		t.Fatalf("hello after the kills: %d %q", r.status, r.body)
	}
}
