package config

import (
	"testing"
	"time"

	"github.com/spf13/pflag"
)

func TestApplyEnv(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		env     []string
		listen  string
		grace   time.Duration
		wantErr bool
	}{
		{"defaults", nil, nil, "127.0.0.1:8080", 5 * time.Minute, false},
		{"env", nil, []string{"SPRY_LISTEN=:9000", "SPRY_SCALE_TO_ZERO_AFTER=10s"}, ":9000", 10 * time.Second, false},
		{"flag beats env", []string{"--listen", ":7000"}, []string{"SPRY_LISTEN=:9000"}, ":7000", 5 * time.Minute, false},
		{"bad env value", nil, []string{"SPRY_SCALE_TO_ZERO_AFTER=soon"}, "", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs := pflag.NewFlagSet("x", pflag.ContinueOnError)
			listen := fs.String("listen", "127.0.0.1:8080", "")
			grace := fs.Duration("scale-to-zero-after", 5*time.Minute, "")
			if err := fs.Parse(tt.args); err != nil {
				t.Fatal(err)
			}
			err := ApplyEnv(fs, tt.env)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v", err)
			}
			if tt.wantErr {
				return
			}
			if *listen != tt.listen || *grace != tt.grace {
				t.Fatalf("listen=%q grace=%v", *listen, *grace)
			}
		})
	}
}
