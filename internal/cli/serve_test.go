package cli

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spry-run/spry/internal/kv"
	"github.com/spry-run/spry/internal/server"
)

// validate refuses what the server could not run with: a --cpu quota the
// kernel refuses (its least is 1 ms per 100 ms) or cannot be one (NaN,
// Inf), and a --concurrency over what instances get descriptors for.
func TestValidateServeFlags(t *testing.T) {
	base := server.Config{Listen: "127.0.0.1:8080",
		ScaleToZeroAfter: 5 * time.Minute, IdleCPUAfter: time.Second, AutoscaleWindow: time.Minute,
		Timeout: time.Minute, WebSocketIdleTimeout: 2 * time.Minute, MaxTimeout: 15 * time.Minute, MaxMemoryMiB: 2048, DefaultMemoryMiB: 128,
		Concurrency: 50, MaxScale: 100, DefaultNetwork: "egress", MaxCodeBytes: 5 << 20,
		MaxBundleBytes: 50 << 20, MaxBodyBytes: 100 << 20, CPU: 1, QueueSize: 1000, PoolSize: 4,
		UIDBase: 2000000, ShutdownTimeout: 30 * time.Second, MaxLogBytes: 2 << 30,
		NPMMemoryMiB: 1024, NPMDiskMiB: 2048, NPMCacheBytes: 1 << 30,
		MaxDeploys: 4, MaxDeploysWaiting: 32, DeployBodyTimeout: time.Minute,
		AsyncWorkers: 16, AsyncWorkersPerUser: 4, AsyncMaxPerUser: 10000, AsyncMaxBytesPerUser: 640 << 20, AsyncRetryDelay: 30 * time.Second, AsyncRetention: 24 * time.Hour,
	}
	for _, tt := range []struct {
		name string
		set  func(*server.Config)
		flag string // "" if valid
	}{
		{"defaults", func(*server.Config) {}, ""},
		{"one async worker", func(c *server.Config) { c.AsyncWorkers, c.AsyncWorkersPerUser = 1, 1 }, ""},
		{"no async workers", func(c *server.Config) { c.AsyncWorkers = 0 }, "--async-workers"},
		{"more per user than in all", func(c *server.Config) { c.AsyncWorkersPerUser = 17 }, "--async-workers-per-user"},
		{"no async bound", func(c *server.Config) { c.AsyncMaxPerUser = 0 }, ""},
		{"negative async bound", func(c *server.Config) { c.AsyncMaxPerUser = -1 }, "--async-max-per-user"},
		{"no async byte bound", func(c *server.Config) { c.AsyncMaxBytesPerUser = 0 }, ""},
		{"least async byte bound", func(c *server.Config) { c.AsyncMaxBytesPerUser = 1 << 20 }, ""},
		{"async byte bound under 1 MiB", func(c *server.Config) { c.AsyncMaxBytesPerUser = 1<<20 - 1 }, "--async-max-bytes-per-user"},
		{"negative async byte bound", func(c *server.Config) { c.AsyncMaxBytesPerUser = -1 }, "--async-max-bytes-per-user"},
		{"short retry delay", func(c *server.Config) { c.AsyncRetryDelay = 10 * time.Millisecond }, ""},
		{"retry delay too short", func(c *server.Config) { c.AsyncRetryDelay = time.Millisecond }, "--async-retry-delay"},
		{"retention too short", func(c *server.Config) { c.AsyncRetention = time.Second }, "--async-retention"},
		{"no cpu quota", func(c *server.Config) { c.CPU = 0 }, ""},
		{"least cpu", func(c *server.Config) { c.CPU = 0.05 }, ""},
		{"many cpus", func(c *server.Config) { c.CPU = 64 }, ""},
		{"cpu under a quota's least", func(c *server.Config) { c.CPU = 0.001 }, "--cpu"},
		{"cpu that rounds to no quota", func(c *server.Config) { c.CPU = 1e-9 }, "--cpu"},
		{"cpu NaN", func(c *server.Config) { c.CPU = math.NaN() }, "--cpu"},
		{"cpu Inf", func(c *server.Config) { c.CPU = math.Inf(1) }, "--cpu"},
		{"negative cpu", func(c *server.Config) { c.CPU = -1 }, "--cpu"},
		{"highest concurrency", func(c *server.Config) { c.Concurrency = 10000 }, ""},
		{"concurrency over a function's bound", func(c *server.Config) { c.Concurrency = 10001 }, "--concurrency"},
		{"longest autoscale window", func(c *server.Config) { c.AutoscaleWindow = time.Hour }, ""},
		{"autoscale window over an hour", func(c *server.Config) { c.AutoscaleWindow = 25 * time.Hour }, "--autoscale-window"},
		{"least log size", func(c *server.Config) { c.MaxLogBytes = 1 << 20 }, ""},
		{"log size under 1 MiB", func(c *server.Config) { c.MaxLogBytes = 1<<20 - 1 }, "--max-log-size"},
		{"least npm cache", func(c *server.Config) { c.NPMCacheBytes = 1 << 20 }, ""},
		{"npm cache under 1 MiB", func(c *server.Config) { c.NPMCacheBytes = 1<<20 - 1 }, "--npm-cache-size"},
		{"least npm memory", func(c *server.Config) { c.NPMMemoryMiB = 64 }, ""},
		{"npm memory under 64 MiB", func(c *server.Config) { c.NPMMemoryMiB = 63 }, "--npm-memory"},
		{"least npm disk", func(c *server.Config) { c.NPMDiskMiB = 64 }, ""},
		{"npm disk under 64 MiB", func(c *server.Config) { c.NPMDiskMiB = 63 }, "--npm-disk"},
		{"shortest WebSocket idle time", func(c *server.Config) { c.WebSocketIdleTimeout = time.Nanosecond }, ""},
		{"no WebSocket idle time", func(c *server.Config) { c.WebSocketIdleTimeout = 0 }, "--websocket-idle-timeout"},
		{"no shutdown wait", func(c *server.Config) { c.ShutdownTimeout = 0 }, ""},
		{"negative shutdown wait", func(c *server.Config) { c.ShutdownTimeout = -time.Second }, "--shutdown-timeout"},
		{"debug on loopback", func(c *server.Config) { c.DebugListen = "127.0.0.1:6060" }, ""},
		{"debug on IPv6 loopback", func(c *server.Config) { c.DebugListen = "[::1]:6060" }, ""},
		{"debug on localhost", func(c *server.Config) { c.DebugListen = "localhost:6060" }, ""},
		{"debug on every address", func(c *server.Config) { c.DebugListen = ":6060" }, "--debug-listen"},
		{"debug on a public address", func(c *server.Config) { c.DebugListen = "0.0.0.0:6060" }, "--debug-listen"},
		{"function domain", func(c *server.Config) { c.FunctionDomain = "fn.example.com" }, ""},
		{"function domain localhost", func(c *server.Config) { c.FunctionDomain = "localhost" }, ""},
		{"public URL at the function domain", func(c *server.Config) {
			c.FunctionDomain, c.PublicURL = "fn.example.com", "https://fn.example.com"
		}, ""},
		{"public URL outside the function domain", func(c *server.Config) {
			c.FunctionDomain, c.PublicURL = "fn.example.com", "https://spry.example.com"
		}, ""},
		{"public URL below the function domain", func(c *server.Config) {
			c.FunctionDomain, c.PublicURL = "example.com", "https://Spry.Example.com:8443/"
		}, "--public-url"},
		{"function domain with a port", func(c *server.Config) { c.FunctionDomain = "fn.example.com:8080" }, "--function-domain"},
		{"function domain a URL", func(c *server.Config) { c.FunctionDomain = "https://fn.example.com" }, "--function-domain"},
		{"debug without a port", func(c *server.Config) { c.DebugListen = "127.0.0.1" }, "--debug-listen"},
		{"listen on every address", func(c *server.Config) { c.Listen = ":8080" }, ""},
		{"listen on IPv6", func(c *server.Config) { c.Listen = "[::1]:0" }, ""},
		{"listen on nonsense", func(c *server.Config) { c.Listen = "nonsense" }, "--listen"},
		{"listen without a port", func(c *server.Config) { c.Listen = "127.0.0.1" }, "--listen"},
		{"listen on a port past 65535", func(c *server.Config) { c.Listen = "127.0.0.1:65536" }, "--listen"},
		{"least all-pids", func(c *server.Config) { c.AllPids = 1024 }, ""},
		{"all-pids under 1024", func(c *server.Config) { c.AllPids = 1023 }, "--all-pids"},
		{"least all-memory", func(c *server.Config) { c.AllMemory = 256 << 20 }, ""},
		{"all-memory under 256 MiB", func(c *server.Config) { c.AllMemory = 256<<20 - 1 }, "--all-memory"},
		{"least kv bound", func(c *server.Config) { c.KVMaxBytes = kv.MaxKeyBytes + kv.MaxValueBytes + kv.EntryOverhead }, ""},
		{"kv bound under one entry", func(c *server.Config) { c.KVMaxBytes = kv.MaxKeyBytes + kv.MaxValueBytes + kv.EntryOverhead - 1 }, "--kv-max-bytes"},
		{"no user memory bound", func(c *server.Config) { c.MaxMemoryPerUserMiB = 0 }, ""},
		{"user memory for one default instance", func(c *server.Config) { c.MaxMemoryPerUserMiB = 128 }, ""},
		{"user memory under one default instance", func(c *server.Config) { c.MaxMemoryPerUserMiB = 127 }, "--max-memory-per-user"},
		{"no kv bound per user", func(c *server.Config) { c.KVMaxBytesPerUser = 0 }, ""},
		{"least kv bound per user", func(c *server.Config) { c.KVMaxBytesPerUser = kv.MaxKeyBytes + kv.MaxValueBytes + kv.EntryOverhead }, ""},
		{"kv bound per user under one entry", func(c *server.Config) { c.KVMaxBytesPerUser = kv.MaxKeyBytes + kv.MaxValueBytes + kv.EntryOverhead - 1 }, "--kv-max-bytes-per-user"},
		{"negative kv bound per user", func(c *server.Config) { c.KVMaxBytesPerUser = -1 }, "--kv-max-bytes-per-user"},
		{"memory reserve", func(c *server.Config) { c.MemoryReserve = uint64(defaultMemoryReserve()) << 20 }, ""},
		{"memory reserve all but a byte", func(c *server.Config) { c.MemoryReserve = hostMemory() - 1 }, ""},
		{"memory reserve all of it", func(c *server.Config) { c.MemoryReserve = hostMemory() }, "--memory-reserve"},
		{"one deploy at a time", func(c *server.Config) { c.MaxDeploys = 1 }, ""},
		{"no deploys", func(c *server.Config) { c.MaxDeploys = 0 }, "--max-deploys"},
		{"negative deploys", func(c *server.Config) { c.MaxDeploys = -1 }, "--max-deploys"},
		{"one deploy waiting", func(c *server.Config) { c.MaxDeploysWaiting = 1 }, ""},
		{"no deploys waiting", func(c *server.Config) { c.MaxDeploysWaiting = 0 }, "--max-deploys-waiting"},
		{"shortest deploy body time", func(c *server.Config) { c.DeployBodyTimeout = time.Second }, ""},
		{"deploy body time under a second", func(c *server.Config) { c.DeployBodyTimeout = time.Second - 1 }, "--deploy-body-timeout"},
		{"no deploy body time", func(c *server.Config) { c.DeployBodyTimeout = 0 }, "--deploy-body-timeout"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := base
			tt.set(&cfg)
			err := validate(cfg)
			switch {
			case tt.flag == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tt.flag != "" && err == nil:
				t.Fatalf("accepted; want %s refused", tt.flag)
			case tt.flag != "" && !strings.Contains(err.Error(), tt.flag):
				t.Fatalf("error %q does not name %s", err, tt.flag)
			}
		})
	}
}

