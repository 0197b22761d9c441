package functions

import (
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/spry-run/spry/internal/errdefs"
	"github.com/spry-run/spry/internal/names"
	"github.com/spry-run/spry/internal/schedule"
	"github.com/spry-run/spry/internal/store"
)

// Setting names, as the API's query parameters and JSON fields and the
// CLI's flags spell them.
const (
	SettingMemory      = "memory"
	SettingTimeout     = "timeout"
	SettingNetwork     = "network"
	SettingMin         = "min"
	SettingMax         = "max"
	SettingConcurrency = "concurrency"
	SettingCPU         = "cpu"
	SettingTarget      = "target-utilization"
	SettingGrace       = "scale-to-zero-after"
	SettingIsolation   = "isolation"
	SettingCron        = "cron"
	SettingAccess      = "access"
	// SettingAsyncRetries is how many times a failed asynchronous
	// invocation is tried again: 0 to MaxAsyncRetries.
	SettingAsyncRetries = "async-retries"
	// SettingAsyncOnFailure names the function (of the same owner) that
	// gets the event of each asynchronous invocation that failed; "" or
	// "none": no such function.
	SettingAsyncOnFailure = "async-on-failure"
)

// MaxAsyncRetries is the most, and the default, of a function's async
// retries: two, as Lambda's MaximumRetryAttempts. Limits.AsyncRetries
// stores it as unset, as it stores every default.
const MaxAsyncRetries = 2

// AsyncRetries is how many times l's failed asynchronous invocations
// are tried again.
func AsyncRetries(l store.Limits) int { return l.AsyncRetries.Or(MaxAsyncRetries) }

// Access values: who may call a function. Limits.Access stores public as
// "", as it stores every default.
const (
	AccessPublic  = "public"
	AccessPrivate = "private"
)

// Access is how l's access is shown: public or private.
func Access(l store.Limits) string {
	if l.Access == AccessPrivate {
		return AccessPrivate
	}
	return AccessPublic
}

// Settings lists the setting names ParseLimits understands.
var Settings = []string{SettingMemory, SettingTimeout, SettingNetwork, SettingMin, SettingMax, SettingConcurrency, SettingCPU, SettingTarget, SettingGrace, SettingIsolation, SettingCron, SettingAccess, SettingAsyncRetries, SettingAsyncOnFailure}

// Bounds are the server's limits on what a function may ask for.
type Bounds struct {
	MaxMemoryMiB   int
	MaxTimeout     time.Duration
	MaxScale       int
	MaxConcurrency int
	MaxCPUMilli    int
	// MaxMemoryPerOwnerMiB is the most the memory limits of one owner's
	// instances may add up to (spry serve --max-memory-per-user); 0: no
	// bound.
	MaxMemoryPerOwnerMiB int
	// MaxInstancesPerOwner is how many instances one owner's functions
	// may run together (spry serve --max-instances-per-user); 0: no bound.
	MaxInstancesPerOwner int
}

// ParseLimits reads per-function settings given as strings ("memory":
// "128Mi", "timeout": "2s", "network": "none", "min": "1", ...). Settings
// not given stay zero (the server's default). Unknown names are errors.
func ParseLimits(settings map[string]string, b Bounds) (store.Limits, error) {
	return ApplySettings(store.Limits{}, settings, b)
}

