package scaffold

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/spry-run/spry/internal/errdefs"
)

func TestCreate(t *testing.T) {
	want := map[string][]string{
		"deno": {"index.ts", "index_test.ts", "README.md", ".gitignore"},
		"node": {"index.mjs", "index.test.mjs", "package.json", "README.md", ".gitignore"},
	}
	for _, rt := range Runtimes {
		t.Run(rt, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "my-fn")
			files, err := Create(dir, "my-fn", rt)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(files, want[rt]) {
				t.Fatalf("files %v, want %v", files, want[rt])
			}
			for _, f := range files {
				data, err := os.ReadFile(filepath.Join(dir, f))
				if err != nil {
					t.Fatal(err)
				}
				if strings.Contains(string(data), Placeholder) {
					t.Errorf("%s still holds %s", f, Placeholder)
				}
			}
			readme, _ := os.ReadFile(filepath.Join(dir, "README.md"))
			if !strings.Contains(string(readme), "--name my-fn") {
				t.Errorf("README.md does not deploy as my-fn:\n%s", readme)
			}
			// Never over a project.
			if _, err := Create(dir, "my-fn", rt); !errors.Is(err, errdefs.ErrAlreadyExists) {
				t.Errorf("second Create: %v, want already exists", err)
			}
		})
	}
}

func TestCreateChecks(t *testing.T) {
	tmp := t.TempDir()
	if _, err := Create(filepath.Join(tmp, "a"), "Bad_Name", "deno"); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("bad name: %v", err)
	}
	if _, err := Create(filepath.Join(tmp, "b"), "ok", "python"); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("bad runtime: %v", err)
	}
	// An empty directory is fine; a file is not.
	empty := filepath.Join(tmp, "empty")
	if err := os.Mkdir(empty, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := Create(empty, "empty", "deno"); err != nil {
		t.Errorf("empty dir: %v", err)
	}
	file := filepath.Join(tmp, "file")
	if err := os.WriteFile(file, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Create(file, "file", "deno"); err == nil {
		t.Errorf("Create over a file succeeded")
	}
	for _, d := range []string{"a", "b"} {
		if _, err := os.Stat(filepath.Join(tmp, d)); !os.IsNotExist(err) {
			t.Errorf("a refused Create made %s", d)
		}
	}
}
