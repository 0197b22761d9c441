package api

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"testing"
)

// concurrently sends each request at once and returns each answer's
// status and body, in order.
func (e *env) concurrently(token string, reqs []struct{ method, path, body string }) ([]int, [][]byte) {
	statuses, bodies := make([]int, len(reqs)), make([][]byte, len(reqs))
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i, r := range reqs {
		wg.Go(func() {
			<-start
			statuses[i], bodies[i] = e.send(token, r.method, r.path, r.body)
		})
	}
	close(start)
	wg.Wait()
	for i, s := range statuses {
		if s == 0 || s >= 500 {
			e.t.Errorf("%s %s: %d %s", reqs[i].method, reqs[i].path, s, bodies[i])
		}
	}
	return statuses, bodies
}

// versionsOf are the numbers of a function's versions, and its live one
// (0 and none if it does not exist).
func (e *env) versionsOf(name string) (live int64, numbers []int64) {
	e.t.Helper()
	status, body := e.do(e.admin, "GET", "/api/v1/functions/"+name+"/versions", "")
	if status == http.StatusNotFound {
		return 0, nil
	}
	var res struct{ Versions []VersionView }
	if status != http.StatusOK || json.Unmarshal(body, &res) != nil {
		e.t.Fatalf("versions of %s: %d %s", name, status, body)
	}
	for _, v := range res.Versions {
		numbers = append(numbers, v.Version)
		if v.Live {
			if live != 0 {
				e.t.Errorf("%s: versions %d and %d both live", name, live, v.Version)
			}
			live = v.Version
		}
	}
	slices.Sort(numbers)
	return live, numbers
}

