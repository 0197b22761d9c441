// Package apitest builds what the management API serves over, for the
// tests of the API and of the CLI that talks to it: the real SQLite,
// blob and log stores in a test's temporary directory, a functions
// service that runs no instances, and an admin with a token. It does not
// import the API, so the API's own tests can use it.
package apitest

import (
	"bytes"
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/spry-run/spry/internal/async"
	"github.com/spry-run/spry/internal/auth"
	"github.com/spry-run/spry/internal/backend"
	"github.com/spry-run/spry/internal/backup"
	"github.com/spry-run/spry/internal/blob"
	"github.com/spry-run/spry/internal/functions"
	"github.com/spry-run/spry/internal/kv"
	"github.com/spry-run/spry/internal/logstore"
	"github.com/spry-run/spry/internal/secrets"
	"github.com/spry-run/spry/internal/store"
	"github.com/spry-run/spry/internal/store/sqlite"
)

// Deps is what api.New takes, over real stores.
type Deps struct {
	Store     *sqlite.Store
	DBPath    string // the SQLite file under Store
	Dir       string // the directory of the stores' files
	Logs      *logstore.Store
	Blobs     *blob.Store
	Functions *functions.Service
	Auth      *auth.Service
	Admin     string // the admin's token
}

// noInstances runs no instances: the tests are about the API and its
// clients, not about running functions.
type noInstances struct{}

func (noInstances) Admit(string, ...string)        {}
func (noInstances) RetireExcept(string, ...string) {}
func (noInstances) Remove(string)                  {}
func (noInstances) Ensure(*backend.Spec)           {}

// Options change what NewWith builds.
type Options struct {
	// Instances is told of the functions' versions as spry serve's
	// activator is (nil: no instance runs).
	Instances functions.Retirer
	// MaxFunctionsPerOwner is functions.Config's (0: no limit).
	MaxFunctionsPerOwner int
}

// New opens the stores in t's temporary directory, closed when t ends,
// and makes the admin user "admin" and a token for it.
func New(t testing.TB) *Deps {
	t.Helper()
	return NewWith(t, Options{})
}

// NewWith is New with o.
func NewWith(t testing.TB, o Options) *Deps {
	t.Helper()
	if o.Instances == nil {
		o.Instances = noInstances{}
	}
	ctx := context.Background()
	dir := t.TempDir()
	d := &Deps{DBPath: filepath.Join(dir, "spry.db"), Dir: dir}
	st, err := sqlite.Open(ctx, d.DBPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	logs, err := logstore.Open(ctx, filepath.Join(dir, "logs.db"), logstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { logs.Close() })
	blobs, err := blob.Open(filepath.Join(dir, "blobs"))
	if err != nil {
		t.Fatal(err)
	}
	box, err := secrets.New(bytes.Repeat([]byte{7}, 32))
	if err != nil {
		t.Fatal(err)
	}
	d.Store, d.Logs, d.Blobs = st, logs, blobs
	d.Functions = functions.New(st, blobs, o.Instances, box, logs, functions.Config{
		MaxCodeBytes:       1 << 20,
		DefaultRuntime:     "deno",
		Runtimes:           []string{"deno", "node"},
		DefaultMemoryMiB:   128,
		DefaultTimeout:     time.Minute,
		DefaultNetwork:     "egress",
		DefaultConcurrency: 50,
		DefaultMaxScale:    100,
		Bounds:             functions.Bounds{MaxMemoryMiB: 4096, MaxTimeout: time.Hour, MaxScale: 100, MaxConcurrency: 1000, MaxCPUMilli: 4000},
		Builds:             1,

		MaxFunctionsPerOwner: o.MaxFunctionsPerOwner,
	})
	d.Auth = auth.New(st, nil)
	if err := st.CreateUser(ctx, store.User{Name: "admin", Admin: true, CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if d.Admin, _, err = d.Auth.IssueToken(ctx, "admin", "test", auth.TokenOptions{}); err != nil {
		t.Fatal(err)
	}
	return d
}

// Backups opens a key-value store, an invocation store and a secret key
// beside d's stores,
// closed when t ends, and the backup source over all of them: what spry
// serve's backups read.
func Backups(t testing.TB, d *Deps) (*kv.Store, *backup.Source) {
	t.Helper()
	kvs, err := kv.Open(t.Context(), filepath.Join(d.Dir, "kv.db"), kv.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { kvs.Close() })
	invs, err := async.Open(t.Context(), filepath.Join(d.Dir, "invocations.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { invs.Close() })
	keyFile := filepath.Join(d.Dir, "secret.key")
	if _, err := secrets.OpenKeyFile(keyFile); err != nil {
		t.Fatal(err)
	}
	return kvs, &backup.Source{Store: d.Store, KV: kvs, Invocations: invs, Logs: d.Logs, Blobs: d.Blobs, SecretKey: keyFile, TempDir: d.Dir, Version: "test"}
}
