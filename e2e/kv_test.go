package e2e

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// kvFunction exercises ctx.kv: /OP?key=K&... answers JSON, and an error
// ctx.kv threw as 400 {"error": its code or name, "message"}.
const kvFunction = `export default {
  async fetch(req, ctx) {
    const url = new URL(req.url);
    const op = url.pathname.split("/").pop();
    const q = (k, d) => url.searchParams.get(k) ?? d;
    const key = q("key", "n");
    try {
      switch (op) {
        case "incr": {
          const n = (await ctx.kv.get(key)) ?? 0;
          await ctx.kv.set(key, n + 1);
          return Response.json(n + 1);
        }
        case "add": return Response.json(await ctx.kv.add(key, Number(q("delta", 1))));
        case "get": return Response.json(await ctx.kv.get(key));
        case "set":
          await ctx.kv.set(key, await req.json(), { expireIn: Number(q("expireIn", 0)) });
          return Response.json("ok");
        case "fill":
          await ctx.kv.set(key, "x".repeat(Number(q("n", 0))));
          return Response.json("ok");
        case "delete":
          await ctx.kv.delete(key);
          return Response.json("ok");
        case "list": {
          const page = await ctx.kv.list({ prefix: q("prefix", ""), cursor: q("cursor", ""), limit: Number(q("limit", 0)) });
          if (!page.entries.every((e) => /^[0-9a-f]{16}$/.test(e.version))) return Response.json(page, { status: 500 });
          return Response.json({ entries: page.entries.map(({ key, value }) => ({ key, value })), cursor: page.cursor });
        }
        case "badkey":
          await ctx.kv.get(42);
          return Response.json("no error");
        case "badexpiry":
          await ctx.kv.set(key, 1, { expireIn: -5 });
          return Response.json("no error");
      }
    } catch (err) {
      return Response.json({ error: err.code ?? err.name, message: err.message }, { status: 400 });
    }
    return new Response("no such op", { status: 404 });
  },
};
`

