package sandbox

import (
	"debug/elf"
	"fmt"
	"os"
	"path/filepath"
	"sort"
)

func sharedLibs(binary string, seen map[string]bool) ([]string, error) {
	f, err := elf.Open(binary)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", binary, err)
	}
	defer f.Close()
	var out []string
	add := func(p string) {
		if p == "" || seen[p] {
			return
		}
		seen[p] = true
		out = append(out, p)
		// Bind the symlink's target too: bwrap binds the resolved file at
		// the link's path, which is what the loader opens.
		if real, err := filepath.EvalSymlinks(p); err == nil && real != p && !seen[real] {
			seen[real] = true
			out = append(out, real)
		}
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			b := make([]byte, p.Filesz)
			if _, err := p.ReadAt(b, 0); err == nil {
				for len(b) > 0 && b[len(b)-1] == 0 {
					b = b[:len(b)-1]
				}
				add(string(b))
			}
		}
	}
	libs, err := f.ImportedLibraries()
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", binary, err)
	}
	for _, l := range libs {
		p := resolveLib(l)
		if p == "" {
			return nil, fmt.Errorf("%s needs %s, which is not installed", binary, l)
		}
		if seen[p] {
			continue
		}
		add(p)
		more, err := sharedLibs(p, seen)
		if err != nil {
			return nil, err
		}
		out = append(out, more...)
	}
	sort.Strings(out)
	if _, err := os.Stat(binary); err != nil {
		return nil, err
	}
	return out, nil
}
