package api

import (
	"io"
	"net/http"
	"testing"
	"time"
)

// Deploys in progress are bounded: at most MaxDeploys past admission
// (reading their body, building), MaxDeploysPerUser of one user's, the
// rest waiting with their bodies unread, up to MaxDeploysQueuedPerUser
// per user (then 429) and MaxDeploysWaiting in all (then 503), both
// with Retry-After. Before, every deploy read its body at once: a few
// users deploying together could hold their bodies, up to six times the
// code limit each, and more, all at once.
func TestDeployAdmission(t *testing.T) {
	e := newEnv(t)
	e.api.deploys = newDeploySlots(2, 3)
	e.api.deploys.perUser = 4
	bob := e.user("bob")
	carol := e.user("carol")
	type deploy struct {
		body *io.PipeWriter
		done chan int
	}
	start := func(token, name string) deploy {
		pr, pw := io.Pipe()
		// A failed test ends its requests, or the server's Close would
		// wait for them.
		t.Cleanup(func() { pw.CloseWithError(io.ErrUnexpectedEOF) })
		d := deploy{pw, make(chan int, 1)}
		req, _ := http.NewRequest("PUT", e.srv.URL+"/api/v1/functions/"+name, pr)
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("Content-Type", "application/json")
		go func() {
			res, err := e.srv.Client().Do(req)
			if err != nil {
				d.done <- 0
				return
			}
			res.Body.Close()
			d.done <- res.StatusCode
		}()
		return d
	}
	finish := func(d deploy) {
		go func() {
			_, _ = io.WriteString(d.body, `{"code":"export default { fetch() { return new Response('hi') } }"}`)
			d.body.Close()
		}()
	}
	waitFor := func(running, waiting int) {
		t.Helper()
		e.waitForDeploys(2, running, waiting)
	}
	refused := func(token, name string, status int) {
		t.Helper()
		req, _ := http.NewRequest("PUT", e.srv.URL+"/api/v1/functions/"+name, http.NoBody)
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("Content-Type", "application/json")
		res, err := e.srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != status || res.Header.Get("Retry-After") == "" {
			t.Errorf("%s: %d %s (Retry-After %q), want %d with Retry-After", name, res.StatusCode, b, res.Header.Get("Retry-After"), status)
		}
	}

	// bob: two admitted, two waiting, the fifth refused.
	var bobs []deploy
	for i, name := range []string{"b1", "b2", "b3", "b4"} {
		bobs = append(bobs, start(bob, name))
		if i < 2 {
			waitFor(i+1, 0)
		} else {
			waitFor(2, i-1)
		}
	}
	refused(bob, "b5", http.StatusTooManyRequests)
	// carol waits too; the server keeps three waiting, then no more.
	c1 := start(carol, "c1")
	waitFor(2, 3)
	refused(carol, "c2", http.StatusServiceUnavailable)
	refused(e.admin, "a1", http.StatusServiceUnavailable)

	// One of bob's ends: his next waiting one is admitted, not carol's,
	// who came later (bob holds one of his two).
	finish(bobs[0])
	if s := <-bobs[0].done; s != http.StatusCreated {
		t.Fatalf("b1: %d", s)
	}
	waitFor(2, 2)
	// Each deploy that ends lets the next in, and all end.
	for _, d := range append(bobs[1:], c1) {
		finish(d)
	}
	for i, d := range append(bobs[1:], c1) {
		if s := <-d.done; s != http.StatusCreated {
			t.Errorf("deploy %d: %d, want 201", i+2, s)
		}
	}
	waitFor(0, 0)
	if len(e.api.deploys.users) != 0 {
		t.Errorf("users left in the deploy slots: %v", e.api.deploys.users)
	}
}

// waitForDeploys waits until running deploys are admitted of the slots
// the API was given and waiting wait.
func (e *env) waitForDeploys(slots, running, waiting int) {
	e.t.Helper()
	d := e.api.deploys
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		d.mu.Lock()
		r, w := slots-d.free, len(d.waiting)
		d.mu.Unlock()
		if r == running && w == waiting {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("%d admitted, %d waiting; want %d, %d", r, w, running, waiting)
		}
	}
}