// TestKV: ctx.kv, in both runtimes, for real (under gVisor too): a
// function's entries last across requests, instances, deploys and a
// restart of the server; each function sees its own only; values are
// JSON, listed by prefix in pages, and may expire; bad input and the
// namespace's bound are errors the code can catch; and a deleted
// function's entries go with it.
func TestKV(t *testing.T) {
	s := startServer(t, "--kv-max-bytes", "150000")
	call := func(fn, path, body string) (int, string) {
		t.Helper()
		var r response
		if body == "" {
			r = s.get("/fn/admin/" + fn + "/" + path)
		} else {
			r = s.do("POST", "/fn/admin/"+fn+"/"+path, "", strings.NewReader(body), nil)
		}
		return r.status, strings.TrimSpace(string(r.body))
	}
	want := func(fn, path, body string, status int, answer string) {
		t.Helper()
		if st, got := call(fn, path, body); st != status || got != answer {
			t.Errorf("%s/%s: %d %s, want %d %s", fn, path, st, got, status, answer)
		}
	}
	for _, rt := range []string{"deno", "node"} {
		t.Run(rt, func(t *testing.T) {
			fn := "kv-" + rt
			s.deployCode(t, fn, []byte(kvFunction), "runtime="+rt)
			for i := 1; i <= 3; i++ {
				want(fn, "incr", "", 200, fmt.Sprint(i))
			}
			// add is atomic: 40 requests at once, 40 more.
			var wg sync.WaitGroup
			for range 40 {
				wg.Go(func() { call(fn, "add?key=hits", "") })
			}
			wg.Wait()
			want(fn, "get?key=hits", "", 200, "40")
			want(fn, "add?key=hits&delta=-0.5", "", 200, "39.5")
			want(fn, "set?key=str", `"x"`, 200, `"ok"`)
			want(fn, "add?key=str", "", 400, `{"error":"invalid_argument","message":"kv: the value of \"str\" is not a number, to add to"}`)
			want(fn, "delete?key=str", "", 200, `"ok"`)
			want(fn, "set?key=obj", `{"a": [1, "é", null], "b": {"c": true}}`, 200, `"ok"`)
			want(fn, "get?key=obj", "", 200, `{"a":[1,"é",null],"b":{"c":true}}`)
			want(fn, "get?key=none", "", 200, `null`)
			for _, k := range []string{"p/1", "p/2", "p/3", "q/1"} {
				want(fn, "set?key="+k, `"`+k+`"`, 200, `"ok"`)
			}
			want(fn, "list?prefix=p/&limit=2", "", 200, `{"entries":[{"key":"p/1","value":"p/1"},{"key":"p/2","value":"p/2"}],"cursor":"p/2"}`)
			want(fn, "list?prefix=p/&limit=2&cursor=p/2", "", 200, `{"entries":[{"key":"p/3","value":"p/3"}],"cursor":null}`)
			want(fn, "delete?key=p/2", "", 200, `"ok"`)
			want(fn, "list?prefix=p/", "", 200, `{"entries":[{"key":"p/1","value":"p/1"},{"key":"p/3","value":"p/3"}],"cursor":null}`)
			// Expiry: gone for reads once it has passed.
			want(fn, "set?key=tmp&expireIn=1", `"soon gone"`, 200, `"ok"`)
			eventually(t, 5*time.Second, "the entry to expire", func() bool {
				_, got := call(fn, "get?key=tmp", "")
				return got == "null"
			})
			// Errors the code can catch.
			want(fn, "badkey", "", 400, `{"error":"TypeError","message":"ctx.kv.get: the key must be a string"}`)
			want(fn, "badexpiry", "", 400, `{"error":"TypeError","message":"ctx.kv.set: expireIn must be a whole number of milliseconds"}`)
			want(fn, "fill?key=big&n=70000", "", 400, `{"error":"too_large","message":"kv: a value is at most 65536 bytes as JSON; this one is 70002"}`)
			want(fn, "get?key="+strings.Repeat("k", 600), "", 400, `{"error":"too_large","message":"kv: a key is at most 512 bytes; this one is 600"}`)
			// The bound: three values of 60,000 bytes do not fit in
			// 150,000; a delete makes room.
			want(fn, "fill?key=f1&n=60000", "", 200, `"ok"`)
			want(fn, "fill?key=f2&n=60000", "", 200, `"ok"`)
			st, got := call(fn, "fill?key=f3&n=60000", "")
			var e struct{ Error string }
			if st != 400 || json.Unmarshal([]byte(got), &e) != nil || e.Error != "quota_exceeded" {
				t.Errorf("a write past the bound: %d %s, want 400 quota_exceeded", st, got)
			}
			want(fn, "delete?key=f1", "", 200, `"ok"`)
			want(fn, "fill?key=f3&n=60000", "", 200, `"ok"`)
			// A new version sees the entries.
			if r := s.putCode(s.token, fn, []byte(kvFunction+"// v2\n"), "runtime="+rt); r.status != 200 {
				t.Fatalf("redeploy: %d %s", r.status, r.body)
			}
			want(fn, "incr", "", 200, "4")
		})
	}
	// The owner reads and changes the entries through the API (the
	// CLI); the function sees what it set.
	if got := s.mustSpry("kv", "ls", "kv-deno", "--prefix", "p/"); got != "p/1\t\"p/1\"\np/3\t\"p/3\"\n" {
		t.Errorf("spry kv ls --prefix p/: %q", got)
	}
	if got := s.mustSpry("kv", "get", "kv-node", "obj"); got != `{"a":[1,"é",null],"b":{"c":true}}`+"\n" {
		t.Errorf("spry kv get: %q", got)
	}
	s.mustSpry("kv", "set", "kv-deno", "a/b", `{"x": 1}`)
	want("kv-deno", "get?key=a/b", "", 200, `{"x":1}`)
	if _, errOut, code := s.spry("", "kv", "set", "kv-deno", "s", "hello"); code != 2 || !strings.Contains(errOut, "--string") {
		t.Errorf("spry kv set of text that is not JSON: exit %d %s", code, errOut)
	}
	s.mustSpry("kv", "set", "kv-deno", "s", "hello", "--string")
	want("kv-deno", "get?key=s", "", 200, `"hello"`)
	s.mustSpry("kv", "rm", "kv-deno", "a/b")
	if _, errOut, code := s.spry("", "kv", "get", "kv-deno", "a/b"); code == 0 || !strings.Contains(errOut, "no key") {
		t.Errorf("spry kv get of a removed key: exit %d %s", code, errOut)
	}
	var page struct {
		Entries []struct{ Key string }
		Cursor  *string
		Bytes   int64
	}
	r := s.do("GET", "/api/v1/functions/kv-deno/kv?limit=2", s.token, nil, nil)
	if r.status != 200 || json.Unmarshal(r.body, &page) != nil || len(page.Entries) != 2 || page.Cursor == nil || page.Bytes < 120000 {
		t.Errorf("GET .../kv?limit=2: %d %s", r.status, r.body)
	}
	for _, bad := range []struct {
		method, path string
		status       int
	}{
		{"GET", "/api/v1/functions/kv-deno/kv?limit=0", 400},
		{"GET", "/api/v1/functions/kv-deno/kv/", 400},
		{"PUT", "/api/v1/functions/kv-deno/kv/k?expireIn=-1", 400},
		{"PUT", "/api/v1/functions/kv-deno/kv/k", 400}, // no body: not JSON
		{"GET", "/api/v1/functions/nosuch/kv", 404},
	} {
		if r := s.do(bad.method, bad.path, s.token, nil, nil); r.status != bad.status {
			t.Errorf("%s %s: %d %s, want %d", bad.method, bad.path, r.status, r.body, bad.status)
		}
	}
	// Another user may not read them.
	bob := strings.TrimSpace(s.mustSpry("user", "create", "bob"))
	for _, path := range []string{"/api/v1/functions/kv-deno/kv?owner=admin", "/api/v1/functions/kv-deno/kv/n?owner=admin"} {
		if r := s.do("GET", path, bob, nil, nil); r.status != 403 {
			t.Errorf("bob: GET %s: %d %s", path, r.status, r.body)
		}
	}
	if r := s.do("GET", "/api/v1/functions/kv-deno/kv", bob, nil, nil); r.status != 404 {
		t.Errorf("bob's own kv-deno, which he does not have: %d %s", r.status, r.body)
	}

	// Under gVisor too, each in both runtimes: its own entries, and not
	// kv-deno's (whose "n" is 4).
	t.Run("gvisor", func(t *testing.T) {
		if _, err := exec.LookPath("runsc"); err != nil {
			t.Skip("runsc is not installed")
		}
		for _, rt := range []string{"deno", "node"} {
			fn := "kv-gvisor-" + rt
			if r := s.putCode(s.token, fn, []byte(kvFunction), "isolation=gvisor&runtime="+rt); r.status != 201 {
				t.Fatalf("deploy under gVisor: %d %s", r.status, r.body)
			}
			want(fn, "get", "", 200, "null")
			want(fn, "incr", "", 200, "1")
			want(fn, "set?key=obj", `{"a": [1, "é"]}`, 200, `"ok"`)
			want(fn, "get?key=obj", "", 200, `{"a":[1,"é"]}`)
		}
		want("kv-deno", "get", "", 200, "4")
		if got := s.mustSpry("kv", "get", "kv-gvisor-node", "n"); got != "1\n" {
			t.Errorf("spry kv get of an entry set under gVisor: %q", got)
		}
	})
	// Code that speaks the socket's protocol itself, rather than through
	// ctx.kv, reaches its own function's entries and no other's.
	raw := `export default { async fetch(req, ctx) {
		await ctx.kv.set("mine", 1);
		const conn = await Deno.connect({ transport: "unix", path: "/run/spry-kv.sock" });
		await conn.write(new TextEncoder().encode(await req.text()));
		await conn.closeWrite();
		return new Response(await new Response(conn.readable).text());
	} };`
	s.deployCode(t, "kv-raw", []byte(raw), "")
	if st, got := call("kv-raw", "", `{"id":1,"op":"list"}`+"\n"); st != 200 || !regexp.MustCompile(`^\{"id":1,"entries":\[\{"key":"mine","value":1,"version":"[0-9a-f]{16}"\}\],"cursor":null\}$`).MatchString(got) {
		t.Errorf("raw list: %d %s", st, got)
	}
	// Requests are lines, each with an id its answer carries; one
	// without is refused, and the connection closed.
	want("kv-raw", "", `{"id":2,"op":"get","key":"n"}`+"\n"+`{"op":"get","key":"n"}`+"\n"+`{"id":4,"op":"get","key":"n"}`+"\n", 200,
		`{"id":2,"value":null,"version":null}`+"\n"+`{"error":{"code":"invalid_argument","message":"kv: a request needs an id, a number"}}`)

	// Each function has its own entries.
	s.deployCode(t, "kv-other", []byte(kvFunction), "")
	want("kv-other", "get", "", 200, "null")
	want("kv-other", "incr", "", 200, "1")
	want("kv-deno", "get", "", 200, "4")

	s.restart()
	want("kv-deno", "get", "", 200, "4")
	want("kv-node", "get?key=obj", "", 200, `{"a":[1,"é",null],"b":{"c":true}}`)

	// Deleted, a function's entries go: one made again with its name
	// starts empty.
	if r := s.do("DELETE", "/api/v1/functions/kv-deno", s.token, nil, nil); r.status != 204 {
		t.Fatalf("delete: %d %s", r.status, r.body)
	}
	s.deployCode(t, "kv-deno", []byte(kvFunction), "")
	want("kv-deno", "get", "", 200, "null")
	want("kv-other", "get", "", 200, "1")
}

