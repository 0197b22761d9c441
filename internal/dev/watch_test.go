package dev

import (
	"crypto/sha256"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// later is a clock well past every file time the tests make, so that no
// stamp is racy unless a test says so.
func later() time.Time { return time.Now().Add(time.Hour) }

// write replaces path's content and sets its modification time to mod,
// as cp -p, rsync -t or tar do.
func write(t *testing.T, path, content string, mod time.Time) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(path, mod, mod); err != nil {
		t.Fatal(err)
	}
}

// takeForSeen makes the watcher take fi's stamp for the one it read, as
// when a second save in one clock tick leaves the same stamp.
func takeForSeen(w *watcher, path string, fi os.FileInfo) {
	f := w.seen[path]
	f.st = stampOf(fi)
	w.seen[path] = f
}

func expect(t *testing.T, w *watcher, want string) {
	t.Helper()
	code, changed, err := w.check()
	if err != nil {
		t.Fatalf("check: %v", err)
	}
	switch {
	case want == "" && changed:
		t.Fatalf("check reports a change to %q, want none", code)
	case want != "" && !changed:
		t.Fatalf("check reports no change, want %q", want)
	case want != "" && string(code) != want:
		t.Fatalf("check read %q, want %q", code, want)
	}
}

// TestWatcherSaves: every way a save can leave the file is a change,
// however its size and modification time compare with the last.
func TestWatcherSaves(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "fn.ts")
	mod := time.Now().Add(-time.Minute).Truncate(time.Second)
	write(t, path, "version 1", mod)
	w := &watcher{path: path, now: later}
	expect(t, w, "version 1")
	expect(t, w, "")

	// Same size, the modification time put back.
	write(t, path, "version 2", mod)
	expect(t, w, "version 2")
	expect(t, w, "")

	// Another file renamed over it, with the same size and time.
	tmp := filepath.Join(dir, ".fn.ts.swp")
	write(t, tmp, "version 3", mod)
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	expect(t, w, "version 3")

	// A touch is a change (a build again retries what failed).
	touched := time.Now().Add(-time.Second)
	if err := os.Chtimes(path, touched, touched); err != nil {
		t.Fatal(err)
	}
	expect(t, w, "version 3")
	expect(t, w, "")

	// Deleted, then written anew: an error while it is missing, then a
	// change.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if _, _, err := w.check(); !os.IsNotExist(err) {
		t.Fatalf("check of a missing file: %v", err)
	}
	if _, _, err := w.check(); !os.IsNotExist(err) {
		t.Fatalf("check of a missing file: %v", err)
	}
	write(t, path, "version 4", mod)
	expect(t, w, "version 4")
	expect(t, w, "")
}

// TestWatcherRacy: a save in the same clock tick as the last, of the same
// size, leaves the same stamp; while the last change is recent, checks
// read the file anyway and see it.
func TestWatcherRacy(t *testing.T) {
	path := filepath.Join(t.TempDir(), "fn.ts")
	mod := time.Now().Truncate(time.Second)
	write(t, path, "version 1", mod)
	now := time.Now()
	w := &watcher{path: path, now: func() time.Time { return now }}
	expect(t, w, "version 1")
	if !w.seen[path].racy {
		t.Fatalf("a stamp from just now is not racy")
	}

	// The second save within the tick: the kernel would give it the same
	// stamp; so does the test, by taking it for the one seen.
	write(t, path, "version 2", mod)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	takeForSeen(w, path, fi)
	expect(t, w, "version 2")
	// Read again while racy, the same content is no change.
	expect(t, w, "")
	expect(t, w, "")

	// Once the change is older than the window, a check reads the file
	// one last time and the stamp is trusted from then on.
	now = now.Add(racyWindow + time.Second)
	expect(t, w, "")
	if w.seen[path].racy {
		t.Fatalf("a stamp %v old is still racy", racyWindow+time.Second)
	}
	write(t, path, "version 3", mod)
	fi, err = os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	takeForSeen(w, path, fi)
	expect(t, w, "")
}

// TestWatcherWaitsForASaveToSettle: a change younger than settleTime may
// be a save still being written (truncated, then written in place); it
// is read at a later check, whole, not built cut.
func TestWatcherWaitsForASaveToSettle(t *testing.T) {
	path := filepath.Join(t.TempDir(), "fn.ts")
	write(t, path, "version 1", time.Now().Add(-time.Minute))
	var now time.Time
	w := &watcher{path: path, now: func() time.Time { return now }}
	now = time.Now().Add(time.Hour)
	expect(t, w, "version 1")

	// The editor has truncated the file and not yet written it.
	if err := os.Truncate(path, 0); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	now = stampOf(fi).change
	expect(t, w, "")
	now = now.Add(settleTime / 2)
	expect(t, w, "")

	// Written, and no write since for settleTime: the save is read whole.
	if err := os.WriteFile(path, []byte("version 2"), 0o644); err != nil {
		t.Fatal(err)
	}
	if fi, err = os.Stat(path); err != nil {
		t.Fatal(err)
	}
	now = stampOf(fi).change.Add(settleTime)
	expect(t, w, "version 2")
	expect(t, w, "")
}

