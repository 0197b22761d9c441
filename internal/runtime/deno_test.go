package runtime_test

import (
	"strings"
	"testing"
)

// A Deno function may write /tmp and nothing else, as a Node one
// (TestNodeSandbox): not its socket directory, which is the host's
// (outside /tmp's size limit, beside the sockets the router dials).
func TestDenoWritesOnlyTmp(t *testing.T) {
	e := newRuntimeEnv(t, "deno", 0, 311000)
	spec := e.spec(t, `export default { async fetch(req) {
		const q = new URL(req.url).searchParams;
		try {
			switch (q.get("what")) {
			case "write": Deno.writeTextFileSync(q.get("path"), "x"); return new Response("wrote");
			case "read": return new Response(Deno.readTextFileSync(q.get("path")));
			case "tmp": Deno.writeTextFileSync("/tmp/x", "ok"); return new Response(Deno.readTextFileSync("/tmp/x"));
			}
		} catch (e) { return new Response("denied: " + e.name, { status: 403 }); }
		return new Response("?", { status: 400 });
	} }`)
	inst := e.run(t, spec)
	for _, tc := range []struct{ q, want string }{
		{"what=write&path=/run/spry/x", "denied: NotCapable"},
		{"what=write&path=/run/spry/http.sock.x", "denied: NotCapable"},
		{"what=write&path=/code/x", "denied: NotCapable"},
		{"what=read&path=/etc/hosts", "denied: NotCapable"},
		{"what=tmp", "ok"},
	} {
		if r := do(t, inst, "GET", "/?"+tc.q, nil, nil); !strings.HasPrefix(r.body, tc.want) {
			t.Errorf("%s: got %q, want prefix %q", tc.q, r.body, tc.want)
		}
	}
}