// TestKVPathKeys: keys that as paths would not be clean ("/x", a URL's
// path, which a function may well use; "a//b", "a/../b", ".", "..") are
// keys like any other for the API and spry kv. The server refused them,
// escaped or not, as paths with empty, . or .. segments (404), so
// entries a function made under them could not be read or removed.
// TestKVBoundPerUser: all of a user's functions' entries together stay
// within --kv-max-bytes-per-user, whichever function writes (from its
// code or through the API); a delete in one makes room for another.
func TestKVBoundPerUser(t *testing.T) {
	s := startServer(t, "--kv-max-bytes-per-user", "200000")
	for _, fn := range []string{"kv-a", "kv-b"} {
		s.deployCode(t, fn, []byte(kvFunction), "")
	}
	fill := func(fn, key string) (int, string) {
		t.Helper()
		r := s.get("/fn/admin/" + fn + "/fill?key=" + key + "&n=60000")
		return r.status, strings.TrimSpace(string(r.body))
	}
	for _, w := range []struct{ fn, key string }{{"kv-a", "f1"}, {"kv-a", "f2"}, {"kv-b", "f1"}} {
		if st, got := fill(w.fn, w.key); st != 200 {
			t.Fatalf("%s %s: %d %s", w.fn, w.key, st, got)
		}
	}
	if st, got := fill("kv-b", "f2"); st != 400 || !strings.Contains(got, "quota_exceeded") || !strings.Contains(got, "--kv-max-bytes-per-user") {
		t.Fatalf("past the user's bound: %d %s, want 400 quota_exceeded naming --kv-max-bytes-per-user", st, got)
	}
	if r := s.do("PUT", "/api/v1/functions/kv-b/kv/f2", s.token, strings.NewReader(`"`+strings.Repeat("x", 60000)+`"`), nil); r.status != 403 || r.errorCode(t) != "quota_exceeded" {
		t.Fatalf("past the user's bound through the API: %d %s", r.status, r.body)
	}
	if r := s.do("DELETE", "/api/v1/functions/kv-a/kv/f1", s.token, nil, nil); r.status != 204 {
		t.Fatalf("delete: %d %s", r.status, r.body)
	}
	if st, got := fill("kv-b", "f2"); st != 200 {
		t.Fatalf("after a delete in another function: %d %s", st, got)
	}
}

func TestKVPathKeys(t *testing.T) {
	s := startServer(t)
	s.deployCode(t, "dots", []byte(kvFunction), "")
	for _, key := range []string{".", "..", "/x", "a//b", "a/../b", "a/.", "x/"} {
		if _, errOut, code := s.spry("", "kv", "set", "dots", key, `"`+key+`"`); code != 0 {
			t.Errorf("spry kv set dots %s: exit %d %s", key, code, errOut)
		}
		if got, errOut, code := s.spry("", "kv", "get", "dots", key); code != 0 || got != `"`+key+`"`+"\n" {
			t.Errorf("spry kv get dots %s: exit %d %q %s", key, code, got, errOut)
		}
		if _, errOut, code := s.spry("", "kv", "rm", "dots", key); code != 0 {
			t.Errorf("spry kv rm dots %s: exit %d %s", key, code, errOut)
		}
		if r := s.do("GET", "/api/v1/functions/dots", s.token, nil, nil); r.status != 200 {
			t.Fatalf("the function after spry kv rm dots %s: %d %s", key, r.status, r.body)
		}
		if _, errOut, code := s.spry("", "kv", "get", "dots", key); code == 0 || !strings.Contains(errOut, "no key") {
			t.Errorf("spry kv get dots %s once removed: exit %d %s", key, code, errOut)
		}
	}
}

