package e2e

import (
	"encoding/json"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// asyncFunction records each attempt in its kv (per invocation id:
// how many, and what the last one saw) and fails the first attempt of
// an event "flaky" with a 500, every attempt of "broken" with a 503,
// and holds the first attempt of "slow" for a minute.
const asyncFunction = `export default {
  async fetch(req, ctx) {
    const id = req.headers.get("spry-invocation-id");
    const body = await req.text();
    const n = await ctx.kv.add("attempts:" + id);
    const u = new URL(req.url);
    await ctx.kv.set("seen:" + id, { n, attempt: req.headers.get("spry-attempt"), method: req.method,
      path: u.pathname + u.search, type: req.headers.get("content-type"), body });
    if (body === "broken" || (body === "flaky" && n === 1)) {
      return new Response("not now", { status: body === "broken" ? 503 : 500 });
    }
    if (body === "slow" && n === 1) {
      await new Promise((r) => setTimeout(r, 60000));
    }
    return new Response("done " + body, { headers: { "content-type": "text/plain" } });
  },
};
`

// dlqFunction is an on-failure destination: it records each event it
// gets in its kv, under the id of the invocation that failed.
const dlqFunction = `export default {
  async fetch(req, ctx) {
    const failed = req.headers.get("spry-failed-invocation-id");
    await ctx.kv.set("event:" + failed, { type: req.headers.get("content-type"), path: new URL(req.url).pathname,
      event: await req.json() });
    return new Response("kept");
  },
};
`

// invocation reads one invocation through the API.
func (s *server) invocation(t *testing.T, name, id string) map[string]any {
	t.Helper()
	r := s.do("GET", "/api/v1/functions/"+name+"/invocations/"+id, s.token, nil, nil)
	if r.status != 200 {
		t.Fatalf("GET invocation %s: %d %s", id, r.status, r.body)
	}
	return r.json(t)
}

// waitInvocation waits for an invocation to reach status.
func (s *server) waitInvocation(t *testing.T, name, id, status string) map[string]any {
	t.Helper()
	var v map[string]any
	eventually(t, 30*time.Second, "invocation "+id+" to be "+status, func() bool {
		v = s.invocation(t, name, id)
		return v["status"] == status
	})
	return v
}

// seen is what the function recorded of an invocation's last attempt.
func (s *server) seen(t *testing.T, name, id string) map[string]any {
	t.Helper()
	r := s.do("GET", "/api/v1/functions/"+name+"/kv/seen:"+id, s.token, nil, nil)
	if r.status != 200 {
		t.Fatalf("kv seen:%s: %d %s", id, r.status, r.body)
	}
	var e struct{ Value map[string]any }
	if err := json.Unmarshal(r.body, &e); err != nil {
		t.Fatal(err)
	}
	return e.Value
}

// TestAsyncRetries: an asynchronous invocation queued with spry invoke
// --async reaches a real Deno function as a POST with its path, body,
// content type and id; a failed first attempt is retried (the backoff
// shortened by --async-retry-delay) and the second succeeds; one that
// always fails ends failed after three attempts, and after one if its
// function was deployed with --async-retries 0. The one that failed is
// sent on, as an event with its request, to the function its function
// names with --async-on-failure. Each attempt has its line in the
// function's logs, and the outcomes are counted.
func TestAsyncRetries(t *testing.T) {
	s := startServer(t, "--async-retry-delay", "100ms")
	s.deployCode(t, "jobs", []byte(asyncFunction), "")

	id := strings.TrimSpace(s.mustSpry("invoke", "jobs", "--async", "--path", "/hook?x=1", "-d", "flaky", "-H", "Content-Type: text/plain"))
	v := s.waitInvocation(t, "jobs", id, "succeeded")
	resp, _ := v["response"].(map[string]any)
	if v["attempts"] != 2.0 || v["http_status"] != 200.0 || resp == nil || resp["body"] != "done flaky" || resp["encoding"] != "text" {
		t.Errorf("flaky: %v", v)
	}
	seen := s.seen(t, "jobs", id)
	if seen["n"] != 2.0 || seen["attempt"] != "2" || seen["method"] != "POST" || seen["path"] != "/hook?x=1" || seen["type"] != "text/plain" || seen["body"] != "flaky" {
		t.Errorf("the function saw %v", seen)
	}

	// Its failures go to dlq, deployed after it was named.
	if out := s.mustSpry("config", "jobs", "--async-on-failure", "dlq"); !strings.Contains(out, "is now version 2") {
		t.Fatalf("config --async-on-failure dlq: %q", out)
	}
	s.deployCode(t, "dlq", []byte(dlqFunction), "")
	r := s.do("POST", "/api/v1/functions/jobs/invocations?path="+url.QueryEscape("/other"), s.token, strings.NewReader("broken"), nil)
	if r.status != 202 || !strings.HasPrefix(r.header.Get("Location"), "/api/v1/functions/jobs/invocations/") {
		t.Fatalf("enqueue: %d %v %s", r.status, r.header, r.body)
	}
	broken := r.json(t)["id"].(string)
	v = s.waitInvocation(t, "jobs", broken, "failed")
	if v["attempts"] != 3.0 || v["max_attempts"] != 3.0 || v["http_status"] != 503.0 || !strings.Contains(v["error"].(string), "503") {
		t.Errorf("broken: %v", v)
	}
	// Its event went on to dlq, with the request it failed with.
	fwd, _ := v["forwarded_to"].(string)
	if fwd == "" {
		t.Fatalf("broken was not sent on: %v", v)
	}
	if ev := s.waitInvocation(t, "dlq", fwd, "succeeded"); ev["failure_of"] != broken {
		t.Errorf("dlq's invocation: %v", ev)
	}
	kr := s.do("GET", "/api/v1/functions/dlq/kv/event:"+broken, s.token, nil, nil)
	var got struct {
		Value struct {
			Type, Path string
			Event      struct {
				Invocation struct {
					ID, Function, Path string
					Attempts           int
				}
				LastAttempt struct {
					Status int
					Error  string
				} `json:"last_attempt"`
				Request struct{ Body, Encoding string }
			}
		}
	}
	if kr.status != 200 || json.Unmarshal(kr.body, &got) != nil {
		t.Fatalf("dlq's kv: %d %s", kr.status, kr.body)
	}
	if e := got.Value.Event; got.Value.Type != "application/json" || got.Value.Path != "/" || e.Invocation.ID != broken || e.Invocation.Function != "jobs" ||
		e.Invocation.Path != "/other" || e.Invocation.Attempts != 3 || e.LastAttempt.Status != 503 || !strings.Contains(e.LastAttempt.Error, "503") ||
		e.Request.Body != "broken" || e.Request.Encoding != "text" {
		t.Errorf("dlq got %s", kr.body)
	}

	// A function that must not run twice: no retries.
	path := filepath.Join(t.TempDir(), "once.ts")
	if err := os.WriteFile(path, []byte(asyncFunction), 0o644); err != nil {
		t.Fatal(err)
	}
	s.mustSpry("deploy", path, "--async-retries", "0")
	once := strings.TrimSpace(s.mustSpry("invoke", "once", "--async", "-d", "broken"))
	v = s.waitInvocation(t, "once", once, "failed")
	if v["attempts"] != 1.0 || v["max_attempts"] != 1.0 || v["http_status"] != 503.0 {
		t.Errorf("broken, without retries: %v", v)
	}
	if seen := s.seen(t, "once", once); seen["n"] != 1.0 {
		t.Errorf("the function without retries saw %v", seen)
	}
	eventually(t, 10*time.Second, "the one attempt's log line", func() bool {
		logs := s.mustSpry("logs", "once")
		return strings.Contains(logs, "async invocation "+once+", attempt 1 of 1: 503") && strings.Contains(logs, "failed, no attempts left")
	})

	// Log lines are written in the background.
	eventually(t, 10*time.Second, "each attempt's log line", func() bool {
		logs := s.mustSpry("logs", "jobs")
		for _, want := range []string{
			"async invocation " + id + ", attempt 1 of 3: 500",
			"async invocation " + id + ", attempt 2 of 3: 200",
			"async invocation " + broken + ", attempt 3 of 3: 503",
			"failed, no attempts left",
			"async invocation " + broken + ": sent on to dlq as invocation " + fwd,
		} {
			if !strings.Contains(logs, want) {
				return false
			}
		}
		return true
	})
	list := s.mustSpry("invocations", "jobs")
	if !strings.Contains(list, id) || !strings.Contains(list, broken) || strings.Index(list, broken) > strings.Index(list, id) {
		t.Errorf("spry invocations (newest first):\n%s", list)
	}
	metrics := string(s.do("GET", "/metrics", s.token, nil, nil).body)
	for _, want := range []string{
		`spry_async_invocations_total{function="jobs",outcome="succeeded",owner="admin"} 1`,
		`spry_async_invocations_total{function="jobs",outcome="failed",owner="admin"} 1`,
		`spry_async_invocations_total{function="once",outcome="failed",owner="admin"} 1`,
		`spry_async_invocations_total{function="jobs",outcome="forwarded",owner="admin"} 1`,
		`spry_async_invocations_total{function="dlq",outcome="succeeded",owner="admin"} 1`,
		"spry_async_queue_depth 0",
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %q", want)
		}
	}

	// Deleting the function drops its invocations: one made again
	// under the name has none.
	s.mustSpry("rm", "jobs")
	s.deployCode(t, "jobs", []byte(asyncFunction), "")
	if r := s.do("GET", "/api/v1/functions/jobs/invocations/"+id, s.token, nil, nil); r.status != 404 {
		t.Errorf("an invocation of the deleted function: %d %s", r.status, r.body)
	}
}

