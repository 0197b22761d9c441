package e2e

import (
	"encoding/json"
	"strings"
	"testing"
)

// TestUsage: spry usage reports what the real server counts against a
// user's budgets: the instance a request started, with its memory limit,
// and the bytes its ctx.kv write holds, each with the limit spry serve
// was given.
func TestUsage(t *testing.T) {
	s := startServer(t, "--max-instances-per-user", "7", "--max-memory-per-user", "1Gi", "--kv-max-bytes-per-user", "1000000",
		"--user-pids", "4096", "--user-files", "200000")
	s.deployCode(t, "counter", []byte(kvFunction), "memory=256Mi")
	if r := s.get("/fn/admin/counter/incr?key=hits"); r.status != 200 || strings.TrimSpace(string(r.body)) != "1" {
		t.Fatalf("incr: %d %s", r.status, r.body)
	}

	var u struct {
		User      string `json:"user"`
		Functions struct{ Used, Limit int64 }
		Instances struct{ Used, Limit int64 }
		Memory    struct{ Used, Limit int64 } `json:"memory_bytes"`
		KV        struct{ Used, Limit int64 } `json:"kv_bytes"`
		Tokens    struct{ Used, Limit int64 }
		Pids      struct{ Used, Limit int64 }
		OpenFiles struct{ Used, Limit int64 } `json:"open_files"`
	}
	if err := json.Unmarshal([]byte(s.mustSpry("usage", "--json")), &u); err != nil {
		t.Fatal(err)
	}
	// The instance stays for the scale-to-zero grace (5m), well past
	// this test.
	if u.User != "admin" || u.Functions.Used != 1 || u.Functions.Limit != 1000 ||
		u.Instances.Used < 1 || u.Instances.Limit != 7 ||
		u.Memory.Used < 256<<20 || u.Memory.Used != u.Instances.Used*256<<20 || u.Memory.Limit != 1<<30 ||
		u.KV.Used <= 0 || u.KV.Limit != 1000000 || u.Tokens.Used != 1 || u.Tokens.Limit != 100 ||
		// At least the instance's floors (32 pids; 1024 files for each
		// of its two processes), within the budgets.
		u.Pids.Used < 32 || u.Pids.Used > 4096 || u.Pids.Limit != 4096 ||
		u.OpenFiles.Used < 2*1024 || u.OpenFiles.Used > 200000 || u.OpenFiles.Limit != 200000 {
		t.Errorf("spry usage --json: %+v", u)
	}

	table := s.mustSpry("usage")
	if rows := lines(table); len(rows) != 10 || !strings.HasPrefix(rows[0], "RESOURCE") ||
		!strings.HasPrefix(rows[2], "instances") || !strings.Contains(rows[3], "MiB") || !strings.Contains(rows[3], "1 GiB") ||
		!strings.HasPrefix(rows[4], "pids") || !strings.Contains(rows[4], "4096") ||
		!strings.HasPrefix(rows[5], "open files") || !strings.Contains(rows[5], "200000") {
		t.Errorf("spry usage:\n%s", table)
	}

	// Another user's usage is theirs, and theirs alone to see but for
	// the admin.
	bob := strings.TrimSpace(s.mustSpry("user", "create", "bob"))
	if out := s.mustSpry("usage", "--user", "bob"); !strings.Contains(strings.Join(strings.Fields(out), " "), "functions 0 1000 0% instances 0 7 0% memory 0 B 1 GiB 0% pids 0 4096 0% open files 0 200000 0%") {
		t.Errorf("spry usage --user bob:\n%s", out)
	}
	if _, stderr, code := s.spry(bob, "usage", "--user", "admin"); code != 3 || !strings.Contains(stderr, "may not see the usage") {
		t.Errorf("bob's spry usage --user admin: exit %d, %s", code, stderr)
	}
}