// TestKVClientInputs: what ctx.kv makes of keys and options. A key
// with a lone surrogate has no UTF-8 form: it was sent as JSON's escape,
// which the server decodes to U+FFFD, so "\ud800", "\udc00" and "\ufffd"
// were one key; now it is a TypeError. And list({ prefix: null }), as
// list({ cursor: null }), is no prefix, not the prefix "null".
func TestKVClientInputs(t *testing.T) {
	s := startServer(t)
	code := `export default {
  async fetch(req, ctx) {
    const name = (p) => p.then((v) => v, (err) => err.name);
    const out = {};
    out.lone = await name(ctx.kv.set("\ud800", "lone"));
    out.replacement = await ctx.kv.get("\ufffd");
    await ctx.kv.set("a", 1);
    await ctx.kv.set("b", 2);
    out.list = (await ctx.kv.list({ prefix: null, cursor: null })).entries.map((e) => e.key);
    return Response.json(out);
  },
};
`
	for _, rt := range []string{"deno", "node"} {
		t.Run(rt, func(t *testing.T) {
			fn := "inputs-" + rt
			s.deployCode(t, fn, []byte(code), "runtime="+rt)
			r := s.get("/fn/admin/" + fn + "/")
			if got := strings.TrimSpace(string(r.body)); r.status != 200 || got != `{"lone":"TypeError","replacement":null,"list":["a","b"]}` {
				t.Errorf("%d %s", r.status, got)
			}
		})
	}
}

// TestKVVersions: ctx.kv's conditional writes, in both runtimes. A
// counter made of getEntry and set with ifVersion, retried on a
// conflict, loses none of 30 concurrent requests' updates (one made of
// get and set would); set and delete for a version since changed, or
// with ifVersion null for a key that has a value, write nothing and say
// ok: false; a bad ifVersion is a TypeError.
func TestKVVersions(t *testing.T) {
	s := startServer(t)
	code := `export default {
  async fetch(req, ctx) {
    const op = new URL(req.url).pathname.split("/").pop();
    if (op === "incr") {
      for (let tries = 1; ; tries++) {
        const e = await ctx.kv.getEntry("n");
        const res = await ctx.kv.set("n", (e.value ?? 0) + 1, { ifVersion: e.version });
        if (res.ok) return Response.json({ n: (e.value ?? 0) + 1, tries });
      }
    }
    const out = {};
    const first = await ctx.kv.set("k", "a", { ifVersion: null });
    out.created = first.ok && /^[0-9a-f]{16}$/.test(first.version);
    out.createdAgain = await ctx.kv.set("k", "b", { ifVersion: null });
    const e = await ctx.kv.getEntry("k");
    out.read = e.value === "a" && e.version === first.version && e.key === "k";
    const second = await ctx.kv.set("k", "c", { ifVersion: e.version });
    out.updated = second.ok && second.version > first.version;
    out.stale = await ctx.kv.set("k", "d", { ifVersion: e.version });
    out.staleDelete = await ctx.kv.delete("k", { ifVersion: e.version });
    out.value = await ctx.kv.get("k");
    out.deleted = await ctx.kv.delete("k", { ifVersion: second.version });
    out.none = await ctx.kv.getEntry("k");
    out.listed = (await ctx.kv.list()).entries.map((e) => e.key + "@" + (e.version === null ? "null" : typeof e.version));
    out.bad = await ctx.kv.set("k", 1, { ifVersion: 7 }).then(() => "no error", (err) => err.name);
    out.badForm = await ctx.kv.delete("k", { ifVersion: "x" }).then(() => "no error", (err) => err.code);
    return Response.json(out);
  },
};
`
	for _, rt := range []string{"deno", "node"} {
		t.Run(rt, func(t *testing.T) {
			fn := "versions-" + rt
			s.deployCode(t, fn, []byte(code), "runtime="+rt)
			r := s.get("/fn/admin/" + fn + "/check")
			want := `{"created":true,"createdAgain":{"ok":false,"version":null},"read":true,"updated":true,"stale":{"ok":false,"version":null},"staleDelete":{"ok":false},"value":"c","deleted":{"ok":true},"none":{"key":"k","value":null,"version":null},"listed":[],"bad":"TypeError","badForm":"invalid_argument"}`
			if got := strings.TrimSpace(string(r.body)); r.status != 200 || got != want {
				t.Errorf("%d %s\nwant %s", r.status, got, want)
			}
			var wg sync.WaitGroup
			var mu sync.Mutex
			retried := 0
			for range 30 {
				wg.Go(func() {
					r := s.get("/fn/admin/" + fn + "/incr")
					var out struct{ N, Tries int }
					if r.status != 200 || json.Unmarshal(r.body, &out) != nil {
						t.Errorf("incr: %d %s", r.status, r.body)
						return
					}
					mu.Lock()
					retried += out.Tries - 1
					mu.Unlock()
				})
			}
			wg.Wait()
			r = s.get("/fn/admin/" + fn + "/incr")
			if got := strings.TrimSpace(string(r.body)); !strings.HasPrefix(got, `{"n":31,`) {
				t.Errorf("the 31st increment: %d %s", r.status, got)
			}
			t.Logf("%d retries over 30 concurrent increments", retried)
		})
	}
}

// kvRaceFunction is ctx.kv's atomic operations from many instances at
// once: each names itself, and holds its request a moment so that
// requests at once spread over the instances.
const kvRaceFunction = `const instance = crypto.randomUUID();
export default {
  async fetch(req, ctx) {
    const url = new URL(req.url);
    const op = url.pathname.split("/").pop();
    await new Promise((r) => setTimeout(r, 10));
    switch (op) {
      case "add":
        return Response.json({ instance, value: await ctx.kv.add("hits") });
      case "cas":
        for (let tries = 1; ; tries++) {
          const e = await ctx.kv.getEntry("cas");
          const res = await ctx.kv.set("cas", [...(e.value ?? []), instance], { ifVersion: e.version });
          if (res.ok) return Response.json({ instance, tries, versions: [res.version] });
        }
      case "fill": {
        // A queue: n items, each set only if absent.
        const n = Number(url.searchParams.get("n"));
        const res = await Promise.all(Array.from({ length: n }, (_, i) => ctx.kv.set("q/" + String(i).padStart(3, "0"), i, { ifVersion: null })));
        return Response.json({ instance, ok: res.every((r) => r.ok), versions: res.map((r) => r.version) });
      }
      case "claim": {
        // Take items until none is left: an item is this worker's if
        // its delete for the version listed went through.
        const claimed = [];
        for (;;) {
          const { entries } = await ctx.kv.list({ prefix: "q/", limit: 5 });
          if (entries.length === 0) return Response.json({ instance, claimed });
          for (const e of entries) {
            if ((await ctx.kv.delete(e.key, { ifVersion: e.version })).ok) claimed.push(e.key);
          }
        }
      }
    }
    return new Response("no such op", { status: 404 });
  },
};
`

