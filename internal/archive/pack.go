package archive

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/spry-run/spry/internal/errdefs"
)

// epoch is the modification time of every packed entry: the archive of the
// same files is the same bytes, whenever and wherever it is made.
var epoch = time.Unix(0, 0)

// PackProject packs the project directory dir as spry deploy DIR sends
// it and spry dev builds it: Pack with dir's .gitignore files
// (LoadGitignore).
func PackProject(dir string) ([]byte, error) {
	ignore, err := LoadGitignore(dir)
	if err != nil {
		return nil, errdefs.Invalid("%v", err)
	}
	var buf bytes.Buffer
	if err := Pack(dir, &buf, ignore); err != nil {
		return nil, errdefs.Invalid("pack %s: %v", dir, err)
	}
	return buf.Bytes(), nil
}

// Pack writes dir as a gzip-compressed tar to w, for Extract to unpack.
// Entries come in lexical order with fixed metadata (mode 0644 or 0755 for
// files with an executable bit, 0755 for directories, time 0, owner 0), so
// the same tree always packs to the same bytes.
//
// ignore, if not nil, is asked about every path (slash-separated, relative
// to dir); an ignored directory is not descended into. LoadGitignore makes
// one. A symbolic link or special file that is not ignored is an
// errdefs.ErrInvalidArgument: Extract refuses links, so they are reported
// here, where they can be fixed.
func Pack(dir string, w io.Writer, ignore func(rel string, isDir bool) bool) error {
	if real, err := filepath.EvalSymlinks(dir); err == nil {
		dir = real // a link to the project is fine; links inside it are not
	}
	zw := gzip.NewWriter(w)
	tw := tar.NewWriter(zw)
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == dir {
			if !d.IsDir() {
				return errdefs.Invalid("%s is not a directory", dir)
			}
			return nil
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		isDir := d.IsDir()
		if ignore != nil && ignore(rel, isDir) {
			if isDir {
				return filepath.SkipDir
			}
			return nil
		}
		switch t := d.Type(); {
		case isDir:
			return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: rel + "/", Mode: 0o755, ModTime: epoch})
		case t&fs.ModeSymlink != 0:
			return errdefs.Invalid("%s is a symbolic link; archives can't hold links: replace it with a copy, or list it in .gitignore", rel)
		case !t.IsRegular():
			return errdefs.Invalid("%s is not a regular file (%v); list it in .gitignore", rel, t)
		}
		return packFile(tw, p, rel)
	})
	if err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return zw.Close()
}

func packFile(tw *tar.Writer, p, rel string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return errdefs.Invalid("%s is not a regular file", rel)
	}
	mode := int64(0o644)
	if fi.Mode()&0o111 != 0 {
		mode = 0o755
	}
	hdr := &tar.Header{Typeflag: tar.TypeReg, Name: rel, Size: fi.Size(), Mode: mode, ModTime: epoch}
	if err := tw.WriteHeader(hdr); err != nil {
		return err
	}
	n, err := io.Copy(tw, f)
	if err != nil {
		return fmt.Errorf("pack %s: %w", rel, err)
	}
	if n != fi.Size() {
		return fmt.Errorf("pack %s: file changed while it was read", rel)
	}
	return nil
}
