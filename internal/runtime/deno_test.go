package runtime_test

import (
	"log/slog"
	"os"
	"strings"
	"testing"

	"github.com/spry-run/spry/internal/backend/local"
	"github.com/spry-run/spry/internal/runtime"
	"github.com/spry-run/spry/internal/runtime/runtimetest"
)

// A Deno function may write /tmp and nothing else, as a Node one
// (TestNodeSandbox): not its socket directory, which is the host's
// (outside /tmp's size limit, beside the sockets the router dials).
func TestDenoWritesOnlyTmp(t *testing.T) {
	re := runtimetest.New(t, "deno")
	b, err := local.New(local.Config{
		RunDir:           re.Dir,
		Sandbox:          re.Sandbox,
		Runtimes:         []local.Runtime{re.Deno},
		Blobs:            re.Blobs,
		Logs:             re.Logs,
		Logger:           slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		DefaultMemoryMiB: 128,
		DefaultNetwork:   runtime.NetworkNone,
		UIDBase:          311000,
		Pids:             256,
		TmpBytes:         16 << 20,
		NoFiles:          1024,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	e := &nodeEnv{b: b, blobs: re.Blobs, logs: re.Logs}
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
	spec.Runtime = "deno"
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
