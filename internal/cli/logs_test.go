package cli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
)

// runCLI runs spry with args against the server at url.
func runCLI(t *testing.T, url string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	cfg := filepath.Join(t.TempDir(), "config.json")
	code = Main(context.Background(), Env{
		Args:    append(args, "--url", url, "--token", "t"),
		Environ: []string{"SPRY_CONFIG=" + cfg, "HOME=" + t.TempDir()},
		Stdin:   strings.NewReader(""),
		Stdout:  &out,
		Stderr:  &errb,
	})
	return code, out.String(), errb.String()
}

// `spry logs --json` prints JSON lines, one entry per line, which line
// tools (grep, while read) and `jq -c` read one at a time.
func TestLogsJSONIsOneEntryPerLine(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/x-ndjson")
		for i := 1; i <= 3; i++ {
			_, _ = w.Write([]byte(`{"id":` + string(rune('0'+i)) + `,"time":"2025-01-02T03:04:05Z","version":1,"stream":"stdout","line":"hello"}` + "\n"))
		}
	}))
	defer srv.Close()
	code, stdout, stderr := runCLI(t, srv.URL, "logs", "hello", "--json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	sc := bufio.NewScanner(strings.NewReader(stdout))
	n := 0
	for sc.Scan() {
		n++
		var v map[string]any
		if err := json.Unmarshal(sc.Bytes(), &v); err != nil {
			t.Errorf("line %d %q is not a JSON object: %v", n, sc.Text(), err)
		}
	}
	if n != 3 {
		t.Errorf("%d lines for 3 entries:\n%s", n, stdout)
	}
}

// `spry ls --json` with no functions is an empty array, not null, which
// `jq '.[]'` refuses.
func TestLsJSONEmptyIsAnArray(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(`{"functions":[]}`))
	}))
	defer srv.Close()
	code, stdout, stderr := runCLI(t, srv.URL, "ls", "--json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if got := strings.TrimSpace(stdout); got != "[]" {
		t.Errorf("stdout %q, want []", got)
	}
}