// ApplySettings returns l with the settings given replaced, as ParseLimits
// reads them. A setting given as its zero value ("min": "0", "isolation":
// "standard") replaces the one in l too: that is how a function goes back
// to scaling to zero or to the standard sandbox.
func ApplySettings(l store.Limits, settings map[string]string, b Bounds) (store.Limits, error) {
	for k, v := range settings {
		v = strings.TrimSpace(v)
		switch k {
		case SettingMemory:
			mib, err := ParseMemory(v)
			if err != nil {
				return l, err
			}
			if mib < 32 || mib > b.MaxMemoryMiB {
				return l, errdefs.Invalid("memory %s is out of range: 32Mi to %dMi", v, b.MaxMemoryMiB)
			}
			l.MemoryMiB = mib
		case SettingTimeout:
			d, err := time.ParseDuration(v)
			if err != nil {
				return l, errdefs.Invalid("timeout %q: want a duration like 2s or 500ms", v)
			}
			if d < 10*time.Millisecond || d > b.MaxTimeout {
				return l, errdefs.Invalid("timeout %s is out of range: 10ms to %s", v, b.MaxTimeout)
			}
			l.TimeoutMs = int(d.Milliseconds())
		case SettingCPU:
			f, err := strconv.ParseFloat(strings.TrimSuffix(v, "m"), 64)
			if strings.HasSuffix(v, "m") {
				f /= 1000
			}
			if err != nil || math.IsNaN(f) || f < 0.05 || f*1000 > float64(b.MaxCPUMilli) {
				return l, errdefs.Invalid("cpu %q: want CPUs between 0.05 and %g, like 0.5 or 500m", v, float64(b.MaxCPUMilli)/1000)
			}
			l.CPUMilli = int(math.Round(f * 1000))
		case SettingTarget:
			f, err := strconv.ParseFloat(strings.TrimSuffix(v, "%"), 64)
			if err == nil && f > 0 && f <= 1 && !strings.HasSuffix(v, "%") {
				f *= 100 // 0.7 means 70%
			}
			if err != nil || math.IsNaN(f) || f < 10 || f > 100 {
				return l, errdefs.Invalid("target-utilization %q: want 10%% to 100%%, like 70 or 0.7", v)
			}
			l.TargetPercent = int(math.Round(f))
		case SettingGrace:
			d, err := time.ParseDuration(v)
			if err != nil || d < time.Second || d > 24*time.Hour {
				return l, errdefs.Invalid("scale-to-zero-after %q: want a duration from 1s to 24h", v)
			}
			l.ScaleToZeroMs = d.Milliseconds()
		case SettingIsolation:
			switch v {
			case "standard":
				l.Isolation = ""
			case "gvisor":
				l.Isolation = v
			default:
				return l, errdefs.Invalid("isolation %q: want standard or gvisor", v)
			}
		case SettingAccess:
			switch v {
			case AccessPublic:
				l.Access = ""
			case AccessPrivate:
				l.Access = v
			default:
				return l, errdefs.Invalid("access %q: want public or private", v)
			}
		case SettingAsyncRetries:
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 || n > MaxAsyncRetries {
				return l, errdefs.Invalid("async-retries %q: want 0, 1 or %d", v, MaxAsyncRetries)
			}
			l.AsyncRetries = store.SomeInt(n)
			if n == MaxAsyncRetries {
				l.AsyncRetries = store.OptionalInt{}
			}
		case SettingAsyncOnFailure:
			// The function need not exist yet: it is looked up when an
			// invocation fails.
			if v == "none" {
				v = ""
			}
			if v != "" {
				if err := names.Function(v); err != nil {
					return l, errdefs.Invalid("async-on-failure: %v", err)
				}
			}
			l.AsyncOnFailure = v
		case SettingCron:
			// Stored as the parser reads it, one space between fields:
			// a value from a file or YAML kept its newline, which the
			// scheduled event's cron field then carried.
			v = strings.Join(strings.Fields(v), " ")
			// "" or "none" removes the schedule.
			if v == "none" {
				v = ""
			}
			if v != "" {
				if _, err := schedule.Parse(v); err != nil {
					return l, err
				}
			}
			l.Cron = v
		case SettingNetwork:
			if v != "none" && v != "egress" {
				return l, errdefs.Invalid("network %q: want none or egress", v)
			}
			l.Network = v
		case SettingMin, SettingMax, SettingConcurrency:
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				return l, errdefs.Invalid("%s %q: want a non-negative integer", k, v)
			}
			switch k {
			case SettingMin:
				if n > b.MaxScale {
					return l, errdefs.Invalid("min %d is over the server's limit of %d instances", n, b.MaxScale)
				}
				l.MinScale = n
			case SettingMax:
				if n < 1 || n > b.MaxScale {
					return l, errdefs.Invalid("max %d is out of range: 1 to %d", n, b.MaxScale)
				}
				l.MaxScale = n
			case SettingConcurrency:
				if n < 1 || n > b.MaxConcurrency {
					return l, errdefs.Invalid("concurrency %d is out of range: 1 to %d", n, b.MaxConcurrency)
				}
				l.Concurrency = n
			}
		default:
			return l, errdefs.Invalid("unknown setting %q (known: %s)", k, strings.Join(Settings, ", "))
		}
	}
	if l.MaxScale > 0 && l.MinScale > l.MaxScale {
		return l, errdefs.Invalid("min %d is above max %d", l.MinScale, l.MaxScale)
	}
	if err := CheckIsolation(l); err != nil {
		return l, err
	}
	return l, nil
}