// TestKVManyInstances: ctx.kv's guarantees hold across the instances of
// one function, in both runtimes: 60 adds at once lose none; 30
// read-modify-writes with ifVersion at once make exactly 30 updates;
// workers taking items of a queue with delete and ifVersion take each
// once and all; every write's version is new, a key set again after
// its delete's too.
func TestKVManyInstances(t *testing.T) {
	s := startServer(t)
	for _, rt := range []string{"deno", "node"} {
		t.Run(rt, func(t *testing.T) {
			fn := "race-" + rt
			s.deployCode(t, fn, []byte(kvRaceFunction), "runtime="+rt+"&min=3&max=4&concurrency=4")
			type answer struct {
				Instance string
				Value    float64
				Tries    int
				OK       bool
				Versions []string
				Claimed  []string
			}
			var mu sync.Mutex
			instances := map[string]bool{}
			versions := map[string]bool{}
			note := func(a answer) {
				mu.Lock()
				defer mu.Unlock()
				instances[a.Instance] = true
				for _, v := range a.Versions {
					if versions[v] {
						t.Errorf("the version %s was given twice", v)
					}
					versions[v] = true
				}
			}
			at := func(n int, path string) []answer {
				out := make([]answer, n)
				var wg sync.WaitGroup
				for i := range n {
					wg.Go(func() {
						r := s.get("/fn/admin/" + fn + path)
						if r.status != 200 || json.Unmarshal(r.body, &out[i]) != nil {
							t.Errorf("%s: %d %s", path, r.status, r.body)
							return
						}
						note(out[i])
					})
				}
				wg.Wait()
				return out
			}
			sums := map[float64]bool{}
			for _, a := range at(60, "/add") {
				sums[a.Value] = true
			}
			if len(sums) != 60 || !sums[1] || !sums[60] {
				t.Errorf("60 adds at once gave %d distinct sums, want 1 to 60", len(sums))
			}
			retries := 0
			for _, a := range at(30, "/cas") {
				retries += a.Tries - 1
			}
			if got := s.mustSpry("kv", "get", fn, "cas"); strings.Count(got, ",")+1 != 30 {
				t.Errorf("after 30 compare-and-sets at once the list has %d items, want 30: %s", strings.Count(got, ",")+1, got)
			}
			if a := at(1, "/fill?n=40"); !a[0].OK {
				t.Fatalf("fill: %+v", a)
			}
			claimed := map[string]int{}
			for _, a := range at(8, "/claim") {
				for _, k := range a.Claimed {
					claimed[k]++
				}
			}
			for i := range 40 {
				if k := fmt.Sprintf("q/%03d", i); claimed[k] != 1 {
					t.Errorf("%s was claimed %d times, want once", k, claimed[k])
				}
			}
			// Set again after its delete, an item has a version none had.
			if a := at(1, "/fill?n=1"); !a[0].OK {
				t.Fatalf("fill again: %+v", a)
			}
			if len(instances) < 2 {
				t.Errorf("the requests were served by %d instance(s), want several", len(instances))
			}
			t.Logf("%d instances; %d retries over 30 compare-and-sets; %d versions, all distinct", len(instances), retries, len(versions))
		})
	}
}

