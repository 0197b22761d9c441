package api

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/spry-run/spry/internal/errdefs"
)

// A rollback with no body goes to the version before the live one, as
// docs/api.md says, also when the empty body comes chunked (a client that
// streams its body does not know its length in advance).
func TestRollbackNoBody(t *testing.T) {
	for _, chunked := range []bool{false, true} {
		e := newEnv(t)
		alice := e.user("alice")
		e.deploy(alice, "/api/v1/functions/f")
		e.deploy(alice, "/api/v1/functions/f")
		var body io.Reader
		if chunked {
			body = io.MultiReader(strings.NewReader("")) // length unknown
		}
		req, _ := http.NewRequest("POST", e.srv.URL+"/api/v1/functions/f/rollback", body)
		req.Header.Set("Authorization", "Bearer "+alice)
		res, err := e.srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusOK {
			t.Errorf("chunked %v: %d %s", chunked, res.StatusCode, b)
			continue
		}
		var fn FunctionView
		e.mustDo(alice, "GET", "/api/v1/functions/f", "", http.StatusOK, &fn)
		if fn.Version != 1 {
			t.Errorf("chunked %v: live version %d, want 1", chunked, fn.Version)
		}
	}
}

// DELETE .../versions/{version} deletes a version nothing routes to (204)
// and refuses, changing nothing, the live one, one in the traffic split
// or tagged (409 saying which), a missing one (404), a number not written
// as one (400), and a caller who may not manage the function (403).
func TestDeleteVersion(t *testing.T) {
	// alice/f has versions 1 to 5: 5 live with 90%, 4 with 10%, 2 tagged
	// stable; 1 and 3 are free.
	setup := func(t *testing.T) *env {
		e := newEnv(t)
		alice := e.user("alice")
		e.user("bob")
		for range 5 {
			e.deploy(alice, "/api/v1/functions/f")
		}
		e.mustDo(alice, "PUT", "/api/v1/functions/f/tags/stable", `{"version":2}`, http.StatusOK, nil)
		e.mustDo(alice, "PUT", "/api/v1/functions/f/traffic", `{"5":90,"4":10}`, http.StatusOK, nil)
		var tok struct{ Token string }
		e.mustDo(alice, "POST", "/api/v1/tokens", `{"name":"ro","scopes":["read"]}`, http.StatusCreated, &tok)
		e.tokens["alice-read"] = tok.Token
		return e
	}
	for _, tc := range []struct {
		name, as, path string
		status         int
		code, message  string // of the error
	}{
		{"Success", "alice", "f/versions/1", http.StatusNoContent, "", ""},
		{"AdminForOwner", "admin", "f/versions/3?owner=alice", http.StatusNoContent, "", ""},
		{"Live", "alice", "f/versions/5", http.StatusConflict, "conflict", "version 5 of alice/f is live"},
		{"InTrafficSplit", "alice", "f/versions/4", http.StatusConflict, "conflict", "10% of its traffic split: change the traffic first"},
		{"Tagged", "alice", "f/versions/2", http.StatusConflict, "conflict", "named by tag stable: move or remove the tag first"},
		{"Missing", "alice", "f/versions/9", http.StatusNotFound, "not_found", "version 9"},
		{"MissingFunction", "alice", "g/versions/1", http.StatusNotFound, "not_found", "alice/g"},
		{"LeadingZero", "alice", "f/versions/01", http.StatusBadRequest, "invalid_argument", `"01" is not a version number`},
		{"Zero", "alice", "f/versions/0", http.StatusBadRequest, "invalid_argument", "not a version number"},
		{"Negative", "alice", "f/versions/-1", http.StatusBadRequest, "invalid_argument", "not a version number"},
		{"Word", "alice", "f/versions/latest", http.StatusBadRequest, "invalid_argument", "not a version number"},
		{"OtherOwner", "bob", "f/versions/1?owner=alice", http.StatusForbidden, "permission_denied", `functions of user "alice"`},
		{"OwnNamespace", "bob", "f/versions/1", http.StatusNotFound, "not_found", "bob/f"},
		{"ReadToken", "alice-read", "f/versions/1", http.StatusForbidden, "permission_denied", "scope deploy"},
		{"UnknownQuery", "alice", "f/versions/1?user=alice", http.StatusBadRequest, "invalid_argument", `unknown query parameter "user"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := setup(t)
			n := strings.TrimPrefix(tc.path, "f/versions/")
			n, _, _ = strings.Cut(n, "?")
			// Asked for by number before, so the router has it cached.
			if _, err := e.fns.Resolve(t.Context(), "alice", "f", n); err != nil && tc.status == http.StatusNoContent {
				t.Fatalf("@%s before: %v", n, err)
			}
			status, body := e.do(e.tokens[tc.as], "DELETE", "/api/v1/functions/"+tc.path, "")
			var vs struct{ Versions []VersionView }
			e.mustDo(e.tokens["alice"], "GET", "/api/v1/functions/f/versions", "", http.StatusOK, &vs)
			var listed []string
			for _, v := range vs.Versions {
				listed = append(listed, strconv.FormatInt(v.Version, 10))
			}
			if tc.status != http.StatusNoContent {
				wantError(t, "DELETE "+tc.path, status, body, tc.status, tc.code)
				var eb errdefs.Body
				if json.Unmarshal(body, &eb) != nil || !strings.Contains(eb.Error.Message, tc.message) {
					t.Errorf("DELETE %s: %s does not say %q", tc.path, body, tc.message)
				}
				if len(listed) != 5 {
					t.Errorf("a refused delete changed the versions to %v", listed)
				}
				return
			}
			if status != http.StatusNoContent || len(body) != 0 {
				t.Fatalf("DELETE %s: %d %s, want 204 and no body", tc.path, status, body)
			}
			if len(listed) != 4 || slices.Contains(listed, n) {
				t.Errorf("versions after deleting %s: %v", n, listed)
			}
			// Gone for the router too, as a version that never was.
			if _, err := e.fns.Resolve(t.Context(), "alice", "f", n); !errors.Is(err, errdefs.ErrNotFound) {
				t.Errorf("@%s after its deletion: %v, want not found", n, err)
			}
			if _, err := e.fns.Resolve(t.Context(), "alice", "f", "stable"); err != nil {
				t.Errorf("@stable after deleting %s: %v", n, err)
			}
			status, body = e.do(e.tokens["alice"], "DELETE", "/api/v1/functions/"+tc.path, "")
			wantError(t, "DELETE again", status, body, http.StatusNotFound, "not_found")
			// Numbers are not given again.
			if fn := e.deploy(e.tokens["alice"], "/api/v1/functions/f"); fn.Version != 6 {
				t.Errorf("the next deploy is version %d, want 6", fn.Version)
			}
		})
	}
}