// TestWatcherDirectory: a directory is refused, not read.
func TestWatcherDirectory(t *testing.T) {
	dir := t.TempDir()
	w := &watcher{path: dir, now: later}
	if _, _, err := w.check(); err == nil || !strings.Contains(err.Error(), "is a directory") {
		t.Fatalf("check of a directory: %v", err)
	}
}

// TestWatcherReadsAgainAfterAWriteDuringTheRead: a write that begins
// after the stat of a check and before its read leaves the read cut; the
// stamp has moved by the stat after the read, so the check reports
// nothing and the next one reads the whole file.
func TestWatcherReadsAgainAfterAWriteDuringTheRead(t *testing.T) {
	path := filepath.Join(t.TempDir(), "fn.ts")
	old := time.Now().Add(-time.Minute)
	write(t, path, "version 1", old)
	w := &watcher{path: path, now: later}
	expect(t, w, "version 1")

	// The editor has written the first bytes of version 2 when the check
	// reads, and the rest right after.
	write(t, path, "vers", old)
	w.afterRead = func() {
		if err := os.WriteFile(path, []byte("version 2"), 0o644); err != nil {
			t.Error(err)
		}
		w.afterRead = nil
	}
	expect(t, w, "")
	expect(t, w, "version 2")
	expect(t, w, "")
}

// TestWatcherProject: a project directory's files are watched, an
// imported one as the entry, and a file added or removed is a change;
// what npm and git write (node_modules, .git) is not.
func TestWatcherProject(t *testing.T) {
	dir := t.TempDir()
	old := time.Now().Add(-time.Minute)
	for _, d := range []string{"src", "node_modules/dep", ".git"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write(t, filepath.Join(dir, "index.ts"), "import './src/lib.ts';", old)
	write(t, filepath.Join(dir, "src/lib.ts"), "version 1", old)
	w := &watcher{path: dir, dir: true, now: later}
	changed := func(what string, want bool) {
		t.Helper()
		code, got, err := w.check()
		if err != nil {
			t.Fatalf("%s: check: %v", what, err)
		}
		if got != want || code != nil {
			t.Fatalf("%s: check reports a change %v (code %q), want %v", what, got, code, want)
		}
	}
	changed("the first check", true)
	changed("nothing", false)

	write(t, filepath.Join(dir, "src/lib.ts"), "version 2", old) // same size and time
	changed("an imported file saved", true)
	changed("nothing", false)

	write(t, filepath.Join(dir, "package.json"), `{"dependencies": {}}`, old)
	changed("a file added", true)
	if err := os.Remove(filepath.Join(dir, "package.json")); err != nil {
		t.Fatal(err)
	}
	changed("a file removed", true)

	write(t, filepath.Join(dir, "node_modules/dep/index.js"), "npm", old)
	write(t, filepath.Join(dir, ".git/index"), "git", old)
	changed("node_modules and .git written", false)
}

// TestWatcherProjectAtomicSave: an editor that saves by removing the file
// and writing it anew leaves the project without it for a moment; a
// check then (the directory changed just now) waits, and the next sees
// the file back: one change, never a missing file.
func TestWatcherProjectAtomicSave(t *testing.T) {
	dir := t.TempDir()
	lib := filepath.Join(dir, "lib.ts")
	write(t, filepath.Join(dir, "index.ts"), "import './lib.ts';", time.Now().Add(-time.Minute))
	write(t, lib, "version 1", time.Now().Add(-time.Minute))
	var now time.Time
	w := &watcher{path: dir, dir: true, now: func() time.Time { return now }}
	now = time.Now().Add(time.Hour)
	if _, changed, err := w.check(); err != nil || !changed {
		t.Fatalf("first check: %v, %v", changed, err)
	}

	if err := os.Remove(lib); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	now = stampOf(fi).change
	if _, changed, err := w.check(); err != nil || changed {
		t.Fatalf("check with the file just removed: changed %v, %v; want it left for the next", changed, err)
	}
	write(t, lib, "version 2", time.Now().Add(-time.Minute))
	if fi, err = os.Stat(lib); err != nil {
		t.Fatal(err)
	}
	now = stampOf(fi).change.Add(settleTime)
	if _, changed, err := w.check(); err != nil || !changed {
		t.Fatalf("check with the file back: changed %v, %v", changed, err)
	}
	if f, ok := w.seen[lib]; !ok || f.sum != sha256.Sum256([]byte("version 2")) {
		t.Fatalf("the file back was not read: %+v", w.seen)
	}
}
