package runtime

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// findBinary locates a runtime binary: an explicit path, then rel next to
// the spry binary (bin/spry -> ../runtimes/...), then rel in the working
// directory or one of its parents, then name in $PATH. flag names the
// command-line flag that gives the explicit path, for the error message.
func findBinary(explicit, rel, name, flag string) (string, error) {
	if explicit != "" {
		if _, err := os.Stat(explicit); err != nil {
			return "", fmt.Errorf("%s binary: %w", name, err)
		}
		return explicit, nil
	}
	var candidates []string
	if exe, err := os.Executable(); err == nil {
		dir := filepath.Dir(exe)
		candidates = append(candidates, filepath.Join(dir, "..", rel), filepath.Join(dir, rel))
	}
	// Walk up from the working directory, so tests run in a package
	// directory find the project's runtimes.
	if wd, err := os.Getwd(); err == nil {
		for dir := wd; ; dir = filepath.Dir(dir) {
			candidates = append(candidates, filepath.Join(dir, rel))
			if dir == filepath.Dir(dir) {
				break
			}
		}
	}
	for _, c := range candidates {
		if fi, err := os.Stat(c); err == nil && fi.Mode().IsRegular() {
			return filepath.Clean(c), nil
		}
	}
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("%s not found: run `make build` (installs the pinned runtimes from npm into runtimes/) or pass %s", name, flag)
}
