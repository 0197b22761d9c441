package archive

import (
	"bufio"
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// alwaysIgnored are names never packed, at any depth: the repository, and
// dependencies (the server installs them itself).
var alwaysIgnored = []string{".git", "node_modules"}

// LoadGitignore returns a matcher for the .gitignore files of dir: the one
// at its root and those in subdirectories that are not themselves ignored.
// The matcher takes a slash-separated path relative to dir and whether it
// is a directory, and reports whether git would ignore it; .git and
// node_modules are always ignored. It is safe for concurrent use.
//
// The usual gitignore syntax is supported: blank lines and # comments,
// trailing spaces (unless escaped), ! negation, a trailing / for
// directories only, a leading or inner / anchoring the pattern to the
// .gitignore's directory, *, ?, [a-z], [!a-z], [[:alpha:]], ** (leading,
// trailing or between slashes) and \ escapes. A deeper .gitignore takes
// precedence over a shallower one; as in git, a file can't be re-included
// when a parent directory is excluded.
func LoadGitignore(dir string) (func(rel string, isDir bool) bool, error) {
	m := &ignoreMatcher{}
	if real, err := filepath.EvalSymlinks(dir); err == nil {
		dir = real
	}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			return nil
		}
		rel := ""
		if p != dir {
			r, err := filepath.Rel(dir, p)
			if err != nil {
				return err
			}
			rel = filepath.ToSlash(r)
			if m.Match(rel, true) {
				return filepath.SkipDir
			}
		}
		name := filepath.Join(p, ".gitignore")
		fi, err := os.Lstat(name)
		if errors.Is(err, fs.ErrNotExist) || (err == nil && !fi.Mode().IsRegular()) {
			return nil // none, or not a file (a directory, a link)
		}
		if err != nil {
			return err
		}
		b, err := os.ReadFile(name)
		if err != nil {
			return err
		}
		m.add(rel, b)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return m.Match, nil
}

// ParseGitignore returns a matcher for the patterns of one .gitignore file
// at the root, plus the always-ignored names.
func ParseGitignore(content []byte) func(rel string, isDir bool) bool {
	m := &ignoreMatcher{}
	m.add("", content)
	return m.Match
}

// ignoreMatcher holds the rules of all loaded .gitignore files, shallower
// files first, so that the last matching rule decides.
type ignoreMatcher struct {
	rules []ignoreRule
}

type ignoreRule struct {
	base    []string // directory of the .gitignore, nil for the root
	segs    []string // pattern split at '/'
	negate  bool
	dirOnly bool
}

func (m *ignoreMatcher) add(base string, content []byte) {
	sc := bufio.NewScanner(bytes.NewReader(content))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		if r, ok := parseRule(sc.Text()); ok {
			if base != "" {
				r.base = strings.Split(base, "/")
			}
			m.rules = append(m.rules, r)
		}
	}
}

func parseRule(line string) (ignoreRule, bool) {
	line = strings.TrimSuffix(line, "\r")
	if line == "" || line[0] == '#' {
		return ignoreRule{}, false
	}
	line = trimTrailingSpaces(line)
	var r ignoreRule
	if line[0] == '!' {
		r.negate = true
		line = line[1:]
	} else if strings.HasPrefix(line, `\!`) || strings.HasPrefix(line, `\#`) {
		line = line[1:]
	}
	if strings.HasSuffix(line, "/") {
		r.dirOnly = true
		line = strings.TrimRight(line, "/")
	}
	if line == "" {
		return ignoreRule{}, false
	}
	// A slash at the start or in the middle anchors the pattern to the
	// .gitignore's directory; otherwise it matches at any depth.
	anchored := strings.Contains(line, "/")
	line = strings.TrimPrefix(line, "/")
	if line == "" {
		return ignoreRule{}, false
	}
	r.segs = strings.Split(line, "/")
	if !anchored {
		r.segs = append([]string{"**"}, r.segs...)
	}
	return r, true
}

// trimTrailingSpaces removes trailing spaces that are not escaped with a
// backslash, and turns an escaped one into a plain space.
func trimTrailingSpaces(s string) string {
	end := len(s)
	for end > 0 && s[end-1] == ' ' {
		if end >= 2 && s[end-2] == '\\' {
			return s[:end-2] + " "
		}
		end--
	}
	return s[:end]
}

// Match reports whether rel (slash-separated, relative to the root) is
// ignored: it, or one of its parent directories, is excluded.
func (m *ignoreMatcher) Match(rel string, isDir bool) bool {
	rel = path.Clean(strings.TrimPrefix(filepath.ToSlash(rel), "./"))
	if rel == "." || rel == "" || rel == ".." || strings.HasPrefix(rel, "../") || strings.HasPrefix(rel, "/") {
		return false
	}
	parts := strings.Split(rel, "/")
	for i := range parts {
		for _, name := range alwaysIgnored {
			if parts[i] == name {
				return true
			}
		}
	}
	for i := 1; i <= len(parts); i++ {
		dir := i < len(parts) || isDir
		if m.excluded(parts[:i], dir) {
			return true
		}
	}
	return false
}

