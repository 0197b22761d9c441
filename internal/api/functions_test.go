package api

import (
	"context"
	"errors"
	"net/url"
	"strings"
	"testing"

	"github.com/spry-run/spry/internal/async"
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
		{"after=", store.Page{}, true},        // the last page's missing next: no cursor
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

// A cursor is good only for the list it came from: one of another
// owner's functions (or of the admin's list of everyone's) given with
// ?owner=, or an empty one, is a 400 naming after, not an empty or
// wrong page.
func TestListCursorOfAnotherList(t *testing.T) {
	e := newEnv(t)
	withInvocations(t, e, async.Config{Send: func(context.Context, *async.Invocation) async.Result { return async.Result{Status: 200} }}, false)
	alice := e.user("alice")
	e.user("bob")
	e.deploy(alice, "/api/v1/functions/a")
	e.deploy(e.admin, "/api/v1/functions/b?owner=bob")
	e.deploy(e.admin, "/api/v1/functions/c?owner=bob")
	var everyone FunctionList
	e.mustDo(e.admin, "GET", "/api/v1/functions?limit=1", "", 200, &everyone) // alice/a, then bob's
	var bobs FunctionList
	e.mustDo(e.admin, "GET", "/api/v1/functions?owner=bob&limit=1", "", 200, &bobs)
	for _, tt := range []struct{ name, token, path string }{
		{"everyone's cursor on bob's list", e.admin, "/api/v1/functions?owner=bob&after=" + everyone.Next},
		{"bob's cursor on alice's list", e.admin, "/api/v1/functions?owner=alice&after=" + bobs.Next},
		{"bob's cursor on alice's own list", alice, "/api/v1/functions?after=" + bobs.Next},
		{"empty after", e.admin, "/api/v1/functions?after="},
		{"empty invocations after", e.admin, "/api/v1/functions/a/invocations?owner=alice&after="},
	} {
		st, body := e.do(tt.token, "GET", tt.path, "")
		wantError(t, tt.name, st, body, 400, "invalid_argument")
		if !strings.Contains(string(body), "after") {
			t.Errorf("%s: %s does not name after", tt.name, body)
		}
	}
	// The admin's list of everyone's goes on from any owner's cursor.
	var rest FunctionList
	e.mustDo(e.admin, "GET", "/api/v1/functions?after="+bobs.Next, "", 200, &rest)
	if len(rest.Functions) != 1 || rest.Functions[0].Name != "c" {
		t.Errorf("everyone's after bob/b: %+v", rest.Functions)
	}
}
