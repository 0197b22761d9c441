package sandbox

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// Bubblewrap runs as the instance's unprivileged uid and resolves bind
// sources as that uid, so every directory above a source must be
// searchable by others. Expose returns a path to file that is: the path
// itself when it already is, or else a copy kept under cacheDir (named for
// the file's size and mtime, so it is made once and shared by every server
// on the host).
func Expose(file, cacheDir string) (string, error) {
	abs, err := filepath.Abs(file)
	if err != nil {
		return "", err
	}
	if real, err := filepath.EvalSymlinks(abs); err == nil {
		abs = real
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return "", err
	}
	if OthersCanReach(abs) {
		return abs, nil
	}
	name := fmt.Sprintf("%s-%d-%d", filepath.Base(abs), fi.Size(), fi.ModTime().UnixNano())
	dst := filepath.Join(cacheDir, name)
	if _, err := os.Stat(dst); err == nil {
		return dst, nil
	}
	if err := MkdirReachable(cacheDir); err != nil {
		return "", err
	}
	src, err := os.Open(abs)
	if err != nil {
		return "", err
	}
	defer src.Close()
	tmp, err := os.CreateTemp(cacheDir, ".tmp-"+name)
	if err != nil {
		return "", err
	}
	defer os.Remove(tmp.Name())
	if _, err := io.Copy(tmp, src); err != nil {
		tmp.Close()
		return "", err
	}
	if err := tmp.Chmod(fi.Mode().Perm() | 0o555); err != nil {
		tmp.Close()
		return "", err
	}
	if err := tmp.Close(); err != nil {
		return "", err
	}
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return "", err
	}
	return dst, nil
}

// OthersCanReach reports whether a process of another, unprivileged uid
// can reach path: every parent directory searchable by others and the file
// itself readable by others.
func OthersCanReach(path string) bool {
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm()&0o004 == 0 {
		return false
	}
	for dir := filepath.Dir(path); ; dir = filepath.Dir(dir) {
		di, err := os.Stat(dir)
		if err != nil || di.Mode().Perm()&0o001 == 0 {
			return false
		}
		if dir == "/" || !strings.Contains(dir, "/") {
			return true
		}
	}
}

// MkdirReachable creates dir (mode 0711: searchable, not listable, by
// others) and makes sure others can reach it.
func MkdirReachable(dir string) error {
	if err := os.MkdirAll(dir, 0o711); err != nil {
		return err
	}
	if err := os.Chmod(dir, 0o711); err != nil {
		return err
	}
	for d := filepath.Dir(dir); d != "/"; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return err
		}
		if fi.Mode().Perm()&0o001 == 0 {
			return fmt.Errorf("%s is not searchable by other users, so sandboxes cannot reach %s; choose another directory", d, dir)
		}
	}
	return nil
}
