package api

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/spry-run/spry/internal/async"
	"github.com/spry-run/spry/internal/errdefs"
	"github.com/spry-run/spry/internal/store"
)

// hostileEnv is an API with key-value storage and asynchronous
// invocations (not run), and something in every store to lose: the
// admin's function f with env, a secret, three versions, a tag, a kv
// entry and an invocation; a user alice with one of her own; tokens
// of each scope.
func hostileEnv(t *testing.T) (e *env, read, invoke string) {
	t.Helper()
	e = newEnv(t)
	withKV(t, e)
	withInvocations(t, e, async.Config{Send: func(context.Context, *async.Invocation) async.Result { return async.Result{Status: 200} }}, false)
	alice := e.user("alice")
	code := `"export default { fetch() { return new Response('hi') } }"`
	e.mustDo(e.admin, "PUT", "/api/v1/functions/f", `{"code":`+code+`,"env":{"A":"1"},"secrets":{"S":"s3cret"}}`, http.StatusCreated, nil)
	e.mustDo(e.admin, "PATCH", "/api/v1/functions/f", `{"memory":"256Mi"}`, http.StatusOK, nil)
	e.mustDo(e.admin, "PATCH", "/api/v1/functions/f", `{"env":{"B":"2"}}`, http.StatusOK, nil)
	e.mustDo(e.admin, "PUT", "/api/v1/functions/f/tags/beta", `{"version":2}`, http.StatusOK, nil)
	e.mustDo(e.admin, "PUT", "/api/v1/functions/f/kv/k", `{"v":1}`, http.StatusNoContent, nil)
	e.mustDo(e.admin, "POST", "/api/v1/functions/f/invocations", `{"e":1}`, http.StatusAccepted, nil)
	e.mustDo(alice, "PUT", "/api/v1/functions/g", `{"code":`+code+`}`, http.StatusCreated, nil)
	var tok struct{ Token string }
	e.mustDo(e.admin, "POST", "/api/v1/tokens", `{"name":"r","scopes":["read"]}`, http.StatusCreated, &tok)
	read = tok.Token
	e.mustDo(e.admin, "POST", "/api/v1/tokens", `{"name":"i","scopes":["invoke"]}`, http.StatusCreated, &tok)
	return e, read, tok.Token
}