// --log-format is text or json; anything else (a typo of json, say) is
// refused rather than taken for text, which a log shipper would not parse.
func TestServeLogFormat(t *testing.T) {
	for _, tt := range []struct {
		level, format string
		ok            bool
	}{
		{"info", "text", true},
		{"debug", "json", true},
		{"warn", "JSON", true},
		{"info", "jsno", false},
		{"info", "", false},
		{"loud", "text", false},
	} {
		var b strings.Builder
		log, err := newLogger(&b, tt.level, tt.format)
		if (err == nil) != tt.ok {
			t.Errorf("--log-level %q --log-format %q: error %v, want ok %v", tt.level, tt.format, err, tt.ok)
			continue
		}
		if err != nil {
			continue
		}
		log.Error("x", "timeout", 1500*time.Millisecond, "request_id", "abc")
		if isJSON := strings.HasPrefix(b.String(), "{"); isJSON != strings.EqualFold(tt.format, "json") {
			t.Errorf("--log-format %q wrote %q", tt.format, b.String())
		}
		// A duration says its unit in both formats, as "1.5s"; JSON's
		// one object a line has the keys time, level and msg.
		if !strings.Contains(b.String(), "1.5s") {
			t.Errorf("--log-format %q wrote a duration without its unit: %q", tt.format, b.String())
		}
		if strings.EqualFold(tt.format, "json") {
			var line map[string]any
			if err := json.Unmarshal([]byte(b.String()), &line); err != nil || strings.Count(b.String(), "\n") != 1 {
				t.Errorf("not one JSON object a line: %q (%v)", b.String(), err)
			}
			for _, k := range []string{"time", "level", "msg", "request_id"} {
				if _, ok := line[k]; !ok {
					t.Errorf("JSON line without %q: %q", k, b.String())
				}
			}
		}
	}
}

