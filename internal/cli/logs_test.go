package cli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
	"unicode"

	"github.com/spry-run/spry/internal/api"
	"github.com/spry-run/spry/internal/logtest"
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

// `spry logs -f` ends only with Ctrl-C (0), its function's deletion (4)
// or the server's going (6), saying which: a stream that stops without
// the server's last word is the server gone, not a success.
func TestLogsFollowThatLosesTheServerExits6(t *testing.T) {
	line := `{"id":1,"time":"2025-01-02T03:04:05Z","version":1,"stream":"stdout","line":"hello"}` + "\n"
	for _, tt := range []struct {
		name string
		end  func(w http.ResponseWriter)
	}{
		{"clean end", func(w http.ResponseWriter) {}},
		{"cut mid-line", func(w http.ResponseWriter) {
			conn, buf, err := http.NewResponseController(w).Hijack()
			if err != nil {
				t.Error(err)
				return
			}
			// Half a chunk, then the connection is gone.
			_, _ = buf.WriteString("40\r\n{\"id\":2,")
			_ = buf.Flush()
			conn.Close()
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/x-ndjson")
				_, _ = w.Write([]byte(line))
				_ = http.NewResponseController(w).Flush()
				tt.end(w)
			}))
			defer srv.Close()
			code, stdout, stderr := runCLI(t, srv.URL, "logs", "hello", "-f")
			if code != 6 {
				t.Errorf("exit %d, want 6 (stderr %q)", code, stderr)
			}
			if !strings.Contains(stdout, "hello") {
				t.Errorf("stdout %q lacks the line sent", stdout)
			}
			if stderr == "" {
				t.Error("nothing on stderr says why the follow ended")
			}
		})
	}
}

// Ctrl-C ends `spry logs -f` with exit 0, as documented, rather than the
// signal's default (the process killed: 130 in a shell).
func TestLogsFollowCtrlCExits0(t *testing.T) {
	// Keeps this test binary alive whatever the command does with SIGINT.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT)
	defer signal.Stop(sigs)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/x-ndjson")
		_, _ = w.Write([]byte(`{"id":1,"time":"2025-01-02T03:04:05Z","version":1,"stream":"stdout","line":"hello"}` + "\n"))
		_ = http.NewResponseController(w).Flush()
		<-r.Context().Done()
	}))
	defer srv.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out := &logtest.Buffer{}
	var errb logtest.Buffer
	done := make(chan int, 1)
	go func() {
		done <- Main(ctx, Env{
			Args:    []string{"logs", "hello", "-f", "--url", srv.URL, "--token", "t"},
			Environ: []string{"SPRY_CONFIG=" + filepath.Join(t.TempDir(), "c.json")},
			Stdin:   strings.NewReader(""),
			Stdout:  out,
			Stderr:  &errb,
		})
	}()
	for deadline := time.Now().Add(5 * time.Second); !strings.Contains(out.String(), "hello"); {
		if time.Now().After(deadline) {
			t.Fatal("the follow printed nothing")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("exit %d after Ctrl-C, want 0 (stderr %q)", code, errb.String())
		}
	case <-time.After(5 * time.Second):
		cancel()
		<-done
		t.Fatal("Ctrl-C did not end the follow")
	}
}

// `spry logs` prints a function's output, which may hold terminal escape
// sequences (a title, the clipboard by OSC 52, cursor moves) or a carriage
// return that overwrites the line's prefix: printed raw, they reached the
// terminal of whoever reads the logs, the admin included. They are
// printed as escapes; --json keeps the line as it is.
func TestLogsEscapeControlCharacters(t *testing.T) {
	line := "a\x1b]52;c;cHduZWQ=\x07b\rsystem instance ended\x1b[2K\u009b1Ac\td\u00e9"
	body, _ := json.Marshal(map[string]any{"id": 1, "time": "2025-01-02T03:04:05Z", "version": 1, "stream": "stdout", "line": line})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/x-ndjson")
		_, _ = w.Write(append(body, '\n'))
	}))
	defer srv.Close()
	code, stdout, stderr := runCLI(t, srv.URL, "logs", "hello")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	for _, r := range strings.TrimSuffix(stdout, "\n") {
		if r < 0x20 && r != '\t' || r >= 0x7f && r < 0xa0 {
			t.Fatalf("control character %U printed raw: %q", r, stdout)
		}
	}
	want := `a\x1b]52;c;cHduZWQ=\x07b\x0dsystem instance ended\x1b[2K\x9b1Ac` + "\td\u00e9\n"
	if !strings.HasSuffix(stdout, want) {
		t.Errorf("stdout %q, want it to end with %q", stdout, want)
	}
	_, stdout, _ = runCLI(t, srv.URL, "logs", "hello", "--json")
	var got struct{ Line string }
	if err := json.Unmarshal([]byte(stdout), &got); err != nil || got.Line != line {
		t.Errorf("--json: %q, %v", stdout, err)
	}
}