// kvEdgesFunction answers /OP with what ctx.kv made of edge cases: each
// call's value, or the code (else the name) of the error it threw.
const kvEdgesFunction = `export default {
  async fetch(req, ctx) {
    const kv = ctx.kv;
    const op = new URL(req.url).pathname.split("/").pop();
    const r = (p) => p.then((v) => v, (err) => err.code ?? err.name);
    const out = {};
    switch (op) {
      case "values": {
        out.undef = await r(kv.set("v", undefined));
        out.fn = await r(kv.set("v", () => 1));
        out.bigint = await r(kv.set("v", 1n));
        const cyclic = {};
        cyclic.self = cyclic;
        out.cyclic = await r(kv.set("v", cyclic));
        out.nothingStored = await kv.getEntry("v");
        await kv.set("v", { nan: NaN, inf: -Infinity, negz: -0, u: undefined, big: 1.7e308, tiny: 5e-324, unsafe: 2 ** 53 + 1, arr: [undefined, NaN], date: new Date(0), lone: "\ud800" });
        out.converted = await kv.get("v");
        out.loneKept = (await kv.get("v")).lone === "\ud800";
        await kv.set("null", null);
        out.addNull = await r(kv.add("null"));
        await kv.set("huge", 1.7e308);
        out.addHuge = await r(kv.add("huge", 1.7e308));
        // Options the server could not read would close the connection
        // the instance shares, failing the calls beside them.
        [out.expireOverflow, out.beside] = await Promise.all([r(kv.set("e", 1, { expireIn: 1e20 })), r(kv.get("null"))]);
        out.expireTooLong = await r(kv.set("e", 1, { expireIn: 4e11 }));
        out.limitText = await r(kv.list({ limit: "10" }));
        out.limitFraction = await r(kv.list({ limit: 2.5 }));
        out.limitHigh = await r(kv.list({ limit: 1001 }));
        out.limitMax = (await kv.list({ limit: 1000 })).entries.length;
        await kv.set("\ufffd", 1);
        out.prefixLone = await r(kv.list({ prefix: "\ud800" }));
        out.cursorLong = await r(kv.list({ cursor: "c".repeat(513) }));
        break;
      }
      case "keys": {
        out.empty = await r(kv.set("", 1));
        out.nul = await r(kv.set("\0", "nul"));
        out.nulRead = await kv.get("\0");
        out.long = (await r(kv.set("é".repeat(256), 1))).ok;
        out.tooLong = await r(kv.set("é".repeat(256) + "x", 1));
        for (const k of ["o/z", "o/é", "o/\uffff", "o/\u{10000}", "o/😀", "o/a\0b", "o/a", "o/ab"]) await kv.set(k, 1);
        out.order = (await kv.list({ prefix: "o/" })).entries.map((e) => [...e.key].map((c) => c.codePointAt(0).toString(16)).join(" "));
        break;
      }
      case "paging": {
        // 200 keys, listed 7 a page while keys ahead and behind are
        // deleted and added between pages.
        const key = (i) => "p/" + String(i).padStart(4, "0");
        await Promise.all(Array.from({ length: 200 }, (_, i) => kv.set(key(i * 10), i)));
        const seen = [];
        let cursor = null, page = 0;
        do {
          const res = await kv.list({ prefix: "p/", limit: 7, cursor });
          seen.push(...res.entries.map((e) => e.key));
          cursor = res.cursor;
          page++;
          // Churn: delete a key ahead and one behind (never a multiple
          // of 70), add one ahead and one behind (not multiples of 10).
          const at = page * 70 + 30;
          const churn = await Promise.all([kv.delete(key(at)), kv.delete(key(at - 200)), kv.set(key(at + 5), "new"), kv.set(key(at - 205), "new")]);
          if (!churn.every((r) => r.ok)) return Response.json(churn, { status: 500 });
        } while (cursor !== null);
        const kept = Array.from({ length: 200 }, (_, i) => key(i * 10)).filter((k) => Number(k.slice(2)) % 70 === 0);
        out.sorted = seen.every((k, i) => i === 0 || seen[i - 1] < k);
        out.keptAll = kept.every((k) => seen.includes(k));
        out.deletedAhead = !seen.includes(key(100)) && seen.includes(key(105));
        out.pages = page;
        break;
      }
      case "pagebytes": {
        const big = "x".repeat(60000);
        await Promise.all(Array.from({ length: 20 }, (_, i) => kv.set("big/" + String(i).padStart(2, "0"), big)));
        const first = await kv.list({ prefix: "big/", limit: 1000 });
        const second = await kv.list({ prefix: "big/", limit: 1000, cursor: first.cursor });
        out.pages = [first.entries.length, first.cursor, second.entries.length, second.cursor];
        break;
      }
      case "expire": {
        await kv.set("t/gone", "soon", { expireIn: 300 });
        await kv.add("t/count", 5, { expireIn: 300 });
        await kv.set("t/kept", "always");
        out.set = true;
        break;
      }
      case "expired": {
        out.get = await kv.get("t/gone");
        out.entry = await kv.getEntry("t/gone");
        out.list = (await kv.list({ prefix: "t/" })).entries.map((e) => e.key);
        out.add = await kv.add("t/count");
        out.ifAbsent = (await kv.set("t/gone", "again", { ifVersion: null })).ok;
        break;
      }
      default:
        return new Response("no such op", { status: 404 });
    }
    return Response.json(out);
  },
};
`

// TestKVEdges: what ctx.kv does at its edges, in both runtimes. Values
// JSON cannot hold are a TypeError and store nothing; the ones
// JSON.stringify converts are stored as it converts them; options the
// server could not read are refused before they are sent (they closed
// the instance's connection, failing the calls beside them, and a
// prefix with a lone surrogate listed the keys with U+FFFD); keys are
// any UTF-8 of 1 to 512 bytes, NUL included, and list in bytewise
// order; paging skips and repeats nothing while keys come and go
// between pages; a page ends at 1 MiB; and an entry expired is gone
// for every call, add starting again from 0.
func TestKVEdges(t *testing.T) {
	s := startServer(t)
	call := func(t *testing.T, fn, op string) string {
		t.Helper()
		r := s.get("/fn/admin/" + fn + "/" + op)
		if r.status != 200 {
			t.Fatalf("%s: %d %s", op, r.status, r.body)
		}
		return strings.TrimSpace(string(r.body))
	}
	for _, rt := range []string{"deno", "node"} {
		t.Run(rt, func(t *testing.T) {
			fn := "edges-" + rt
			s.deployCode(t, fn, []byte(kvEdgesFunction), "runtime="+rt)
			for _, tt := range []struct{ op, want string }{
				{"values", `{"undef":"TypeError","fn":"TypeError","bigint":"TypeError","cyclic":"TypeError","nothingStored":{"key":"v","value":null,"version":null},` +
					`"converted":{"nan":null,"inf":null,"negz":0,"big":1.7e+308,"tiny":5e-324,"unsafe":9007199254740992,"arr":[null,null],"date":"1970-01-01T00:00:00.000Z","lone":"\ud800"},"loneKept":true,` +
					`"addNull":"invalid_argument","addHuge":"invalid_argument","expireOverflow":"TypeError","beside":null,"expireTooLong":"invalid_argument",` +
					`"limitText":"TypeError","limitFraction":"TypeError","limitHigh":"invalid_argument","limitMax":3,"prefixLone":"TypeError","cursorLong":"invalid_argument"}`},
				{"keys", `{"empty":"invalid_argument","nul":{"ok":true,"version":"VERSION"},"nulRead":"nul","long":true,"tooLong":"too_large",` +
					`"order":["6f 2f 61","6f 2f 61 0 62","6f 2f 61 62","6f 2f 7a","6f 2f e9","6f 2f ffff","6f 2f 10000","6f 2f 1f600"]}`},
				{"paging", `{"sorted":true,"keptAll":true,"deletedAhead":true,"pages":29}`},
				{"pagebytes", `{"pages":[17,"big/16",3,null]}`},
				{"expire", `{"set":true}`},
			} {
				got := call(t, fn, tt.op)
				got = regexp.MustCompile(`"version":"[0-9a-f]{16}"`).ReplaceAllString(got, `"version":"VERSION"`)
				if got != tt.want {
					t.Errorf("%s:\n got %s\nwant %s", tt.op, got, tt.want)
				}
			}
			// The owner's view of the expired entries is the function's.
			eventually(t, 5*time.Second, "the entries to expire", func() bool {
				return s.do("GET", "/api/v1/functions/"+fn+"/kv/t%2Fgone", s.token, nil, nil).status == 404
			})
			if got := s.mustSpry("kv", "ls", fn, "--prefix", "t/"); got != "t/kept\t\"always\"\n" {
				t.Errorf("spry kv ls of the expired entries: %q", got)
			}
			if got, want := call(t, fn, "expired"), `{"get":null,"entry":{"key":"t/gone","value":null,"version":null},"list":["t/kept"],"add":1,"ifAbsent":true}`; got != want {
				t.Errorf("expired:\n got %s\nwant %s", got, want)
			}
		})
	}
}

