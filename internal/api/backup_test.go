package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"slices"
	"testing"

	"github.com/spry-run/spry/internal/api/apitest"
	"github.com/spry-run/spry/internal/backup"
)

// newBackupEnv is an API whose backups are of its real stores.
func newBackupEnv(t *testing.T) *env {
	t.Helper()
	d := apitest.New(t)
	kvs, src := apitest.Backups(t, d)
	return newEnvOn(t, d, Config{MaxCodeBytes: 1 << 20, KV: kvs, Backups: src})
}

// GET /backup is an admin's: a user's token of every right gets a 403,
// as does a server without backups. An admin's streams a gzip tar that
// is a whole backup: the manifest, the databases, the bundle of each
// version, the key unless secret_key=false, the logs with logs=true.
func TestBackup(t *testing.T) {
	e := newBackupEnv(t)
	alice := e.user("alice")
	e.deploy(alice, "/api/v1/functions/hello")
	e.deploy(e.admin, "/api/v1/functions/same") // the same bundle: one file
	e.mustDo(e.admin, "PUT", "/api/v1/functions/other", `{"code":"export default { fetch() { return new Response('other') } }"}`, http.StatusCreated, nil)
	e.mustDo(alice, "PUT", "/api/v1/functions/hello/kv/greeting", `"hi"`, http.StatusNoContent, nil)

	s, body := e.do(alice, "GET", "/api/v1/backup", "")
	wantError(t, "alice's backup", s, body, http.StatusForbidden, "permission_denied")
	s, body = e.do(e.admin, "GET", "/api/v1/backup?logs=maybe", "")
	wantError(t, "logs=maybe", s, body, http.StatusBadRequest, "invalid_argument")
	s, body = e.do(e.admin, "GET", "/api/v1/backup?keys=false", "")
	wantError(t, "an unknown parameter", s, body, http.StatusBadRequest, "invalid_argument")

	for _, tt := range []struct {
		query string
		key   bool
		logs  bool
	}{
		{"", true, false},
		{"?logs=true", true, true},
		{"?secret_key=false", false, false},
	} {
		t.Run(tt.query, func(t *testing.T) {
			req, _ := http.NewRequest("GET", e.srv.URL+"/api/v1/backup"+tt.query, nil)
			req.Header.Set("Authorization", "Bearer "+e.admin)
			res, err := e.srv.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			if res.StatusCode != 200 || res.Header.Get("Content-Type") != "application/gzip" || res.Header.Get("Cache-Control") != "no-store" {
				t.Fatalf("%d %v", res.StatusCode, res.Header)
			}
			m, err := backup.Read(res.Body, nil)
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, f := range m.Files {
				names = append(names, f.Name)
			}
			if m.Bundles() != 2 || !slices.Contains(names, "spry.db") || !slices.Contains(names, "kv.db") || !slices.Contains(names, "invocations.db") ||
				slices.Contains(names, "secret.key") != tt.key || slices.Contains(names, "logs.db") != tt.logs {
				t.Errorf("files %q", names)
			}
		})
	}

	none := newEnv(t)
	s, body = none.do(none.admin, "GET", "/api/v1/backup", "")
	wantError(t, "a server without backups", s, body, http.StatusServiceUnavailable, "unavailable")
}

// blockingBackups holds each backup until released, having written
// something; or fails at once.
type blockingBackups struct {
	started chan struct{}
	release chan struct{}
	err     error
}

func (b *blockingBackups) Write(ctx context.Context, w io.Writer, o backup.Options) error {
	if b.err != nil {
		return b.err
	}
	if _, err := w.Write(bytes.Repeat([]byte{1}, 100)); err != nil {
		return err
	}
	close(b.started)
	<-b.release
	return nil
}

// One backup runs at a time: another is a 409 while it does. One that
// fails before it sends anything is answered as an error.
func TestBackupOneAtATime(t *testing.T) {
	b := &blockingBackups{started: make(chan struct{}), release: make(chan struct{})}
	e := newEnvConfig(t, Config{MaxCodeBytes: 1 << 20, Backups: b})
	done := make(chan int)
	go func() {
		s, _ := e.do(e.admin, "GET", "/api/v1/backup", "")
		done <- s
	}()
	<-b.started
	s, body := e.do(e.admin, "GET", "/api/v1/backup", "")
	wantError(t, "a second backup", s, body, http.StatusConflict, "conflict")
	close(b.release)
	if s := <-done; s != 200 {
		t.Errorf("the first backup: %d", s)
	}

	failing := newEnvConfig(t, Config{MaxCodeBytes: 1 << 20, Backups: &blockingBackups{err: errors.New("disk full")}})
	s, body = failing.do(failing.admin, "GET", "/api/v1/backup", "")
	var eb struct {
		Error struct{ Code, Message string }
	}
	if s != 500 || json.Unmarshal(body, &eb) != nil || eb.Error.Code != "internal" {
		t.Errorf("a failed backup: %d %s", s, body)
	}
}
