package api

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"

	"github.com/spry-run/spry/internal/auth"
	"github.com/spry-run/spry/internal/errdefs"
)

// A user may not revoke, nor learn of, another user's tokens: revoking
// one answers exactly as revoking one that does not exist, and leaves it
// working.
func TestRevokeOthersToken(t *testing.T) {
	e := newEnv(t)
	alice := e.user("alice")
	e.user("bob")
	var bobs struct{ Token, ID string }
	e.mustDo(e.admin, "POST", "/api/v1/tokens", `{"name":"ci","user":"bob"}`, http.StatusCreated, &bobs)

	s1, other := e.do(alice, "DELETE", "/api/v1/tokens/"+bobs.ID, "")
	wantError(t, "revoke bob's token", s1, other, http.StatusNotFound, "not_found")
	missing := "0123456789abcdef"
	s2, none := e.do(alice, "DELETE", "/api/v1/tokens/"+missing, "")
	wantError(t, "revoke a missing token", s2, none, http.StatusNotFound, "not_found")
	if !bytes.Equal(bytes.ReplaceAll(other, []byte(bobs.ID), []byte(missing)), none) {
		t.Errorf("another's token answers %s, a missing one %s", other, none)
	}
	e.mustDo(bobs.Token, "GET", "/api/v1/whoami", "", http.StatusOK, nil)
}

// A deletion asked by an admin who was deleted meanwhile (the request was
// authenticated first) changes nothing: two admins deleting each other
// at once must not leave one of them without their functions.
func TestDeleteUserByAnAdminDeletedMeanwhile(t *testing.T) {
	e := newEnv(t)
	for _, name := range []string{"alice", "bob"} {
		e.mustDo(e.admin, "POST", "/api/v1/users", `{"name":"`+name+`","admin":true}`, http.StatusCreated, nil)
	}
	e.deploy(e.admin, "/api/v1/functions/hello?owner=alice")
	// bob's request to delete alice was authenticated; then bob went.
	e.mustDo(e.admin, "DELETE", "/api/v1/users/bob", "", http.StatusNoContent, nil)
	r := httptest.NewRequest("DELETE", "/api/v1/users/alice", nil)
	r = r.WithContext(context.WithValue(r.Context(), principalKey, auth.Principal{User: "bob", Admin: true}))
	r.SetPathValue("name", "alice")
	if err := e.api.deleteUser(httptest.NewRecorder(), r); !errors.Is(err, errdefs.ErrUnauthenticated) {
		t.Fatalf("deleteUser by a deleted admin: %v, want unauthenticated", err)
	}
	if _, err := e.fns.Get(context.Background(), "alice", "hello"); err != nil {
		t.Fatalf("alice's function: %v", err)
	}
}

// A user has at most MaxTokensPerUser tokens not revoked; revoking one
// makes room for another.
func TestTokensAreBounded(t *testing.T) {
	e := newEnv(t)
	alice := e.user("alice") // her first token
	var last struct{ ID string }
	for i := 1; i < MaxTokensPerUser; i++ {
		e.mustDo(alice, "POST", "/api/v1/tokens", `{"name":"t"}`, http.StatusCreated, &last)
	}
	s, body := e.do(alice, "POST", "/api/v1/tokens", `{"name":"one more"}`)
	wantError(t, "a token past the bound", s, body, http.StatusForbidden, "quota_exceeded")
	s, body = e.do(e.admin, "POST", "/api/v1/tokens", `{"name":"one more","user":"alice"}`)
	wantError(t, "a token past the bound, made by the admin", s, body, http.StatusForbidden, "quota_exceeded")
	e.mustDo(alice, "DELETE", "/api/v1/tokens/"+last.ID, "", http.StatusNoContent, nil)
	e.mustDo(alice, "POST", "/api/v1/tokens", `{"name":"again"}`, http.StatusCreated, nil)
}

// A token's name is shown in the admin's terminal (spry token ls --user),
// on a line with the token's dates after it: a bidirectional control
// (U+202E RIGHT-TO-LEFT OVERRIDE, U+2066 LEFT-TO-RIGHT ISOLATE...) in it
// would have a terminal that applies the Unicode bidi algorithm show the
// rest of the line reordered, as control characters would overwrite it.
func TestTokenNameRefusesBidiControls(t *testing.T) {
	e := newEnv(t)
	alice := e.user("alice")
	for _, name := range []string{"a\u202eb", "\u2066x", "x\u200fy", "a\u061cb"} {
		s, body := e.do(alice, "POST", "/api/v1/tokens", `{"name":"`+name+`"}`)
		wantError(t, "token name "+strconv.Quote(name), s, body, http.StatusBadRequest, "invalid_argument")
	}
	// Other scripts, right-to-left ones included, are names like any.
	for _, name := range []string{"ci \u05e9\u05dc\u05d5\u05dd", "d\u00e9ploy \U0001F680"} {
		e.mustDo(alice, "POST", "/api/v1/tokens", `{"name":"`+name+`"}`, http.StatusCreated, nil)
	}
}