// checkOnFailure refuses limits l of the function name whose failed
// asynchronous invocations would go to name itself: a loop.
func checkOnFailure(l store.Limits, name string) error {
	if l.AsyncOnFailure != "" && l.AsyncOnFailure == name {
		return errdefs.Invalid("async-on-failure %q is the function itself: name another function, or none", name)
	}
	return nil
}

// checkOwnerBudgets refuses limits l (memory 0: defaultMiB) whose
// instances the owner's budgets could never hold: its min more than the
// instances one owner may run, or one instance alone, or its min
// together, past the memory budget. Starts past the budgets are refused
// at run time anyway; a deploy that could never run as asked is refused
// now.
func checkOwnerBudgets(l store.Limits, defaultMiB int, b Bounds) error {
	if n := b.MaxInstancesPerOwner; n > 0 && l.MinScale > n {
		return errdefs.Invalid("min %d is over the %d instances one user's functions may run together (spry serve --max-instances-per-user)", l.MinScale, n)
	}
	budget := b.MaxMemoryPerOwnerMiB
	if budget <= 0 {
		return nil
	}
	mem := l.MemoryMiB
	if mem == 0 {
		mem = defaultMiB
	}
	switch {
	case mem > budget:
		return errdefs.Invalid("memory %dMi is over one user's budget of %dMi for all their instances together (spry serve --max-memory-per-user)", mem, budget)
	case l.MinScale*mem > budget:
		return errdefs.Invalid("min %d instances of %dMi (%dMi) is over one user's budget of %dMi for all their instances together (spry serve --max-memory-per-user): lower min or memory", l.MinScale, mem, l.MinScale*mem, budget)
	}
	return nil
}

// ParseMemory parses a memory size into MiB: "128Mi", "1Gi", "512M",
// "1G", "262144Ki", or a bare number of MiB. Sizes round up to a MiB.
func ParseMemory(s string) (int, error) {
	units := []struct {
		suffix string
		bytes  float64
	}{
		{"Ki", 1 << 10}, {"Mi", 1 << 20}, {"Gi", 1 << 30},
		{"K", 1e3}, {"M", 1e6}, {"G", 1e9},
	}
	num, mult := s, float64(1<<20)
	for _, u := range units {
		if strings.HasSuffix(s, u.suffix) {
			num, mult = strings.TrimSuffix(s, u.suffix), u.bytes
			break
		}
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil || f <= 0 || math.IsInf(f, 0) || math.IsNaN(f) || f*mult > 1<<50 {
		return 0, errdefs.Invalid("memory %q: want a size like 128Mi or 1Gi", s)
	}
	return int(math.Ceil(f * mult / (1 << 20))), nil
}

// CheckIsolation refuses settings gVisor isolation cannot honour.
func CheckIsolation(l store.Limits) error {
	if l.Isolation == "gvisor" && l.Network == "egress" {
		return errdefs.Invalid("gvisor isolation runs without a network: use --network none (the default with gvisor)")
	}
	return nil
}