// The deploy admission flags (and the address lists) are checked at start, on the command line
// or in the environment: a bad value exits 2 before the data directory
// is made.
func TestServeDeployFlags(t *testing.T) {
	for _, tt := range []struct {
		name    string
		args    []string
		environ []string
	}{
		{"user memory not a size", []string{"--max-memory-per-user", "lots"}, nil},
		{"user memory under --memory", []string{"--max-memory-per-user", "64Mi"}, nil},
		{"user memory in bytes in the environment", nil, []string{"SPRY_MAX_MEMORY_PER_USER=512B"}},
		{"no deploys", []string{"--max-deploys", "0"}, nil},
		{"deploys not a number", []string{"--max-deploys", "four"}, nil},
		{"no deploys waiting", []string{"--max-deploys-waiting", "0"}, nil},
		{"negative deploys waiting in the environment", nil, []string{"SPRY_MAX_DEPLOYS_WAITING=-1"}},
		{"deploy body time too short", []string{"--deploy-body-timeout", "500ms"}, nil},
		{"deploy body time not a duration", nil, []string{"SPRY_DEPLOY_BODY_TIMEOUT=60"}},
		{"TLS certificate without its key", []string{"--tls-cert", "cert.pem"}, nil},
		{"TLS key without its certificate", nil, []string{"SPRY_TLS_KEY=key.pem"}},
		{"TLS certificate that is not there", []string{"--tls-cert", "/nonexistent/cert.pem", "--tls-key", "/nonexistent/key.pem"}, nil},
		{"trusted proxy by name", []string{"--trusted-proxies", "proxy.example"}, nil},
		{"trusted proxy with a zone", []string{"--trusted-proxies", "127.0.0.1,fe80::1%eth0"}, nil},
		{"egress range not a range", []string{"--egress-allow", "10.0.0.0/33"}, nil},
		{"async bytes not a size", []string{"--async-max-bytes-per-user", "lots"}, nil},
		{"async bytes under 1 MiB", []string{"--async-max-bytes-per-user", "1000"}, nil},
		{"async bytes negative in the environment", nil, []string{"SPRY_ASYNC_MAX_BYTES_PER_USER=-1"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			data := filepath.Join(t.TempDir(), "data")
			var stderr strings.Builder
			code := Main(context.Background(), Env{
				Args:    append([]string{"serve", "--data", data, "--listen", "127.0.0.1:0"}, tt.args...),
				Environ: tt.environ,
				Stdin:   strings.NewReader(""),
				Stdout:  io.Discard,
				Stderr:  &stderr,
			})
			if code != 2 {
				t.Errorf("exit %d (%s), want 2", code, stderr.String())
			}
			if _, err := os.Stat(data); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("the data directory: %v, want none made", err)
			}
		})
	}
}

