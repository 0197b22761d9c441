package backup

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/spry-run/spry/internal/async"
	"github.com/spry-run/spry/internal/errdefs"
	"github.com/spry-run/spry/internal/kv"
	"github.com/spry-run/spry/internal/logstore"
	"github.com/spry-run/spry/internal/secrets"
	"github.com/spry-run/spry/internal/sqlitedb"
	"github.com/spry-run/spry/internal/store/sqlite"
)

// restorePrefix starts the name of the directory a restore unpacks into,
// inside the target, before it moves the files into place.
const restorePrefix = ".restore-"

// taken are the names in a data directory a restore would replace, or
// that would make a server started on it something else than the backup
// (an admin.token from another server keeps the restored one from
// making its own).
var taken = []string{StoreFile, StoreFile + "-wal", KVFile, InvocationsFile, LogsFile, SecretKey, BlobsDir, "admin.token"}

// Restore puts the backup read from r into the data directory dir, for
// `spry serve --data dir`. dir may not exist yet, or be empty; one that
// holds a server's data is refused (errdefs.ErrAlreadyExists), as is one
// a server runs on. The backup is read whole and checked as Read does,
// unpacked beside (files 0600, bundles 0644 as the bundle store keeps
// them, directories 0700), and each database is checked (PRAGMA
// integrity_check, then opened by its store, which also says whether
// this spry knows its schema) before anything is moved into dir: a
// restore that fails leaves dir as it was.
func Restore(ctx context.Context, r io.Reader, dir string) (*Manifest, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	unlock, err := lockDir(dir)
	if err != nil {
		return nil, err
	}
	defer unlock()
	for _, name := range taken {
		if _, err := os.Lstat(filepath.Join(dir, name)); err == nil {
			return nil, errdefs.New(errdefs.ErrAlreadyExists, "restore: %s holds %s already: restore into a new or empty directory", dir, name)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("restore: %w", err)
		}
	}
	// Under the lock no other restore runs here: what one that was
	// killed left goes.
	if err := removeDirs(dir, restorePrefix); err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	stage, err := os.MkdirTemp(dir, restorePrefix+"*")
	if err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	defer os.RemoveAll(stage)
	m, err := unpack(ctx, r, stage)
	if err != nil {
		return nil, err
	}
	if err := verify(ctx, stage, m); err != nil {
		return nil, err
	}
	// spry.db last: until it is there, dir is no server's data.
	var names []string
	for _, name := range []string{BlobsDir, KVFile, InvocationsFile, LogsFile, SecretKey, StoreFile} {
		if _, err := os.Lstat(filepath.Join(stage, name)); err == nil {
			names = append(names, name)
		}
	}
	for _, name := range names {
		if err := os.Rename(filepath.Join(stage, name), filepath.Join(dir, name)); err != nil {
			return nil, fmt.Errorf("restore: %w", err)
		}
	}
	if err := syncDir(dir); err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	return m, nil
}

// unpack reads the backup into stage, each file written and synced
// through an os.Root: nothing lands outside stage, whatever the names.
func unpack(ctx context.Context, r io.Reader, stage string) (*Manifest, error) {
	root, err := os.OpenRoot(stage)
	if err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	defer root.Close()
	blobDir := filepath.Dir(blobPrefix)
	m, err := Read(r, func(f File, content io.Reader) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		mode := os.FileMode(0o600)
		if isBlob(f.Name) {
			mode = 0o644
			if err := root.MkdirAll(blobDir, 0o700); err != nil {
				return fmt.Errorf("restore: %w", err)
			}
		}
		// O_EXCL|O_NOFOLLOW: a name given twice, or a link, is never
		// written through.
		out, err := root.OpenFile(f.Name, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, mode)
		if err != nil {
			return fmt.Errorf("restore: %w", err)
		}
		defer out.Close()
		if err := out.Chmod(mode); err != nil { // whatever the umask
			return fmt.Errorf("restore: %w", err)
		}
		if _, err := io.Copy(out, &ctxReader{ctx: ctx, r: content}); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			var pe *fs.PathError
			if errors.As(err, &pe) {
				return fmt.Errorf("restore: write %s: %w", f.Name, err)
			}
			return cutShort(f.Name, err)
		}
		if err := out.Sync(); err != nil {
			return fmt.Errorf("restore: %w", err)
		}
		return out.Close()
	})
	if err != nil {
		return nil, err
	}
	if m.Bundles() > 0 {
		if err := syncDir(filepath.Join(stage, blobDir)); err != nil {
			return nil, fmt.Errorf("restore: %w", err)
		}
		if err := syncDir(filepath.Join(stage, BlobsDir)); err != nil {
			return nil, fmt.Errorf("restore: %w", err)
		}
	}
	if err := syncDir(stage); err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	return m, nil
}

