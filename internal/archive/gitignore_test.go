package archive

import (
	"os"
	"path/filepath"
	"testing"
)

// gitignoreCases were checked against `git check-ignore --no-index`.
var gitignoreCases = []struct {
	patterns string
	path     string
	isDir    bool
	want     bool
}{
	// Plain names match at any depth, files and directories alike.
	{"foo", "foo", false, true},
	{"foo", "a/b/foo", false, true},
	{"foo", "foo", true, true},
	{"foo", "foo/bar.ts", false, true}, // inside an ignored directory
	{"foo", "foobar", false, false},
	{"foo", "barfoo", false, false},
	// Comments, blank lines, escapes.
	{"# foo\n\n", "# foo", false, false},
	{"\\#foo", "#foo", false, true},
	{"\\!foo", "!foo", false, true},
	{"foo   ", "foo", false, true},
	{"foo\\ ", "foo ", false, true},
	{"foo\\ ", "foo", false, false},
	{"foo\r\n", "foo", false, true},
	// Trailing slash: directories only (and what is in them).
	{"build/", "build", true, true},
	{"build/", "build", false, false},
	{"build/", "src/build", true, true},
	{"build/", "build/x.js", false, true},
	{"build/", "src/build/x.js", false, true},
	// A leading or inner slash anchors to the root.
	{"/build", "build", true, true},
	{"/build", "src/build", true, false},
	{"/build", "build/x.js", false, true},
	{"doc/frotz", "doc/frotz", false, true},
	{"doc/frotz", "a/doc/frotz", false, false},
	{"doc/frotz/", "doc/frotz", true, true},
	{"doc/frotz/", "a/doc/frotz", true, false},
	{"/doc/*.txt", "doc/a.txt", false, true},
	{"/doc/*.txt", "doc/sub/a.txt", false, false},
	// Globs.
	{"*.log", "debug.log", false, true},
	{"*.log", "logs/debug.log", false, true},
	{"*.log", "log", false, false},
	{"*.log", ".log", false, true},
	{"a*", "abc", false, true},
	{"a*c", "a/c", false, false},
	{"foo/*", "foo/bar", false, true},
	{"foo/*", "foo/bar/baz", false, true}, // via foo/bar
	{"foo/*", "foo", true, false},
	{"?.ts", "a.ts", false, true},
	{"?.ts", "ab.ts", false, false},
	{"?.ts", "é.ts", false, false}, // bytes, as in git
	{"??.ts", "é.ts", false, true},
	{"[abc].ts", "b.ts", false, true},
	{"[abc].ts", "d.ts", false, false},
	{"[a-c].ts", "c.ts", false, true},
	{"[!a-c].ts", "c.ts", false, false},
	{"[!a-c].ts", "d.ts", false, true},
	{"[^a-c].ts", "d.ts", false, true},
	{"[[:digit:]]x", "7x", false, true},
	{"[[:digit:]]x", "ax", false, false},
	{"[[:upper:][:digit:]]x", "Ax", false, true},
	{"[]]x", "]x", false, true},
	{"[a-]x", "-x", false, true},
	{"a[", "a[", false, false}, // an unterminated class matches nothing
	{"\\*.ts", "*.ts", false, true},
	{"\\*.ts", "a.ts", false, false},
	{"\\[a]", "[a]", false, true},
	// **
	{"**/foo", "foo", false, true},
	{"**/foo", "a/b/foo", false, true},
	{"**/foo/bar", "foo/bar", false, true},
	{"**/foo/bar", "x/foo/bar", false, true},
	{"abc/**", "abc/x", false, true},
	{"abc/**", "abc/x/y", false, true},
	{"abc/**", "abc", true, false},
	{"a/**/b", "a/b", false, true},
	{"a/**/b", "a/x/b", false, true},
	{"a/**/b", "a/x/y/b", false, true},
	{"a/**/b", "b", false, false},
	{"a/**/b", "x/a/b", false, false},
	{"**", "anything/at/all", false, true},
	{"a**b", "axxb", false, true},
	{"a**b", "ax/xb", false, false},
	// Negation: the last matching pattern wins.
	{"*.log\n!keep.log", "keep.log", false, false},
	{"*.log\n!keep.log", "a.log", false, true},
	{"!keep.log\n*.log", "keep.log", false, true},
	{"/*\n!/src", "src", true, false},
	{"/*\n!/src", "src/a.ts", false, false},
	{"/*\n!/src", "docs", true, true},
	// A file can't be re-included when its directory is excluded.
	{"build/\n!build/keep.ts", "build/keep.ts", false, true},
	{"build/*\n!build/keep.ts", "build/keep.ts", false, false},
	{"build/*\n!build/keep.ts", "build/other.ts", false, true},
	// Always ignored.
	{"", ".git", true, true},
	{"", ".git/HEAD", false, true},
	{"", "node_modules", true, true},
	{"", "pkg/node_modules/x/index.js", false, true},
	{"!node_modules", "node_modules", true, true},
	{"", "src/index.ts", false, false},
}

func TestGitignore(t *testing.T) {
	for _, tc := range gitignoreCases {
		m := ParseGitignore([]byte(tc.patterns))
		if got := m(tc.path, tc.isDir); got != tc.want {
			t.Errorf("patterns %q, path %q (dir %v): ignored = %v, want %v", tc.patterns, tc.path, tc.isDir, got, tc.want)
		}
	}
}

func TestLoadGitignoreNested(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) {
		p := filepath.Join(dir, filepath.FromSlash(name))
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(".gitignore", "*.tmp\n/out/\nsecret*\n")
	write("sub/.gitignore", "!keep.tmp\n/local.ts\n*.gen.ts\n")
	write("sub/deeper/.gitignore", "!secret.txt\n")
	write("out/.gitignore", "!*\n")              // inside an ignored directory: never read
	write("node_modules/x/.gitignore", "!*.tmp") // never read either
	m, err := LoadGitignore(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		path  string
		isDir bool
		want  bool
	}{
		{"a.tmp", false, true},
		{"sub/a.tmp", false, true},
		{"sub/keep.tmp", false, false}, // the deeper file wins
		{"keep.tmp", false, true},      // but only beneath it
		{"sub/local.ts", false, true},  // anchored to sub/
		{"local.ts", false, false},
		{"sub/x/local.ts", false, false},
		{"sub/x/a.gen.ts", false, true},
		{"a.gen.ts", false, false},
		{"secret.txt", false, true},
		{"sub/secret.txt", false, true},
		{"sub/deeper/secret.txt", false, false},
		{"out", true, true},
		{"out/x.ts", false, true},
		{"src/out", true, false},
		{"node_modules/x/a.tmp", false, true},
		{"./sub/a.tmp", false, true},
	} {
		if got := m(tc.path, tc.isDir); got != tc.want {
			t.Errorf("%q (dir %v): ignored = %v, want %v", tc.path, tc.isDir, got, tc.want)
		}
	}

	// No .gitignore at all: only the always-ignored names.
	m, err = LoadGitignore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if !m("node_modules", true) || !m(".git", true) || m("index.ts", false) {
		t.Error("defaults wrong without a .gitignore")
	}
}
