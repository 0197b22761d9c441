package api

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spry-run/spry/internal/activator"
	"github.com/spry-run/spry/internal/api/apitest"
	"github.com/spry-run/spry/internal/async"
	"github.com/spry-run/spry/internal/backend"
	"github.com/spry-run/spry/internal/kv"
)

// memBackend starts instances that exist only in memory: what is under
// test is what the API reports of the activator's counts, not running
// functions (the e2e test runs them).
type memBackend struct {
	mu   sync.Mutex
	n    int
	live map[string]*backend.Instance
}

func (b *memBackend) Start(_ context.Context, spec *backend.Spec) (*backend.Instance, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.n++
	in := backend.NewInstance(fmt.Sprintf("i-%d", b.n), spec, "unix", "/nowhere")
	if b.live == nil {
		b.live = map[string]*backend.Instance{}
	}
	b.live[in.ID] = in
	return in, nil
}

func (b *memBackend) Stop(_ context.Context, id string) error {
	b.Kill(id, backend.ExitStopped)
	return nil
}

func (b *memBackend) Kill(id, reason string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if in := b.live[id]; in != nil {
		in.Finish(backend.Exit{Reason: reason})
		delete(b.live, id)
	}
}

func (b *memBackend) SetIdle(string, bool) {}

// close ends every instance, as the real backend's Close does.
func (b *memBackend) close() {
	b.mu.Lock()
	ids := make([]string, 0, len(b.live))
	for id := range b.live {
		ids = append(ids, id)
	}
	b.mu.Unlock()
	for _, id := range ids {
		b.Kill(id, backend.ExitStopped)
	}
}

// newUsageEnv is newEnv with what spry serve bounds users by: a real
// activator (over memBackend) told of the functions' versions, a real
// key-value store that learns its namespaces' owners, and a bound on
// functions.
func newUsageEnv(t *testing.T) (*env, *activator.Activator) {
	t.Helper()
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	mb := &memBackend{}
	act := activator.New(mb, activator.Config{ScaleToZeroAfter: time.Hour, MaxInstancesPerOwner: 10, MaxMemoryPerOwnerMiB: 1024,
		Now: func() time.Time { return now }})
	t.Cleanup(func() { mb.close(); act.Close() })
	d := apitest.NewWith(t, apitest.Options{Instances: act, MaxFunctionsPerOwner: 5})
	store, err := kv.Open(context.Background(), filepath.Join(t.TempDir(), "kv.db"), kv.Options{MaxBytesPerOwner: 1 << 20, Owners: d.Functions.Owners})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	a := New(d.Functions, d.Auth, d.Store, d.Store, act, d.Logs, Config{MaxCodeBytes: 1 << 20, KV: store})
	srv := httptest.NewServer(a.Handler())
	t.Cleanup(srv.Close)
	return &env{t: t, srv: srv, api: a, st: d.Store, dbPath: d.DBPath, fns: d.Functions, admin: d.Admin, tokens: map[string]string{"admin": d.Admin}}, act
}

// usageOf is GET /api/v1/usage as token, with query.
func (e *env) usageOf(token, query string) UsageView {
	e.t.Helper()
	var u UsageView
	e.mustDo(token, "GET", "/api/v1/usage"+query, "", http.StatusOK, &u)
	return u
}

// A user's usage follows what they do, each budget as the server counts
// it against its bound: functions deployed, the instances the activator
// starts for them and their memory limits, the bytes of their functions'
// key-value entries, their live tokens.
func TestUsageFollowsTheUser(t *testing.T) {
	e, act := newUsageEnv(t)
	alice := e.user("alice")
	want := UsageView{User: "alice",
		Functions:   Use{Used: 0, Limit: 5},
		Instances:   Use{Used: 0, Limit: 10},
		MemoryBytes: Use{Used: 0, Limit: 1 << 30},
		KVBytes:     Use{Used: 0, Limit: 1 << 20},
		Tokens:      Use{Used: 1, Limit: MaxTokensPerUser},
	}
	check := func(step string) {
		t.Helper()
		if got := e.usageOf(alice, ""); got != want {
			t.Fatalf("after %s: %+v, want %+v", step, got, want)
		}
	}
	check("her creation")

	code := `export default { fetch() { return new Response('hi') } }`
	e.mustDo(alice, "PUT", "/api/v1/functions/warm", `{"code":"`+code+`","min":1,"memory":"256Mi"}`, http.StatusCreated, nil)
	e.mustDo(alice, "PUT", "/api/v1/functions/cold", `{"code":"`+code+`"}`, http.StatusCreated, nil)
	want.Functions.Used = 2
	check("two deploys")

	// The min instance starts at the activator's next tick; it counts
	// from its start.
	act.Tick(time.Date(2030, 1, 2, 3, 4, 6, 0, time.UTC))
	want.Instances.Used, want.MemoryBytes.Used = 1, 256<<20
	check("the min instance's start")

	e.mustDo(alice, "PUT", "/api/v1/functions/cold/kv/greeting", `"hello"`, http.StatusNoContent, nil)
	var list KVList
	e.mustDo(alice, "GET", "/api/v1/functions/cold/kv", "", http.StatusOK, &list)
	if list.Bytes <= 0 {
		t.Fatalf("the function's entries hold %d bytes", list.Bytes)
	}
	want.KVBytes.Used = list.Bytes
	check("a kv put")

	var tok struct{ ID string }
	e.mustDo(alice, "POST", "/api/v1/tokens", `{"name":"ci"}`, http.StatusCreated, &tok)
	want.Tokens.Used = 2
	check("a token's creation")
	e.mustDo(alice, "DELETE", "/api/v1/tokens/"+tok.ID, "", http.StatusNoContent, nil)
	want.Tokens.Used = 1
	check("its revocation")

	e.mustDo(alice, "DELETE", "/api/v1/functions/cold", "", http.StatusNoContent, nil)
	want.Functions.Used = 1
	check("a deletion")

	// The admin sees the same through ?user=; their own is theirs.
	if got := e.usageOf(e.admin, "?user=alice"); got != want {
		t.Errorf("the admin's view of alice: %+v, want %+v", got, want)
	}
	if got := e.usageOf(e.admin, ""); got.User != "admin" || got.Functions.Used != 0 || got.Instances.Used != 0 || got.Tokens.Used != 1 {
		t.Errorf("the admin's own: %+v", got)
	}
}

