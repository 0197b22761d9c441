package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func versionCode(n int) []byte {
	return []byte(fmt.Sprintf(`export default { fetch(req, ctx) { return new Response("v%d " + ctx.version); } }`, n))
}

// TestVersionsRollbackTrafficTags covers versions, rollback, a traffic
// split, and tags.
func TestVersionsRollbackTrafficTags(t *testing.T) {
	s := startServer(t)
	for n := 1; n <= 3; n++ {
		if r := s.putCode(s.token, "ver", versionCode(n), ""); r.status/100 != 2 {
			t.Fatalf("deploy %d: %d %s", n, r.status, r.body)
		}
	}
	body := func(path string) string { return string(s.get("/fn/admin/ver" + path).body) }
	if got := body("/"); got != "v3 3" {
		t.Fatalf("live: %q", got)
	}
	out := s.mustSpry("versions", "ver")
	if ls := lines(out); len(ls) != 4 || !strings.Contains(ls[1], "3") || !strings.Contains(ls[1], "*") || !strings.Contains(out, "sha256:") || !strings.Contains(out, "admin") {
		t.Fatalf("versions:\n%s", out)
	}

	// Rollback: to the previous version, then to a named one.
	s.mustSpry("rollback", "ver")
	if got := body("/"); got != "v2 2" {
		t.Fatalf("after rollback: %q", got)
	}
	s.mustSpry("rollback", "ver", "1")
	if got := body("/"); got != "v1 1" {
		t.Fatalf("after rollback to 1: %q", got)
	}
	if _, errOut, code := s.spry("", "rollback", "ver", "9"); code == 0 || !strings.Contains(errOut, "not found") {
		t.Fatalf("rollback to a missing version: %d %s", code, errOut)
	}

	// Tags and version numbers give fixed URLs.
	s.mustSpry("tag", "ver", "canary", "3")
	if got := body("@canary/"); got != "v3 3" {
		t.Fatalf("@canary: %q", got)
	}
	if got := body("@2/"); got != "v2 2" {
		t.Fatalf("@2: %q", got)
	}
	if r := s.get("/fn/admin/ver@/"); r.status != 404 {
		t.Fatalf("an empty selector: %d", r.status)
	}
	if r := s.get("/fn/admin/ver@nope/"); r.status != 404 {
		t.Fatalf("unknown tag: %d", r.status)
	}
	if r := s.putCode(s.token, "ver", versionCode(4), ""); r.status != 200 {
		t.Fatalf("deploy 4: %d", r.status)
	}
	if got := body("@canary/"); got != "v3 3" {
		t.Fatalf("@canary after a deploy: %q", got)
	}

	// A 90/10 split over 2,000 requests lands within +-5%.
	// An empty change makes no version.
	for _, body := range []string{`{}`, `null`} {
		if r := s.do("PATCH", "/api/v1/functions/ver", s.token, strings.NewReader(body), map[string]string{"Content-Type": "application/json"}); r.status != 400 {
			t.Errorf("PATCH %s: %d %s", body, r.status, r.body)
		}
	}
	s.mustSpry("traffic", "ver", "3=90", "4=10")
	counts := map[string]int{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	client := &http.Client{}
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 250; i++ {
				res, err := client.Get(s.url + "/fn/admin/ver/")
				if err != nil {
					t.Error(err)
					return
				}
				b, _ := io.ReadAll(res.Body)
				res.Body.Close()
				mu.Lock()
				counts[string(b)]++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	// Both versions have instances now: one series per function and
	// state, not one per version (a series collected twice fails the
	// whole scrape).
	if r := s.do("GET", "/metrics", s.token, nil, nil); r.status != 200 || !strings.Contains(string(r.body), `spry_instances{function="ver",owner="admin",state="idle"}`) {
		t.Errorf("metrics during a split: %d %.300s", r.status, r.body)
	}
	if counts["v3 3"]+counts["v4 4"] != 2000 {
		t.Fatalf("responses: %v", counts)
	}
	share := float64(counts["v4 4"]) / 2000
	if share < 0.05 || share > 0.15 {
		t.Fatalf("version 4 got %.1f%% of 2000 requests, want 10%% +- 5%%: %v", share*100, counts)
	}
	t.Logf("split 90/10: %v", counts)
	if out := s.mustSpry("versions", "ver"); !strings.Contains(out, "90%") || !strings.Contains(out, "10%") || !strings.Contains(out, "canary") {
		t.Fatalf("versions after split:\n%s", out)
	}
	// A deploy ends the split.
	s.putCode(s.token, "ver", versionCode(5), "")
	if got := body("/"); got != "v5 5" {
		t.Fatalf("after deploy: %q", got)
	}
	// Bad splits are refused.
	for _, args := range [][]string{{"5=50", "4=40"}, {"5=100", "99=0"}, {"x=100"}} {
		if _, _, code := s.spry("", append([]string{"traffic", "ver"}, args...)...); code == 0 {
			t.Errorf("traffic %v accepted", args)
		}
	}
	// A version has one name: "05" and "+5" are not 5.
	for _, split := range []string{`{"05":50,"4":50}`, `{"+5":100}`} {
		r := s.do("PUT", "/api/v1/functions/ver/traffic", s.token, strings.NewReader(split), map[string]string{"Content-Type": "application/json"})
		if r.status != 400 {
			t.Errorf("traffic %s: %d %s", split, r.status, r.body)
		}
	}
	if r := s.get("/fn/admin/ver@05"); r.status != 404 {
		t.Errorf("@05: %d %s", r.status, r.body)
	}
}

// TestZeroDowntimeRedeploys: under steady load, 20 redeploys and
// rollbacks lose no request, and every response comes whole from one
// version; old instances drain and stop.
func TestZeroDowntimeRedeploys(t *testing.T) {
	s := startServer(t)
	slowish := func(n int) []byte {
		return []byte(fmt.Sprintf(`export default { async fetch() {
			await new Promise((r) => setTimeout(r, 20));
			return new Response("version-%d-start|" + "x".repeat(10000) + "|version-%d-end");
		} }`, n, n))
	}
	s.deployCode(t, "steady", slowish(1), "")
	stop := make(chan struct{})
	var failures, total atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := &http.Client{Timeout: 30 * time.Second}
			for {
				select {
				case <-stop:
					return
				default:
				}
				total.Add(1)
				res, err := client.Get(s.url + "/fn/admin/steady/")
				if err != nil {
					failures.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				b, _ := io.ReadAll(res.Body)
				res.Body.Close()
				parts := strings.Split(string(b), "|")
				if res.StatusCode != 200 || len(parts) != 3 ||
					strings.TrimSuffix(strings.TrimPrefix(parts[0], "version-"), "-start") != strings.TrimSuffix(strings.TrimPrefix(parts[2], "version-"), "-end") {
					failures.Add(1)
					firstErr.CompareAndSwap(nil, fmt.Sprintf("%d %.200s", res.StatusCode, b))
				}
			}
		}()
	}
	time.Sleep(300 * time.Millisecond)
	for i := 2; i <= 21; i++ {
		if i%5 == 0 {
			s.mustSpry("rollback", "steady")
		} else if r := s.putCode(s.token, "steady", slowish(i), ""); r.status != 200 {
			t.Fatalf("redeploy %d: %d %s", i, r.status, r.body)
		}
		time.Sleep(150 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond)
	close(stop)
	wg.Wait()
	if f := failures.Load(); f != 0 {
		t.Fatalf("%d of %d requests failed during 20 redeploys; first: %v", f, total.Load(), firstErr.Load())
	}
	t.Logf("%d requests, 0 failures, during 20 redeploys and rollbacks", total.Load())
	// Old versions' instances drain and stop: only the live version runs.
	eventually(t, 10*time.Second, "old instances to stop", func() bool {
		r := s.do("GET", "/metrics", s.token, nil, nil)
		running := 0
		for _, l := range strings.Split(string(r.body), "\n") {
			if strings.HasPrefix(l, `spry_instances{function="steady"`) && (strings.Contains(l, `state="idle"`) || strings.Contains(l, `state="busy"`)) {
				f := strings.Fields(l)
				n, _ := strconv.Atoi(f[len(f)-1])
				running += n
			}
		}
		return running == 1
	})
}

// TestDeleteVersion: a version deployed with a secret since rotated is
// deleted with spry versions rm; @1 then answers 404 as a version that
// never was, its instance stops, the live version serves on, and the live
// version itself cannot be deleted (409).
func TestDeleteVersion(t *testing.T) {
	s := startServer(t)
	deploy := func(secret string) {
		t.Helper()
		body, _ := json.Marshal(map[string]any{
			"code":    `export default { fetch(req, ctx) { return new Response(ctx.version + " " + ctx.env.KEY); } }`,
			"secrets": map[string]string{"KEY": secret},
		})
		if r := s.do("PUT", "/api/v1/functions/rot", s.token, bytes.NewReader(body), map[string]string{"Content-Type": "application/json"}); r.status/100 != 2 {
			t.Fatalf("deploy with secret %s: %d %s", secret, r.status, r.body)
		}
	}
	deploy("secret-A")
	deploy("secret-B")
	if r := s.get("/fn/admin/rot@1/"); r.status != 200 || string(r.body) != "1 secret-A" {
		t.Fatalf("@1 before rm: %d %q", r.status, r.body)
	}
	if r := s.get("/fn/admin/rot/"); r.status != 200 || string(r.body) != "2 secret-B" {
		t.Fatalf("live before rm: %d %q", r.status, r.body)
	}
	running := func() int {
		r := s.do("GET", "/metrics", s.token, nil, nil)
		n := 0
		for _, l := range strings.Split(string(r.body), "\n") {
			if strings.HasPrefix(l, `spry_instances{function="rot"`) && (strings.Contains(l, `state="idle"`) || strings.Contains(l, `state="busy"`)) {
				f := strings.Fields(l)
				k, _ := strconv.Atoi(f[len(f)-1])
				n += k
			}
		}
		return n
	}
	if n := running(); n != 2 {
		t.Fatalf("%d instances of rot before rm, want 2 (one per version)", n)
	}

	if out := s.mustSpry("versions", "rm", "rot", "1"); !strings.Contains(out, "removed version 1 of rot") {
		t.Fatalf("versions rm: %q", out)
	}
	never := s.get("/fn/admin/rot@7/")
	r := s.get("/fn/admin/rot@1/")
	if r.status != 404 || never.status != 404 || r.errorCode(t) != "not_found" || strings.Contains(string(r.body), "secret-A") {
		t.Fatalf("@1 after rm: %d %s; a version that never was: %d %s", r.status, r.body, never.status, never.body)
	}
	if r := s.get("/fn/admin/rot/"); r.status != 200 || string(r.body) != "2 secret-B" {
		t.Fatalf("live after rm: %d %q", r.status, r.body)
	}
	if r := s.get("/fn/admin/rot@2/"); r.status != 200 || string(r.body) != "2 secret-B" {
		t.Fatalf("@2 after rm: %d %q", r.status, r.body)
	}
	if out := s.mustSpry("versions", "rot"); len(lines(out)) != 2 || !strings.HasPrefix(lines(out)[1], "2 ") {
		t.Fatalf("versions after rm:\n%s", out)
	}
	// Version 1's instance drains and stops; version 2's serves on.
	eventually(t, 10*time.Second, "the deleted version's instance to stop", func() bool { return running() == 1 })

	// The live version is refused: 409 over the API, exit 5 from the CLI.
	r = s.do("DELETE", "/api/v1/functions/rot/versions/2", s.token, nil, nil)
	if r.status != 409 || r.errorCode(t) != "conflict" || !strings.Contains(string(r.body), "is live") {
		t.Fatalf("DELETE of the live version: %d %s", r.status, r.body)
	}
	if _, errOut, code := s.spry("", "versions", "rm", "rot", "2"); code != 5 || !strings.Contains(errOut, "is live") {
		t.Fatalf("versions rm of the live version: exit %d %s", code, errOut)
	}
	// Numbers are not given again.
	deploy("secret-C")
	if r := s.get("/fn/admin/rot/"); string(r.body) != "3 secret-C" {
		t.Fatalf("the deploy after rm: %q", r.body)
	}
}