// TestAsyncSurvivesRestart: with one attempt at a time, an invocation
// is running (its function holds it) and another queued behind it when
// the server stops, killed or past its shutdown timeout; the next start
// runs both, the one that was running again (at least once: the
// function sees its id twice), its cut-off attempt not counted.
func TestAsyncSurvivesRestart(t *testing.T) {
	for _, how := range []string{"kill -9", "SIGTERM"} {
		t.Run(how, func(t *testing.T) {
			s := startServer(t, "--async-workers", "1", "--async-workers-per-user", "1", "--shutdown-timeout", "1s")
			s.deployCode(t, "jobs", []byte(asyncFunction), "")
			slow := strings.TrimSpace(s.mustSpry("invoke", "jobs", "--async", "-d", "slow"))
			queued := strings.TrimSpace(s.mustSpry("invoke", "jobs", "--async", "-d", "quick"))
			eventually(t, 30*time.Second, "the slow invocation's first attempt to run", func() bool {
				r := s.do("GET", "/api/v1/functions/jobs/kv/attempts:"+slow, s.token, nil, nil)
				return r.status == 200
			})
			if v := s.invocation(t, "jobs", slow); v["status"] != "running" {
				t.Fatalf("slow: %v", v)
			}
			if v := s.invocation(t, "jobs", queued); v["status"] != "queued" {
				t.Fatalf("queued: %v", v)
			}

			if how == "kill -9" {
				s.kill9()
			} else {
				s.stop()
			}
			s.start()
			for _, id := range []string{slow, queued} {
				v := s.waitInvocation(t, "jobs", id, "succeeded")
				if v["attempts"] != 1.0 || v["http_status"] != 200.0 {
					t.Errorf("%s after the restart: %v", id, v)
				}
			}
			if seen := s.seen(t, "jobs", slow); seen["n"] != 2.0 || seen["body"] != "slow" {
				t.Errorf("the slow one ran %v times: %v", seen["n"], seen)
			}
			out := s.mustSpry("invocations", "jobs", slow)
			if !strings.Contains(out, "done slow") || !strings.Contains(out, "succeeded") {
				t.Errorf("spry invocations jobs %s:\n%s", slow, out)
			}
		})
	}
}

