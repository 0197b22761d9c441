package cli

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A command run without a token exits 3 (not authenticated), as the
// server's own 401 would, rather than 1 (internal error).
func TestNoTokenExitsUnauthenticated(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "config.json") // does not exist
	for _, args := range [][]string{{"ls"}, {"login"}} {
		var stdout, stderr bytes.Buffer
		code := Main(context.Background(), Env{
			Args:    args,
			Environ: []string{"SPRY_CONFIG=" + cfg, "HOME=" + t.TempDir()},
			Stdin:   strings.NewReader(""),
			Stdout:  &stdout,
			Stderr:  &stderr,
		})
		if code != 3 {
			t.Errorf("spry %s: exit %d, want 3 (stderr %q)", strings.Join(args, " "), code, stderr.String())
		}
		if !strings.Contains(stderr.String(), "no ") || !strings.Contains(stderr.String(), "token") {
			t.Errorf("spry %s: stderr %q does not name the missing token", strings.Join(args, " "), stderr.String())
		}
	}
}

// Exit codes for what goes wrong before or instead of a server's answer:
// a flag that does not parse or is out of range is bad input (2); a
// server that cannot be reached is unavailable (6).
func TestExitCodes(t *testing.T) {
	// A port nothing listens on: bound, then closed.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "http://" + ln.Addr().String()
	ln.Close()
	cfg := filepath.Join(t.TempDir(), "config.json")
	for _, tt := range []struct {
		args []string
		want int
	}{
		{[]string{"logs", "f", "-n", "abc"}, 2},
		{[]string{"logs", "f", "-n", "0"}, 2},
		// --version 0 or below was taken and ignored: every version's logs.
		{[]string{"logs", "f", "--version", "0"}, 2},
		{[]string{"logs", "f", "--version", "-1"}, 2},
		// kv ls --limit 0 was the default page, as if not given.
		{[]string{"kv", "ls", "f", "--limit", "0"}, 2},
		{[]string{"ls", "--no-such-flag"}, 2},
		{[]string{"ls", "--url", closed, "--token", "t"}, 6},
	} {
		var stdout, stderr bytes.Buffer
		code := Main(context.Background(), Env{
			Args:    tt.args,
			Environ: []string{"SPRY_CONFIG=" + cfg, "HOME=" + t.TempDir()},
			Stdin:   strings.NewReader(""),
			Stdout:  &stdout,
			Stderr:  &stderr,
		})
		if code != tt.want {
			t.Errorf("spry %s: exit %d, want %d (stderr %q)", strings.Join(tt.args, " "), code, tt.want, stderr.String())
		}
	}
}

// Arguments that are missing, extra or unknown are bad input (2), as a
// flag that does not parse is; a group without a subcommand it knows
// (spry env frob) is not a success.
func TestBadArgumentsExit2(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "config.json")
	for _, args := range [][]string{
		{"rm"},
		{"rm", "a", "b"},
		{"deploy"},
		{"tag", "f"},
		{"ls", "extra"},
		{"frobnicate"},
		{"env", "frob", "f"},
		{"user", "nope"},
	} {
		var stdout, stderr bytes.Buffer
		code := Main(context.Background(), Env{
			Args:    append(args, "--token", "t", "--url", "http://127.0.0.1:1"),
			Environ: []string{"SPRY_CONFIG=" + cfg, "HOME=" + t.TempDir()},
			Stdin:   strings.NewReader(""),
			Stdout:  &stdout,
			Stderr:  &stderr,
		})
		if code != 2 {
			t.Errorf("spry %s: exit %d, want 2 (stderr %q)", strings.Join(args, " "), code, stderr.String())
		}
	}
	// A group on its own, or with --help, still shows its help.
	for _, args := range [][]string{{}, {"env"}, {"env", "--help"}, {"--help"}} {
		var stdout, stderr bytes.Buffer
		code := Main(context.Background(), Env{Args: args, Environ: []string{"SPRY_CONFIG=" + cfg}, Stdin: strings.NewReader(""), Stdout: &stdout, Stderr: &stderr})
		if code != 0 || !strings.Contains(stdout.String(), "Available Commands") {
			t.Errorf("spry %s: exit %d, stdout %q", strings.Join(args, " "), code, stdout.String())
		}
	}
}

// A KEY=VALUE without "=" is named as what it was: an argument of `env
// set`, not a --env flag, which that command does not have.
func TestEnvSetBadPairNamesTheArgument(t *testing.T) {
	file := filepath.Join(t.TempDir(), "f.ts")
	if err := os.WriteFile(file, []byte("export default {}"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"env", "set", "f", "FOO"}, `error: "FOO": want KEY=VALUE` + "\n"},
		{[]string{"env", "set", "f", "=x"}, `error: "=x": want KEY=VALUE` + "\n"},
		{[]string{"deploy", file, "--env", "FOO"}, `error: --env "FOO": want KEY=VALUE` + "\n"},
		{[]string{"dev", file, "--env", "FOO"}, `error: --env "FOO": want KEY=VALUE` + "\n"},
	} {
		args := tt.args
		if args[0] != "dev" { // which calls no server
			args = append(args, "--token", "t", "--url", "http://127.0.0.1:1")
		}
		code, _, stderr := spry(t, nil, "", args...)
		if code != 2 || stderr != tt.want {
			t.Errorf("spry %s: exit %d, stderr %q; want 2, %q", strings.Join(tt.args, " "), code, stderr, tt.want)
		}
	}
}

// A name spry deploy makes from the file's (My_Func.ts) that is no
// function name says so with the way out, --name, as spry dev does: the
// server's answer named a name the user never gave.
func TestDeployDerivedNameSaysPassName(t *testing.T) {
	url, token := apiServer(t)
	file := helloFile(t, "My_Func.ts")
	code, _, stderr := spry(t, nil, "", "deploy", file, "--url", url, "--token", token)
	if code != 2 || !strings.HasSuffix(stderr, "; pass --name\n") {
		t.Errorf("exit %d, stderr %q; want 2 and a hint to pass --name", code, stderr)
	}
	if code, _, stderr := spry(t, nil, "", "deploy", file, "--name", "my-func", "--url", url, "--token", token); code != 0 {
		t.Errorf("with --name: exit %d: %s", code, stderr)
	}
}

// The commands that call no server do not show --url, --token and
// --ca-cert in their help, and refuse them (they were taken and
// ignored); the others show them.
func TestOfflineCommandsRefuseConnFlags(t *testing.T) {
	for _, cmd := range []string{"serve", "dev", "init", "logout", "restore", "version"} {
		code, stdout, stderr := spry(t, nil, "", cmd, "--help")
		if code != 0 || strings.Contains(stdout, "--token") || strings.Contains(stdout, "--ca-cert") || strings.Contains(stdout, "--url") {
			t.Errorf("spry %s --help: exit %d, shows the server's flags:\n%s%s", cmd, code, stdout, stderr)
		}
		args := []string{cmd, "--token", "t"}
		if cmd == "dev" || cmd == "init" || cmd == "restore" {
			args = append(args, filepath.Join(t.TempDir(), "x")) // refused before it is read
		}
		code, _, stderr = spry(t, nil, "", args...)
		if code != 2 || !strings.Contains(stderr, "--token means nothing to spry "+cmd) {
			t.Errorf("spry %s --token t: exit %d, %q; want 2", cmd, code, stderr)
		}
	}
	if code, stdout, _ := spry(t, nil, "", "ls", "--help"); code != 0 || !strings.Contains(stdout, "--token") {
		t.Errorf("spry ls --help lost --token:\n%s", stdout)
	}
}
