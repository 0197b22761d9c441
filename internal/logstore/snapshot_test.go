package logstore

import (
	"path/filepath"
	"testing"
)

// A snapshot holds the lines written before it, opens as a log store of
// its own, and leaves the source taking lines.
func TestSnapshot(t *testing.T) {
	s := openTemp(t, Options{})
	appendLinesOf(s, "alice", "hello", "id1", 20)
	flush(t, s)
	p := filepath.Join(t.TempDir(), "logs.db")
	if err := s.Snapshot(t.Context(), p); err != nil {
		t.Fatal(err)
	}
	appendLinesOf(s, "alice", "hello", "id1", 5)
	flush(t, s)
	if n := len(all(t, s, "alice", "hello")); n != 25 {
		t.Errorf("the source holds %d lines, want 25", n)
	}
	snap := openSnapshot(t, p)
	if got := lines(all(t, snap, "alice", "hello")); len(got) != 20 || got[0] != "line 0" || got[19] != "line 19" {
		t.Errorf("the snapshot holds %q", got)
	}
	if err := s.Snapshot(t.Context(), p); err == nil {
		t.Error("a snapshot over an existing one succeeded")
	}
}

func openSnapshot(t *testing.T, path string) *Store {
	t.Helper()
	s := openAt(t, path, Options{})
	t.Cleanup(func() { s.Close() })
	return s
}