// stored is everything the stores hold, read from them, not through the
// API: users, tokens, and each function with all its versions (config,
// env, sealed secrets, limits), routing, kv entries and invocations.
func (e *env) stored() string {
	e.t.Helper()
	ctx := context.Background()
	var out []any
	users, err := e.st.ListUsers(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	for _, u := range users {
		ts, err := e.st.ListTokens(ctx, u.Name)
		if err != nil {
			e.t.Fatal(err)
		}
		out = append(out, u, ts)
		fns, err := e.fns.List(ctx, u.Name, store.Page{})
		if err != nil {
			e.t.Fatal(err)
		}
		for _, fn := range fns {
			_, vs, err := e.fns.Versions(ctx, u.Name, fn.Name)
			if err != nil {
				e.t.Fatal(err)
			}
			entries, _, err := e.api.cfg.KV.List(ctx, fn.ID, "", "", 1000)
			if err != nil {
				e.t.Fatal(err)
			}
			invs, err := e.api.cfg.Invocations.List(ctx, fn.ID, 0, 1000)
			if err != nil {
				e.t.Fatal(err)
			}
			out = append(out, fn, vs, entries, invs)
		}
	}
	b, err := json.Marshal(out)
	if err != nil {
		e.t.Fatal(err)
	}
	return string(b)
}

// wantAPIError checks that an answer is an error in the API's shape,
// JSON with its class's status.
func wantAPIError(t *testing.T, what string, status int, h http.Header, body []byte, wantStatus int, wantCode string) {
	t.Helper()
	var eb errdefs.Body
	if err := json.Unmarshal(body, &eb); err != nil || status != wantStatus || eb.Error.Code != wantCode || eb.Error.Message == "" {
		t.Errorf("%s: %d %s, want %d %s", what, status, body, wantStatus, wantCode)
	}
	if ct := h.Get("Content-Type"); ct != "application/json" {
		t.Errorf("%s: Content-Type %q", what, ct)
	}
}

// Every refused request at every endpoint gets a JSON error of its
// class, and leaves what is stored as it was: malformed JSON, JSON of
// the wrong shape, types or size, nulls, fields given twice, unknown
// fields, bad names in paths and bodies, bad query parameters, methods
// not allowed, and tokens without the scope. Before, {"env":{"A":null}}
// set A to "" and a value with bytes not UTF-8 was stored with U+FFFD
// in their place (a new version each), {"scopes":["read"],
// "Scopes":[]} made a token with every right, a body with "]" after
// its object was taken, and GET /tokens?user= of a user that does not
// exist, or of no user name at all, listed nothing with a 200.
func TestHostileRequests(t *testing.T) {
	e, read, invoke := hostileEnv(t)
	alice := e.tokens["alice"]
	const (
		fn   = "/api/v1/functions/f"
		json = "application/json"
	)
	code := `"export default { fetch() { return new Response('x') } }"`
	big := func(n int) []byte { return bytes.Repeat([]byte("a"), n) }
	type req struct {
		name, token, method, path, ct string
		body                          []byte
		status                        int
		code                          string
		header                        http.Header // beside the token and content type
	}
	var cases []req
	add := func(name, method, path, ct, body string, status int, code string) {
		cases = append(cases, req{name, e.admin, method, path, ct, []byte(body), status, code, nil})
	}
	bad := func(name, method, path, body string) { add(name, method, path, json, body, 400, "invalid_argument") }

	// Bodies no JSON endpoint takes.
	jsonEndpoints := []struct{ method, path string }{
		{"PUT", fn}, {"PATCH", fn}, {"PUT", fn + "/traffic"}, {"PUT", fn + "/tags/beta"},
		{"POST", fn + "/rollback"}, {"POST", "/api/v1/tokens"}, {"POST", "/api/v1/users"},
	}
	for _, ep := range jsonEndpoints {
		at := ep.method + " " + ep.path + ": "
		for _, b := range []string{`{`, `{"a":`, `[]`, `[{}]`, `"x"`, `1`, `true`, `null`, ` null `, `{"unknown_field":1}`,
			`{}]`, `{}}`, `{} {}`, `{} x`, "{\"x\xff\":1}", `{"\ud800":1}`, `{"a":1,}`, `{'a':1}`, `{"a" 1}`,
			strings.Repeat("[", 10001) + strings.Repeat("]", 10001)} {
			if ep.method == "PUT" && ep.path == fn && b == `1` {
				continue // a deploy of raw code would be tried; see below
			}
			bad(at+b, ep.method, ep.path, b)
		}
		if ep.method != "POST" || !strings.HasSuffix(ep.path, "rollback") {
			bad(at+"empty", ep.method, ep.path, "")
			bad(at+"white space", ep.method, ep.path, " \n\t ")
		}
		add(at+"past the limit", ep.method, ep.path, json, `{"name":"`+string(big(40<<20))+`"}`, 413, "too_large")
	}

	// PATCH: wrong types, nulls where values go, fields twice.
	for _, b := range []string{
		`{"memory":5}`, `{"memory":["1Gi"]}`, `{"min":"1"}`, `{"min":1.5}`, `{"min":1e400}`, `{"min":-1}`,
		`{"min":99999999999999999999}`, `{"min":9223372036854775807}`, `{"max":0}`, `{"concurrency":0}`,
		`{"timeout":"-1s"}`, `{"timeout":"9999999999999h"}`, `{"cpu":"NaN"}`, `{"target_utilization":"-0"}`,
		`{"memory":"-128Mi"}`, `{"network":"host"}`, `{"access":"PUBLIC"}`, `{"async_retries":3}`,
		`{"async_on_failure":"f"}`, `{"async_on_failure":"../x"}`, `{"cron":"* * * * * * *"}`, `{"runtime":"python"}`,
		`{"env":[]}`, `{"env":"A=1"}`, `{"env":{"A":1}}`, `{"env":{"A":null}}`, `{"env":{"A":{}}}`, `{"env":{"":"x"}}`,
		`{"env":{"A=B":"x"}}`, `{"env":{"A":"a\u0000b"}}`, "{\"env\":{\"A\":\"a\xffb\"}}", `{"env":{"A":"a\ud800b"}}`,
		`{"env":{"A":"a\udc00\ud800b"}}`, `{"env":{"A":"1","A":"2"}}`, `{"env":{"C":"1"},"env":{"D":"2"}}`,
		`{"secrets":{"S":null}}`, `{"secrets":{"S":"x"},"env":{"S":"y"}}`, `{"unset_env":"A"}`, `{"unset_env":[null]}`,
		`{"unset_env":[1]}`, `{"unset_secrets":[null]}`, `{"memory":"512Mi","memory":"1Gi"}`,
		`{"MEMORY":"512Mi","memory":"1Gi"}`, `{"Env":{"C":"1"},"env":{"D":"2"}}`, `{"min":null}`, `{"env":null}`, `{}`,
	} {
		bad("PATCH "+b, "PATCH", fn, b)
	}
	add("PATCH of another runtime", "PATCH", fn, json, `{"runtime":"node","memory":"1Gi"}`, 409, "conflict")
	add("PATCH env over 64 KiB", "PATCH", fn, json, `{"env":{"X":"`+string(big(65<<10))+`"}}`, 413, "too_large")
	add("PATCH of no function", "PATCH", "/api/v1/functions/nope", json, `{"memory":"1Gi"}`, 404, "not_found")

	// Deploys.
	for _, b := range []string{`{}`, `{"code":""}`, `{"code":null}`, `{"code":5}`, `{"code":["x"]}`, `{"code":{}}`,
		`{"code":` + code + `,"archive":"AAAA"}`, `{"archive":"!!!"}`, `{"code":` + code + `,"Code":"x"}`,
		`{"code":` + code + `,"code":` + code + `}`, `{"code":` + code + `,"env":{"A":null}}`,
		`{"code":` + code + `,"min":-1}`, `{"code":` + code + `,"filename":"../x.ts"}`, `{"code":` + code + `,"filename":"x.py"}`,
		`{"code":` + code + `,"runtime":"python"}`, `{"code":"\ud800"}`, `{"code":"export default 1; \ud800"}`,
		`{"code":` + code + `,"secrets":{"A":"1"},"env":{"A":"2"}}`, `{"code":` + code + `,"env":{"A":"1","A":"1"}}`,
		`{"code":"export default {"}`, `{"code":"export const x = 1"}`} {
		bad("PUT "+b, "PUT", fn, b)
	}
	add("JSON deploy with a setting in its query", "PUT", fn+"?memory=1Gi", json, `{"code":`+code+`}`, 400, "invalid_argument")
	add("raw deploy, unknown parameter", "PUT", fn+"?env=A", "application/javascript", "export default {}", 400, "invalid_argument")
	add("raw deploy, bad filename", "PUT", fn+"?filename=../../etc/x.ts", "text/plain", "export default {}", 400, "invalid_argument")
	add("raw deploy, NUL in filename", "PUT", fn+"?filename=%00.ts", "text/plain", "export default {}", 400, "invalid_argument")
	add("raw deploy, bad setting", "PUT", fn+"?min=abc", "text/plain", "export default {}", 400, "invalid_argument")
	add("raw deploy, setting twice", "PUT", fn+"?min=1&min=2", "text/plain", "export default {}", 400, "invalid_argument")
	add("raw deploy, not UTF-8", "PUT", fn, "text/plain", "export default {}\xff", 400, "invalid_argument")
	add("raw deploy, empty", "PUT", fn, "text/plain", "", 400, "invalid_argument")
	add("raw deploy, no content type", "PUT", fn, "", "export default 1 +", 400, "invalid_argument")
	add("raw deploy, over the limit", "PUT", fn, "text/plain", string(big(1<<20+1)), 413, "too_large")
	add("JSON deploy, over the limit", "PUT", fn, json, `{"code":"`+string(big(7<<20))+`"}`, 413, "too_large")
	add("archive, not one", "PUT", fn, "application/zip", "garbage", 400, "invalid_argument")
	add("archive, not gzip", "PUT", fn, "application/gzip", "garbage", 400, "invalid_argument")
	add("deploy, bad name", "PUT", "/api/v1/functions/F", json, `{"code":`+code+`}`, 400, "invalid_argument")
	add("deploy, 64 characters", "PUT", "/api/v1/functions/"+strings.Repeat("a", 64), json, `{"code":`+code+`}`, 400, "invalid_argument")
	add("deploy, unicode", "PUT", "/api/v1/functions/%C3%A9", json, `{"code":`+code+`}`, 400, "invalid_argument")
	add("deploy, escaped slash", "PUT", "/api/v1/functions/a%2Fb", json, `{"code":`+code+`}`, 400, "invalid_argument")
	add("deploy, escaped dots", "PUT", "/api/v1/functions/%2e%2e", json, `{"code":`+code+`}`, 400, "invalid_argument")
	add("deploy for no user", "PUT", fn+"?owner=nobody", json, `{"code":`+code+`}`, 404, "not_found")
	add("deploy for a bad owner", "PUT", fn+"?owner=Alice", json, `{"code":`+code+`}`, 400, "invalid_argument")

	// Traffic, tags, rollbacks, versions.
	for _, b := range []string{`{}`, `{"1":null}`, `{"3":100,"1":null}`, `{"3":100,"3":100}`, `{"03":100}`, `{"+3":100}`,
		`{"3":"100"}`, `{"3":1e2}`, `{"3":100.0}`, `{"3":-100,"2":200}`, `{"3":9223372036854775807,"2":1}`, `{"3":50,"2":49}`,
		`{"99999999999999999999":100}`, `{"-1":100}`} {
		bad("traffic "+b, "PUT", fn+"/traffic", b)
	}
	add("traffic to no version", "PUT", fn+"/traffic", json, `{"99":100}`, 404, "not_found")
	for _, b := range []string{`{"version":"1"}`, `{"version":1.5}`, `{"version":-1}`, `{"version":0}`, `{"version":null}`,
		`{"version":1e3}`, `{"version":99999999999999999999}`, `{"version":1,"version":2}`, `{"version":1,"Version":2}`} {
		bad("tag "+b, "PUT", fn+"/tags/beta", b)
		if !strings.Contains(b, `"version":null`) {
			bad("rollback "+b, "POST", fn+"/rollback", b)
		}
	}
	for _, tag := range []string{"PROD", "a%2Fb", "1", strings.Repeat("x", 64), "%E2%82%AC", "%00"} {
		bad("tag named "+tag, "PUT", fn+"/tags/"+tag, `{"version":1}`)
	}
	add("tag of no version", "PUT", fn+"/tags/beta", json, `{"version":99}`, 404, "not_found")
	add("rollback to no version", "POST", fn+"/rollback", json, `{"version":9223372036854775807}`, 404, "not_found")
	for _, v := range []string{"0", "-1", "01", "+1", "1.0", "abc", "99999999999999999999", "%31%00"} {
		bad("delete version "+v, "DELETE", fn+"/versions/"+v, "")
	}
	add("delete the live version", "DELETE", fn+"/versions/3", "", "", 409, "conflict")
	add("delete a tagged version", "DELETE", fn+"/versions/2", "", "", 409, "conflict")
	add("delete no version", "DELETE", fn+"/versions/9223372036854775807", "", "", 404, "not_found")

	// Tokens and users.
	for _, b := range []string{`{"name":5}`, `{"scopes":"read"}`, `{"scopes":["READ"]}`, `{"scopes":[null]}`, `{"scopes":[""]}`,
		`{"scopes":["read","bogus"]}`, `{"scopes":["read"],"Scopes":[]}`, `{"scopes":["read"],"scopes":["all"]}`,
		`{"expires_in":"0s"}`, `{"expires_in":"-1h"}`, `{"expires_in":"99999999999d"}`, `{"expires_in":"1.5d"}`,
		`{"expires_in":720}`, `{"expires_at":"garbage"}`, `{"expires_at":"1970-01-01T00:00:00Z"}`,
		`{"expires_at":"9999-12-31T23:59:59Z"}`, `{"expires_in":"1h","expires_at":"2030-01-01T00:00:00Z"}`,
		`{"name":"a\u202eb"}`, `{"name":"a\u0000b"}`, `{"name":"\ud800"}`, "{\"name\":\"\xff\"}",
		`{"name":"` + string(big(201)) + `"}`, `{"user":"../x"}`, `{"user":"ADMIN"}`} {
		bad("token "+b, "POST", "/api/v1/tokens", b)
	}
	add("token for no user", "POST", "/api/v1/tokens", json, `{"user":"nobody"}`, 404, "not_found")
	add("metrics token for a user", "POST", "/api/v1/tokens", json, `{"user":"alice","scopes":["metrics"]}`, 403, "permission_denied")
	add("revoke no token", "DELETE", "/api/v1/tokens/0000000000000000", "", "", 404, "not_found")
	add("revoke a NUL", "DELETE", "/api/v1/tokens/%00", "", "", 404, "not_found")
	for _, b := range []string{`{"name":"Alice"}`, `{"name":"al ice"}`, `{"name":""}`, `{"name":"-a"}`, `{"name":".."}`,
		`{"name":"` + strings.Repeat("a", 64) + `"}`, `{"name":"b","admin":"true"}`, `{"name":"b","admin":1}`,
		`{"name":"b","name":"c"}`, `{"name":"b","Name":"c"}`, `{"name":"b","expires_in":"0s"}`, `{"name":"\u00e9"}`} {
		bad("user "+b, "POST", "/api/v1/users", b)
	}
	add("user again", "POST", "/api/v1/users", json, `{"name":"alice"}`, 409, "already_exists")
	add("delete oneself", "DELETE", "/api/v1/users/admin", "", "", 409, "conflict")
	add("delete no user", "DELETE", "/api/v1/users/nobody", "", "", 404, "not_found")
	bad("delete a bad user name", "DELETE", "/api/v1/users/Alice", "")
	bad("get a bad user name", "GET", "/api/v1/users/a%2Fb", "")
	bad("tokens of a bad user name", "GET", "/api/v1/tokens?user=../x", "")
	add("tokens of no user", "GET", "/api/v1/tokens?user=nobody", "", "", 404, "not_found")

	// Key-value entries.
	add("kv value not JSON", "PUT", fn+"/kv/k", "", "x", 400, "invalid_argument")
	add("kv value empty", "PUT", fn+"/kv/k", "", "", 400, "invalid_argument")
	add("kv key not UTF-8", "PUT", fn+"/kv/%ff", "", "1", 400, "invalid_argument")
	add("kv key too long", "PUT", fn+"/kv/"+string(big(600)), "", "1", 413, "too_large")
	add("kv value too large", "PUT", fn+"/kv/k", "", `"`+string(big(400<<10))+`"`, 413, "too_large")
	for _, q := range []string{"expireIn=-1", "expireIn=1e3", "expireIn=99999999999999999999", "expirein=1", "expireIn=1&expireIn=2"} {
		bad("kv ?"+q, "PUT", fn+"/kv/k?"+q, "1")
	}
	for _, q := range []string{"limit=-1", "limit=0", "limit=abc", "limit=99999999999"} {
		bad("kv list ?"+q, "GET", fn+"/kv?"+q, "")
	}
	for _, h := range []http.Header{{"If-Match": {"garbage"}}, {"If-Match": {`""`}}, {"If-Match": {`"zz"`}}, {"If-None-Match": {`"x"`}},
		{"If-Match": {"*"}, "If-None-Match": {"*"}}, {"If-Match": {`"1"`, `"2"`}}} {
		cases = append(cases, req{fmt.Sprint("kv ", h), e.admin, "PUT", fn + "/kv/k", "", []byte("1"), 400, "invalid_argument", h})
		cases = append(cases, req{fmt.Sprint("kv delete ", h), e.admin, "DELETE", fn + "/kv/k", "", nil, 400, "invalid_argument", h})
	}
	cases = append(cases, req{"kv If-None-Match, key there", e.admin, "PUT", fn + "/kv/k", "", []byte("1"), 412, "precondition_failed",
		http.Header{"If-None-Match": {"*"}}})
	add("kv of no function", "PUT", "/api/v1/functions/nope/kv/k", "", "1", 404, "not_found")
	add("kv get, no key", "GET", fn+"/kv/nope", "", "", 404, "not_found")

	// Invocations and logs.
	for _, q := range []string{"path=x", "path=/a%23b", "path=/a%20b", "path=/%25zz", "path=/%ff", "path=/%00", "Path=/"} {
		bad("invoke ?"+q, "POST", fn+"/invocations?"+q, "")
	}
	add("invoke, body too large", "POST", fn+"/invocations", "", string(big(MaxInvocationBody+1)), 413, "too_large")
	add("invoke no function", "POST", "/api/v1/functions/nope/invocations", "", "", 404, "not_found")
	for _, q := range []string{"limit=0", "limit=1001", "after=garbage", "after=MA", "after=LTE", "after=%ff"} {
		bad("invocations ?"+q, "GET", fn+"/invocations?"+q, "")
	}
	add("no invocation", "GET", fn+"/invocations/zzz", "", "", 404, "not_found")
	for _, q := range []string{"since=garbage", "since=-5m", "since=99999999999h", "since=2030-13-01T00:00:00Z", "version=-1",
		"version=99999999999999999999", "after=-1", "limit=0", "limit=99999999", "follow=yes", "follow=", "follow=1&follow=0", "Follow=1"} {
		bad("logs ?"+q, "GET", fn+"/logs?"+q, "")
	}

	// Queries, owners, paths and methods.
	for _, q := range []string{"limit=-1", "limit=0", "limit=1001", "limit=1&limit=2", "limit=99999999999999999999",
		"after=%ff", "after=garbage", "%zz", "a;b", "owner=Alice", "owner=../x"} {
		bad("list ?"+q, "GET", "/api/v1/functions?"+q, "")
	}
	bad("usage of a bad name", "GET", "/api/v1/usage?user=../x", "")
	add("usage of no user", "GET", "/api/v1/usage?user=nobody", "", "", 404, "not_found")
	bad("whoami ?x", "GET", "/api/v1/whoami?x", "")
	bad("delete ?Owner=", "DELETE", fn+"?Owner=alice", "")
	bad("delete ?owner= twice", "DELETE", fn+"?owner=alice&owner=admin", "")
	bad("delete ?owner=bad", "DELETE", fn+"?owner=al%20ice", "")
	add("delete of no function", "DELETE", "/api/v1/functions/nope", "", "", 404, "not_found")
	add("trailing slash", "GET", fn+"/", "", "", 404, "not_found")
	add("no endpoint", "GET", "/api/v1/nothing", "", "", 404, "not_found")
	add("versions of no function", "GET", "/api/v1/functions/nope/versions", "", "", 404, "not_found")
	for _, m := range []struct{ method, path string }{
		{"POST", fn}, {"OPTIONS", fn}, {"TRACE", fn}, {"FOO", fn}, {"PATCH", "/api/v1/users"}, {"PUT", "/api/v1/tokens"},
		{"GET", "/api/v1/tokens/x"}, {"POST", "/api/v1/whoami"}, {"DELETE", fn + "/traffic"}, {"GET", fn + "/rollback"},
		{"PATCH", fn + "/kv/k"}, {"POST", "/api/v1/backup"},
	} {
		add("method "+m.method+" "+m.path, m.method, m.path, "", "", 405, "method_not_allowed")
	}

	// Tokens that may not.
	cases = append(cases, []req{
		{"read token deploys", read, "PUT", fn, json, []byte(`{"code":` + code + `}`), 403, "permission_denied", nil},
		{"read token changes", read, "PATCH", fn, json, []byte(`{"memory":"1Gi"}`), 403, "permission_denied", nil},
		{"read token deletes", read, "DELETE", fn, "", nil, 403, "permission_denied", nil},
		{"read token writes kv", read, "PUT", fn + "/kv/k", "", []byte("2"), 403, "permission_denied", nil},
		{"read token makes a token", read, "POST", "/api/v1/tokens", json, []byte(`{}`), 403, "permission_denied", nil},
		{"read token lists tokens", read, "GET", "/api/v1/tokens", "", nil, 403, "permission_denied", nil},
		{"invoke token reads", invoke, "GET", fn, "", nil, 403, "permission_denied", nil},
		{"invoke token invokes async", invoke, "POST", fn + "/invocations", "", nil, 403, "permission_denied", nil},
		{"user deletes another's", alice, "DELETE", fn + "?owner=admin", "", nil, 403, "permission_denied", nil},
		{"user changes another's", alice, "PATCH", fn + "?owner=admin", json, []byte(`{"memory":"1Gi"}`), 403, "permission_denied", nil},
		{"user makes a user", alice, "POST", "/api/v1/users", json, []byte(`{"name":"b"}`), 403, "permission_denied", nil},
		{"user deletes a user", alice, "DELETE", "/api/v1/users/admin", "", nil, 403, "permission_denied", nil},
		{"user lists another's tokens", alice, "GET", "/api/v1/tokens?user=admin", "", nil, 403, "permission_denied", nil},
		{"user revokes another's token", alice, "DELETE", "/api/v1/tokens/" + strings.Split(read, "_")[1], "", nil, 404, "not_found", nil},
		{"user reads the backup", alice, "GET", "/api/v1/backup", "", nil, 403, "permission_denied", nil},
		{"no token", "", "DELETE", fn, "", nil, 401, "unauthenticated", nil},
		{"a wrong token", "spry_0000000000000000_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "DELETE", fn, "", nil, 401, "unauthenticated", nil},
	}...)

	before := e.stored()
	for _, c := range cases {
		name := c.name
		if len(name) > 120 {
			name = name[:120] + "..."
		}
		t.Run(name, func(t *testing.T) {
			status, h, body := e.raw(c.token, c.method, c.path, c.ct, c.body, c.header)
			wantAPIError(t, name, status, h, body, c.status, c.code)
			if status == http.StatusMethodNotAllowed && h.Get("Allow") == "" {
				t.Errorf("405 without Allow")
			}
			if after := e.stored(); after != before {
				t.Errorf("stored data changed: %s", changed(before, after))
				before = after
			}
		})
	}
}

// changed shows where after first differs from before.
func changed(before, after string) string {
	i := 0
	for i < len(before) && i < len(after) && before[i] == after[i] {
		i++
	}
	from := max(0, i-150)
	return fmt.Sprintf("...%s... became ...%s...", before[from:min(len(before), i+150)], after[from:min(len(after), i+150)])
}

// The Allow of a 405 names HEAD beside GET: the API answers it.
func TestAllowNamesHead(t *testing.T) {
	e := newEnv(t)
	e.deploy(e.admin, "/api/v1/functions/f")
	for path, want := range map[string]string{
		"/api/v1/functions/f":          "DELETE, GET, HEAD, PATCH, PUT",
		"/api/v1/users":                "GET, HEAD, POST",
		"/api/v1/tokens/x":             "DELETE",
		"/api/v1/functions/f/rollback": "POST",
	} {
		status, h, body := e.raw(e.admin, "OPTIONS", path, "", nil, nil)
		wantAPIError(t, path, status, h, body, 405, "method_not_allowed")
		if got := h.Get("Allow"); got != want {
			t.Errorf("%s: Allow %q, want %q", path, got, want)
		}
		if strings.Contains(want, "HEAD") {
			if status, _, _ := e.raw(e.admin, "HEAD", path, "", nil, nil); status != 200 {
				t.Errorf("HEAD %s: %d", path, status)
			}
		}
	}
}

// A body whose chunked framing is broken, or that ends before its
// length, is the client's fault: a 400 in the API's shape, nothing
// stored. Deploys and asynchronous invocations answered it with a 500
// and logged it as the server's error.
func TestBrokenBodyFraming(t *testing.T) {
	e, _, _ := hostileEnv(t)
	addr := strings.TrimPrefix(e.srv.URL, "http://")
	before := e.stored()
	code := `{"code":"export default { fetch() { return new Response('x') } }"}`
	for _, ep := range []struct{ method, path, ct string }{
		{"PUT", "/api/v1/functions/f", "text/plain"},
		{"PUT", "/api/v1/functions/f", "application/json"},
		{"PUT", "/api/v1/functions/new", "application/json"},
		{"PUT", "/api/v1/functions/f", "application/zip"},
		{"PATCH", "/api/v1/functions/f", "application/json"},
		{"PUT", "/api/v1/functions/f/traffic", "application/json"},
		{"PUT", "/api/v1/functions/f/tags/beta", "application/json"},
		{"POST", "/api/v1/functions/f/rollback", "application/json"},
		{"POST", "/api/v1/functions/f/invocations", "text/plain"},
		{"PUT", "/api/v1/functions/f/kv/k", "application/json"},
		{"POST", "/api/v1/tokens", "application/json"},
		{"POST", "/api/v1/users", "application/json"},
	} {
		for _, framing := range []struct{ name, head, body string }{
			{"bad chunk size", "Transfer-Encoding: chunked", fmt.Sprintf("%x\r\n%s\r\nzz\r\n", len(code), code)},
			{"chunk cut short", "Transfer-Encoding: chunked", fmt.Sprintf("%x\r\n%s", len(code)+100, code)},
			{"length cut short", fmt.Sprintf("Content-Length: %d", len(code)+100), code},
		} {
			what := ep.method + " " + ep.path + " " + ep.ct + ": " + framing.name
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(conn, "%s %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Type: %s\r\n%s\r\n\r\n%s",
				ep.method, ep.path, e.admin, ep.ct, framing.head, framing.body)
			if cw, ok := conn.(*net.TCPConn); ok {
				_ = cw.CloseWrite()
			}
			res, err := http.ReadResponse(bufio.NewReader(conn), nil)
			if err != nil {
				t.Fatalf("%s: %v", what, err)
			}
			body, _ := io.ReadAll(res.Body)
			conn.Close()
			wantAPIError(t, what, res.StatusCode, res.Header, body, 400, "invalid_argument")
			if after := e.stored(); after != before {
				t.Errorf("%s: stored data changed: %s", what, changed(before, after))
				before = after
			}
		}
	}
}
