package build

import (
	"context"
	"encoding/base64"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spry-run/spry/internal/npmtest"
)

// The shared npm cache stays within its bound however many packages
// builds install: past it the least recently written entries go, with
// their content, and the cache stays whole (what went is fetched again).
func TestNPMCacheBound(t *testing.T) {
	needNPM(t)
	t.Parallel()
	// Packages of ~48 KiB each (their tarballs hardly compress).
	rng := rand.New(rand.NewPCG(1, 2))
	var pkgs []npmtest.Package
	for i := range 3 {
		blob := make([]byte, 48<<10)
		for j := range blob {
			blob[j] = byte(rng.Uint32())
		}
		pkgs = append(pkgs, npmtest.Package{Name: fmt.Sprintf("pad-%d", i), Version: "1.0.0", Main: "index.js",
			Files: map[string]string{"index.js": "module.exports = 1;\n", "blob.txt": base64.StdEncoding.EncodeToString(blob)}})
	}
	reg := npmtest.Start(t, pkgs...)
	cache := t.TempDir()
	const max = 120 << 10 // two packages, not three
	install := func(name string) {
		t.Helper()
		dir := writeProject(t, map[string]string{
			"package.json": `{"dependencies": {"` + name + `": "1.0.0"}}`,
			"index.ts":     "export default 1;\n",
		})
		if _, err := BundleDir(context.Background(), dir, DirOptions{Registry: reg.URL, NPMCache: cache, NPMCacheMaxBytes: max}); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		size, err := cacheSize(cache)
		if err != nil {
			t.Fatal(err)
		}
		if size > max {
			t.Errorf("after %s the cache holds %d bytes; its bound is %d", name, size, max)
		}
	}
	for _, p := range pkgs {
		install(p.Name)
	}
	// The oldest went, the newest stayed.
	if cached(t, cache, "pad-0") || !cached(t, cache, "pad-2") {
		t.Errorf("pad-0 cached: %v, pad-2 cached: %v; want the oldest pruned first", cached(t, cache, "pad-0"), cached(t, cache, "pad-2"))
	}
	// What went is fetched again; what stayed still installs.
	install("pad-0")
	install("pad-2")
}

// cached reports whether an index entry of the cache names the package.
func cached(t *testing.T, cache, name string) bool {
	t.Helper()
	found := false
	err := filepath.WalkDir(filepath.Join(cache, "_cacache", "index-v5"), func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err == nil && strings.Contains(string(b), "/"+name) {
			found = true
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return found
}

// Pruning removes entries oldest first with their content, content no
// entry names and scratch files, and nothing a link in the cache (npm's
// uid's to write) points to outside it.
func TestPruneNPMCache(t *testing.T) {
	cache, outside := t.TempDir(), t.TempDir()
	digest := func(b byte) (sri, path string) {
		raw := make([]byte, 64)
		for i := range raw {
			raw[i] = b
		}
		h := fmt.Sprintf("%x", raw)
		return "sha512-" + base64.StdEncoding.EncodeToString(raw), "_cacache/content-v2/sha512/" + h[:2] + "/" + h[2:4] + "/" + h[4:]
	}
	write := func(dir, rel string, size int, age time.Duration) {
		p := filepath.Join(dir, filepath.FromSlash(rel))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(strings.Repeat("x", size)), 0o644); err != nil {
			t.Fatal(err)
		}
		mt := time.Now().Add(-age)
		if err := os.Chtimes(p, mt, mt); err != nil {
			t.Fatal(err)
		}
	}
	bucket := func(rel, sri string, age time.Duration) {
		write(cache, rel, 0, 0)
		line := "\nabc\t" + `{"key":"k","integrity":"` + sri + `","time":1}`
		if err := os.WriteFile(filepath.Join(cache, rel), []byte(line), 0o644); err != nil {
			t.Fatal(err)
		}
		mt := time.Now().Add(-age)
		os.Chtimes(filepath.Join(cache, rel), mt, mt)
	}
	oldSRI, oldContent := digest(0x11)
	newSRI, newContent := digest(0x22)
	linkSRI, linkContent := digest(0xab)
	bucket("_cacache/index-v5/00/00/old", oldSRI, 2*time.Hour)
	bucket("_cacache/index-v5/00/00/new", newSRI, time.Minute)
	bucket("_cacache/index-v5/00/00/link", linkSRI, 3*time.Hour)
	write(cache, oldContent, 1000, 0)
	write(cache, newContent, 1000, 0)
	_, orphan := digest(0x33)
	write(cache, orphan, 1000, 0)
	write(cache, "_cacache/tmp/partial", 1000, 0)
	// The oldest entry's content directory is a link out of the cache.
	rel := strings.TrimPrefix(linkContent, "_cacache/content-v2/sha512/ab/")
	write(outside, rel, 1000, 0)
	if err := os.Symlink(outside, filepath.Join(cache, "_cacache/content-v2/sha512/ab")); err != nil {
		t.Fatal(err)
	}

	if _, err := pruneNPMCache(cache, 1500); err != nil {
		t.Fatal(err)
	}
	for rel, want := range map[string]bool{
		oldContent:                     false,
		"_cacache/index-v5/00/00/old":  false,
		"_cacache/index-v5/00/00/link": false,
		orphan:                         false,
		"_cacache/tmp/partial":         false,
		newContent:                     true,
		"_cacache/index-v5/00/00/new":  true,
	} {
		_, err := os.Lstat(filepath.Join(cache, filepath.FromSlash(rel)))
		if got := err == nil; got != want {
			t.Errorf("%s kept: %v, want %v", rel, got, want)
		}
	}
	if _, err := os.Stat(filepath.Join(outside, rel)); err != nil {
		t.Errorf("a file outside the cache went: %v", err)
	}
}
