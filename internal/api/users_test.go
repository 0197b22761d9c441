package api

import (
	"bytes"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sync"
	"testing"
)

// send is e.do for other goroutines: it reports a failed round trip
// as status 0 rather than ending the test.
func (e *env) send(token, method, path, body string) (int, []byte) {
	var rd io.Reader
	if body != "" {
		rd = bytes.NewReader([]byte(body))
	}
	req, err := http.NewRequest(method, e.srv.URL+path, rd)
	if err != nil {
		return 0, []byte(err.Error())
	}
	req.Header.Set("Authorization", "Bearer "+token)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	res, err := e.srv.Client().Do(req)
	if err != nil {
		return 0, []byte(err.Error())
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, b
}

// gone says whether a status is that of a token that does not work: a
// 401, or the 429 of the failure limiter, which counts only wrong tokens
// (a right one passes it).
func gone(status int) bool {
	return status == http.StatusUnauthorized || status == http.StatusTooManyRequests
}

// Deleting a user while an admin makes a user of the same name again,
// and while the old user goes on deploying and making tokens, ends as
// one of the serial orders would: the new user has only what it made
// itself: no function, version or token of the old one's, and the
// deletion takes nothing of the new one's. Before, a deploy or a token
// of the old user's could land after the deletion's sweep, on the new
// user, and the deletion's second sweep could take the new user's
// functions.
func TestDeleteUserRacesItsRecreation(t *testing.T) {
	e := newEnv(t)
	const code = `{"code":"export default { fetch() { return new Response('hi') } }"}`
	rounds := 40
	if testing.Short() {
		rounds = 10
	}
	for round := range rounds {
		old := e.user("bob")
		e.deploy(old, "/api/v1/functions/a")
		var (
			wg        sync.WaitGroup
			delStatus int
			delBody   []byte
			newToken  string
			newID     string
			made      []string // functions the new bob deployed
			oldTokens []string // tokens the old bob was given
			failures  []string
			mu        sync.Mutex
		)
		fail := func(format string, args ...any) {
			mu.Lock()
			failures = append(failures, fmt.Sprintf(format, args...))
			mu.Unlock()
		}
		wg.Go(func() {
			delStatus, delBody = e.send(e.admin, "DELETE", "/api/v1/users/bob", "")
		})
		wg.Go(func() {
			// Made again as soon as the old one is gone.
			for range 2000 {
				status, body := e.send(e.admin, "POST", "/api/v1/users", `{"name":"bob"}`)
				if status == http.StatusConflict {
					continue
				}
				if status != http.StatusCreated {
					fail("create bob: %d %s", status, body)
					return
				}
				var tr struct {
					Token   string `json:"token"`
					TokenID string `json:"token_id"`
				}
				_ = json.Unmarshal(body, &tr)
				newToken, newID = tr.Token, tr.TokenID
				break
			}
			if newToken == "" {
				fail("bob was never made again")
				return
			}
			for _, name := range []string{"a", "b"} {
				status, body := e.send(newToken, "PUT", "/api/v1/functions/"+name, code)
				if status != http.StatusCreated {
					fail("new bob's deploy of %s: %d %s, want 201", name, status, body)
					continue
				}
				made = append(made, name)
			}
		})
		wg.Go(func() {
			// The old bob goes on until its token stops working.
			for i := 0; ; i++ {
				status, _ := e.send(old, "PUT", fmt.Sprintf("/api/v1/functions/c%d", i%3), code)
				if gone(status) {
					return
				}
				status, body := e.send(old, "POST", "/api/v1/tokens", `{"name":"old"}`)
				if status == http.StatusCreated {
					var tr struct{ Token string }
					_ = json.Unmarshal(body, &tr)
					mu.Lock()
					oldTokens = append(oldTokens, tr.Token)
					mu.Unlock()
				}
				if gone(status) {
					return
				}
			}
		})
		wg.Wait()
		for _, f := range failures {
			t.Errorf("round %d: %s", round, f)
		}
		if delStatus != http.StatusNoContent {
			t.Fatalf("round %d: delete bob: %d %s", round, delStatus, delBody)
		}
		if newToken == "" {
			t.FailNow()
		}
		// The new bob has the functions it deployed, each at version 1,
		// and nothing else.
		var list FunctionList
		e.mustDo(e.admin, "GET", "/api/v1/functions?owner=bob", "", http.StatusOK, &list)
		var have []string
		for _, fn := range list.Functions {
			have = append(have, fn.Name)
			if fn.Version != 1 {
				t.Errorf("round %d: the new bob's %s is at version %d: versions of the old bob's are in it", round, fn.Name, fn.Version)
			}
		}
		if !slices.Equal(have, made) {
			t.Errorf("round %d: the new bob has functions %v, want %v", round, have, made)
		}
		// ... and its one token; the old bob's do not work.
		var toks struct{ Tokens []TokenView }
		e.mustDo(e.admin, "GET", "/api/v1/tokens?user=bob", "", http.StatusOK, &toks)
		if len(toks.Tokens) != 1 || toks.Tokens[0].ID != newID {
			t.Errorf("round %d: the new bob has tokens %+v, want only %s", round, toks.Tokens, newID)
		}
		for _, tok := range append(oldTokens, old) {
			if status, _ := e.send(tok, "GET", "/api/v1/whoami", ""); !gone(status) {
				t.Errorf("round %d: a token of the old bob's answers %d, want 401", round, status)
			}
		}
		if t.Failed() {
			t.FailNow()
		}
		e.mustDo(e.admin, "DELETE", "/api/v1/users/bob", "", http.StatusNoContent, nil)
	}
}

// sqlExec runs stmt on the env's database file beside the store, with a
// connection of its own: how a test makes the real store fail at a
// chosen step.
func (e *env) sqlExec(stmt string) {
	e.t.Helper()
	db, err := sql.Open("sqlite", "file:"+e.dbPath+"?_pragma=busy_timeout(10000)")
	if err != nil {
		e.t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(stmt); err != nil {
		e.t.Fatalf("%s: %v", stmt, err)
	}
}

// POST /users makes the user and its first token together: if the
// token cannot be stored, there is no user either, and the name can be
// made again. Before, the user stayed without a token, and no one could
// act as it.
func TestCreateUserWithItsToken(t *testing.T) {
	e := newEnv(t)
	e.sqlExec(`CREATE TRIGGER refuse_tokens BEFORE INSERT ON tokens BEGIN SELECT RAISE(ABORT, 'the test refuses tokens'); END`)
	status, body := e.do(e.admin, "POST", "/api/v1/users", `{"name":"bob"}`)
	wantError(t, "POST /users with tokens refused", status, body, http.StatusInternalServerError, "internal")
	status, body = e.do(e.admin, "GET", "/api/v1/users/bob", "")
	wantError(t, "GET /users/bob after its creation failed", status, body, http.StatusNotFound, "not_found")
	var users struct{ Users []UserView }
	e.mustDo(e.admin, "GET", "/api/v1/users", "", http.StatusOK, &users)
	if len(users.Users) != 1 || users.Users[0].Name != "admin" {
		t.Errorf("users after bob's creation failed: %+v, want only admin", users.Users)
	}

	e.sqlExec(`DROP TRIGGER refuse_tokens`)
	bob := e.user("bob")
	var who struct{ User string }
	e.mustDo(bob, "GET", "/api/v1/whoami", "", http.StatusOK, &who)
	if who.User != "bob" {
		t.Errorf("bob's token is %s's", who.User)
	}
}

// A DELETE /users/{name} that fails part way (here the store refuses to
// delete one of the user's functions) leaves the user, its tokens and
// the functions it had not reached yet, each function wholly there or
// wholly gone; the same DELETE again finishes the job, ending at 204.
func TestDeleteUserResumes(t *testing.T) {
	e := newEnv(t)
	bob := e.user("bob")
	for _, name := range []string{"a", "b", "c"} {
		e.deploy(bob, "/api/v1/functions/"+name)
	}
	e.sqlExec(`CREATE TRIGGER keep_b BEFORE DELETE ON functions WHEN OLD.owner = 'bob' AND OLD.name = 'b'
		BEGIN SELECT RAISE(ABORT, 'the test keeps bob/b'); END`)
	status, body := e.do(e.admin, "DELETE", "/api/v1/users/bob", "")
	wantError(t, "DELETE /users/bob with bob/b kept", status, body, http.StatusInternalServerError, "internal")

	// Functions go in name order: a went, b and c are there, whole.
	e.mustDo(e.admin, "GET", "/api/v1/users/bob", "", http.StatusOK, nil)
	e.mustDo(bob, "GET", "/api/v1/whoami", "", http.StatusOK, nil)
	var list FunctionList
	e.mustDo(e.admin, "GET", "/api/v1/functions?owner=bob", "", http.StatusOK, &list)
	var have []string
	for _, fn := range list.Functions {
		have = append(have, fn.Name)
	}
	if !slices.Equal(have, []string{"b", "c"}) {
		t.Errorf("bob's functions after the failed delete: %v, want [b c]", have)
	}
	for _, name := range []string{"b", "c"} {
		var vs struct{ Versions []VersionView }
		e.mustDo(e.admin, "GET", "/api/v1/functions/"+name+"/versions?owner=bob", "", http.StatusOK, &vs)
		if len(vs.Versions) != 1 {
			t.Errorf("bob/%s has %d versions, want 1", name, len(vs.Versions))
		}
	}

	e.sqlExec(`DROP TRIGGER keep_b`)
	e.mustDo(e.admin, "DELETE", "/api/v1/users/bob", "", http.StatusNoContent, nil)
	status, body = e.do(e.admin, "GET", "/api/v1/users/bob", "")
	wantError(t, "GET /users/bob after the delete", status, body, http.StatusNotFound, "not_found")
	e.mustDo(e.admin, "GET", "/api/v1/functions?owner=bob", "", http.StatusOK, &list)
	if len(list.Functions) != 0 {
		t.Errorf("bob's functions after the delete: %+v, want none", list.Functions)
	}
	if status, _ := e.do(bob, "GET", "/api/v1/whoami", ""); status != http.StatusUnauthorized {
		t.Errorf("bob's token after the delete: %d, want 401", status)
	}
	// Once done, it is done: a third DELETE finds no user.
	status, body = e.do(e.admin, "DELETE", "/api/v1/users/bob", "")
	wantError(t, "DELETE /users/bob again", status, body, http.StatusNotFound, "not_found")
}
