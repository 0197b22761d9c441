package runtime_test

import (
	"net/http"
	"testing"
)

// runtimes are the runtimes every contract test runs on, with the first
// uid of each one's instances: Deno and Node must keep the same contract
// (docs/functions.md).
var runtimes = []struct {
	name    string
	uidBase int
}{{"deno", 320000}, {"node", 340000}}

// eachRuntime runs f once per runtime, each on a backend of its own.
func eachRuntime(t *testing.T, f func(t *testing.T, e *nodeEnv)) {
	for _, rt := range runtimes {
		t.Run(rt.name, func(t *testing.T) {
			f(t, newRuntimeEnv(t, rt.name, 0, rt.uidBase))
		})
	}
}

// req.url has the scheme the client used (X-Forwarded-Proto, which the
// router always sets), on Node as on Deno.
func TestContractURLScheme(t *testing.T) {
	eachRuntime(t, func(t *testing.T, e *nodeEnv) {
		inst := e.start(t, `export default { fetch: (req) => new Response(req.url + " " + new URL(req.url).protocol) }`)
		for _, tc := range []struct{ proto, want string }{
			{"https", "https://instance.test/p?q=1 https:"},
			{"http", "http://instance.test/p?q=1 http:"},
		} {
			if r := do(t, inst, "GET", "/p?q=1", http.Header{"X-Forwarded-Proto": {tc.proto}}, nil); r.body != tc.want {
				t.Errorf("X-Forwarded-Proto %s: got %d %q, want %q", tc.proto, r.status, r.body, tc.want)
			}
		}
	})
}

// A default export with a fetch method is served through it, whatever
// else it is: a class with a static fetch, a function carrying one.
func TestContractFetchMethodWins(t *testing.T) {
	eachRuntime(t, func(t *testing.T, e *nodeEnv) {
		for _, tc := range []struct{ name, code, want string }{
			{"static", `export default class { static fetch(req, ctx) { return new Response("static " + ctx.version) } }`, "static 3"},
			{"function-with-fetch", `const f = () => new Response("called as a function"); f.fetch = (req, ctx) => new Response("fetch " + ctx.name); export default f;`, "fetch hello"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				inst := e.start(t, tc.code)
				if r := do(t, inst, "GET", "/", nil, nil); r.status != 200 || r.body != tc.want {
					t.Fatalf("got %d %q, want %q\n%s", r.status, r.body, tc.want, e.logs)
				}
			})
		}
	})
}
