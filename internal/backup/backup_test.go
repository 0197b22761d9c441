package backup

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spry-run/spry/internal/async"
	"github.com/spry-run/spry/internal/blob"
	"github.com/spry-run/spry/internal/errdefs"
	"github.com/spry-run/spry/internal/kv"
	"github.com/spry-run/spry/internal/logstore"
	"github.com/spry-run/spry/internal/secrets"
	"github.com/spry-run/spry/internal/store"
	"github.com/spry-run/spry/internal/store/sqlite"
)

// data is a server's data directory with its stores open, as spry serve
// has them.
type data struct {
	dir   string
	st    *sqlite.Store
	kv    *kv.Store
	invs  *async.Store
	logs  *logstore.Store
	blobs *blob.Store
	src   *Source
}

func newData(t *testing.T) *data {
	t.Helper()
	ctx := t.Context()
	d := &data{dir: t.TempDir()}
	var err error
	if d.st, err = sqlite.Open(ctx, filepath.Join(d.dir, StoreFile)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.st.Close() })
	if d.kv, err = kv.Open(ctx, filepath.Join(d.dir, KVFile), kv.Options{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.kv.Close() })
	if d.invs, err = async.Open(ctx, filepath.Join(d.dir, InvocationsFile)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.invs.Close() })
	if d.logs, err = logstore.Open(ctx, filepath.Join(d.dir, LogsFile), logstore.Options{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.logs.Close() })
	if d.blobs, err = blob.Open(filepath.Join(d.dir, BlobsDir)); err != nil {
		t.Fatal(err)
	}
	if _, err := secrets.OpenKeyFile(filepath.Join(d.dir, SecretKey)); err != nil {
		t.Fatal(err)
	}
	d.src = &Source{Store: d.st, KV: d.kv, Invocations: d.invs, Logs: d.logs, Blobs: d.blobs, SecretKey: filepath.Join(d.dir, SecretKey),
		TempDir: d.dir, Version: "test", Now: func() time.Time { return time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC) }}
	return d
}

// deploy stores a bundle and a version naming it, as a deploy does, and
// returns the function's id.
func (d *data) deploy(t *testing.T, name, code string) (id, digest string) {
	t.Helper()
	digest, err := d.blobs.Put([]byte(code))
	if err != nil {
		t.Fatal(err)
	}
	id = "id-" + name
	if _, err := d.st.Deploy(t.Context(), id, store.Version{Owner: "admin", Name: name, Digest: digest, Size: int64(len(code)), CreatedAt: time.Now(), CreatedBy: "admin"}); err != nil {
		t.Fatal(err)
	}
	return id, digest
}

func (d *data) backup(t *testing.T, o Options) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := d.src.Write(t.Context(), &buf, o); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// names lists an archive's entries, in order.
func names(t *testing.T, archive []byte) []string {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(archive))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	var out []string
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, hdr.Name)
	}
}

func noTemp(t *testing.T, dir string) {
	t.Helper()
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), TempPrefix) || strings.HasPrefix(e.Name(), restorePrefix) {
			t.Errorf("%s left in %s", e.Name(), dir)
		}
	}
}

