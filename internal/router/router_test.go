package router

import (
	"errors"
	"strings"
	"testing"

	"github.com/spry-run/spry/internal/errdefs"
)

func TestSplitPath(t *testing.T) {
	tests := []struct {
		in                string
		owner, name, rest string
		ok                bool
	}{
		{"/fn/alice/hello", "alice", "hello", "/", true},
		{"/fn/alice/hello/", "alice", "hello", "/", true},
		{"/fn/alice/hello/a/b", "alice", "hello", "/a/b", true},
		{"/fn/alice/hello/a%2Fb", "alice", "hello", "/a%2Fb", true},
		{"/fn/alice/hello//x", "alice", "hello", "//x", true},
		{"/fn/alice", "", "", "", false},
		{"/fn/alice/", "", "", "", false},
		{"/fn//hello", "", "", "", false},
		{"/fn/alice/hello@/", "", "", "", false}, // an empty version selector
		{"/fn/alice/hello@v2/x", "alice", "hello@v2", "/x", true},
		{"/api/v1", "", "", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			o, n, r, err := SplitPath(tt.in)
			if (err == nil) != tt.ok {
				t.Fatalf("err = %v", err)
			}
			if err != nil {
				if !errors.Is(err, errdefs.ErrNotFound) {
					t.Fatalf("wrong class: %v", err)
				}
				return
			}
			if o != tt.owner || n != tt.name || r != tt.rest {
				t.Fatalf("got %q %q %q", o, n, r)
			}
		})
	}
}

func FuzzSplitPath(f *testing.F) {
	for _, s := range []string{"/fn/a/b/c", "/fn/", "/fn/a/b", "/x", "/fn/a/b/%zz", "/fn/a//"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		o, n, r, err := SplitPath(p)
		if err != nil {
			if !errors.Is(err, errdefs.ErrNotFound) {
				t.Fatalf("wrong class: %v", err)
			}
			return
		}
		if o == "" || n == "" || strings.Contains(o, "/") || strings.Contains(n, "/") || !strings.HasPrefix(r, "/") {
			t.Fatalf("SplitPath(%q) = %q %q %q", p, o, n, r)
		}
		if Prefix+o+"/"+n+r != p && Prefix+o+"/"+n != p {
			t.Fatalf("parts do not rebuild the path %q", p)
		}
	})
}
