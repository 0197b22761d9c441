package cli

import (
	"errors"
	"testing"

	"github.com/spry-run/spry/internal/errdefs"
)

func TestDevListen(t *testing.T) {
	for _, tt := range []struct {
		host    string
		port    int
		portSet bool
		want    string
	}{
		{"127.0.0.1", 8787, false, "127.0.0.1:8787"},
		{"0.0.0.0", 9000, true, "0.0.0.0:9000"},
		{"localhost", 0, true, "localhost:0"},
		{"::1", 8787, false, "[::1]:8787"},
		{"[::1]", 8787, false, "[::1]:8787"},
		{"[::]", 9000, true, "[::]:9000"},
		{"127.0.0.1:9000", 8787, false, "127.0.0.1:9000"},
		{"[::1]:9000", 8787, false, "[::1]:9000"},
	} {
		got, err := devListen(tt.host, tt.port, tt.portSet)
		if err != nil || got != tt.want {
			t.Errorf("devListen(%q, %d, %v) = %q, %v; want %q", tt.host, tt.port, tt.portSet, got, err, tt.want)
		}
	}
	if _, err := devListen("127.0.0.1:9000", 9001, true); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("--listen with a port and --port: %v, want invalid argument", err)
	}
}