// TestKVBoundsUnderContention: the function's bound and the user's hold
// under writers racing from many instances of two functions (one in
// each runtime): exactly as many entries go in as fit, the rest are
// refused with quota_exceeded, and what the API counts is what went in.
// Expired entries make room for a write that needs it at once: they held
// the bound until the sweep, up to a minute later.
func TestKVBoundsUnderContention(t *testing.T) {
	s := startServer(t, "--kv-max-bytes", "200000", "--kv-max-bytes-per-user", "300000")
	fns := []string{"bound-deno", "bound-node"}
	for _, fn := range fns {
		s.deployCode(t, fn, []byte(kvFunction), "runtime="+strings.TrimPrefix(fn, "bound-")+"&min=2&max=3&concurrency=8")
	}
	// Each entry: a 3-byte key, a 10,002-byte value and the overhead.
	const entry = 3 + 10002 + 100
	var mu sync.Mutex
	stored := map[string]int{}
	var wg sync.WaitGroup
	for _, fn := range fns {
		for i := range 40 {
			wg.Go(func() {
				r := s.get(fmt.Sprintf("/fn/admin/%s/fill?key=f%02d&n=10000", fn, i))
				var e struct{ Error string }
				switch {
				case r.status == 200:
					mu.Lock()
					stored[fn]++
					mu.Unlock()
				case r.status != 400 || json.Unmarshal(r.body, &e) != nil || e.Error != "quota_exceeded":
					t.Errorf("%s f%02d: %d %s", fn, i, r.status, r.body)
				}
			})
		}
	}
	wg.Wait()
	if total := stored[fns[0]] + stored[fns[1]]; total != 300000/entry || stored[fns[0]] > 200000/entry || stored[fns[1]] > 200000/entry {
		t.Errorf("stored %v entries, want %d in all and at most %d in each", stored, 300000/entry, 200000/entry)
	}
	for _, fn := range fns {
		var page struct{ Bytes int64 }
		r := s.do("GET", "/api/v1/functions/"+fn+"/kv?limit=1", s.token, nil, nil)
		if r.status != 200 || json.Unmarshal(r.body, &page) != nil || page.Bytes != int64(stored[fn]*entry) {
			t.Errorf("GET %s's kv: %d %s, want %d bytes", fn, r.status, r.body, stored[fn]*entry)
		}
	}
	var usage struct {
		KVBytes struct{ Used, Limit int64 } `json:"kv_bytes"`
	}
	kvUsed := func() int64 {
		t.Helper()
		r := s.do("GET", "/api/v1/usage", s.token, nil, nil)
		if r.status != 200 || json.Unmarshal(r.body, &usage) != nil || usage.KVBytes.Limit != 300000 {
			t.Fatalf("GET /api/v1/usage: %d %s", r.status, r.body)
		}
		return usage.KVBytes.Used
	}
	if used := kvUsed(); used != int64((stored[fns[0]]+stored[fns[1]])*entry) {
		t.Errorf("the user's kv bytes: %d, want %d", used, (stored[fns[0]]+stored[fns[1]])*entry)
	}

	// Expired entries make room at once for a write that needs it (the
	// sweep is a minute away).
	fn := fns[0]
	var page struct{ Entries []struct{ Key string } }
	if r := s.do("GET", "/api/v1/functions/"+fn+"/kv?limit=4", s.token, nil, nil); r.status != 200 || json.Unmarshal(r.body, &page) != nil || len(page.Entries) != 4 {
		t.Fatalf("GET %s's kv: %d %s", fn, r.status, r.body)
	}
	for _, e := range page.Entries {
		if r := s.do("DELETE", "/api/v1/functions/"+fn+"/kv/"+e.Key, s.token, nil, nil); r.status != 204 {
			t.Fatalf("delete %s: %d %s", e.Key, r.status, r.body)
		}
	}
	// Four entries' room: two that expire, then three that need theirs.
	before := kvUsed()
	for _, k := range []string{"e1", "e2"} {
		if r := s.do("POST", "/fn/admin/"+fn+"/set?expireIn=300&key="+k, "", strings.NewReader(`"`+strings.Repeat("x", 10000)+`"`), nil); r.status != 200 {
			t.Fatalf("set %s to expire: %d %s", k, r.status, r.body)
		}
	}
	eventually(t, 5*time.Second, "the entries to expire", func() bool {
		return s.do("GET", "/api/v1/functions/"+fn+"/kv/e2", s.token, nil, nil).status == 404
	})
	for _, k := range []string{"g1", "g2", "g3"} {
		if r := s.get("/fn/admin/" + fn + "/fill?n=10000&key=" + k); r.status != 200 {
			t.Errorf("fill %s with the expired entries' room: %d %s", k, r.status, r.body)
		}
	}
	if used, want := kvUsed(), before+3*(entry-1); used != want { // 2-byte keys
		t.Errorf("the user's kv bytes once the expired entries made room: %d, want %d", used, want)
	}
}

