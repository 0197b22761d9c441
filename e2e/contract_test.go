package e2e

import (
	"net/http"
	"testing"
	"time"
)

// TestResetContentEndsAtOnce: a 205, whose answer has no body (RFC 9110
// 15.3.6), reaches the client at once and whole on both runtimes and on
// both of the router's paths. Deno sends it with no length and keeps the
// connection, so read to the connection's end it would end only at the
// function's timeout.
func TestResetContentEndsAtOnce(t *testing.T) {
	for _, loops := range []string{"1", "0"} {
		t.Run("loops="+loops, func(t *testing.T) {
			s := startServer(t, "--router-loops", loops)
			const code = `export default { fetch() { return new Response(null, { status: 205, headers: { "x-reset": "yes" } }); } }`
			for _, rt := range []string{"deno", "node"} {
				t.Run(rt, func(t *testing.T) {
					name := "reset-" + rt
					s.deployCode(t, name, []byte(code), "runtime="+rt+"&timeout=20s")
					s.get("/fn/admin/" + name + "/") // the cold start
					for i := 0; i < 3; i++ {
						start := time.Now()
						r := s.get("/fn/admin/" + name + "/")
						if took := time.Since(start); r.status != http.StatusResetContent || len(r.body) != 0 || r.header.Get("X-Reset") != "yes" || took > 5*time.Second {
							t.Fatalf("got %d %q %v in %v, want an empty 205 at once", r.status, r.body, r.header, took)
						}
					}
				})
			}
		})
	}
}
