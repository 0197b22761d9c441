package names

import (
	"errors"
	"strings"
	"testing"

	"github.com/spry-run/spry/internal/errdefs"
)

func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		ok   bool
	}{
		{"hello", true},
		{"a", true},
		{"hello-world-2", true},
		{strings.Repeat("a", 63), true},
		{strings.Repeat("a", 64), false},
		{"", false},
		{"Hello", false},
		{"hello_world", false},
		{"-hello", false},
		{"hello-", false},
		{"he llo", false},
		{"héllo", false},
		{"a/b", false},
		{"..", false},
		{"\xff", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Function(tt.name)
			if (err == nil) != tt.ok {
				t.Fatalf("Function(%q) = %v, want ok=%v", tt.name, err, tt.ok)
			}
			if err != nil && !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("error %v is not ErrInvalidArgument", err)
			}
		})
	}
}

func FuzzValidate(f *testing.F) {
	for _, s := range []string{"hello", "", "-", "a-b", "\x00", "ÄÖ", strings.Repeat("z", 70)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		err := Function(s)
		if err != nil {
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("wrong class: %v", err)
			}
			return
		}
		// Anything accepted must be safe in a URL path segment, a file name
		// and a cgroup name.
		if len(s) == 0 || len(s) > MaxLen || strings.ContainsAny(s, "/.%?#\\ ") {
			t.Fatalf("accepted unsafe name %q", s)
		}
	})
}
