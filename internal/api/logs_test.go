package api

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/spry-run/spry/internal/api/apitest"
	"github.com/spry-run/spry/internal/errdefs"
	"github.com/spry-run/spry/internal/logstore"
)

// A log follow is read with a token: revoking the token, its expiry, or
// deleting its user, ends the follow at once, as it ends any other use
// of the token, with a last line saying why.
func TestFollowEndsWhenTokenGoes(t *testing.T) {
	for _, tc := range []struct {
		name   string
		revoke func(e *env, tokenID string)
	}{
		{"revoked", func(e *env, id string) {
			e.mustDo(e.tokens["alice"], "DELETE", "/api/v1/tokens/"+id, "", http.StatusNoContent, nil)
		}},
		// The token expires in an hour (see below): the clock moves
		// there.
		{"expired", func(e *env, id string) { e.clock.Advance(time.Hour) }},
		// bob, an admin, follows alice's function; his functions (none)
		// are not what ends the follow.
		{"user deleted", func(e *env, id string) {
			e.mustDo(e.admin, "DELETE", "/api/v1/users/bob", "", http.StatusNoContent, nil)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, _ := newClockEnv(t)
			alice := e.user("alice")
			e.deploy(alice, "/api/v1/functions/hello")
			e.mustDo(e.admin, "POST", "/api/v1/users", `{"name":"bob","admin":true}`, http.StatusCreated, nil)
			var tok struct{ Token, ID string }
			user, path := "alice", "/api/v1/functions/hello/logs?follow=1"
			if tc.name == "user deleted" {
				user, path = "bob", path+"&owner=alice"
			}
			e.mustDo(e.admin, "POST", "/api/v1/tokens", `{"name":"follow","user":"`+user+`","expires_in":"1h","scopes":["read"]}`, http.StatusCreated, &tok)

			req, _ := http.NewRequest("GET", e.srv.URL+path, nil)
			req.Header.Set("Authorization", "Bearer "+tok.Token)
			res, err := e.srv.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			if res.StatusCode != http.StatusOK {
				t.Fatalf("follow: %d", res.StatusCode)
			}
			tc.revoke(e, tok.ID)

			lines := make(chan string, 16)
			go func() {
				defer close(lines)
				sc := bufio.NewScanner(res.Body)
				for sc.Scan() {
					lines <- sc.Text()
				}
			}()
			var last string
			timeout := time.After(5 * time.Second)
			for done := false; !done; {
				select {
				case l, ok := <-lines:
					if !ok {
						done = true
						break
					}
					last = l
				case <-timeout:
					t.Fatal("the follow goes on after its token is gone")
				}
			}
			var eb errdefs.Body
			if json.Unmarshal([]byte(last), &eb) != nil || eb.Error.Code != "unauthenticated" {
				t.Errorf("last line %q, want an unauthenticated error", last)
			}
			// The token really is gone.
			status, body := e.do(tok.Token, "GET", "/api/v1/whoami", "")
			wantError(t, "whoami", status, body, http.StatusUnauthorized, "unauthenticated")
		})
	}
}

// A log read says in its head when its limit left entries out, which
// the client cannot tell from a page as long as the limit: a tail cut
// at its old end, a page after an id at its new end.
func TestLogsTruncated(t *testing.T) {
	d := apitest.New(t)
	e := newEnvOn(t, d, Config{MaxCodeBytes: 1 << 20})
	alice := e.user("alice")
	e.deploy(alice, "/api/v1/functions/hello")
	for i := range 5 {
		d.Logs.Append(logstore.Entry{Owner: "alice", Function: "hello", Version: 1, Stream: logstore.StreamStdout, Line: fmt.Sprint("line ", i)})
	}
	if err := d.Logs.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	stored, err := d.Logs.Query(t.Context(), logstore.Query{Owner: "alice", Function: "hello"})
	if err != nil || len(stored) != 5 {
		t.Fatalf("stored %d entries, %v", len(stored), err)
	}
	for _, c := range []struct{ query, want string }{
		{"", ""},
		{"limit=5", ""},
		{"limit=4", "older"},
		{"limit=2&version=1", "older"},
		{"limit=2&version=2", ""},
		{fmt.Sprintf("after=%d&limit=3", stored[1].ID), ""},
		{fmt.Sprintf("after=%d&limit=2", stored[1].ID), "newer"},
	} {
		status, head, _ := e.raw(alice, "GET", "/api/v1/functions/hello/logs?"+c.query, "", nil, nil)
		if got := head.Get(LogsTruncatedHeader); status != http.StatusOK || got != c.want {
			t.Errorf("logs?%s: %d, %s %q; want 200, %q", c.query, status, LogsTruncatedHeader, got, c.want)
		}
	}
}
