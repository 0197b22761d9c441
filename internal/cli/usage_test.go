package cli

import (
	"bytes"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spry-run/spry/internal/api"
	"github.com/spry-run/spry/internal/async"
)

// spry usage prints the caller's budgets as a table, --json the API's
// view, and --user another's for an admin only.
func TestUsageCommand(t *testing.T) {
	url, admin := apiServer(t)
	run, must := cliAt(t, url)
	file := helloFile(t, "hello.ts")
	bob := strings.TrimSpace(must(admin, "user", "create", "bob"))
	must(bob, "deploy", file)

	// This server bounds only tokens (no activator, no kv, no bound
	// on functions): the rest show no limit, and pids and open files,
	// which it does not report, no row.
	want := `RESOURCE           USED  LIMIT  USED%
functions          1     -      -
instances          0     -      -
memory             0 B   -      -
kv                 0 B   -      -
async invocations  0     -      -
async bytes        0 B   -      -
tokens             1     100    1%
`
	if out := must(bob, "usage"); out != want {
		t.Errorf("spry usage:\n%s\nwant:\n%s", out, want)
	}
	if out := must(admin, "usage", "--user", "bob"); out != want {
		t.Errorf("spry usage --user bob, as the admin:\n%s\nwant:\n%s", out, want)
	}

	var u api.UsageView
	if err := json.Unmarshal([]byte(must(admin, "usage", "--json")), &u); err != nil {
		t.Fatal(err)
	}
	if u.User != "admin" || u.Functions.Used != 0 || u.Tokens != (api.Use{Used: 1, Limit: api.MaxTokensPerUser}) {
		t.Errorf("spry usage --json: %+v", u)
	}

	if code, _, stderr := run(bob, "usage", "--user", "admin"); code != 3 || !strings.Contains(stderr, "may not see the usage") {
		t.Errorf("bob's spry usage --user admin: exit %d, %s; want 3", code, stderr)
	}
	if code, _, stderr := run(admin, "usage", "--user", "nobody"); code != 4 {
		t.Errorf("spry usage --user nobody: exit %d, %s; want 4", code, stderr)
	}
}

// The table shows bytes in binary units and the share of each limit
// used, rounded down so that 100% is a full budget.
func TestPrintUsage(t *testing.T) {
	var out bytes.Buffer
	err := printUsage(&out, api.UsageView{User: "alice",
		Functions:        api.Use{Used: 3, Limit: 1000},
		Instances:        api.Use{Used: 2, Limit: 2},
		MemoryBytes:      api.Use{Used: 256 << 20, Limit: 12240000000},
		Pids:             &api.Use{Used: 160, Limit: 8192},
		OpenFiles:        &api.Use{Used: 4096, Limit: 616546},
		KVBytes:          api.Use{Used: 1234, Limit: 640 << 20},
		AsyncInvocations: api.Use{Used: 10000, Limit: 10000},
		AsyncBytes:       api.Use{Used: 3 << 20, Limit: 640 << 20},
		Tokens:           api.Use{Used: 99, Limit: 100},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := `RESOURCE           USED     LIMIT     USED%
functions          3        1000      <1%
instances          2        2         100%
memory             256 MiB  11.4 GiB  2%
pids               160      8192      1%
open files         4096     616546    <1%
kv                 1.2 KiB  640 MiB   <1%
async invocations  10000    10000     100%
async bytes        3 MiB    640 MiB   <1%
tokens             99       100       99%
`
	if out.String() != want {
		t.Errorf("got:\n%s\nwant:\n%s", out.String(), want)
	}
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1024: "1 KiB", 1536: "1.5 KiB", 5 << 30: "5 GiB", 1<<63 - 1: "8 EiB"} {
		if got := sizeString(n); got != want {
			t.Errorf("sizeString(%d) = %q, want %q", n, got, want)
		}
	}
}

// spry usage shows a user's asynchronous invocations not finished and
// their bytes against the server's bounds, and the refusal past the
// byte bound names its flag.
func TestUsageCommandAsync(t *testing.T) {
	st, err := async.Open(t.Context(), filepath.Join(t.TempDir(), "invocations.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	// Not run: what is enqueued stays queued.
	w := async.NewWorker(st, async.Config{MaxPendingPerOwner: 100, MaxBytesPerOwner: 1 << 20})
	url, admin := apiServerConfig(t, nil, api.Config{MaxCodeBytes: 1 << 20, Invocations: w})
	run, must := cliAt(t, url)
	bob := strings.TrimSpace(must(admin, "user", "create", "bob"))
	must(bob, "deploy", helloFile(t, "hello.ts"))
	// 15 of 64 KiB reserved for responses, and their bodies of 5 bytes:
	// 960.1 KiB of 1 MiB; one more would pass it.
	for range 15 {
		must(bob, "invoke", "hello", "--async", "-d", "event")
	}
	if code, _, stderr := run(bob, "invoke", "hello", "--async", "-d", "event"); code == 0 || !strings.Contains(stderr, "--async-max-bytes-per-user") {
		t.Errorf("past the byte bound: exit %d, %s", code, stderr)
	}
	want := `RESOURCE           USED       LIMIT  USED%
functions          1          -      -
instances          0          -      -
memory             0 B        -      -
kv                 0 B        -      -
async invocations  15         100    15%
async bytes        960.1 KiB  1 MiB  93%
tokens             1          100    1%
`
	if out := must(bob, "usage"); out != want {
		t.Errorf("spry usage:\n%s\nwant:\n%s", out, want)
	}
}

// budgets is a backend's count of each user's pids and open files: what
// is under test is how spry usage shows them.
type budgets map[string][4]int64

func (b budgets) OwnerBudgets(owner string) (pidsUsed, pidsLimit int64, filesUsed, filesLimit uint64) {
	u := b[owner]
	return u[0], u[1], uint64(u[2]), uint64(u[3])
}

// spry usage shows the pids and open files a server reports, against
// their budgets, or without a limit where it sets none.
func TestUsageCommandBudgets(t *testing.T) {
	url, admin := apiServerConfig(t, nil, api.Config{MaxCodeBytes: 1 << 20, Budgets: budgets{"bob": {224, 0, 6144, 16384}}})
	_, must := cliAt(t, url)
	bob := strings.TrimSpace(must(admin, "user", "create", "bob"))
	want := `RESOURCE           USED  LIMIT  USED%
functions          0     -      -
instances          0     -      -
memory             0 B   -      -
pids               224   -      -
open files         6144  16384  37%
kv                 0 B   -      -
async invocations  0     -      -
async bytes        0 B   -      -
tokens             1     100    1%
`
	if out := must(bob, "usage"); out != want {
		t.Errorf("spry usage:\n%s\nwant:\n%s", out, want)
	}
	var u api.UsageView
	if err := json.Unmarshal([]byte(must(bob, "usage", "--json")), &u); err != nil {
		t.Fatal(err)
	}
	if u.Pids == nil || *u.Pids != (api.Use{Used: 224}) || u.OpenFiles == nil || *u.OpenFiles != (api.Use{Used: 6144, Limit: 16384}) {
		t.Errorf("spry usage --json: pids %v, open_files %v", u.Pids, u.OpenFiles)
	}
}