// Only an admin may see another user's usage; anyone else is refused
// with the 403 of others' functions, whether or not the user exists.
func TestUsageOfAnotherUser(t *testing.T) {
	e := newEnv(t)
	alice := e.user("alice")
	e.user("bob")
	readOnly := func(user string) string {
		var tok struct{ Token string }
		e.mustDo(e.admin, "POST", "/api/v1/tokens", `{"user":"`+user+`","scopes":["read"]}`, http.StatusCreated, &tok)
		return tok.Token
	}
	for _, tt := range []struct {
		name, token, query string
		status             int
		code, user         string
	}{
		{"own", alice, "", 200, "", "alice"},
		{"own, named", alice, "?user=alice", 200, "", "alice"},
		{"own, with a read token", readOnly("alice"), "", 200, "", "alice"},
		{"another's", alice, "?user=bob", 403, "permission_denied", ""},
		{"one who does not exist", alice, "?user=nobody", 403, "permission_denied", ""},
		{"an admin's of another", e.admin, "?user=bob", 200, "", "bob"},
		{"an admin's read token, of another", readOnly("admin"), "?user=bob", 200, "", "bob"},
		{"an admin's of one who does not exist", e.admin, "?user=nobody", 404, "not_found", ""},
		{"a name no user may have", e.admin, "?user=Bob!", 400, "invalid_argument", ""},
		{"the functions' spelling", e.admin, "?owner=bob", 400, "invalid_argument", ""},
		{"twice", e.admin, "?user=bob&user=alice", 400, "invalid_argument", ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			status, body := e.do(tt.token, "GET", "/api/v1/usage"+tt.query, "")
			if tt.status != 200 {
				wantError(t, tt.name, status, body, tt.status, tt.code)
				return
			}
			var u UsageView
			if status != 200 || json.Unmarshal(body, &u) != nil || u.User != tt.user {
				t.Errorf("%d %s, want 200 for %s", status, body, tt.user)
			}
		})
	}
}

// A budget the server does not bound has no limit in the answer (not a
// limit of 0, which would read as "none allowed"); tokens are always
// bounded.
func TestUsageWithoutLimits(t *testing.T) {
	e := newEnv(t) // no bound on functions, no activator, no kv
	var raw map[string]json.RawMessage
	e.mustDo(e.admin, "GET", "/api/v1/usage", "", http.StatusOK, &raw)
	use := func(k string) map[string]int64 {
		t.Helper()
		var m map[string]int64
		if err := json.Unmarshal(raw[k], &m); err != nil {
			t.Fatalf("%s: %v: %s", k, err, raw[k])
		}
		return m
	}
	for _, k := range []string{"pids", "open_files"} {
		if _, ok := raw[k]; ok {
			t.Errorf("%s reported without a backend that keeps it: %s", k, raw[k])
		}
	}
	for _, k := range []string{"functions", "instances", "memory_bytes", "kv_bytes", "async_invocations", "async_bytes"} {
		if m := use(k); len(m) != 1 || m["used"] != 0 {
			t.Errorf("%s: %v, want used 0 and no limit", k, m)
		}
	}
	if m := use("tokens"); m["limit"] != MaxTokensPerUser || m["used"] != 1 {
		t.Errorf("tokens: %v", m)
	}
}