// verify checks what was unpacked in stage: every database is sound and
// opens with its store; the bundles spry.db's versions name are all
// there; the key is a key.
func verify(ctx context.Context, stage string, m *Manifest) error {
	for _, name := range []string{StoreFile, KVFile, InvocationsFile, LogsFile} {
		if !m.Has(name) {
			continue
		}
		if err := sqlitedb.Check(ctx, filepath.Join(stage, name)); err != nil {
			return errdefs.Invalid("restore: %s: %v", name, err)
		}
	}
	st, err := sqlite.Open(ctx, filepath.Join(stage, StoreFile))
	if err != nil {
		return errdefs.Invalid("restore: %s: %v", StoreFile, err)
	}
	digests, err := st.Digests(ctx)
	st.Close()
	if err != nil {
		return errdefs.Invalid("restore: %s: %v", StoreFile, err)
	}
	for d := range digests {
		name, err := blobName(d)
		if err != nil || !m.Has(name) {
			return errdefs.Invalid("restore: a version names bundle %s, which the backup does not hold", d)
		}
	}
	kvs, err := kv.Open(ctx, filepath.Join(stage, KVFile), kv.Options{})
	if err != nil {
		return errdefs.Invalid("restore: %s: %v", KVFile, err)
	}
	// Versions given after the backup must not be given again.
	err = kvs.Restored(ctx)
	kvs.Close()
	if err != nil {
		return fmt.Errorf("restore: %s: %w", KVFile, err)
	}
	if m.Has(InvocationsFile) {
		invs, err := async.Open(ctx, filepath.Join(stage, InvocationsFile))
		if err != nil {
			return errdefs.Invalid("restore: %s: %v", InvocationsFile, err)
		}
		invs.Close()
	}
	if m.Has(LogsFile) {
		logs, err := logstore.Open(ctx, filepath.Join(stage, LogsFile), logstore.Options{})
		if err != nil {
			return errdefs.Invalid("restore: %s: %v", LogsFile, err)
		}
		if err := logs.Close(); err != nil {
			return errdefs.Invalid("restore: %s: %v", LogsFile, err)
		}
	}
	if m.Has(SecretKey) {
		key, err := os.ReadFile(filepath.Join(stage, SecretKey))
		if err != nil {
			return fmt.Errorf("restore: %w", err)
		}
		if _, err := secrets.New(key); err != nil {
			return errdefs.Invalid("restore: %s: %v", SecretKey, err)
		}
	}
	// The stores' opens leave no -wal or -shm behind; nothing else but
	// what the manifest names may move into the data directory.
	entries, err := os.ReadDir(stage)
	if err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	for _, e := range entries {
		if e.Name() != BlobsDir && !m.Has(e.Name()) {
			return fmt.Errorf("restore: %s was left beside the restored files", e.Name())
		}
	}
	return nil
}

// lockDir takes the lock spry serve takes on its data directory
// (server.lockDir's, on the same file): no server starts on dir while a
// restore writes it, and no restore writes a dir a server runs on.
func lockDir(dir string) (unlock func(), err error) {
	f, err := os.OpenFile(filepath.Join(dir, "spry.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("restore: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, errdefs.New(errdefs.ErrConflict, "restore: a spry serve (or another restore) is using %s", dir)
	}
	return func() { f.Close() }, nil
}

// removeDirs removes the directories in dir whose names start with
// prefix.
func removeDirs(dir, prefix string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range entries {
		if e.IsDir() && strings.HasPrefix(e.Name(), prefix) {
			errs = append(errs, os.RemoveAll(filepath.Join(dir, e.Name())))
		}
	}
	return errors.Join(errs...)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// ctxReader stops reading once ctx ends.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
