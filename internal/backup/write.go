package backup

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spry-run/spry/internal/store/sqlite"
)

// snapshotter copies a live SQLite-backed store (sqlite.Store, kv.Store,
// logstore.Store) to a file that does not exist yet.
type snapshotter interface {
	Snapshot(ctx context.Context, path string) error
}

// blobs is the bundle store (blob.Store).
type blobs interface {
	// Hold keeps bundles from being collected until release.
	Hold() (release func())
	Path(digest string) (string, error)
}

// Source is a running server's data, which Write copies.
type Source struct {
	Store snapshotter // spry.db
	KV    snapshotter // kv.db
	// Invocations is invocations.db.
	Invocations snapshotter
	Logs        snapshotter // logs.db
	Blobs       blobs
	// SecretKey is the key file's path.
	SecretKey string
	// TempDir is where snapshots are written before they are sent, and
	// removed after: the data directory, whose file system has room for
	// what it holds. Each backup takes a directory of its own in it,
	// named TempPrefix*.
	TempDir string
	// Version is the spry that writes the backup, for the manifest.
	Version string
	Now     func() time.Time // nil: time.Now
}

// TempPrefix starts the name of a backup's temporary directory in
// Source.TempDir; RemoveTemp removes those a killed server left.
const TempPrefix = ".backup-"

// Options say what a backup holds besides the databases and bundles.
type Options struct {
	// SecretKey includes secret.key: without it the restored server
	// cannot open the secrets sealed with it.
	SecretKey bool
	// Logs includes logs.db.
	Logs bool
}

// Write writes a backup of src to w, as the package comment describes.
// Snapshots are taken before anything is written, so an error in them
// leaves w untouched; a later error (a write to w, ctx ending) leaves it
// holding part of an archive, which Read refuses. Memory stays bounded:
// files are streamed, and snapshots go to disk.
func (src *Source) Write(ctx context.Context, w io.Writer, o Options) error {
	now := time.Now
	if src.Now != nil {
		now = src.Now
	}
	tmp, err := os.MkdirTemp(src.TempDir, TempPrefix+"*")
	if err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	defer os.RemoveAll(tmp)
	// Held from before the snapshot of the versions until their bundles
	// are copied: a function deleted meanwhile leaves its bundles to the
	// collector, and the snapshot still names them.
	release := src.Blobs.Hold()
	defer release()

	created := now().UTC()
	var files []source
	snap := func(name string, s snapshotter) error {
		p := filepath.Join(tmp, name)
		if err := s.Snapshot(ctx, p); err != nil {
			return fmt.Errorf("backup: %w", err)
		}
		files = append(files, source{name: name, path: p})
		return nil
	}
	if err := snap(StoreFile, src.Store); err != nil {
		return err
	}
	digests, err := snapshotDigests(ctx, files[0].path)
	if err != nil {
		return err
	}
	if err := snap(KVFile, src.KV); err != nil {
		return err
	}
	if err := snap(InvocationsFile, src.Invocations); err != nil {
		return err
	}
	for _, d := range digests {
		name, err := blobName(d)
		if err != nil {
			return fmt.Errorf("backup: a version names %w", err)
		}
		p, err := src.Blobs.Path(d)
		if err != nil {
			// Held since before the snapshot, and put before any version
			// named it: gone means removed by hand.
			return fmt.Errorf("backup: the bundle of a version is missing: %w", err)
		}
		files = append(files, source{name: name, path: p, blob: true})
	}
	if o.SecretKey {
		files = append(files, source{name: SecretKey, path: src.SecretKey})
	}
	if o.Logs {
		if err := snap(LogsFile, src.Logs); err != nil {
			return err
		}
	}
	m := Manifest{Format: FormatVersion, Spry: src.Version, CreatedAt: created}
	for i := range files {
		fi, err := os.Stat(files[i].path)
		if err != nil {
			return fmt.Errorf("backup: %w", err)
		}
		files[i].size = fi.Size()
		m.Files = append(m.Files, File{Name: files[i].name, Size: fi.Size()})
	}

	cw := &ctxWriter{ctx: ctx, w: w}
	// BestSpeed: twice the default's speed (about 100 MB/s of data on
	// one core) for an archive a few percent larger.
	zw, _ := gzip.NewWriterLevel(cw, gzip.BestSpeed)
	tw := tar.NewWriter(zw)
	manifest, _ := json.MarshalIndent(m, "", "  ")
	if err := writeEntry(tw, ManifestName, 0o600, created, int64(len(manifest)), strings.NewReader(string(manifest))); err != nil {
		return err
	}
	for _, f := range files {
		if err := f.copyTo(tw, created); err != nil {
			return err
		}
		if f.name == StoreFile {
			// Its snapshot on disk is no longer needed.
			_ = os.Remove(f.path)
		}
	}
	release()
	if err := tw.Close(); err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	if err := zw.Close(); err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	return nil
}

// source is a file to send: its name in the archive, where it is, and
// its size when listed.
type source struct {
	name, path string
	size       int64
	blob       bool
}

func (f source) copyTo(tw *tar.Writer, at time.Time) error {
	r, err := os.Open(f.path)
	if err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	defer r.Close()
	mode := int64(0o600)
	if f.blob {
		mode = 0o644 // the bundle store's, for instances' uids
	}
	return writeEntry(tw, f.name, mode, at, f.size, r)
}

// writeEntry writes one regular file of size bytes from r; a file whose
// size changed since it was listed is an error, not a torn entry.
func writeEntry(tw *tar.Writer, name string, mode int64, at time.Time, size int64, r io.Reader) error {
	hdr := &tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: size, ModTime: at, Format: tar.FormatPAX}
	if err := tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("backup: %s: %w", name, err)
	}
	n, err := io.Copy(tw, io.LimitReader(r, size))
	if err != nil {
		return fmt.Errorf("backup: %s: %w", name, err)
	}
	if n != size {
		return fmt.Errorf("backup: %s shrank from %d to %d bytes while it was copied", name, size, n)
	}
	return nil
}

// snapshotDigests are the bundles the versions in the spry.db snapshot
// at path name, in order, read by the store's own code.
func snapshotDigests(ctx context.Context, path string) ([]string, error) {
	st, err := sqlite.Open(ctx, path)
	if err != nil {
		return nil, fmt.Errorf("backup: read the snapshot: %w", err)
	}
	defer st.Close()
	set, err := st.Digests(ctx)
	if err != nil {
		return nil, fmt.Errorf("backup: read the snapshot: %w", err)
	}
	out := make([]string, 0, len(set))
	for d := range set {
		out = append(out, d)
	}
	slices.Sort(out)
	return out, nil
}

// ctxWriter stops writing once ctx ends: a client that went away ends
// the backup at its next write.
type ctxWriter struct {
	ctx context.Context
	w   io.Writer
}

func (c *ctxWriter) Write(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.w.Write(p)
}

// RemoveTemp removes what backups that did not end left in dir (a server
// killed while one ran): at a server's start no backup runs.
func RemoveTemp(dir string) error { return removeDirs(dir, TempPrefix) }
