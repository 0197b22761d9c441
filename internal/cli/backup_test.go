package cli

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spry-run/spry/internal/api"
	"github.com/spry-run/spry/internal/api/apitest"
	"github.com/spry-run/spry/internal/backup"
	"github.com/spry-run/spry/internal/store/sqlite"
)

// backupServer serves the real API with backups of its real stores.
func backupServer(t *testing.T) (url, token string) {
	t.Helper()
	d := apitest.New(t)
	kvs, src := apitest.Backups(t, d)
	srv := httptest.NewServer(api.New(d.Functions, d.Auth, d.Store, d.Store, nil, d.Logs, api.Config{MaxCodeBytes: 1 << 20, KV: kvs, Backups: src}).Handler())
	t.Cleanup(srv.Close)
	return srv.URL, d.Admin
}

// spry backup saves a whole backup (0600, no FILE.tmp left), or to
// stdout with -; spry restore puts it into a new directory, and refuses
// one that holds data.
func TestBackupAndRestore(t *testing.T) {
	url, token := backupServer(t)
	env := []string{"SPRY_URL=" + url, "SPRY_TOKEN=" + token}
	dir := t.TempDir()
	src := helloFile(t, "hello.ts")
	if code, _, errOut := spry(t, env, "", "deploy", src); code != 0 {
		t.Fatalf("deploy: %d %s", code, errOut)
	}
	if code, _, errOut := spry(t, env, "", "kv", "set", "hello", "k", "42"); code != 0 {
		t.Fatalf("kv set: %d %s", code, errOut)
	}
	file := filepath.Join(dir, "b.tar.gz")
	// One there before, looser, is replaced and made private.
	if err := os.WriteFile(file+".tmp", []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	exit, out, errOut := spry(t, env, "", "backup", file, "--logs")
	if exit != 0 || !strings.Contains(out, "spry.db, kv.db, invocations.db, 1 bundles, secret.key, logs.db") {
		t.Fatalf("backup: %d %q %q", exit, out, errOut)
	}
	if fi, err := os.Stat(file); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("the backup file: %v %v", fi, err)
	}
	if _, err := os.Stat(file + ".tmp"); err == nil {
		t.Error("FILE.tmp left")
	}

	exit, stdout, errOut := spry(t, env, "", "backup", "-", "--no-secret-key")
	if exit != 0 || !strings.Contains(errOut, "holds no secret key") {
		t.Fatalf("backup -: %d %q", exit, errOut)
	}
	if m, err := backup.Read(strings.NewReader(stdout), nil); err != nil || m.Has(backup.SecretKey) || m.Has(backup.LogsFile) {
		t.Errorf("backup to stdout: %+v %v", m, err)
	}

	data := filepath.Join(dir, "data")
	exit, out, errOut = spry(t, nil, "", "restore", file, "--data", data)
	if exit != 0 || !strings.Contains(out, "spry serve --data "+data) {
		t.Fatalf("restore: %d %q %q", exit, out, errOut)
	}
	st, err := sqlite.Open(t.Context(), filepath.Join(data, "spry.db"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.GetFunction(t.Context(), "admin", "hello"); err != nil {
		t.Errorf("the restored function: %v", err)
	}
	st.Close()
	exit, _, errOut = spry(t, nil, "", "restore", file, "--data", data)
	if exit != 5 || !strings.Contains(errOut, "holds spry.db already") {
		t.Errorf("restore over data: %d %q", exit, errOut)
	}
	exit, out, errOut = spry(t, nil, stdout, "restore", "-", "--data", filepath.Join(dir, "nokey"))
	if exit != 0 || !strings.Contains(out, "--new-secret-key") {
		t.Errorf("restore from stdin: %d %q %q", exit, out, errOut)
	}
	if code, _, errOut := spry(t, nil, "", "restore", file); code != 2 || !strings.Contains(errOut, "--data") {
		t.Errorf("restore without --data: %d %q", code, errOut)
	}
	if code, _, _ := spry(t, nil, "", "restore", filepath.Join(dir, "missing"), "--data", filepath.Join(dir, "d2")); code != 2 {
		t.Errorf("restore of a missing file: %d", code)
	}
	// Not an admin.
	exit, alice, errOut := spry(t, env, "", "user", "create", "alice")
	if exit != 0 {
		t.Fatalf("user create: %d %s", exit, errOut)
	}
	exit, _, errOut = spry(t, []string{"SPRY_URL=" + url, "SPRY_TOKEN=" + strings.TrimSpace(alice)}, "", "backup", filepath.Join(dir, "alice.tar.gz"))
	if exit != 3 || !strings.Contains(errOut, "only an admin") {
		t.Errorf("alice's backup: %d %q", exit, errOut)
	}
	if _, err := os.Stat(filepath.Join(dir, "alice.tar.gz.tmp")); err == nil {
		t.Error("a refused backup left FILE.tmp")
	}
}

// A stream cut short (the server failed while it sent it) is no backup:
// FILE is not written, FILE.tmp is removed, and the exit is not 0.
func TestBackupCutShort(t *testing.T) {
	url, token := backupServer(t)
	var whole bytes.Buffer
	req, _ := http.NewRequest("GET", url+"/api/v1/backup", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = whole.ReadFrom(res.Body)
	res.Body.Close()
	cut := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/gzip")
		_, _ = w.Write(whole.Bytes()[:whole.Len()/2])
	}))
	defer cut.Close()
	file := filepath.Join(t.TempDir(), "b.tar.gz")
	code, _, errOut := spry(t, []string{"SPRY_URL=" + cut.URL, "SPRY_TOKEN=t"}, "", "backup", file)
	if code != 1 || !strings.Contains(errOut, "ends early") || !strings.Contains(errOut, "no backup was saved") {
		t.Errorf("a cut backup: %d %q", code, errOut)
	}
	for _, p := range []string{file, file + ".tmp"} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s written", p)
		}
	}
}