// A backup restored into a new directory opens there with the same
// users, versions, bundles, kv entries, key and (asked for) logs; what
// no version names is left out, and the snapshots on disk are gone.
func TestRoundTrip(t *testing.T) {
	ctx := t.Context()
	d := newData(t)
	if err := d.st.CreateUser(ctx, store.User{Name: "alice", CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	id, digest := d.deploy(t, "hello", "export default {}")
	_, digest2 := d.deploy(t, "other", "export default { fetch() {} }")
	orphan, _ := d.blobs.Put([]byte("a bundle no version names"))
	if err := d.kv.Set(ctx, id, "greeting", json.RawMessage(`"hi"`), 0); err != nil {
		t.Fatal(err)
	}
	queued := &async.Invocation{ID: async.NewID(), Owner: "admin", FunctionID: id, Function: "hello", Path: "/", Body: []byte("event"), CreatedAt: time.Now(), NextAt: time.Now()}
	if err := d.invs.Add(ctx, queued, async.Bounds{}); err != nil {
		t.Fatal(err)
	}
	d.logs.Append(logstore.Entry{Owner: "admin", Function: "hello", FunctionID: id, Version: 1, Stream: logstore.StreamStdout, Line: "a line"})
	if err := d.logs.Flush(ctx); err != nil {
		t.Fatal(err)
	}

	for _, tt := range []struct {
		name string
		o    Options
		want []string
	}{
		{"default", Options{SecretKey: true}, []string{ManifestName, StoreFile, KVFile, InvocationsFile, "b1", "b2", SecretKey}},
		{"logs", Options{SecretKey: true, Logs: true}, []string{ManifestName, StoreFile, KVFile, InvocationsFile, "b1", "b2", SecretKey, LogsFile}},
		{"no key", Options{}, []string{ManifestName, StoreFile, KVFile, InvocationsFile, "b1", "b2"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			archive := d.backup(t, tt.o)
			noTemp(t, d.dir)
			b1, _ := blobName(digest)
			b2, _ := blobName(digest2)
			if b1 > b2 {
				b1, b2 = b2, b1
			}
			want := slices.Clone(tt.want)
			want[4], want[5] = b1, b2
			if got := names(t, archive); !slices.Equal(got, want) {
				t.Fatalf("entries %q, want %q", got, want)
			}
			m, err := Read(bytes.NewReader(archive), nil)
			if err != nil {
				t.Fatal(err)
			}
			if m.Format != FormatVersion || m.Spry != "test" || !m.CreatedAt.Equal(d.src.Now()) || m.Bundles() != 2 || len(m.Files) != len(want)-1 {
				t.Errorf("manifest %+v", m)
			}

			dst := filepath.Join(t.TempDir(), "restored")
			m2, err := Restore(ctx, bytes.NewReader(archive), dst)
			if err != nil {
				t.Fatal(err)
			}
			if len(m2.Files) != len(m.Files) {
				t.Errorf("Restore's manifest %+v", m2)
			}
			noTemp(t, dst)
			checkModes(t, dst)
			st, err := sqlite.Open(ctx, filepath.Join(dst, StoreFile))
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			if _, err := st.GetUser(ctx, "alice"); err != nil {
				t.Error(err)
			}
			if v, err := st.GetVersion(ctx, "admin", "hello", 1); err != nil || v.Digest != digest {
				t.Errorf("version: %+v %v", v, err)
			}
			bs, _ := blob.Open(filepath.Join(dst, BlobsDir))
			if code, err := bs.Get(digest); err != nil || string(code) != "export default {}" {
				t.Errorf("bundle: %q %v", code, err)
			}
			if _, err := bs.Path(orphan); !errors.Is(err, errdefs.ErrNotFound) {
				t.Errorf("the bundle no version names was restored: %v", err)
			}
			kvs, err := kv.Open(ctx, filepath.Join(dst, KVFile), kv.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer kvs.Close()
			if v, ok, err := kvs.Get(ctx, id, "greeting"); err != nil || !ok || string(v) != `"hi"` {
				t.Errorf("kv: %s %v %v", v, ok, err)
			}
			invs, err := async.Open(ctx, filepath.Join(dst, InvocationsFile))
			if err != nil {
				t.Fatal(err)
			}
			defer invs.Close()
			if inv, err := invs.Get(ctx, id, queued.ID); err != nil || inv.Status != async.StatusQueued {
				t.Errorf("invocation: %+v %v", inv, err)
			}
			key, keyErr := os.ReadFile(filepath.Join(dst, SecretKey))
			orig, _ := os.ReadFile(d.src.SecretKey)
			if tt.o.SecretKey != (keyErr == nil) || (keyErr == nil && !bytes.Equal(key, orig)) {
				t.Errorf("secret.key: %v (asked for: %v)", keyErr, tt.o.SecretKey)
			}
			_, logErr := os.Stat(filepath.Join(dst, LogsFile))
			if tt.o.Logs != (logErr == nil) {
				t.Errorf("logs.db: %v (asked for: %v)", logErr, tt.o.Logs)
			}
			if tt.o.Logs {
				ls, err := logstore.Open(ctx, filepath.Join(dst, LogsFile), logstore.Options{})
				if err != nil {
					t.Fatal(err)
				}
				defer ls.Close()
				if got, err := ls.Query(ctx, logstore.Query{Owner: "admin", Function: "hello", Limit: 10}); err != nil || len(got) != 1 || got[0].Line != "a line" {
					t.Errorf("logs: %+v %v", got, err)
				}
			}
		})
	}
	// The source still serves.
	if err := d.kv.Set(ctx, id, "after", json.RawMessage(`1`), 0); err != nil {
		t.Fatal(err)
	}
}

// checkModes wants files 0600 but bundles 0644 (instances' uids read
// them through hard links), and directories 0700.
func checkModes(t *testing.T, dir string) {
	t.Helper()
	err := filepath.WalkDir(dir, func(p string, e os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := e.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		want := os.FileMode(0o600)
		switch {
		case rel == "." || rel == "spry.lock":
			return nil
		case e.IsDir():
			want = 0o700
		case strings.HasPrefix(rel, blobPrefix):
			want = 0o644
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s: mode %v, want %v", rel, fi.Mode().Perm(), want)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// A backup whose reader goes away (a client that hangs up), or whose
// ctx ends, stops, and leaves no snapshot behind.
func TestWriteStops(t *testing.T) {
	d := newData(t)
	for i := range 20 {
		d.deploy(t, "f"+strings.Repeat("x", i), strings.Repeat("y", 10000*i))
	}
	gone := errors.New("client went away")
	if err := d.src.Write(t.Context(), &failWriter{after: 1000, err: gone}, Options{SecretKey: true}); !errors.Is(err, gone) {
		t.Errorf("a writer that fails: %v", err)
	}
	noTemp(t, d.dir)
	ctx, cancel := context.WithCancel(t.Context())
	w := &failWriter{after: 1 << 40, onWrite: cancel}
	if err := d.src.Write(ctx, w, Options{SecretKey: true}); !errors.Is(err, context.Canceled) {
		t.Errorf("a cancelled backup: %v", err)
	}
	noTemp(t, d.dir)
	// The collector got its turn back.
	if n, err := d.blobs.Collect(map[string]bool{}, time.Time{}); err != nil || n != 20 {
		t.Errorf("Collect after the backups = %d, %v", n, err)
	}
}

type failWriter struct {
	after   int
	n       int
	err     error
	onWrite func()
}

func (w *failWriter) Write(p []byte) (int, error) {
	if w.onWrite != nil {
		w.onWrite()
	}
	w.n += len(p)
	if w.n > w.after {
		return 0, w.err
	}
	return len(p), nil
}

// RemoveTemp takes what a killed backup left, and only that.
func TestRemoveTemp(t *testing.T) {
	dir := t.TempDir()
	for _, p := range []string{TempPrefix + "123/spry.db", "blobs/sha256/x", ".backupfile"} {
		if err := os.MkdirAll(filepath.Join(dir, filepath.Dir(p)), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, p), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := RemoveTemp(dir); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(dir)
	var got []string
	for _, e := range entries {
		got = append(got, e.Name())
	}
	if !slices.Equal(got, []string{".backupfile", "blobs"}) {
		t.Errorf("left %q", got)
	}
}

// A backup of format 1, from before invocations.db, restores: the
// server started on it makes an empty one.
func TestRestoreFormat1(t *testing.T) {
	d := newData(t)
	d.deploy(t, "hello", "export default {}")
	archive := d.backup(t, Options{SecretKey: true})
	// Rewrite it as a spry of format 1 wrote it.
	zr, err := gzip.NewReader(bytes.NewReader(archive))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	var out bytes.Buffer
	zw := gzip.NewWriter(&out)
	tw := tar.NewWriter(zw)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		switch hdr.Name {
		case InvocationsFile:
			continue
		case ManifestName:
			var m Manifest
			if err := json.Unmarshal(body, &m); err != nil {
				t.Fatal(err)
			}
			m.Format = 1
			m.Files = slices.DeleteFunc(m.Files, func(f File) bool { return f.Name == InvocationsFile })
			body, _ = json.Marshal(m)
			hdr.Size = int64(len(body))
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(body); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), "restored")
	m, err := Restore(t.Context(), &out, dst)
	if err != nil || m.Format != 1 {
		t.Fatalf("restore of format 1: %+v %v", m, err)
	}
	if _, err := os.Stat(filepath.Join(dst, InvocationsFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("invocations.db: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dst, StoreFile)); err != nil {
		t.Error(err)
	}
}
