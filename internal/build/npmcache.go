package build

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"
)

// DefaultNPMCacheMaxBytes bounds a shared npm cache (DirOptions.NPMCache)
// when DirOptions.NPMCacheMaxBytes is 0: room for the tarballs and
// registry documents of a few thousand package versions (most are tens to
// hundreds of KiB), enough that the dependencies users deploy again and
// again are rarely fetched twice, and small beside the data dir's other
// contents on any server that runs functions.
const DefaultNPMCacheMaxBytes = 1 << 30

// npmCaches are the shared caches builds use, by directory: one lock each
// between the npm runs that use a cache and its pruning.
var npmCaches sync.Map // dir -> *npmCache

// npmCache is a cache directory npm runs share. npm itself never prunes
// it; trim does, from the least recently written entries on.
type npmCache struct {
	dir string
	// mu is held shared by each npm run and alone by pruning: an entry
	// must not go while an npm that has read its index reads its content
	// (npm fails the install then, it does not fetch again).
	mu sync.RWMutex
}

func sharedNPMCache(dir string) *npmCache {
	c, _ := npmCaches.LoadOrStore(dir, &npmCache{dir: dir})
	return c.(*npmCache)
}

// trim prunes the cache to 3/4 of max if it has grown past max. The size
// is read alongside running installs (an estimate, but it spares most
// builds the exclusive lock); pruning waits for them to finish, and holds
// the next ones back while it runs. It returns the bytes removed.
func (c *npmCache) trim(max int64) (int64, error) {
	size, err := cacheSize(c.dir)
	if err != nil || size <= max {
		return 0, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return pruneNPMCache(c.dir, max/4*3)
}

// cacheSize adds up the sizes of the regular files under dir.
func cacheSize(dir string) (int64, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return 0, fmt.Errorf("build: npm cache: %w", err)
	}
	defer root.Close()
	var size int64
	err = fs.WalkDir(root.FS(), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil // gone meanwhile: not counted
		}
		if d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				size += fi.Size()
			}
		}
		return nil
	})
	return size, err
}

// The parts of npm's cache (cacache) pruning knows: index buckets (one
// file per hashed key, a line per write, each naming content by its
// integrity), content (one file per digest), and what is only ever
// scratch.
const (
	cacheIndex   = "_cacache/index-v5/"
	cacheContent = "_cacache/content-v2/"
)

var cacheScratch = []string{"_cacache/tmp/", "_logs/"}

// cacheAlgoRE are the digests content is filed under.
var cacheAlgoRE = regexp.MustCompile(`^sha(1|256|384|512)$`)

// pruneNPMCache removes entries of the npm cache at dir until its files
// add up to target bytes or less: scratch files and content no entry
// names first, then index buckets from the least recently written on,
// each with the content no remaining bucket names. An entry and its
// content go together, so npm never finds an entry without its content.
// No npm may run meanwhile. Files are reached through an os.Root: the
// cache is npm's uid's, and a link it planted cannot turn a removal
// elsewhere.
func pruneNPMCache(dir string, target int64) (int64, error) {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return 0, fmt.Errorf("build: npm cache: %w", err)
	}
	defer root.Close()
	type bucket struct {
		path  string
		size  int64
		mtime time.Time
		refs  []string
	}
	var (
		total   int64
		content = map[string]int64{} // path -> size
		buckets []*bucket
		scratch = map[string]int64{}
	)
	err = fs.WalkDir(root.FS(), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return nil
		}
		total += fi.Size()
		switch {
		case strings.HasPrefix(p, cacheContent):
			content[p] = fi.Size()
		case strings.HasPrefix(p, cacheIndex):
			buckets = append(buckets, &bucket{path: p, size: fi.Size(), mtime: fi.ModTime()})
		default:
			for _, s := range cacheScratch {
				if strings.HasPrefix(p, s) {
					scratch[p] = fi.Size()
				}
			}
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("build: npm cache: %w", err)
	}
	start := total
	if total <= target {
		return 0, nil
	}
	remove := func(p string, size int64) {
		if root.Remove(p) != nil {
			return
		}
		total -= size
		// Empty directories take disk space too; a full one stays.
		for d := path.Dir(p); strings.Count(d, "/") > 2; d = path.Dir(d) {
			if root.Remove(d) != nil {
				break
			}
		}
	}
	refs := map[string]int{}
	for _, b := range buckets {
		b.refs = bucketContent(root, b.path)
		for _, r := range b.refs {
			refs[r]++
		}
	}
	for p, size := range scratch {
		remove(p, size)
	}
	for p, size := range content {
		if refs[p] == 0 {
			remove(p, size)
		}
	}
	sort.SliceStable(buckets, func(i, j int) bool { return buckets[i].mtime.Before(buckets[j].mtime) })
	for _, b := range buckets {
		if total <= target {
			break
		}
		remove(b.path, b.size)
		for _, r := range b.refs {
			if refs[r]--; refs[r] == 0 {
				if size, ok := content[r]; ok {
					remove(r, size)
				}
			}
		}
	}
	return start - total, nil
}

// maxBucket bounds the bucket a prune reads: npm appends a line per
// write, a few hundred bytes each.
const maxBucket = 16 << 20

// bucketContent returns the content paths (relative to the cache) an
// index bucket's entries name.
func bucketContent(root *os.Root, p string) []string {
	f, err := root.Open(p)
	if err != nil {
		return nil
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxBucket))
	if err != nil {
		return nil
	}
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 4096), maxBucket)
	for sc.Scan() {
		_, entry, ok := strings.Cut(sc.Text(), "\t")
		if !ok {
			continue
		}
		var e struct {
			Integrity *string `json:"integrity"`
		}
		if json.Unmarshal([]byte(entry), &e) != nil || e.Integrity == nil {
			continue // a removed entry's line has none
		}
		for _, sri := range strings.Fields(*e.Integrity) {
			algo, digest, ok := strings.Cut(sri, "-")
			digest, _, _ = strings.Cut(digest, "?")
			if !ok || !cacheAlgoRE.MatchString(algo) {
				continue
			}
			raw, err := base64.StdEncoding.DecodeString(digest)
			if err != nil || len(raw) < 3 {
				continue
			}
			h := hex.EncodeToString(raw)
			out = append(out, cacheContent+algo+"/"+h[:2]+"/"+h[2:4]+"/"+h[4:])
		}
	}
	return out
}