// excluded applies the rules to one path, ignoring its parents: the last
// matching rule decides.
func (m *ignoreMatcher) excluded(parts []string, isDir bool) bool {
	for i := len(m.rules) - 1; i >= 0; i-- {
		r := &m.rules[i]
		if r.dirOnly && !isDir {
			continue
		}
		rest := parts
		if len(r.base) > 0 {
			if len(parts) <= len(r.base) || !equalParts(parts[:len(r.base)], r.base) {
				continue
			}
			rest = parts[len(r.base):]
		}
		if matchSegs(r.segs, rest) {
			return !r.negate
		}
	}
	return false
}

func equalParts(a, b []string) bool {
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// matchSegs matches path segments against pattern segments, where a "**"
// segment matches any number of path segments (at least one when it ends
// the pattern: "dir/**" matches what is inside dir, not dir itself).
func matchSegs(pat, parts []string) bool {
	for len(pat) > 0 {
		if pat[0] == "**" {
			for len(pat) > 1 && pat[1] == "**" {
				pat = pat[1:]
			}
			if len(pat) == 1 {
				return len(parts) > 0
			}
			for i := 0; i < len(parts); i++ {
				if matchSegs(pat[1:], parts[i:]) {
					return true
				}
			}
			return false
		}
		if len(parts) == 0 || !matchSegment(pat[0], parts[0]) {
			return false
		}
		pat, parts = pat[1:], parts[1:]
	}
	return len(parts) == 0
}

// matchSegment matches one path segment (no '/') against a glob: * (any
// run), ? (any one byte), [...] classes and \ escapes. Like git, it works
// on bytes. Each token but * consumes exactly one byte, so backtracking to
// the last * is enough.
func matchSegment(pat, s string) bool {
	px, sx := 0, 0
	starPx, starSx := -1, -1
	for sx < len(s) {
		if px < len(pat) {
			if pat[px] == '*' {
				for px < len(pat) && pat[px] == '*' {
					px++
				}
				starPx, starSx = px, sx
				continue
			}
			n, ok, valid := matchOne(pat[px:], s[sx])
			if !valid {
				return false // an unterminated [ never matches, as in git
			}
			if ok {
				px += n
				sx++
				continue
			}
		}
		if starPx < 0 {
			return false
		}
		// Let the last * eat one more byte.
		starSx++
		px, sx = starPx, starSx
	}
	for px < len(pat) && pat[px] == '*' {
		px++
	}
	return px == len(pat)
}

// matchOne matches the single-byte token at the start of pat against c,
// returning the token's length.
func matchOne(pat string, c byte) (n int, ok, valid bool) {
	switch pat[0] {
	case '?':
		return 1, true, true
	case '[':
		return matchClass(pat, c)
	case '\\':
		if len(pat) == 1 {
			return 1, c == '\\', true
		}
		return 2, pat[1] == c, true
	default:
		return 1, pat[0] == c, true
	}
}

// matchClass matches c against the bracket expression at the start of pat.
func matchClass(pat string, c byte) (n int, matched, valid bool) {
	i := 1
	negate := false
	if i < len(pat) && (pat[i] == '!' || pat[i] == '^') {
		negate = true
		i++
	}
	first := true
	for i < len(pat) {
		if pat[i] == ']' && !first {
			return i + 1, matched != negate, true
		}
		first = false
		if strings.HasPrefix(pat[i:], "[:") {
			if end := strings.Index(pat[i+2:], ":]"); end >= 0 {
				if classMatches(pat[i+2:i+2+end], c) {
					matched = true
				}
				i += 2 + end + 2
				continue
			}
		}
		lo := pat[i]
		if lo == '\\' && i+1 < len(pat) {
			i++
			lo = pat[i]
		}
		i++
		hi := lo
		if i+1 < len(pat) && pat[i] == '-' && pat[i+1] != ']' {
			i++
			hi = pat[i]
			if hi == '\\' && i+1 < len(pat) {
				i++
				hi = pat[i]
			}
			i++
		}
		if lo <= c && c <= hi {
			matched = true
		}
	}
	return 0, false, false
}

func classMatches(name string, c byte) bool {
	switch name {
	case "alnum":
		return isAlpha(c) || isDigit(c)
	case "alpha":
		return isAlpha(c)
	case "digit":
		return isDigit(c)
	case "lower":
		return c >= 'a' && c <= 'z'
	case "upper":
		return c >= 'A' && c <= 'Z'
	case "space":
		return c == ' ' || (c >= '\t' && c <= '\r')
	case "blank":
		return c == ' ' || c == '\t'
	case "punct":
		return c > ' ' && c < 0x7f && !isAlpha(c) && !isDigit(c)
	case "xdigit":
		return isDigit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')
	case "print":
		return c >= ' ' && c < 0x7f
	case "graph":
		return c > ' ' && c < 0x7f
	case "cntrl":
		return c < ' ' || c == 0x7f
	}
	return false
}

func isAlpha(c byte) bool { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') }
func isDigit(c byte) bool { return c >= '0' && c <= '9' }
