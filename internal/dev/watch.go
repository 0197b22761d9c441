package dev

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"syscall"
	"time"
)

// racyWindow is how long after a change a file's stamp may still hide
// another: a file system stamps times with a coarse clock (a kernel tick,
// or seconds on some), so two saves of the same size within one tick
// leave the same stamp. While a file's last change is this recent, every
// poll reads it again and compares its content.
const racyWindow = 2 * time.Second

// settleTime is how old a change must be before it is read as a save:
// writing a file takes a few writes, and a check between them would read
// it cut; an editor's atomic save may remove the file a moment before
// it puts the new one in its place.
const settleTime = 50 * time.Millisecond

// stamp is what stat tells of a file: a save changes at least one of
// these. The change time and inode catch what size and modification
// time miss: a save that keeps the size and restores the modification
// time (cp -p, rsync -t, tar, touch -r) or renames another file over
// this one.
type stamp struct {
	size        int64
	mod, change time.Time
	dev, ino    uint64
}

func stampOf(fi os.FileInfo) stamp {
	st := stamp{size: fi.Size(), mod: fi.ModTime()}
	if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
		st.change = time.Unix(sys.Ctim.Sec, sys.Ctim.Nsec)
		st.dev, st.ino = sys.Dev, sys.Ino
	}
	return st
}

// last is when the file last changed, as far as its stamp tells.
func (st stamp) last() time.Time {
	if st.change.IsZero() {
		return st.mod
	}
	return st.change
}

// seenFile is a file as the watcher last read it.
type seenFile struct {
	st   stamp
	sum  [32]byte // SHA-256 of its content
	racy bool     // st was recent when read: read it again on each check
}

// watcher tells when the function's source changes: one file, or (dir)
// the files of a project directory, all but node_modules and .git,
// where npm and git write. It stats the files on each check and reports
// a change when a file came or went, when a stamp differs from the last,
// or when a stamp may hide a save (see racyWindow) and the content
// differs from what it last read. A save that changes nothing but a
// stamp (a touch) is a change too: it builds again, which retries what
// failed (fetching an npm: import, say). Not safe for concurrent use.
type watcher struct {
	path string
	dir  bool // path is a project directory
	now  func() time.Time

	seen map[string]seenFile // by path, as last read
	sum  [32]byte            // of every file's path and content
	read bool                // whether the files were read at all

	afterRead func() // tests: runs between the read and the stat after it
}

// skipDirs are the directories of a project that are not watched: what
// npm installs (spry dev's own builds write it) and git's.
var skipDirs = map[string]bool{"node_modules": true, ".git": true}

// snapshot stats the watched files. newest is the latest change among
// them and, for a project, among its directories, whose change time
// moves when a file is created, removed or renamed in them: a file
// gone, as an editor's atomic save leaves it for a moment, is a change
// as fresh as that.
func (w *watcher) snapshot() (map[string]stamp, time.Time, error) {
	fi, err := os.Stat(w.path)
	if err != nil {
		return nil, time.Time{}, err
	}
	if !w.dir {
		if fi.IsDir() {
			return nil, time.Time{}, fmt.Errorf("%s is a directory; spry dev serves a file, or a project directory given at the start", w.path)
		}
		st := stampOf(fi)
		return map[string]stamp{w.path: st}, st.last(), nil
	}
	if !fi.IsDir() {
		return nil, time.Time{}, fmt.Errorf("%s is not a directory any more", w.path)
	}
	files := map[string]stamp{}
	var newest time.Time
	err = filepath.WalkDir(w.path, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) && p != w.path {
				return nil // removed since its directory was read
			}
			return err
		}
		if d.IsDir() && p != w.path && skipDirs[d.Name()] {
			return filepath.SkipDir
		}
		fi, err := os.Stat(p) // through a link, to what the build reads
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		st := stampOf(fi)
		if st.last().After(newest) {
			newest = st.last()
		}
		if fi.Mode().IsRegular() {
			files[p] = st
		}
		return nil
	})
	return files, newest, err
}

// check returns the file's content (nil for a project) and true when
// the source changed since the last check (the first check always reads
// it), or an error when it cannot be stat'ed or read.
func (w *watcher) check() ([]byte, bool, error) {
	start := w.now()
	files, newest, err := w.snapshot()
	if err != nil {
		return nil, false, err
	}
	moved := !w.read || len(files) != len(w.seen)
	racy := false
	for p, st := range files {
		old, ok := w.seen[p]
		moved = moved || !ok || old.st != st
		racy = racy || old.racy
	}
	if !moved && !racy {
		return nil, false, nil
	}
	// A save still being written (an editor that truncates the file and
	// writes it in place, or removes it and writes it anew) reads as an
	// empty, cut or missing file: a change this fresh is left for the
	// next check, which sees it whole, rather than built and reported as
	// an error that the next check takes back.
	if w.read && moved && start.Sub(newest) < settleTime {
		return nil, false, nil
	}
	next := make(map[string]seenFile, len(files))
	var code []byte
	for p, st := range files {
		if old, ok := w.seen[p]; ok && old.st == st && !old.racy {
			next[p] = old
			continue
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, false, err
		}
		if !w.dir {
			code = b
		}
		next[p] = seenFile{st: st, sum: sha256.Sum256(b), racy: start.Sub(st.last()) < racyWindow}
	}
	if w.afterRead != nil {
		w.afterRead()
	}
	// A write that began between the stat and the read (an editor
	// writing in place) may have left the read cut, and the settle rule
	// above could not see it: a stamp has moved since, so the next check
	// reads the files again, once they have settled.
	if again, _, err := w.snapshot(); err != nil || !sameStamps(again, files) {
		return nil, false, nil
	}
	sum := sumOf(next)
	changed := !w.read || moved || sum != w.sum
	w.seen, w.sum, w.read = next, sum, true
	if !changed {
		return nil, false, nil
	}
	// A file that changed was read: code is its content.
	return code, true, nil
}

func sameStamps(a, b map[string]stamp) bool {
	if len(a) != len(b) {
		return false
	}
	for p, st := range a {
		if o, ok := b[p]; !ok || o != st {
			return false
		}
	}
	return true
}

// sumOf digests every file's path and content: two checks that read the
// same files alike give the same sum.
func sumOf(files map[string]seenFile) [32]byte {
	paths := make([]string, 0, len(files))
	for p := range files {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	h := sha256.New()
	for _, p := range paths {
		s := files[p].sum
		h.Write([]byte(p))
		h.Write([]byte{0})
		h.Write(s[:])
	}
	var out [32]byte
	h.Sum(out[:0])
	return out
}
