package api

import (
	"errors"
	"net/url"
	"testing"

	"github.com/spry-run/spry/internal/errdefs"
	"github.com/spry-run/spry/internal/names"
	"github.com/spry-run/spry/internal/store"
)

func TestParsePage(t *testing.T) {
	cursor := encodeCursor(store.FunctionKey{Owner: "alice", Name: "hello"})
	for _, tc := range []struct {
		query string
		want  store.Page
		bad   bool
	}{
		{"", store.Page{Limit: DefaultPageSize}, false},
		{"limit=1", store.Page{Limit: 1}, false},
		{"limit=1000", store.Page{Limit: 1000}, false},
		{"after=" + cursor, store.Page{Limit: DefaultPageSize, After: store.FunctionKey{Owner: "alice", Name: "hello"}}, false},
		{"limit=0", store.Page{}, true},
		{"limit=1001", store.Page{}, true},
		{"limit=-5", store.Page{}, true},
		{"limit=ten", store.Page{}, true},
		{"after=not-base64!", store.Page{}, true},
		{"after=" + encodeCursor(store.FunctionKey{Owner: "Alice", Name: "x"}), store.Page{}, true},
		{"after=YWxpY2U", store.Page{}, true}, // "alice": no name
	} {
		q, _ := url.ParseQuery(tc.query)
		got, err := parsePage(q)
		if tc.bad {
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Errorf("%q: err %v, want invalid_argument", tc.query, err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%q: got %+v, %v; want %+v", tc.query, got, err, tc.want)
		}
	}
}

// A cursor from any string decodes to a valid key or to nothing, and every
// key's cursor decodes back to it.
func FuzzDecodeCursor(f *testing.F) {
	f.Add(encodeCursor(store.FunctionKey{Owner: "alice", Name: "hello"}))
	f.Add("")
	f.Add("Lw")
	f.Fuzz(func(t *testing.T, s string) {
		k, ok := decodeCursor(s)
		if !ok {
			return
		}
		if names.User(k.Owner) != nil || names.Function(k.Name) != nil {
			t.Fatalf("%q decoded to an invalid key %+v", s, k)
		}
		if back, ok := decodeCursor(encodeCursor(k)); !ok || back != k {
			t.Fatalf("%+v does not round-trip", k)
		}
	})
}
