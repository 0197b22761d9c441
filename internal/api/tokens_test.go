package api

import (
	"bytes"
	"net/http"
	"testing"
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