// TestKVOwnersView: the API and spry kv see a function's entries as its
// code does, versions and expiry included, in both runtimes: a version
// the code wrote is the API's ETag and spry kv ls --json's, and one the
// API wrote is the code's; a write made for a version since changed on
// the other side is refused; an expiry set through either side ends the
// entry for both.
func TestKVOwnersView(t *testing.T) {
	s := startServer(t)
	code := `export default {
  async fetch(req, ctx) {
    const url = new URL(req.url);
    const op = url.pathname.split("/").pop();
    const key = url.searchParams.get("key");
    const v = url.searchParams.get("ifVersion");
    switch (op) {
      case "entry": return Response.json(await ctx.kv.getEntry(key));
      case "set": {
        const opts = { expireIn: Number(url.searchParams.get("expireIn") ?? 0) };
        if (v !== null) opts.ifVersion = v;
        return Response.json(await ctx.kv.set(key, await req.json(), opts));
      }
    }
    return new Response("no such op", { status: 404 });
  },
};
`
	type entry struct {
		Key     string
		Value   json.RawMessage
		Version *string
	}
	for _, rt := range []string{"deno", "node"} {
		t.Run(rt, func(t *testing.T) {
			fn := "view-" + rt
			s.deployCode(t, fn, []byte(code), "runtime="+rt)
			fnCall := func(method, path, body string, out any) {
				t.Helper()
				r := s.do(method, "/fn/admin/"+fn+"/"+path, "", strings.NewReader(body), nil)
				if r.status != 200 || json.Unmarshal(r.body, out) != nil {
					t.Fatalf("%s: %d %s", path, r.status, r.body)
				}
			}
			api := func(method, key, body string, header map[string]string) response {
				t.Helper()
				var rd *strings.Reader
				if body != "" {
					rd = strings.NewReader(body)
				}
				if rd == nil {
					return s.do(method, "/api/v1/functions/"+fn+"/kv/"+key, s.token, nil, header)
				}
				return s.do(method, "/api/v1/functions/"+fn+"/kv/"+key, s.token, rd, header)
			}
			var set struct {
				OK      bool
				Version *string
			}
			fnCall("POST", "set?key=k", `{"n":1}`, &set)
			if !set.OK || set.Version == nil {
				t.Fatalf("set: %+v", set)
			}
			v1 := *set.Version
			r := api("GET", "k", "", nil)
			var e entry
			if r.status != 200 || json.Unmarshal(r.body, &e) != nil || e.Version == nil || *e.Version != v1 || string(e.Value) != `{"n":1}` || r.header.Get("ETag") != `"`+v1+`"` {
				t.Errorf("the API's read of the code's write (version %s): %d %s ETag %s", v1, r.status, r.body, r.header.Get("ETag"))
			}
			var page struct{ Entries []entry }
			if out := s.mustSpry("kv", "ls", fn, "--json"); json.Unmarshal([]byte(out), &page) != nil || len(page.Entries) != 1 || *page.Entries[0].Version != v1 {
				t.Errorf("spry kv ls --json: %s", out)
			}
			// The API writes for the code's version; the code sees the
			// API's, and its own write for v1 is refused.
			r = api("PUT", "k", `{"n":2}`, map[string]string{"If-Match": `"` + v1 + `"`})
			v2, _ := strconv.Unquote(r.header.Get("ETag"))
			if r.status != 204 || v2 <= v1 {
				t.Fatalf("PUT If-Match the code's version: %d %s ETag %q", r.status, r.body, v2)
			}
			fnCall("GET", "entry?key=k", "", &e)
			if e.Version == nil || *e.Version != v2 || string(e.Value) != `{"n":2}` {
				t.Errorf("the code's read of the API's write (version %s): %+v %s", v2, e, e.Value)
			}
			fnCall("POST", "set?key=k&ifVersion="+v1, `{"n":3}`, &set)
			if set.OK || set.Version != nil {
				t.Errorf("the code's write for a version the API changed: %+v", set)
			}
			if r := api("PUT", "k", `{"n":4}`, map[string]string{"If-Match": `"` + v1 + `"`}); r.status != 412 {
				t.Errorf("the API's write for a version gone: %d %s", r.status, r.body)
			}
			// Expiries, set by either side, end the entry for both.
			fnCall("POST", "set?key=soon&expireIn=300", `"code's"`, &set)
			s.mustSpry("kv", "set", fn, "later", `"api's"`, "--expire-in", "300ms")
			fnCall("GET", "entry?key=later", "", &e)
			if string(e.Value) != `"api's"` {
				t.Errorf("the code's read of an entry that expires: %s", e.Value)
			}
			eventually(t, 5*time.Second, "the entries to expire", func() bool {
				return api("GET", "soon", "", nil).status == 404 && api("GET", "later", "", nil).status == 404
			})
			fnCall("GET", "entry?key=later", "", &e)
			if e.Version != nil || string(e.Value) != "null" {
				t.Errorf("the code's read of an entry expired: %+v %s", e, e.Value)
			}
			if out := s.mustSpry("kv", "ls", fn); out != "k\t{\"n\":2}\n" {
				t.Errorf("spry kv ls once they expired: %q", out)
			}
			// For the API too an expired entry is none.
			if r := api("PUT", "soon", `1`, map[string]string{"If-None-Match": "*"}); r.status != 204 {
				t.Errorf("PUT If-None-Match * of an entry expired: %d %s", r.status, r.body)
			}
		})
	}
}
