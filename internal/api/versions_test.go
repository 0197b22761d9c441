package api

import (
	"io"
	"net/http"
	"strings"
	"testing"
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
