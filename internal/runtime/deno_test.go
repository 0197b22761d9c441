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

// A function in the RequestEvent style that throws after respondWith
// has its answer sent and its error logged, not lost.
func TestDenoRequestEventThrowsAfterAnswer(t *testing.T) {
	e := newRuntimeEnv(t, "deno", 0, 311000)
	inst := e.start(t, `export default async function handler({ req }) {
		req.respondWith(new Response("answered"));
		await null;
		throw new Error("thrown after respondWith");
	}`)
	if r := do(t, inst, "GET", "/", nil, nil); r.status != 200 || r.body != "answered" {
		t.Fatalf("got %d %q", r.status, r.body)
	}
	if !e.logs.Await("uncaught exception in function: Error: thrown after respondWith") {
		t.Fatalf("the error is not in the logs:\n%s", e.logs)
	}
}

// The Response class a Deno function sees marks the responses whose body
// is a stream (so their start is read before the head goes out, as on
// Node), and is otherwise the web's: Deno's own Responses (fetch's,
// Response.json's) are instances of it, a function's subclass keeps the
// usual instanceof.
func TestDenoResponseClass(t *testing.T) {
	e := newRuntimeEnv(t, "deno", 0, 311000)
	inst := e.start(t, `class Mine extends Response {}
	export default { async fetch(req) {
		const j = Response.json({ a: 1 }), m = new Mine("m");
		const s = new Response(new ReadableStream({ start(c) { c.enqueue(new Uint8Array([104, 105])); c.close(); } }));
		const checks = [j instanceof Response, m instanceof Response, m instanceof Mine, !(j instanceof Mine),
			!(new Response("x") instanceof Mine), Response.name === "Response", Response.error().type === "error",
			Response.redirect("http://x/", 302).status === 302, new Response("x").constructor === Response,
			Object.prototype.toString.call(j) === "[object Response]"];
		return new Response(checks.join(",") + " " + await s.text());
	} }`)
	if r := do(t, inst, "GET", "/", nil, nil); r.body != "true,true,true,true,true,true,true,true,true,true hi" {
		t.Fatalf("got %d %q", r.status, r.body)
	}
}