// A user's asynchronous invocations count as the store holds them to
// its bounds: those not finished, and their bytes (each body with
// async.MaxResponse for its response); past the byte bound an enqueue
// gets the count bound's 429, naming its own flag; a finished one counts
// its response only; another user's are theirs.
func TestUsageOfInvocations(t *testing.T) {
	e := newEnv(t)
	per := int64(10 + async.MaxResponse)
	recorded := make(chan struct{}, 10)
	w := withInvocations(t, e, async.Config{MaxPendingPerOwner: 5, MaxBytesPerOwner: 2*per + 1,
		Send: func(context.Context, *async.Invocation) async.Result {
			return async.Result{Status: 200, Body: []byte("ok")}
		},
		OnAttempt: func(*async.Invocation, async.Result, string, time.Time) { recorded <- struct{}{} }}, false)
	alice := e.user("alice")
	e.deploy(alice, "/api/v1/functions/f")
	e.deploy(e.admin, "/api/v1/functions/g")
	check := func(step, token string, invocations, bytes Use) {
		t.Helper()
		if u := e.usageOf(token, ""); u.AsyncInvocations != invocations || u.AsyncBytes != bytes {
			t.Errorf("%s: async_invocations %+v, async_bytes %+v; want %+v, %+v", step, u.AsyncInvocations, u.AsyncBytes, invocations, bytes)
		}
	}
	check("none yet", alice, Use{0, 5}, Use{0, 2*per + 1})
	for range 2 {
		if res := e.post(alice, "/api/v1/functions/f/invocations", "", make([]byte, 10)); res.StatusCode != 202 {
			t.Fatalf("enqueue: %d", res.StatusCode)
		}
	}
	check("two", alice, Use{2, 5}, Use{2 * per, 2*per + 1})
	res := e.post(alice, "/api/v1/functions/f/invocations", "", nil)
	b, _ := io.ReadAll(res.Body)
	wantError(t, "past the byte bound", res.StatusCode, b, 429, "rate_limited")
	if res.Header.Get("Retry-After") != "60" || !strings.Contains(string(b), "--async-max-bytes-per-user") {
		t.Errorf("past the byte bound: Retry-After %q, %s", res.Header.Get("Retry-After"), b)
	}
	check("the refusal", alice, Use{2, 5}, Use{2 * per, 2*per + 1})
	check("the admin's own", e.admin, Use{0, 5}, Use{0, 2*per + 1})

	// Once they have run, only their responses count.
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() { w.Run(ctx); close(ran) }()
	for range 2 {
		select {
		case <-recorded:
		case <-time.After(10 * time.Second):
			t.Fatal("the invocations did not run")
		}
	}
	cancel()
	<-ran
	check("their runs", alice, Use{0, 5}, Use{2 * int64(len("ok")), 2*per + 1})
	if u := e.usageOf(e.admin, "?user=alice"); u.AsyncBytes.Used != 4 {
		t.Errorf("the admin's view of alice: %+v", u.AsyncBytes)
	}
}

// stubBudgets reports fixed budgets per owner: what is under test is the
// API's report of them (the local backend's own test proves the numbers).
type stubBudgets map[string][4]int64

func (s stubBudgets) OwnerBudgets(owner string) (pidsUsed, pidsLimit int64, filesUsed, filesLimit uint64) {
	b := s[owner]
	return b[0], b[1], uint64(b[2]), uint64(b[3])
}

// The pids and open-files budgets are reported as the backend counts
// them, for whoever's usage is asked; one the server does not bound has
// no limit.
func TestUsageOfPidsAndFiles(t *testing.T) {
	e := newEnvConfig(t, Config{MaxCodeBytes: 1 << 20, Budgets: stubBudgets{
		"alice": {160, 8192, 4096, 616546},
		"bob":   {256, 0, 0, 616546},
	}})
	alice := e.user("alice")
	bob := e.user("bob")
	for _, tt := range []struct {
		name, token, query string
		pids, files        Use
	}{
		{"alice's own", alice, "", Use{160, 8192}, Use{4096, 616546}},
		{"alice's, as the admin", e.admin, "?user=alice", Use{160, 8192}, Use{4096, 616546}},
		{"bob's, pids unbounded", bob, "", Use{256, 0}, Use{0, 616546}},
		{"the admin's, none running", e.admin, "", Use{0, 0}, Use{0, 0}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			u := e.usageOf(tt.token, tt.query)
			if u.Pids == nil || u.OpenFiles == nil || *u.Pids != tt.pids || *u.OpenFiles != tt.files {
				t.Errorf("pids %v, open_files %v; want %+v, %+v", u.Pids, u.OpenFiles, tt.pids, tt.files)
			}
		})
	}
	// JSON as documented: an unbounded budget has no limit key.
	var raw map[string]json.RawMessage
	e.mustDo(bob, "GET", "/api/v1/usage", "", http.StatusOK, &raw)
	var got bytes.Buffer
	for _, k := range []string{"pids", "open_files"} {
		if err := json.Compact(&got, raw[k]); err != nil {
			t.Fatalf("%s: %v", k, err)
		}
	}
	if got.String() != `{"used":256}{"used":0,"limit":616546}` {
		t.Errorf("bob's pids and open_files: %s", got.String())
	}
}
