package api

import (
	"context"
	"net/http"
	"testing"

	"github.com/spry-run/spry/internal/api/apitest"
	"github.com/spry-run/spry/internal/auth"
)

// Access is set at deploy (JSON body or query) and by PATCH, each a new
// version, shown in the function and each version; a wrong value is a
// 400 that changes nothing.
func TestAccessSetting(t *testing.T) {
	e := newEnv(t)
	alice := e.user("alice")
	var fn FunctionView
	e.mustDo(alice, "PUT", "/api/v1/functions/f", `{"code":"export default { fetch() { return new Response('hi') } }","access":"private"}`, http.StatusCreated, &fn)
	if fn.Access != "private" || fn.Limits.Access != "private" {
		t.Fatalf("deployed private: access %q, limits %+v", fn.Access, fn.Limits)
	}
	e.mustDo(alice, "PATCH", "/api/v1/functions/f", `{"access":"public"}`, http.StatusOK, &fn)
	if fn.Version != 2 || fn.Access != "public" {
		t.Fatalf("PATCH public: version %d, access %q", fn.Version, fn.Access)
	}
	for _, body := range []string{`{"access":"internal"}`, `{"access":"PRIVATE"}`} {
		status, b := e.do(alice, "PATCH", "/api/v1/functions/f", body)
		wantError(t, body, status, b, http.StatusBadRequest, "invalid_argument")
	}
	e.mustDo(alice, "GET", "/api/v1/functions/f", "", http.StatusOK, &fn)
	if fn.Version != 2 || fn.Access != "public" {
		t.Fatalf("after refused changes: version %d, access %q", fn.Version, fn.Access)
	}
	var vs struct{ Versions []VersionView }
	e.mustDo(alice, "GET", "/api/v1/functions/f/versions", "", http.StatusOK, &vs)
	if len(vs.Versions) != 2 || vs.Versions[0].Access != "public" || vs.Versions[1].Access != "private" {
		t.Fatalf("versions: %+v", vs.Versions)
	}

	// A raw deploy takes it in the query.
	if status, b := e.deployRaw(alice, "g", "access=private"); status != http.StatusCreated {
		t.Fatalf("raw deploy: %d %s", status, b)
	}
	e.mustDo(alice, "GET", "/api/v1/functions/g", "", http.StatusOK, &fn)
	if fn.Access != "private" {
		t.Fatalf("raw deploy with ?access=private: access %q", fn.Access)
	}
}

// A token of scope invoke can be made, and reads nothing through the API.
func TestInvokeScopeReadsNothing(t *testing.T) {
	e := newEnv(t)
	alice := e.user("alice")
	var tok struct{ Token string }
	e.mustDo(alice, "POST", "/api/v1/tokens", `{"name":"svc","scopes":["invoke"]}`, http.StatusCreated, &tok)
	for _, path := range []string{"/api/v1/functions", "/api/v1/usage"} {
		status, b := e.do(tok.Token, "GET", path, "")
		wantError(t, path, status, b, http.StatusForbidden, "permission_denied")
	}
	e.mustDo(tok.Token, "GET", "/api/v1/whoami", "", http.StatusOK, nil)
}

// A token the API revokes, and the tokens of a user it deletes, leave the
// router's cache at once.
func TestRevocationReachesTheTokenCache(t *testing.T) {
	d := apitest.New(t)
	cache := auth.NewCache(d.Auth, 0, 0)
	e := newEnvOn(t, d, Config{MaxCodeBytes: 1 << 20, Forget: cache})
	ctx := context.Background()
	alice, bob := e.user("alice"), e.user("bob")
	var tok struct{ Token, ID string }
	e.mustDo(alice, "POST", "/api/v1/tokens", `{"name":"svc","scopes":["invoke"]}`, http.StatusCreated, &tok)
	for _, tk := range []string{tok.Token, alice, bob} {
		if _, err := cache.Authenticate(ctx, tk); err != nil {
			t.Fatal(err)
		}
	}
	e.mustDo(alice, "DELETE", "/api/v1/tokens/"+tok.ID, "", http.StatusNoContent, nil)
	if _, err := cache.Authenticate(ctx, tok.Token); err == nil {
		t.Fatal("a token the API revoked still passes the cache")
	}
	e.mustDo(e.admin, "DELETE", "/api/v1/users/bob", "", http.StatusNoContent, nil)
	if _, err := cache.Authenticate(ctx, bob); err == nil {
		t.Fatal("a deleted user's token still passes the cache")
	}
	if _, err := cache.Authenticate(ctx, alice); err != nil {
		t.Fatalf("alice's token: %v", err)
	}
}
