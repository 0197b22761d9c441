package backup

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/spry-run/spry/internal/errdefs"
)

// entry is one tar entry of a hand-made archive.
type entry struct {
	name string
	typ  byte // 0: a regular file
	body string
	size int64 // -1: len(body)
	link string
}

func file(name, body string) entry { return entry{name: name, body: body, size: -1} }

// manifestOf is a manifest entry naming files (name, then size) as given.
func manifestOf(format int, files ...File) entry {
	b, _ := json.Marshal(Manifest{Format: format, Spry: "test", Files: files})
	return file(ManifestName, string(b))
}

func makeArchive(t *testing.T, entries ...entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for _, e := range entries {
		typ := e.typ
		if typ == 0 {
			typ = tar.TypeReg
		}
		size := e.size
		if size < 0 {
			size = int64(len(e.body))
		}
		hdr := &tar.Header{Name: e.name, Typeflag: typ, Mode: 0o600, Size: size, Linkname: e.link}
		if typ != tar.TypeReg {
			hdr.Size = 0
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if typ == tar.TypeReg {
			if _, err := tw.Write([]byte(e.body)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// Manifests that are not this spry's backup's are refused, saying why.
func TestManifestCheck(t *testing.T) {
	dbs := []File{{StoreFile, 1}, {KVFile, 1}}
	blob := blobPrefix + strings.Repeat("ab", 32)
	for _, tt := range []struct {
		name, manifest, want string
	}{
		{"newer format", `{"format":3,"spry_version":"9.9","files":[{"name":"spry.db","size":1},{"name":"kv.db","size":1}]}`, "newer spry (9.9)"},
		{"no format", `{"files":[{"name":"spry.db","size":1},{"name":"kv.db","size":1}]}`, "format 0"},
		{"not json", `{"format":1,`, "not valid JSON"},
		{"no spry.db", mustJSON(Manifest{Format: 1, Files: dbs[1:]}), "does not name spry.db"},
		{"no kv.db", mustJSON(Manifest{Format: 1, Files: dbs[:1]}), "does not name kv.db"},
		{"format 2 without invocations.db", mustJSON(Manifest{Format: 2, Files: dbs}), "does not name invocations.db"},
		{"twice", mustJSON(Manifest{Format: 1, Files: append(dbs, File{StoreFile, 1})}), "twice"},
		{"negative", mustJSON(Manifest{Format: 1, Files: append(dbs, File{SecretKey, -1})}), "negative"},
		{"other file", mustJSON(Manifest{Format: 1, Files: append(dbs, File{"admin.token", 1})}), `"admin.token"`},
		{"traversal", mustJSON(Manifest{Format: 1, Files: append(dbs, File{"../spry.db", 1})}), `"../spry.db"`},
		{"blob upper case", mustJSON(Manifest{Format: 1, Files: append(dbs, File{strings.ToUpper(blob), 1})}), "no backup holds"},
		{"blob short", mustJSON(Manifest{Format: 1, Files: append(dbs, File{blob[:len(blob)-2], 1})}), "no backup holds"},
		{"blob nested", mustJSON(Manifest{Format: 1, Files: append(dbs, File{blobPrefix + "x/" + blob[len(blobPrefix):], 1})}), "no backup holds"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseManifest([]byte(tt.manifest))
			if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v, want invalid argument saying %q", err, tt.want)
			}
		})
	}
	// Format 1 (before invocations.db) is read still.
	if m, err := parseManifest([]byte(mustJSON(Manifest{Format: 1, Files: append(dbs, File{blob, 3}, File{SecretKey, 32}, File{LogsFile, 0})}))); err != nil || m.Bundles() != 1 {
		t.Errorf("a good manifest of format 1: %+v %v", m, err)
	}
	if m, err := parseManifest([]byte(mustJSON(Manifest{Format: 2, Files: append(dbs, File{InvocationsFile, 1}, File{blob, 3})}))); err != nil || m.Bundles() != 1 {
		t.Errorf("a good manifest of format 2: %+v %v", m, err)
	}
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// Archives that are not whole, sound backups are refused before any of
// them reaches the data directory, which is left without data.
func TestRestoreRefusesBadArchives(t *testing.T) {
	good := newData(t)
	good.deploy(t, "hello", "export default {}")
	archive := good.backup(t, Options{SecretKey: true})
	sum := sha256.Sum256([]byte("code"))
	blob := blobPrefix + hex.EncodeToString(sum[:])
	wrongBlob := blobPrefix + strings.Repeat("0", 64)
	// Format 1's: its archives are read still, and need no
	// invocations.db.
	dbs := func(extra ...File) entry {
		return manifestOf(1, append([]File{{StoreFile, 2}, {KVFile, 2}}, extra...)...)
	}
	for _, tt := range []struct {
		name    string
		archive []byte
		want    string
	}{
		{"not gzip", []byte("PK\x03\x04 a zip"), "not a gzip file"},
		{"empty", makeArchive(t), "empty"},
		{"manifest not first", makeArchive(t, file(StoreFile, "db"), dbs()), "not manifest.json"},
		{"newer format", makeArchive(t, manifestOf(FormatVersion+1, File{StoreFile, 2}, File{KVFile, 2})), "newer spry"},
		{"absolute path", makeArchive(t, dbs(), file("/etc/cron.d/x", "db")), "absolute paths are not allowed"},
		{"dot dot", makeArchive(t, dbs(), file("blobs/../../x", "db")), `".." path components are not allowed`},
		{"symlink", makeArchive(t, dbs(), entry{name: StoreFile, typ: tar.TypeSymlink, link: "/etc/passwd"}), "not a regular file"},
		{"hard link", makeArchive(t, dbs(), entry{name: KVFile, typ: tar.TypeLink, link: StoreFile}), "not a regular file"},
		{"directory", makeArchive(t, dbs(), entry{name: "blobs/", typ: tar.TypeDir}), "not a regular file"},
		{"not in manifest", makeArchive(t, dbs(), file(StoreFile, "db"), file(KVFile, "db"), file(SecretKey, "k")), `"secret.key" is not in the manifest`},
		{"twice", makeArchive(t, dbs(), file(StoreFile, "db"), file(StoreFile, "db")), "comes twice"},
		{"wrong size", makeArchive(t, dbs(), file(StoreFile, "dbx")), "the manifest says 2"},
		{"missing", makeArchive(t, dbs(), file(StoreFile, "db")), "kv.db missing"},
		{"bad digest", makeArchive(t, dbs(File{wrongBlob, 4}), file(StoreFile, "db"), file(KVFile, "db"), file(wrongBlob, "code")), "does not match its digest"},
		{"cut short", archive[:len(archive)*2/3], "ends early"},
		{"not databases", makeArchive(t, dbs(File{blob, 4}), file(StoreFile, "db"), file(KVFile, "db"), file(blob, "code")), "spry.db"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dst := filepath.Join(t.TempDir(), "data")
			_, err := Restore(t.Context(), bytes.NewReader(tt.archive), dst)
			if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v, want invalid argument saying %q", err, tt.want)
			}
			entries, _ := os.ReadDir(dst)
			for _, e := range entries {
				if e.Name() != "spry.lock" {
					t.Errorf("%s left in the data directory", e.Name())
				}
			}
			if _, err := os.Stat(filepath.Join(filepath.Dir(dst), "etc")); err == nil {
				t.Error("an entry was written outside")
			}
		})
	}
}

// A directory that holds a server's data, or that a server (or another
// restore) holds, is refused and left as it was; an empty one is fine.
func TestRestoreRefusesTakenDirs(t *testing.T) {
	d := newData(t)
	archive := d.backup(t, Options{SecretKey: true})
	for _, name := range []string{StoreFile, KVFile, InvocationsFile, SecretKey, "admin.token", BlobsDir} {
		t.Run(name, func(t *testing.T) {
			dst := t.TempDir()
			if err := os.WriteFile(filepath.Join(dst, name), []byte("mine"), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := Restore(t.Context(), bytes.NewReader(archive), dst)
			if !errors.Is(err, errdefs.ErrAlreadyExists) || !strings.Contains(err.Error(), name) {
				t.Errorf("got %v, want already exists naming %s", err, name)
			}
			if b, _ := os.ReadFile(filepath.Join(dst, name)); string(b) != "mine" {
				t.Errorf("%s was changed", name)
			}
		})
	}
	t.Run("locked", func(t *testing.T) {
		dst := t.TempDir()
		f, err := os.OpenFile(filepath.Join(dst, "spry.lock"), os.O_CREATE|os.O_RDWR, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
			t.Fatal(err)
		}
		if _, err := Restore(t.Context(), bytes.NewReader(archive), dst); !errors.Is(err, errdefs.ErrConflict) {
			t.Errorf("got %v, want conflict", err)
		}
	})
	t.Run("empty and leftovers", func(t *testing.T) {
		dst := t.TempDir()
		// What a killed restore left goes; other files stay.
		if err := os.MkdirAll(filepath.Join(dst, restorePrefix+"1", BlobsDir), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, "README"), nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := Restore(t.Context(), bytes.NewReader(archive), dst); err != nil {
			t.Fatal(err)
		}
		noTemp(t, dst)
		if _, err := os.Stat(filepath.Join(dst, "README")); err != nil {
			t.Error(err)
		}
	})
}
