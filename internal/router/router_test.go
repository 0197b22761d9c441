package router

import (
	"errors"
	"net/http"
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

func TestClimbs(t *testing.T) {
	for _, tt := range []struct {
		rest string
		want bool
	}{
		{"/", false},
		{"/a/b.txt", false},
		{"/.well-known/x", false},
		{"/a/../b", false},
		{"/a/./../b", false},
		{"/...", false},
		{"/..a", false},
		{"/a%2e/b", false},
		{"/a/b/../..", false},
		{"/..", true},
		{"/../alice/fn", true},
		{"/a/../../bob/fn", true},
		{"/%2e%2e/x", true},
		{"/%2E./x", true},
		{"/.%2e", true},
		{"/a%2f..%2f..%2fx", true},
		{"/a%2F%2e%2e%2F%2e%2e", true},
		{"/a\\..\\..\\x", true},
		{"//../x", true},      // empty segments are merged, as nginx does
		{"/a//../../x", true}, // ("/a/" under RFC 3986's rules alone)
		{"/./../x", true},
	} {
		if got := climbs(tt.rest); got != tt.want {
			t.Errorf("climbs(%q) = %v, want %v", tt.rest, got, tt.want)
		}
	}
}

// A function's path whose dot segments climb out of /fn/<owner>/<name>/
// is refused (400) on either path, and reaches no function: the router
// served "/fn/bob/fn/../../alice/fn" by bob's function, which a proxy
// in front that removes dot segments (nginx) takes for alice's, and
// allows or denies as alice's. Dot segments that stay within the
// function's path reach it as they are.
func TestDotSegmentsDoNotClimbOut(t *testing.T) {
	paths := make(chan string, 1)
	srv := newTestRouter(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		paths <- r.RequestURI
	}))
	for _, tt := range []struct {
		target, rest string // rest: the path the function gets; "" for refused
	}{
		{"/fn/alice/fn/../../bob/fn/x", ""},
		{"/fn/alice/fn/..", ""},
		{"/fn/alice/fn/%2e%2e/%2E%2e/bob/fn", ""},
		{"/fn/alice/fn/x%2F..%2F..%2F..%2Fbob%2Ffn", ""},
		{"/fn/alice/fn/..?x=1", ""},
		{"/fn/alice/fn/a/../b", "/a/../b"},
		{"/fn/alice/fn/.well-known/x?y=..", "/.well-known/x?y=.."},
	} {
		c := dialRaw(t, srv.URL)
		c.send("GET " + tt.target + " HTTP/1.1\r\nHost: h\r\n\r\n")
		res := c.response()
		b := body(res)
		switch {
		case tt.rest == "" && (res.StatusCode != 400 || !strings.Contains(b, "climb")):
			t.Errorf("%s: %d %s; want 400", tt.target, res.StatusCode, b)
		case tt.rest == "":
		case res.StatusCode != 200:
			t.Errorf("%s: %d %s; want 200", tt.target, res.StatusCode, b)
		default:
			if got := <-paths; got != tt.rest {
				t.Errorf("%s: the function got %q, want %q", tt.target, got, tt.rest)
			}
		}
	}
	select {
	case p := <-paths:
		t.Errorf("a refused request reached the function: %q", p)
	default:
	}
}
