// Package scaffold writes a new function project (`spry init`): the
// function, a test the runtime's own test runner runs, a README and a
// .gitignore, from templates embedded in the binary, one set per runtime.
package scaffold

import (
	"bytes"
	"embed"
	"errors"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"

	"github.com/spry-run/spry/internal/errdefs"
	"github.com/spry-run/spry/internal/names"
)

//go:embed all:templates
var templates embed.FS

// Runtimes are the runtimes there are templates for.
var Runtimes = []string{"deno", "node"}

// Placeholder stands for the function's name in the templates. A valid
// name (a-z, 0-9, '-') needs no quoting in any of them.
const Placeholder = "__NAME__"

// Create makes dir (which must not exist, or be empty) and writes the
// project for runtime into it. It returns the files' names, relative to
// dir, in the order they are worth reading.
func Create(dir, name, runtime string) ([]string, error) {
	if err := names.Function(name); err != nil {
		return nil, err
	}
	if !slices.Contains(Runtimes, runtime) {
		return nil, errdefs.Invalid("unknown runtime %q: want deno or node", runtime)
	}
	root := path.Join("templates", runtime)
	entries, err := fs.ReadDir(templates, root)
	if err != nil {
		return nil, err
	}
	if err := emptyDir(dir); err != nil {
		return nil, err
	}
	files := map[string][]byte{}
	var order []string
	for _, e := range entries {
		src, err := fs.ReadFile(templates, path.Join(root, e.Name()))
		if err != nil {
			return nil, err
		}
		files[e.Name()] = bytes.ReplaceAll(src, []byte(Placeholder), []byte(name))
		order = append(order, e.Name())
	}
	slices.SortStableFunc(order, func(a, b string) int { return rank(a) - rank(b) })
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	for _, f := range order {
		// O_EXCL: never overwrite, even if a file appeared meanwhile.
		fh, err := os.OpenFile(filepath.Join(dir, f), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if err != nil {
			return nil, err
		}
		_, err = fh.Write(files[f])
		if cerr := fh.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return nil, err
		}
	}
	return order, nil
}

// rank orders a project's files: the function first, then its test, then
// the rest.
func rank(name string) int {
	switch name {
	case "index.ts", "index.mjs":
		return 0
	case "index_test.ts", "index.test.mjs":
		return 1
	case "package.json":
		return 2
	case "README.md":
		return 3
	}
	return 4
}

// emptyDir checks that dir does not exist or is an empty directory.
func emptyDir(dir string) error {
	entries, err := os.ReadDir(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		if fi, serr := os.Stat(dir); serr == nil && !fi.IsDir() {
			return errdefs.New(errdefs.ErrAlreadyExists, "%s exists and is not a directory", dir)
		}
		return err
	case len(entries) > 0:
		return errdefs.New(errdefs.ErrAlreadyExists, "%s already exists and is not empty", dir)
	}
	return nil
}
