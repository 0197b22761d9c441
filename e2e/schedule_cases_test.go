package e2e

import (
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// controlExport is controlCode's default export, on either runtime.
const controlExport = `export default {
  async fetch(req) {
    const body = new URL(req.url).searchParams.get("body") ?? '{"cron":"forged","scheduledTime":0}';
    return new Response(await control(body));
  },
  scheduled(event) { console.log("scheduled-ran", event.cron); },
};`

// controlCode is a function whose fetch handler posts to its own
// instance's control socket, /scheduled, the body in ?body=, and answers
// the status line it got.
var controlCode = map[string]string{
	"deno": `
async function control(body) {
  const c = await Deno.connect({ transport: "unix", path: "/run/spry/control.sock" });
  const b = new TextEncoder().encode(body);
  await c.write(new TextEncoder().encode("POST /scheduled HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: " + b.length + "\r\nConnection: close\r\n\r\n"));
  await c.write(b);
  let out = "";
  const buf = new Uint8Array(4096);
  for (;;) {
    const n = await c.read(buf);
    if (n === null) break;
    out += new TextDecoder().decode(buf.subarray(0, n));
  }
  c.close();
  return out.split("\r\n")[0];
}
` + controlExport,
	"node": `
import http from "node:http";
function control(body) {
  return new Promise((resolve, reject) => {
    const r = http.request({ socketPath: "/run/spry/control.sock", method: "POST", path: "/scheduled", headers: { "content-type": "application/json" } }, (res) => {
      res.resume();
      res.on("end", () => resolve("HTTP/1.1 " + res.statusCode));
    });
    r.on("error", reject);
    r.end(body);
  });
}
` + controlExport,
}

// The control socket, which a function's own code reaches too (no more
// than calling its own scheduled method), answers a POST /scheduled whose
// body is not an event ("null", or not JSON) with 400 on both runtimes
// (Deno answered 500 and logged a TypeError).
func TestScheduledBadBody(t *testing.T) {
	s := startServer(t)
	for _, rt := range []string{"deno", "node"} {
		t.Run(rt, func(t *testing.T) {
			name := "ctlbad-" + rt
			s.deployCode(t, name, []byte(controlCode[rt]), "runtime="+rt)
			for _, body := range []string{"null", "not json"} {
				r := s.get("/fn/admin/" + name + "/?body=" + url.QueryEscape(body))
				if r.status != 200 || !strings.HasPrefix(string(r.body), "HTTP/1.1 400") {
					t.Errorf("POST /scheduled with body %q: the runtime answered %q, want a 400", body, r.body)
				}
			}
		})
	}
}

// A scheduled handler that never returns: at the function's timeout the
// run ends with "timed out", its lease is released (one instance, one
// request at a time, and the function still answers), and an instance
// whose event loop is held is killed and replaced.
func TestScheduledTimeout(t *testing.T) {
	s := startServer(t)
	codes := map[string]string{
		"hang": `export default { fetch() { return new Response("hi"); }, async scheduled() { console.log("run-start"); await new Promise(() => {}); } }`,
		"spin": `export default { fetch() { return new Response("hi"); }, scheduled() { console.log("run-start"); for (;;) {} } }`,
	}
	// Each runtime, each kind once: a run is ~7 s.
	for _, c := range []struct{ rt, kind string }{{"deno", "spin"}, {"node", "hang"}} {
		rt, kind := c.rt, c.kind
		{
			t.Run(rt+"-"+kind, func(t *testing.T) {
				name := "to-" + kind + "-" + rt
				s.deployCode(t, name, []byte(codes[kind]), "runtime="+rt+"&timeout=1s&max=1&concurrency=1&cron="+url.QueryEscape("*/3 * * * * *"))
				eventually(t, 20*time.Second, "two timed-out runs", func() bool {
					out, _, _ := s.spry("", "logs", name)
					return strings.Count(out, "timed out after 1s") >= 2
				})
				for i := 0; i < 5; i++ {
					if r := s.get("/fn/admin/" + name + "/"); r.status == 200 && string(r.body) == "hi" {
						break
					} else if i == 4 {
						t.Errorf("the function does not answer after timed-out scheduled runs: %d %s", r.status, r.body)
					}
					time.Sleep(time.Second)
				}
				s.mustSpry("config", name, "--cron", "none")
			})
		}
	}
}

// While a shutdown lets in-flight requests finish, no scheduled run
// starts (they did, until the drain ended, each perhaps a cold start
// cut off moments later).
func TestNoScheduledRunsStartDuringShutdown(t *testing.T) {
	s := startServer(t)
	deployTicking(t, s, "drain", `export default {
		async fetch() { await new Promise((r) => setTimeout(r, 5000)); return new Response("slow"); },
		scheduled() { console.log("tick", Date.now()); },
	}`, "timeout=20s&cron="+url.QueryEscape("* * * * * *"))
	wait := getInBackground(s, "/fn/admin/drain/")
	time.Sleep(500 * time.Millisecond)
	sigterm := time.Now().UnixMilli()
	s.stop()
	stopped := time.Now().UnixMilli()
	wait()
	s.start()
	out, _, _ := s.spry("", "logs", "drain")
	var during []int64
	for _, m := range regexp.MustCompile(`tick (\d+)`).FindAllStringSubmatch(out, -1) {
		ms, _ := strconv.ParseInt(m[1], 10, 64)
		if ms > sigterm+1000 && ms < stopped {
			during = append(during, ms-sigterm)
		}
	}
	t.Logf("shutdown took %dms", stopped-sigterm)
	if len(during) > 0 {
		t.Errorf("%d scheduled runs started while the server was shutting down (ms after SIGTERM: %v)", len(during), during)
	}
	s.mustSpry("config", "drain", "--cron", "none")
}

// A scheduled run that waits for an instance (the function's max and
// concurrency are in use) when a config change makes another version
// live runs on that one, as a request would; it was lost, as "version is
// no longer live", and counted as an error.
func TestQueuedScheduledRunAcrossConfigChange(t *testing.T) {
	s := startServer(t)
	deployTicking(t, s, "requeue", `export default {
		async fetch(req) {
			if (new URL(req.url).pathname.endsWith("/slow")) await new Promise((r) => setTimeout(r, 3000));
			return new Response("ok");
		},
		scheduled() { console.log("tick"); },
	}`, "timeout=10s&max=1&concurrency=1&cron="+url.QueryEscape("* * * * * *"))
	wait := getInBackground(s, "/fn/admin/requeue/slow")
	time.Sleep(1500 * time.Millisecond) // a scheduled run or two now wait for the one instance
	s.mustSpry("env", "set", "requeue", "X=1")
	wait()
	time.Sleep(2 * time.Second)
	out, _, _ := s.spry("", "logs", "requeue")
	if n := strings.Count(out, "no longer live"); n > 0 {
		t.Errorf("%d scheduled runs lost to the config change:\n%s", n, out)
	}
	s.mustSpry("config", "requeue", "--cron", "none")
}

// A function deleted while it has a schedule: its runs stop, its series
// of spry_scheduled_runs_total go, and one made again under the name
// inherits neither its runs nor its log lines.
func TestScheduledFunctionDeleted(t *testing.T) {
	s := startServer(t)
	code := []byte(`export default { fetch() { return new Response("hi"); }, async scheduled() { console.log("tick"); await new Promise((r) => setTimeout(r, 700)); } }`)
	s.deployCode(t, "gone", code, "cron="+url.QueryEscape("* * * * * *"))
	eventually(t, 10*time.Second, "two runs", func() bool {
		return s.metric(t, "spry_scheduled_runs_total{", `function="gone"`, `result="ok"`) >= 2
	})
	time.Sleep(300 * time.Millisecond) // a run is under way
	s.mustSpry("rm", "gone")
	time.Sleep(2500 * time.Millisecond)
	r := s.do("GET", "/metrics", s.token, nil, nil)
	if strings.Contains(string(r.body), `function="gone"`) {
		t.Errorf("series of the deleted function remain:\n%s", grepLines(string(r.body), `function="gone"`))
	}
	s.deployCode(t, "gone", []byte(`export default { fetch() { return new Response("hi"); } }`), "")
	time.Sleep(1500 * time.Millisecond)
	out, _, _ := s.spry("", "logs", "gone")
	if strings.Contains(out, "scheduled run") || strings.Contains(out, "tick") {
		t.Errorf("the new function's logs hold the deleted one's runs:\n%s", out)
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// deployTicking deploys code as name, with the settings in query, and
// waits for a scheduled run's "tick" in its logs.
func deployTicking(t *testing.T, s *server, name, code, query string) {
	t.Helper()
	s.deployCode(t, name, []byte(code), query)
	eventually(t, 10*time.Second, "a scheduled run", func() bool {
		out, _, _ := s.spry("", "logs", name)
		return strings.Contains(out, "tick")
	})
}

// getInBackground sends GET path and returns a wait for its answer.
func getInBackground(s *server, path string) (wait func()) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		_ = s.get(path)
	}()
	return wg.Wait
}
