package cli

import (
	"bytes"
	"context"
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