// `spry env ls` prints an env var's value with its control characters
// escaped too: a value may hold a newline that forges another variable's
// line, or an escape sequence, and the admin lists other users' values.
func TestEnvLsEscapesControlCharacters(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(`{"owner":"alice","name":"f","version":1,"env":{"A":"x\nB=forged\u001b]0;t\u0007"}}`))
	}))
	defer srv.Close()
	code, stdout, stderr := runCLI(t, srv.URL, "env", "ls", "f")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if want := `A=x\x0aB=forged\x1b]0;t\x07` + "\n"; stdout != want {
		t.Errorf("stdout %q, want %q", stdout, want)
	}
}

// Bidirectional controls (U+202E RIGHT-TO-LEFT OVERRIDE, U+2066...) are
// printed as escapes as control characters are: a terminal that applies
// the bidi algorithm shows the rest of the line reordered by one. A
// token's name, which its user chose, is followed on its line in
// `spry token ls` by whether the token was revoked, which an override
// could have shown otherwise to the admin.
func TestBidiControlsAreEscaped(t *testing.T) {
	const name = "ci\u202e 00:00:00 10-10-2026\u2066\u200f\x1b[2K"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/api/v1/tokens":
			body, _ := json.Marshal(map[string]any{"tokens": []map[string]any{{"id": "0123456789abcdef", "user": "alice", "name": name, "created_at": "2026-01-02T03:04:05Z"}}})
			_, _ = w.Write(body)
		case "/api/v1/functions/hello/logs":
			body, _ := json.Marshal(map[string]any{"id": 1, "time": "2025-01-02T03:04:05Z", "version": 1, "stream": "stdout", "line": "x\u202ey"})
			_, _ = w.Write(append(body, '\n'))
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"token", "ls", "--user", "alice"}, `ci\u202e 00:00:00 10-10-2026\u2066\u200f\x1b[2K`},
		{[]string{"logs", "hello"}, `x\u202ey`},
	} {
		code, stdout, stderr := runCLI(t, srv.URL, tt.args...)
		if code != 0 {
			t.Fatalf("%v: exit %d: %s", tt.args, code, stderr)
		}
		if strings.ContainsFunc(stdout, func(r rune) bool { return unicode.Is(unicode.Bidi_Control, r) || r == 0x1b }) {
			t.Errorf("%v: a control printed raw: %q", tt.args, stdout)
		}
		if !strings.Contains(stdout, tt.want) {
			t.Errorf("%v: stdout %q, want it to hold %q", tt.args, stdout, tt.want)
		}
	}
}

func TestLogLine(t *testing.T) {
	at := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	for _, tt := range []struct {
		l    api.LogLine
		want string
	}{
		{api.LogLine{Time: at, Version: 3, Instance: "i-1", Stream: "stdout", Line: "hi"}, "2026-11-24T12:00:00.000Z v3 i-1 stdout hi\n"},
		// A line of the platform's about no version or instance.
		{api.LogLine{Time: at, Stream: "system", Line: "sent on"}, "2026-11-24T12:00:00.000Z - - system sent on\n"},
		{api.LogLine{Time: at, Version: 1, Stream: "stderr", Line: "a\x1b[31m"}, "2026-11-24T12:00:00.000Z v1 - stderr a\\x1b[31m\n"},
	} {
		if got := logLine(tt.l); got != tt.want {
			t.Errorf("logLine(%+v) = %q, want %q", tt.l, got, tt.want)
		}
	}
}

// When the server's limit cut a read, spry logs says so on stderr (the
// entries it printed are the newest, not all), and not when it did not.
func TestLogsSaysWhenCut(t *testing.T) {
	for _, cut := range []string{"", "older"} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/x-ndjson")
			if cut != "" {
				w.Header().Set(api.LogsTruncatedHeader, cut)
			}
			_, _ = w.Write([]byte(`{"id":1,"time":"2025-01-02T03:04:05Z","version":1,"stream":"stdout","line":"hello"}` + "\n"))
		}))
		code, stdout, stderr := runCLI(t, srv.URL, "logs", "hello", "-n", "1")
		srv.Close()
		said := strings.Contains(stderr, "more: the newest 1 entries are shown; spry logs hello --tail 2")
		if code != 0 || !strings.Contains(stdout, "hello") || said != (cut != "") {
			t.Errorf("cut %q: exit %d, stdout %q, stderr %q", cut, code, stdout, stderr)
		}
	}
}
