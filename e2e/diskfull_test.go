package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spry-run/spry/internal/disktest"
)

// doTimed is s.do with a bound: on a full disk nothing may hang.
func (s *server) doTimed(t *testing.T, method, path, token string, body []byte, header map[string]string) response {
	t.Helper()
	req, err := http.NewRequest(method, s.url+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	c := &http.Client{Timeout: 30 * time.Second}
	res, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	data, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	return response{status: res.StatusCode, header: res.Header, body: data}
}

const chattyCode = `export default { fetch(req) {
  const n = Number(new URL(req.url).searchParams.get("n") || "1");
  for (let i = 0; i < n; i++) console.log("chatty line " + i + " " + "y".repeat(200));
  return new Response("said " + n + "\n");
} }`

const kvCode = `export default { async fetch(req, ctx) {
  const u = new URL(req.url);
  const k = u.pathname.slice(1);
  if (req.method === "PUT") {
    try { await ctx.kv.set(k, await req.text()); return new Response("set\n"); }
    catch (e) { return new Response("kv error: " + e.message + "\n", { status: 507 }); }
  }
  const v = await ctx.kv.get(k);
  return new Response(String(v) + "\n");
} }`

// TestDiskFull: with the data directory's disk full, every write (a
// deploy, a change of configuration, env and secrets, kv writes from the
// API and from a function, an enqueue, a token, a backup) is a JSON 507
// insufficient_storage, at once, and changes nothing; functions go on
// serving, warm and cold, and reads work. Once space is freed everything
// works again without a restart, and every earlier piece of data is
// there.
func TestDiskFull(t *testing.T) {
	disk := disktest.Small(t, 64<<20)
	data := filepath.Join(disk, "data")
	s := startServerOn(t, data, "", "--pool-size", "1", "--node-pool-size", "0")
	hello := []byte(`export default { fetch() { return new Response("hello\n"); } }`)
	s.deployCode(t, "hello", hello, "")
	s.deployCode(t, "cold", []byte(`export default { fetch() { return new Response("cold\n"); } }`), "")
	s.deployCode(t, "chatty", []byte(chattyCode), "")
	s.deployCode(t, "kvfn", []byte(kvCode), "")
	s.deployCode(t, "slowjob", []byte(`export default { async fetch() { await new Promise((r) => setTimeout(r, 1000)); return new Response("done"); } }`), "")
	// One whose attempt fails (a 4xx is final) on the full disk, to be
	// recorded failed and its event sent on to hello in one transaction.
	s.deployCode(t, "slowfail", []byte(`export default { async fetch() { await new Promise((r) => setTimeout(r, 1000)); return new Response("no", { status: 400 }); } }`), "async-on-failure=hello")
	for i := range 20 {
		if r := s.doTimed(t, "PUT", fmt.Sprintf("/api/v1/functions/kvfn/kv/k%d", i), s.token, []byte(fmt.Sprintf(`"v%d"`, i)), nil); r.status != 204 {
			t.Fatalf("kv put: %d %s", r.status, r.body)
		}
	}
	for _, p := range []string{"/fn/admin/hello/", "/fn/admin/chatty/?n=5"} {
		if r := s.doTimed(t, "GET", p, "", nil, nil); r.status != 200 {
			t.Fatalf("%s: %d %s", p, r.status, r.body)
		}
	}
	enq := s.doTimed(t, "POST", "/api/v1/functions/hello/invocations", s.token, []byte("before"), nil)
	if enq.status != 202 {
		t.Fatalf("enqueue: %d %s", enq.status, enq.body)
	}
	invocation := enq.json(t)["id"].(string)
	tr := s.doTimed(t, "POST", "/api/v1/tokens", s.token, []byte(`{"name":"before"}`), nil)
	if tr.status != 201 {
		t.Fatalf("token: %d %s", tr.status, tr.body)
	}
	token := tr.json(t)["token"].(string)

	// An invocation whose attempt ends on the full disk: its result
	// cannot be stored then, and must be once space is freed.
	sr := s.doTimed(t, "POST", "/api/v1/functions/slowjob/invocations", s.token, []byte("slow"), nil)
	if sr.status != 202 {
		t.Fatalf("enqueue: %d %s", sr.status, sr.body)
	}
	slow := sr.json(t)["id"].(string)
	fr := s.doTimed(t, "POST", "/api/v1/functions/slowfail/invocations", s.token, []byte("fail"), nil)
	if fr.status != 202 {
		t.Fatalf("enqueue: %d %s", fr.status, fr.body)
	}
	slowFail := fr.json(t)["id"].(string)
	s.waitInvocation(t, "slowjob", slow, "running")
	s.waitInvocation(t, "slowfail", slowFail, "running")

	filler := filepath.Join(disk, "filler")
	disktest.Fill(t, filler)

	ts := map[string]string{"Content-Type": "application/typescript"}
	writes := []struct {
		what, method, path string
		body               []byte
		header             map[string]string
	}{
		{"deploy of a new function", "PUT", "/api/v1/functions/new", []byte(`export default { fetch() { return new Response("new\n"); } }`), ts},
		{"deploy of a new version", "PUT", "/api/v1/functions/hello", []byte(`export default { fetch() { return new Response("hello 2\n"); } }`), ts},
		{"deploy of the same code", "PUT", "/api/v1/functions/hello", hello, ts},
		{"config, env and secrets", "PATCH", "/api/v1/functions/hello", []byte(`{"memory":"200Mi","env":{"A":"b"},"secrets":{"S":"t"}}`), nil},
		{"kv write", "PUT", "/api/v1/functions/kvfn/kv/full", []byte(`"` + strings.Repeat("z", 60000) + `"`), nil},
		{"enqueue", "POST", "/api/v1/functions/hello/invocations", []byte("during"), nil},
		{"token", "POST", "/api/v1/tokens", []byte(`{"name":"during"}`), nil},
		{"backup", "GET", "/api/v1/backup", nil, nil},
	}
	for _, w := range writes {
		r := s.doTimed(t, w.method, w.path, s.token, w.body, w.header)
		if r.status != 507 || r.errorCode(t) != "insufficient_storage" || !strings.Contains(string(r.body), "disk is full") {
			t.Errorf("%s on a full disk: %d %s, want a 507 insufficient_storage", w.what, r.status, r.body)
		}
	}
	if r := s.doTimed(t, "PUT", "/fn/admin/kvfn/fnkey", "", []byte(strings.Repeat("q", 30000)), nil); r.status != 507 || !strings.Contains(string(r.body), "disk is full") {
		t.Errorf("ctx.kv.set on a full disk: %d %s", r.status, r.body)
	}
	// Serving goes on: warm, cold, a function whose lines cannot be
	// stored, and reads.
	for p, want := range map[string]string{"/fn/admin/hello/": "hello\n", "/fn/admin/cold/": "cold\n", "/fn/admin/chatty/?n=2000": "said 2000\n", "/fn/admin/kvfn/k3": "v3\n"} {
		if r := s.doTimed(t, "GET", p, "", nil, nil); r.status != 200 || string(r.body) != want {
			t.Errorf("%s on a full disk: %d %q, want %q", p, r.status, r.body, want)
		}
	}
	for _, p := range []string{"/api/v1/functions", "/api/v1/functions/kvfn/kv", "/api/v1/functions/chatty/logs", "/api/v1/tokens", "/api/v1/functions/hello/invocations/" + invocation} {
		if r := s.doTimed(t, "GET", p, s.token, nil, nil); r.status != 200 {
			t.Errorf("GET %s on a full disk: %d %s", p, r.status, r.body)
		}
	}
	noTempFiles(t, data)
	eventually(t, 10*time.Second, "the slow invocation's attempt to end on the full disk", func() bool {
		return strings.Contains(s.logs.String(), "record an invocation's attempt")
	})

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	// Everything from before is there, as it was.
	var fns struct {
		Functions []struct {
			Name    string `json:"name"`
			Version int    `json:"version"`
		} `json:"functions"`
	}
	if err := json.Unmarshal(s.doTimed(t, "GET", "/api/v1/functions", s.token, nil, nil).body, &fns); err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	for _, f := range fns.Functions {
		got[f.Name] = f.Version
	}
	if want := map[string]int{"hello": 1, "cold": 1, "chatty": 1, "kvfn": 1, "slowjob": 1, "slowfail": 1}; !maps.Equal(got, want) {
		t.Errorf("functions after the full disk: %v, want %v", got, want)
	}
	for i := range 20 {
		if r := s.doTimed(t, "GET", fmt.Sprintf("/api/v1/functions/kvfn/kv/k%d", i), s.token, nil, nil); r.status != 200 || r.json(t)["value"] != fmt.Sprintf("v%d", i) {
			t.Errorf("kv k%d after the full disk: %d %s", i, r.status, r.body)
		}
	}
	for _, k := range []string{"full", "fnkey"} {
		if r := s.doTimed(t, "GET", "/api/v1/functions/kvfn/kv/"+k, s.token, nil, nil); r.status != 404 {
			t.Errorf("kv %s, refused on the full disk: %d %s", k, r.status, r.body)
		}
	}
	if r := s.doTimed(t, "GET", "/api/v1/whoami", token, nil, nil); r.status != 200 {
		t.Errorf("the token made before: %d %s", r.status, r.body)
	}
	s.waitInvocation(t, "hello", invocation, "succeeded")
	s.waitInvocation(t, "slowjob", slow, "succeeded")
	if v := s.waitInvocation(t, "slowfail", slowFail, "failed"); v["forwarded_to"] == nil {
		t.Errorf("the failure ended on the full disk was not sent on: %v", v)
	} else {
		s.waitInvocation(t, "hello", v["forwarded_to"].(string), "succeeded")
	}
	// And everything works again, without a restart.
	for _, w := range writes[:len(writes)-1] {
		if r := s.doTimed(t, w.method, w.path, s.token, w.body, w.header); r.status >= 300 {
			t.Errorf("%s once space is freed: %d %s", w.what, r.status, r.body)
		}
	}
	if r := s.doTimed(t, "PUT", "/fn/admin/kvfn/fnkey", "", []byte("q"), nil); r.status != 200 {
		t.Errorf("ctx.kv.set once space is freed: %d %s", r.status, r.body)
	}
	s.mustSpry("backup", filepath.Join(t.TempDir(), "backup.tar.gz"))
	// The lines lost are told, not silently missing.
	eventually(t, 10*time.Second, "the chatty function's lost lines to be told", func() bool {
		return strings.Contains(s.mustSpry("logs", "chatty"), "dropped because the log store could not write them")
	})
	noTempFiles(t, data)
}

// noTempFiles fails t if the data directory holds a temporary file or
// directory: a bundle's, a backup's, a secret key's.
func noTempFiles(t *testing.T, data string) {
	t.Helper()
	_ = filepath.WalkDir(data, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if n := d.Name(); strings.HasPrefix(n, ".tmp-") || strings.HasPrefix(n, ".backup-") || strings.HasPrefix(n, ".secret-key-") {
			t.Errorf("temporary file left in the data directory: %s", p)
		}
		if d.IsDir() && d.Name() == "npm-cache" {
			return filepath.SkipDir
		}
		return nil
	})
}
