package functions

import (
	"errors"
	"testing"
	"time"

	"github.com/spry-run/spry/internal/errdefs"
	"github.com/spry-run/spry/internal/store"
)

var bounds = Bounds{MaxMemoryMiB: 2048, MaxTimeout: 15 * time.Minute, MaxScale: 100, MaxConcurrency: 1000, MaxCPUMilli: 2000}

func TestParseLimits(t *testing.T) {
	tests := []struct {
		name string
		in   map[string]string
		want store.Limits
		ok   bool
	}{
		{"empty", nil, store.Limits{}, true},
		{"all", map[string]string{"memory": "256Mi", "timeout": "2s", "network": "none", "min": "1", "max": "20", "concurrency": "50"},
			store.Limits{MemoryMiB: 256, TimeoutMs: 2000, Network: "none", MinScale: 1, MaxScale: 20, Concurrency: 50}, true},
		{"gi", map[string]string{"memory": "1Gi"}, store.Limits{MemoryMiB: 1024}, true},
		{"si", map[string]string{"memory": "200M"}, store.Limits{MemoryMiB: 191}, true},
		{"bare", map[string]string{"memory": "64"}, store.Limits{MemoryMiB: 64}, true},
		{"too small", map[string]string{"memory": "1Mi"}, store.Limits{}, false},
		{"too big", map[string]string{"memory": "64Gi"}, store.Limits{}, false},
		{"bad memory", map[string]string{"memory": "lots"}, store.Limits{}, false},
		{"negative memory", map[string]string{"memory": "-5Mi"}, store.Limits{}, false},
		{"bad timeout", map[string]string{"timeout": "soon"}, store.Limits{}, false},
		{"long timeout", map[string]string{"timeout": "1h"}, store.Limits{}, false},
		{"bad network", map[string]string{"network": "host"}, store.Limits{}, false},
		{"min above max", map[string]string{"min": "5", "max": "2"}, store.Limits{}, false},
		{"zero max", map[string]string{"max": "0"}, store.Limits{}, false},
		{"zero concurrency", map[string]string{"concurrency": "0"}, store.Limits{}, false},
		{"cpu", map[string]string{"cpu": "0.5", "target-utilization": "70", "scale-to-zero-after": "10m"}, store.Limits{CPUMilli: 500, TargetPercent: 70, ScaleToZeroMs: 600000}, true},
		{"cpu milli", map[string]string{"cpu": "250m", "target-utilization": "0.8"}, store.Limits{CPUMilli: 250, TargetPercent: 80}, true},
		{"too much cpu", map[string]string{"cpu": "8"}, store.Limits{}, false},
		{"bad target", map[string]string{"target-utilization": "5"}, store.Limits{}, false},
		{"short grace", map[string]string{"scale-to-zero-after": "10ms"}, store.Limits{}, false},
		{"unknown", map[string]string{"gpu": "2"}, store.Limits{}, false},
		{"cron", map[string]string{"cron": " */5 * * * * "}, store.Limits{Cron: "*/5 * * * *"}, true},
		{"cron with seconds", map[string]string{"cron": "30 0 * * * *"}, store.Limits{Cron: "30 0 * * * *"}, true},
		{"cron descriptor", map[string]string{"cron": "@every 10m"}, store.Limits{Cron: "@every 10m"}, true},
		{"cron none", map[string]string{"cron": "none"}, store.Limits{}, true},
		{"bad cron", map[string]string{"cron": "61 * * * *"}, store.Limits{}, false},
		{"cron of four fields", map[string]string{"cron": "* * * *"}, store.Limits{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseLimits(tt.in, bounds)
			if (err == nil) != tt.ok {
				t.Fatalf("err = %v", err)
			}
			if err != nil && !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("wrong class: %v", err)
			}
			if tt.ok && got != tt.want {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

// TestApplySettings: settings change what they name and keep the rest,
// and a setting given as its zero value ("min": "0", "isolation":
// "standard") changes it too, so it can be undone.
func TestApplySettings(t *testing.T) {
	base := store.Limits{MemoryMiB: 256, MinScale: 2, MaxScale: 4, Isolation: "gvisor", Network: "none"}
	tests := []struct {
		name string
		in   map[string]string
		want store.Limits
		ok   bool
	}{
		{"nothing", nil, base, true},
		{"memory", map[string]string{"memory": "512Mi"},
			store.Limits{MemoryMiB: 512, MinScale: 2, MaxScale: 4, Isolation: "gvisor", Network: "none"}, true},
		{"back to zero", map[string]string{"min": "0"},
			store.Limits{MemoryMiB: 256, MaxScale: 4, Isolation: "gvisor", Network: "none"}, true},
		{"back to standard", map[string]string{"isolation": "standard", "network": "egress"},
			store.Limits{MemoryMiB: 256, MinScale: 2, MaxScale: 4, Network: "egress"}, true},
		{"min above the stored max", map[string]string{"min": "5"}, store.Limits{}, false},
		{"max below the stored min", map[string]string{"max": "1"}, store.Limits{}, false},
		{"egress with the stored gvisor", map[string]string{"network": "egress"}, store.Limits{}, false},
		{"a schedule", map[string]string{"cron": "@hourly"},
			store.Limits{MemoryMiB: 256, MinScale: 2, MaxScale: 4, Isolation: "gvisor", Network: "none", Cron: "@hourly"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ApplySettings(base, tt.in, bounds)
			if (err == nil) != tt.ok {
				t.Fatalf("err = %v", err)
			}
			if err != nil && !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("wrong class: %v", err)
			}
			if tt.ok && got != tt.want {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func FuzzParseLimits(f *testing.F) {
	f.Add("memory", "128Mi")
	f.Add("timeout", "1.5s")
	f.Add("min", "3")
	f.Add("network", "egress")
	f.Add("memory", "1e300Gi")
	f.Add("cron", "CRON_TZ=UTC */5 * * * *")
	f.Fuzz(func(t *testing.T, k, v string) {
		l, err := ParseLimits(map[string]string{k: v}, bounds)
		if err != nil {
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("wrong class: %v", err)
			}
			return
		}
		if l.MemoryMiB != 0 && (l.MemoryMiB < 32 || l.MemoryMiB > bounds.MaxMemoryMiB) ||
			l.TimeoutMs < 0 || time.Duration(l.TimeoutMs)*time.Millisecond > bounds.MaxTimeout ||
			l.MaxScale > bounds.MaxScale || l.Concurrency > bounds.MaxConcurrency ||
			l.CPUMilli < 0 || l.CPUMilli > bounds.MaxCPUMilli || l.TargetPercent < 0 || l.TargetPercent > 100 ||
			(l.Network != "" && l.Network != "none" && l.Network != "egress") {
			t.Fatalf("accepted out-of-bounds %q=%q: %+v", k, v, l)
		}
	})
}
