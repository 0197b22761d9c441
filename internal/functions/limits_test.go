package functions

import (
	"errors"
	"strings"
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
		{"cron with a newline and wide gaps", map[string]string{"cron": "0  9 * * 1-5\n"}, store.Limits{Cron: "0 9 * * 1-5"}, true},
		{"cron with seconds", map[string]string{"cron": "30 0 * * * *"}, store.Limits{Cron: "30 0 * * * *"}, true},
		{"cron descriptor", map[string]string{"cron": "@every 10m"}, store.Limits{Cron: "@every 10m"}, true},
		{"cron none", map[string]string{"cron": "none"}, store.Limits{}, true},
		{"bad cron", map[string]string{"cron": "61 * * * *"}, store.Limits{}, false},
		{"cron of four fields", map[string]string{"cron": "* * * *"}, store.Limits{}, false},
		{"private", map[string]string{"access": " private "}, store.Limits{Access: "private"}, true},
		{"public", map[string]string{"access": "public"}, store.Limits{}, true},
		{"bad access", map[string]string{"access": "internal"}, store.Limits{}, false},
		{"access spelt in capitals", map[string]string{"access": "Private"}, store.Limits{}, false},
		{"no async retries", map[string]string{"async-retries": "0"}, store.Limits{AsyncRetries: store.SomeInt(0)}, true},
		{"one async retry", map[string]string{"async-retries": " 1 "}, store.Limits{AsyncRetries: store.SomeInt(1)}, true},
		{"two async retries: the default", map[string]string{"async-retries": "2"}, store.Limits{}, true},
		{"negative async retries", map[string]string{"async-retries": "-1"}, store.Limits{}, false},
		{"three async retries", map[string]string{"async-retries": "3"}, store.Limits{}, false},
		{"async retries not a number", map[string]string{"async-retries": "x"}, store.Limits{}, false},
		{"async retries empty", map[string]string{"async-retries": ""}, store.Limits{}, false},
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
		{"private", map[string]string{"access": "private"},
			store.Limits{MemoryMiB: 256, MinScale: 2, MaxScale: 4, Isolation: "gvisor", Network: "none", Access: "private"}, true},
		{"no async retries", map[string]string{"async-retries": "0"},
			store.Limits{MemoryMiB: 256, MinScale: 2, MaxScale: 4, Isolation: "gvisor", Network: "none", AsyncRetries: store.SomeInt(0)}, true},
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

// A function whose instances one user's budgets could never hold (its
// min past the instance quota, or one instance alone or its min together
// past the memory budget) is refused when deployed or changed,
// against the settings it would have (the live version's, changed), and
// stores nothing.
func TestOwnerBudgets(t *testing.T) {
	ctx := t.Context()
	st, blobs := stores(t)
	s := New(st, blobs, retirer{}, box(t), noLogs{}, Config{DefaultRuntime: "deno", Runtimes: []string{"deno"}, MaxCodeBytes: 1 << 20, DefaultMemoryMiB: 128,
		Bounds: Bounds{MaxMemoryMiB: 2048, MaxScale: 100, MaxMemoryPerOwnerMiB: 512, MaxInstancesPerOwner: 8}})
	code := []byte("export default { fetch() { return new Response('hi') } }")
	if _, err := s.Deploy(ctx, DeployRequest{Owner: "alice", Name: "live", Code: code, By: "alice", Settings: map[string]string{SettingMemory: "256Mi"}}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		fn       string
		redeploy bool // a deploy rather than a change of settings
		settings map[string]string
		ok       bool
	}{
		{"new at the default memory", "a", true, nil, true},
		{"new, one instance past the budget", "b", true, map[string]string{SettingMemory: "1Gi"}, false},
		{"new, min fills the budget", "c", true, map[string]string{SettingMin: "4"}, true},
		{"new, min past the budget", "d", true, map[string]string{SettingMin: "5"}, false},
		{"redeploy, min past it at the live memory", "live", true, map[string]string{SettingMin: "3"}, false},
		{"change, min past it at the live memory", "live", false, map[string]string{SettingMin: "3"}, false},
		{"change, min within it at the live memory", "live", false, map[string]string{SettingMin: "2"}, true},
		{"change, memory past it with the min now set", "live", false, map[string]string{SettingMemory: "300Mi"}, false},
		{"change, memory past it alone", "live", false, map[string]string{SettingMemory: "513Mi", SettingMin: "0"}, false},
		{"new, min within the instance quota", "e", true, map[string]string{SettingMemory: "64Mi", SettingMin: "8"}, true},
		{"new, min past the instance quota", "f", true, map[string]string{SettingMemory: "32Mi", SettingMin: "9"}, false},
		{"change, min past the instance quota", "live", false, map[string]string{SettingMemory: "32Mi", SettingMin: "9"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before, _ := s.Get(ctx, "alice", tt.fn)
			var err error
			if tt.redeploy {
				_, err = s.Deploy(ctx, DeployRequest{Owner: "alice", Name: tt.fn, Code: code, By: "alice", Settings: tt.settings})
			} else {
				_, err = s.Reconfigure(ctx, "alice", tt.fn, "alice", Change{Settings: tt.settings})
			}
			if (err == nil) != tt.ok {
				t.Fatalf("err = %v, want ok %v", err, tt.ok)
			}
			if err == nil {
				return
			}
			flag := "--max-memory-per-user"
			if strings.Contains(tt.name, "instance quota") {
				flag = "--max-instances-per-user"
			}
			if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), flag) {
				t.Fatalf("err = %v, want an invalid argument naming %s", err, flag)
			}
			after, _ := s.Get(ctx, "alice", tt.fn)
			if after.LiveVersion != before.LiveVersion {
				t.Fatalf("a refused change made version %d live (was %d)", after.LiveVersion, before.LiveVersion)
			}
		})
	}
}