// bigFailure answers every event 400 (failed at once: no retry) with a
// 100 KiB body, of which the invocation keeps 64 KiB.
const bigFailure = `export default {
  async fetch(req) {
    await req.arrayBuffer();
    return new Response("r".repeat(100 * 1024), { status: 400, headers: { "content-type": "text/plain" } });
  },
};
`

// dlqSizes records, per failed invocation, the size of the event it
// got and what the event says was cut.
const dlqSizes = `export default {
  async fetch(req, ctx) {
    const raw = new Uint8Array(await req.arrayBuffer());
    const e = JSON.parse(new TextDecoder().decode(raw));
    const r = e.last_attempt.response;
    await ctx.kv.set("event:" + req.headers.get("spry-failed-invocation-id"), {
      bytes: raw.length, status: e.last_attempt.status,
      request: { size: e.request.size, truncated: e.request.truncated, encoding: e.request.encoding,
        length: e.request.body.length, start: e.request.body.startsWith("a".repeat(1000)) },
      response: { truncated: r.truncated, length: r.body.length, start: r.body.startsWith("r") },
    });
    return new Response("kept");
  },
};
`

// TestAsyncFailureEventBound: the event of a failed invocation whose
// body is 256 KiB (the most an invocation may have) and whose answer
// was large is delivered to the on-failure destination within the same
// 256 KiB, saying what it cut: the response first (all of it here),
// then the request's body, whose size it gives. One with a 200 KiB
// body keeps it whole, and as much of the response as fits.
func TestAsyncFailureEventBound(t *testing.T) {
	s := startServer(t)
	s.deployCode(t, "dlq", []byte(dlqSizes), "")
	s.deployCode(t, "big", []byte(bigFailure), "async-retries=0&async-on-failure=dlq")
	const maxBody = 256 << 10
	type sizes struct {
		Bytes, Status int
		Request       struct {
			Size, Length int
			Truncated    bool
			Encoding     string
			Start        bool
		}
		Response struct {
			Truncated bool
			Length    int
			Start     bool
		}
	}
	event := func(size int) sizes {
		t.Helper()
		r := s.do("POST", "/api/v1/functions/big/invocations", s.token, strings.NewReader(strings.Repeat("a", size)), map[string]string{"Content-Type": "text/plain"})
		if r.status != 202 {
			t.Fatalf("enqueue %d bytes: %d %s", size, r.status, r.body)
		}
		id := r.json(t)["id"].(string)
		v := s.waitInvocation(t, "big", id, "failed")
		fwd, _ := v["forwarded_to"].(string)
		if fwd == "" {
			t.Fatalf("not sent on: %v\n%s", v, s.mustSpry("logs", "big"))
		}
		s.waitInvocation(t, "dlq", fwd, "succeeded")
		kr := s.do("GET", "/api/v1/functions/dlq/kv/event:"+id, s.token, nil, nil)
		var got struct{ Value sizes }
		if kr.status != 200 || json.Unmarshal(kr.body, &got) != nil {
			t.Fatalf("dlq's kv: %d %s", kr.status, kr.body)
		}
		return got.Value
	}

	e := event(maxBody)
	if e.Bytes > maxBody || e.Bytes < maxBody-6 || e.Status != 400 {
		t.Errorf("a 256 KiB body's event: %d bytes (bound %d), status %d", e.Bytes, maxBody, e.Status)
	}
	if q := e.Request; q.Size != maxBody || !q.Truncated || q.Encoding != "text" || q.Length >= maxBody || q.Length < maxBody-2048 || !q.Start {
		t.Errorf("a 256 KiB body's event: request %+v", q)
	}
	if p := e.Response; !p.Truncated || p.Length != 0 {
		t.Errorf("a 256 KiB body's event: response %+v", p)
	}

	e = event(200 << 10)
	if e.Bytes > maxBody || e.Bytes < maxBody-6 {
		t.Errorf("a 200 KiB body's event: %d bytes (bound %d)", e.Bytes, maxBody)
	}
	if q := e.Request; q.Size != 200<<10 || q.Truncated || q.Length != 200<<10 {
		t.Errorf("a 200 KiB body's event: request %+v", q)
	}
	if p := e.Response; !p.Truncated || p.Length == 0 || p.Length >= 56<<10 || !p.Start {
		t.Errorf("a 200 KiB body's event: response %+v", p)
	}
}
