package api

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/spry-run/spry/internal/errdefs"
)

// env and secrets are bounded together, 128 entries and 64 KiB, with 413
// as docs/api.md says, at deploy and PATCH alike, however many requests
// set them; a refused change stores nothing. At the bound, they pass.
func TestEnvLimits(t *testing.T) {
	vars := func(prefix string, n, size int) map[string]string {
		m := map[string]string{}
		for i := 0; i < n; i++ {
			m[fmt.Sprintf("%s%d", prefix, i)] = strings.Repeat("x", size)
		}
		return m
	}
	body := func(env, secrets map[string]string) string {
		b, _ := json.Marshal(map[string]any{"env": env, "secrets": secrets})
		return string(b)
	}
	code := "export default { fetch() { return new Response('hi') } }"
	deployBody := func(env, secrets map[string]string) string {
		b, _ := json.Marshal(map[string]any{"code": code, "env": env, "secrets": secrets})
		return string(b)
	}
	for _, tc := range []struct {
		name   string
		method string
		first  string // a PATCH before, if set
		body   string
		status int
	}{
		{"deploy 128 env", "PUT", "", deployBody(vars("E", 128, 1), nil), http.StatusOK},
		{"deploy 129 env", "PUT", "", deployBody(vars("E", 129, 1), nil), http.StatusRequestEntityTooLarge},
		{"deploy 129 secrets", "PUT", "", deployBody(nil, vars("S", 129, 1)), http.StatusRequestEntityTooLarge},
		{"deploy 64 env + 65 secrets", "PUT", "", deployBody(vars("E", 64, 1), vars("S", 65, 1)), http.StatusRequestEntityTooLarge},
		{"patch 129 env", "PATCH", "", body(vars("E", 129, 1), nil), http.StatusRequestEntityTooLarge},
		{"patch to 129 in two", "PATCH", body(vars("E", 100, 1), nil), body(nil, vars("S", 29, 1)), http.StatusRequestEntityTooLarge},
		{"patch to 128 in two", "PATCH", body(vars("E", 100, 1), nil), body(nil, vars("S", 28, 1)), http.StatusOK},
		{"patch over 64 KiB in two", "PATCH", body(vars("E", 2, 30<<10), nil), body(nil, vars("S", 1, 5<<10)), http.StatusRequestEntityTooLarge},
		// A change up to the bound fits in a PATCH's body, JSON and its
		// escapes around it: the body was bounded at 64 KiB itself.
		{"patch 64 KiB at once", "PATCH", "", body(vars("E", 2, 32<<10-2), nil), http.StatusOK},
		{"patch 64 KiB escaped", "PATCH", "", body(nil, map[string]string{"S": strings.Repeat("\"\x01", 21<<10)}), http.StatusOK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			alice := e.user("alice")
			e.deploy(alice, "/api/v1/functions/f")
			if tc.first != "" {
				e.mustDo(alice, "PATCH", "/api/v1/functions/f", tc.first, http.StatusOK, nil)
			}
			var before FunctionView
			e.mustDo(alice, "GET", "/api/v1/functions/f", "", http.StatusOK, &before)
			status, b := e.do(alice, tc.method, "/api/v1/functions/f", tc.body)
			if status != tc.status {
				t.Fatalf("%d %s, want %d", status, b, tc.status)
			}
			if status == http.StatusOK {
				return
			}
			wantError(t, tc.name, status, b, tc.status, "too_large")
			var after FunctionView
			e.mustDo(alice, "GET", "/api/v1/functions/f", "", http.StatusOK, &after)
			if after.Version != before.Version {
				t.Errorf("a refused change made version %d", after.Version)
			}
		})
	}
}

// A bad name or value, in env or secrets, at deploy or PATCH, is a 400
// invalid_argument naming it (a long name cut short, the limit said)
// and stores nothing. A secret's value is never in the answer.
func TestEnvBadInput(t *testing.T) {
	long := strings.Repeat("N", 300)
	for _, tc := range []struct {
		name, key, value, want string
	}{
		{"empty name", "", "v", `""`},
		{"name with =", "A=B", "v", `"A=B"`},
		{"name with NUL", "A\x00B", "v", `"A\x00B"`},
		{"name starting with a digit", "1A", "v", `"1A"`},
		{"name with -", "A-B", "v", `"A-B"`},
		{"name not ASCII", "CAFÉ", "v", `"CAF`},
		{"name too long", long, "v", "at most 256"},
		{"value with NUL", "K", "hunter2\x00", "K contains a NUL byte"},
	} {
		for _, kind := range []string{"env", "secrets"} {
			for _, method := range []string{"PUT", "PATCH"} {
				t.Run(tc.name+" "+kind+" "+method, func(t *testing.T) {
					e := newEnv(t)
					alice := e.user("alice")
					e.deploy(alice, "/api/v1/functions/f")
					var before FunctionView
					e.mustDo(alice, "GET", "/api/v1/functions/f", "", http.StatusOK, &before)
					m := map[string]any{kind: map[string]string{tc.key: tc.value}}
					if method == "PUT" {
						m["code"] = "export default { fetch() { return new Response('x') } }"
					}
					body, _ := json.Marshal(m)
					status, b := e.do(alice, method, "/api/v1/functions/f", string(body))
					wantError(t, tc.name, status, b, http.StatusBadRequest, "invalid_argument")
					var eb errdefs.Body
					_ = json.Unmarshal(b, &eb)
					if msg := eb.Error.Message; !strings.Contains(msg, tc.want) || strings.Contains(msg, "hunter2") || len(msg) > 200 {
						t.Errorf("message %q, want one naming %s, without the value, short", msg, tc.want)
					}
					var after FunctionView
					e.mustDo(alice, "GET", "/api/v1/functions/f", "", http.StatusOK, &after)
					if after.Version != before.Version {
						t.Errorf("a refused change made version %d", after.Version)
					}
				})
			}
		}
	}
}
