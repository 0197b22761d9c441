package api

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// An admitted deploy's body must arrive within Config.DeployBodyTimeout:
// a client that trickles it gets a 408 request_timeout in the API's
// shape, and its slot goes to the deploy waiting for it, whose own time
// starts at its admission. Before, a body sent a byte a minute held its
// slot for good, and two users so stalled every deploy. Both servers the
// API runs on are tried: net/http (httptest) and the server's own
// fasthttp adaptor, which takes the deadline through the same
// http.ResponseController.
func TestDeployBodyTimeout(t *testing.T) {
	const timeout = 300 * time.Millisecond
	for _, tt := range apiServers {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnvConfig(t, Config{MaxCodeBytes: 1 << 20, DeployBodyTimeout: timeout})
			// One slot: the slow deploy holds it, the next one waits.
			e.api.deploys = newDeploySlots(1, 8)
			addr := tt.serve(t, e)
			bob, carol := e.user("bob"), e.user("carol")
			waitFor := func(running, waiting int) {
				t.Helper()
				e.waitForDeploys(1, running, waiting)
			}

			// bob announces 1 MiB, sends 16 KiB of it at once (fasthttp
			// reads the first 8 KiB with the head, under its own
			// deadline), then a byte every 10 ms until he is answered.
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			fmt.Fprintf(conn, "PUT /api/v1/functions/slow HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n"+
				"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n{%s", addr, bob, 1<<20, strings.Repeat(" ", 16<<10))
			defer trickle(conn)()
			waitFor(1, 0)
			admitted := time.Now()

			// carol's deploy, its body sent at once, waits for the slot.
			fast := make(chan string, 1)
			go func() {
				req, _ := http.NewRequest("PUT", "http://"+addr+"/api/v1/functions/fast",
					strings.NewReader(`{"code":"export default { fetch() { return new Response('hi') } }"}`))
				req.Header.Set("Authorization", "Bearer "+carol)
				req.Header.Set("Content-Type", "application/json")
				res, err := (&http.Client{}).Do(req)
				if err != nil {
					fast <- err.Error()
					return
				}
				defer res.Body.Close()
				b, _ := io.ReadAll(res.Body)
				fast <- fmt.Sprintf("%d %s", res.StatusCode, b)
			}()
			waitFor(1, 1)

			wantRequestTimeout(t, conn, "the slow deploy")
			took := time.Since(admitted)
			// (admitted is when the test saw the admission, a poll after
			// the deadline was set.)
			if took < timeout/2 {
				t.Errorf("the slow deploy was answered %s after its admission, well before its %s", took, timeout)
			}
			if got := <-fast; !strings.HasPrefix(got, "201 ") {
				t.Errorf("the deploy that waited: %s, want 201", got)
			}
			waitFor(0, 0)
			if len(e.api.deploys.users) != 0 {
				t.Errorf("users left in the deploy slots: %v", e.api.deploys.users)
			}
			// Nothing of the slow deploy was stored.
			if status, b := e.do(bob, "GET", "/api/v1/functions/slow", ""); status != http.StatusNotFound {
				t.Errorf("the slow deploy's function: %d %s, want 404", status, b)
			}
		})
	}
}