// --async-max-bytes-per-user takes bytes, as --kv-max-bytes-per-user
// does, or a size as --max-memory-per-user does; its default reads back
// as a size.
func TestByteSizeFlag(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want int64
		ok   bool
	}{
		{"0", 0, true},
		{"1048576", 1 << 20, true},
		{" 671088640 ", 640 << 20, true},
		{"640Mi", 640 << 20, true},
		{"640MiB", 640 << 20, true},
		{"1Gi", 1 << 30, true},
		{"1GB", 954 << 20, true},
		{"1.5", 0, false}, // not bytes, and no unit to say otherwise
		{"512B", 0, false},
		{"-1", 0, false},
		{"lots", 0, false},
		{"", 0, false},
	} {
		var b byteSize
		err := b.Set(tt.in)
		if (err == nil) != tt.ok || tt.ok && int64(b) != tt.want {
			t.Errorf("Set(%q) = %d, %v; want %d, ok %v", tt.in, b, err, tt.want, tt.ok)
		}
	}
	for n, want := range map[byteSize]string{640 << 20: "640Mi", 1<<20 + 1: "1048577", 0: "0"} {
		if got := n.String(); got != want {
			t.Errorf("%d.String() = %q, want %q", int64(n), got, want)
		}
		var back byteSize
		if err := back.Set(want); err != nil || back != n {
			t.Errorf("Set(%q) = %d, %v; want %d", want, back, err, n)
		}
	}
}

// --max-memory-per-user takes MiB or a size as functions' memory settings
// do, with or without a trailing B.
func TestMebibytesFlag(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want int
		ok   bool
	}{
		{"0", 0, true},
		{"4096", 4096, true},
		{"8Gi", 8192, true},
		{"8GiB", 8192, true},
		{" 512Mi ", 512, true},
		{"512MiB", 512, true},
		{"1G", 954, true},
		{"1GB", 954, true},
		{"512B", 0, false},
		{"-1", 0, false},
		{"lots", 0, false},
		{"", 0, false},
	} {
		var m mebibytes
		err := m.Set(tt.in)
		if (err == nil) != tt.ok || tt.ok && int(m) != tt.want {
			t.Errorf("Set(%q) = %d, %v; want %d, ok %v", tt.in, m, err, tt.want, tt.ok)
		}
	}
}