// Conflicting writes of one function at once end as some serial order of
// them would: each client is answered for what it did (one 201 among
// deploys of a new function, one 204 among deletes and 404 for the
// rest), no answer is a 5xx, versions are numbered without gaps or
// repeats, one is live, and the live one is what the last writer made.
func TestConcurrentConflictingWrites(t *testing.T) {
	e := newEnv(t)
	withKV(t, e)
	const n = 8
	code := `"export default { fetch() { return new Response('x') } }"`
	same := func(method, path, body string) []struct{ method, path, body string } {
		reqs := make([]struct{ method, path, body string }, n)
		for i := range reqs {
			reqs[i] = struct{ method, path, body string }{method, path, fmt.Sprintf(body, i)}
		}
		return reqs
	}

	t.Run("deploys of a new function", func(t *testing.T) {
		statuses, bodies := e.concurrently(e.admin, same("PUT", "/api/v1/functions/c", `{"code":`+code+`,"env":{"N":"%d"}}`))
		created := 0
		made := map[int64]string{}
		for i, s := range statuses {
			var fn FunctionView
			if err := json.Unmarshal(bodies[i], &fn); err != nil {
				t.Fatal(err)
			}
			switch s {
			case http.StatusCreated:
				created++
				if fn.Version != 1 {
					t.Errorf("201 for version %d", fn.Version)
				}
			case http.StatusOK:
			default:
				t.Errorf("deploy: %d %s", s, bodies[i])
			}
			if _, dup := made[fn.Version]; dup {
				t.Errorf("two deploys answered with version %d", fn.Version)
			}
			made[fn.Version] = fn.Env["N"]
		}
		if created != 1 {
			t.Errorf("%d deploys answered 201, want 1", created)
		}
		live, numbers := e.versionsOf("c")
		if want := []int64{1, 2, 3, 4, 5, 6, 7, 8}; !slices.Equal(numbers, want) {
			t.Errorf("versions %v, want %v", numbers, want)
		}
		var fn FunctionView
		e.mustDo(e.admin, "GET", "/api/v1/functions/c", "", http.StatusOK, &fn)
		if live != n || fn.Version != n || fn.Env["N"] != made[n] {
			t.Errorf("live %d (GET: %d, N=%s), want %d, N=%s", live, fn.Version, fn.Env["N"], n, made[n])
		}
	})

	t.Run("changes", func(t *testing.T) {
		statuses, bodies := e.concurrently(e.admin, same("PATCH", "/api/v1/functions/c", `{"env":{"M":"%d"},"memory":"256Mi"}`))
		byVersion := map[int64]string{}
		for i, s := range statuses {
			var fn FunctionView
			if s != http.StatusOK || json.Unmarshal(bodies[i], &fn) != nil {
				t.Fatalf("PATCH: %d %s", s, bodies[i])
			}
			if _, dup := byVersion[fn.Version]; dup {
				t.Errorf("two changes answered with version %d", fn.Version)
			}
			byVersion[fn.Version] = fn.Env["M"]
			if fn.Env["M"] != fmt.Sprint(i) {
				t.Errorf("change %d answered with M=%s", i, fn.Env["M"])
			}
		}
		live, numbers := e.versionsOf("c")
		if len(numbers) != 2*n || numbers[0] != 1 || numbers[len(numbers)-1] != 2*n || live != 2*n {
			t.Errorf("versions %v, live %d", numbers, live)
		}
		var fn FunctionView
		e.mustDo(e.admin, "GET", "/api/v1/functions/c", "", http.StatusOK, &fn)
		if fn.Env["M"] != byVersion[2*n] || fn.Limits.MemoryMiB != 256 || fn.Env["N"] == "" {
			t.Errorf("live env %v, memory %d; the last change set M=%s", fn.Env, fn.Limits.MemoryMiB, byVersion[2*n])
		}
	})

	t.Run("traffic and tags against deploys", func(t *testing.T) {
		reqs := same("PUT", "/api/v1/functions/c", `{"code":`+code+`,"env":{"T":"%d"}}`)[:4]
		for range 4 {
			reqs = append(reqs, struct{ method, path, body string }{"PUT", "/api/v1/functions/c/traffic", `{"1":50,"2":50}`})
			reqs = append(reqs, struct{ method, path, body string }{"PUT", "/api/v1/functions/c/tags/t", `{"version":3}`})
		}
		statuses, bodies := e.concurrently(e.admin, reqs)
		for i, s := range statuses {
			if s != http.StatusOK {
				t.Errorf("%s %s: %d %s", reqs[i].method, reqs[i].path, s, bodies[i])
			}
		}
		// A deploy ends a split: if one is left, it was set after the
		// last deploy, and names versions that exist.
		var fn FunctionView
		e.mustDo(e.admin, "GET", "/api/v1/functions/c", "", http.StatusOK, &fn)
		if fn.Tags["t"] != 3 {
			t.Errorf("tags %v", fn.Tags)
		}
		for _, sp := range fn.Traffic {
			if sp.Version != 1 && sp.Version != 2 {
				t.Errorf("traffic %v", fn.Traffic)
			}
		}
	})

	t.Run("deletes", func(t *testing.T) {
		e.mustDo(e.admin, "PUT", "/api/v1/functions/c/kv/k", `1`, http.StatusNoContent, nil)
		statuses, bodies := e.concurrently(e.admin, same("DELETE", "/api/v1/functions/c", ""))
		deleted := 0
		for i, s := range statuses {
			switch s {
			case http.StatusNoContent:
				deleted++
			case http.StatusNotFound:
				wantError(t, "a second delete", s, bodies[i], http.StatusNotFound, "not_found")
			default:
				t.Errorf("delete: %d %s", s, bodies[i])
			}
		}
		if deleted != 1 {
			t.Errorf("%d deletes answered 204, want 1", deleted)
		}
		if live, numbers := e.versionsOf("c"); live != 0 || numbers != nil {
			t.Errorf("after the deletes: live %d, versions %v", live, numbers)
		}
	})

	t.Run("deploys, changes and deletes", func(t *testing.T) {
		for round := range 5 {
			var reqs []struct{ method, path, body string }
			for i := range 3 {
				reqs = append(reqs,
					struct{ method, path, body string }{"PUT", "/api/v1/functions/d", `{"code":` + code + `}`},
					struct{ method, path, body string }{"PATCH", "/api/v1/functions/d", fmt.Sprintf(`{"env":{"R":"%d-%d"}}`, round, i)},
					struct{ method, path, body string }{"DELETE", "/api/v1/functions/d", ""})
			}
			statuses, bodies := e.concurrently(e.admin, reqs)
			for i, s := range statuses {
				if !slices.Contains([]int{200, 201, 204, 404}, s) {
					t.Errorf("%s: %d %s", reqs[i].method, s, bodies[i])
				}
			}
			// Whatever came last, the function is whole or gone.
			live, numbers := e.versionsOf("d")
			status, body := e.do(e.admin, "GET", "/api/v1/functions/d", "")
			switch {
			case live == 0 && status == http.StatusNotFound:
			case live != 0 && status == http.StatusOK && slices.Contains(numbers, live):
				var fn FunctionView
				if json.Unmarshal(body, &fn) != nil || fn.Version != live || live != numbers[len(numbers)-1] {
					t.Errorf("round %d: GET %s, versions %v", round, body, numbers)
				}
			default:
				t.Errorf("round %d: live %d, versions %v, GET %d %s", round, live, numbers, status, body)
			}
		}
	})
}
