package cli

import (
	"context"
	"log/slog"
	"maps"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/spry-run/spry/internal/dev"
	"github.com/spry-run/spry/internal/errdefs"
	"github.com/spry-run/spry/internal/functions"
	"github.com/spry-run/spry/internal/names"
)

func newDevCmd(env Env) *cobra.Command {
	var cfg dev.Config
	var port int
	var host, memory, logLevel string
	var envs, envFiles []string
	cmd := &cobra.Command{
		Use:   "dev FILE_OR_DIR",
		Short: "Run one function locally, in the platform's runtime and sandbox, reloading it on save",
		Long: `Run one function locally, in the platform's runtime and sandbox, reloading it on save.

FILE is built as spry deploy FILE builds it: one module. A directory is a
project, built as spry deploy DIR builds it: from --entry, its package.json,
or index.ts/index.js/main.ts/mod.ts, with its relative imports, deno.json and
package.json dependencies (installed with npm); a save of any of its files
(node_modules and .git aside) reloads it.

The function answers at the root of the port: http://127.0.0.1:8787/a/b?q=1
reaches it as /a/b?q=1. Saving rebuilds it and loads the new
version before it serves; a build error, or a module that does not load
(its top level throws, exits, or has not ended after 30s), is printed and
the previous version keeps serving. A version still loading after 2s is
said to be, goes live once it loads, and is dropped by the next save.
The function's output and one line per request are printed here. Needs no server, store or token, but
needs root, as spry serve does.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg.File = args[0]
			if cfg.Name == "" {
				name, err := defaultDevName(cfg.File)
				if err != nil {
					return err
				}
				cfg.Name = name
			} else if err := names.Function(cfg.Name); err != nil {
				return err
			}
			if cfg.Runtime != "deno" && cfg.Runtime != "node" {
				return errdefs.Invalid("--runtime must be deno or node")
			}
			if cfg.Network != "egress" && cfg.Network != "none" {
				return errdefs.Invalid("--network must be egress or none")
			}
			mib, err := functions.ParseMemory(memory)
			if err != nil {
				return err
			}
			if mib < 32 {
				return errdefs.Invalid("--memory must be at least 32Mi")
			}
			cfg.MemoryMiB = mib
			if cfg.Timeout < 10*time.Millisecond {
				return errdefs.Invalid("--timeout must be at least 10ms")
			}
			if port < 0 || port > 65535 {
				return errdefs.Invalid("--port must be between 0 and 65535")
			}
			if cfg.UIDBase != 0 && cfg.UIDBase < 1000 {
				return errdefs.Invalid("--uid-base must be at least 1000")
			}
			if cfg.Env, err = devEnv(envs, envFiles); err != nil {
				return err
			}
			var level slog.Level
			if err := level.UnmarshalText([]byte(logLevel)); err != nil {
				return errdefs.Invalid("--log-level: %v", err)
			}
			if cfg.Listen, err = devListen(host, port, cmd.Flags().Changed("port")); err != nil {
				return err
			}
			if cfg.NPMRegistry == "" {
				cfg.NPMRegistry = os.Getenv("npm_config_registry")
			}
			cfg.Out = env.Stdout
			cfg.Logger = slog.New(slog.NewTextHandler(env.Stderr, &slog.HandlerOptions{Level: level}))
			ctx, cancel := context.WithCancel(cmd.Context())
			defer cancel()
			hurry := make(chan struct{})
			cfg.Hurry = hurry
			sigs := make(chan os.Signal, 1)
			signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
			defer signal.Stop(sigs)
			done := make(chan struct{})
			defer close(done)
			go func() {
				// The first Ctrl-C stops gracefully; the second cuts the
				// requests in flight but still removes what the session
				// made, so it is not the default exit (which would leave
				// its directories and cgroups behind). Later ones are
				// ignored: the removal takes well under a second, and
				// mashing Ctrl-C must not undo it.
				for n := 1; ; n++ {
					select {
					case <-sigs:
					case <-done:
						return
					}
					switch n {
					case 1:
						cancel()
					case 2:
						close(hurry)
					}
				}
			}()
			return dev.Run(ctx, cfg)
		},
	}
	f := cmd.Flags()
	f.IntVar(&port, "port", 8787, "port to serve the function on (0 picks a free one)")
	f.StringVar(&host, "listen", "127.0.0.1", "address to serve the function on (or ADDRESS:PORT)")
	f.StringVar(&cfg.Runtime, "runtime", "deno", "runtime: deno or node")
	f.StringVar(&cfg.Entry, "entry", "", "a project directory's entry file, relative to it")
	f.StringVar(&cfg.NPMRegistry, "npm-registry", "", "npm registry for a project's dependencies (default: $npm_config_registry, else npm's public registry)")
	f.StringArrayVarP(&envs, "env", "e", nil, "environment variable KEY=VALUE, available as ctx.env (repeatable)")
	f.StringArrayVar(&envFiles, "env-file", nil, "read ctx.env variables from a file of KEY=VALUE lines (# comments, optional quotes), read at the start; a later file, and --env, win (repeatable)")
	f.StringVar(&memory, "memory", "128Mi", "memory limit of each instance, e.g. 128Mi or 1Gi")
	f.DurationVar(&cfg.Timeout, "timeout", 60*time.Second, "longest an invocation may run, cold start included (as spry serve's default)")
	f.StringVar(&cfg.Network, "network", "egress", "network access: none, or egress (public internet only)")
	f.StringVar(&cfg.Cron, "cron", "", "run the default export's scheduled(event, ctx) on this schedule, as a deployed function's --cron (e.g. \"*/5 * * * *\")")
	f.BoolVar(&cfg.TestScheduled, "test-scheduled", false, "serve /__scheduled, which runs the scheduled handler once now (its event's cron from ?cron=, or --cron)")
	f.StringVar(&cfg.Name, "name", "", "function name, as ctx.name (default: the file name without its extension; for index.* or a directory, the directory's name)")
	f.IntVar(&cfg.UIDBase, "uid-base", 0, "first host uid for instance sandboxes (default: 2100000 + 100 × the port)")
	f.StringVar(&cfg.DenoBinary, "deno", "", "`PATH` of the deno binary (default: the pinned one make build installs)")
	f.StringVar(&cfg.NodeBinary, "node", "", "`PATH` of the node binary, 22.13 or newer (default: the pinned one make build installs)")
	f.StringVar(&logLevel, "log-level", "warn", "level of the platform's own log lines (on stderr): debug, info, warn, error")
	return cmd
}

// devEnv is ctx.env from --env-file files (a later one wins over an
// earlier) and --env pairs (which win over all), checked as a deploy's.
func devEnv(envs, files []string) (map[string]string, error) {
	env := map[string]string{}
	for _, f := range files {
		fileEnv, err := readEnvFile(f)
		if err != nil {
			return nil, err
		}
		maps.Copy(env, fileEnv)
	}
	flagEnv, err := parseEnv("--env", envs)
	if err != nil {
		return nil, err
	}
	maps.Copy(env, flagEnv)
	// As a deploy's: what a server refuses must not work here.
	if err := functions.ValidateEnv(env); err != nil {
		return nil, err
	}
	return env, nil
}

// readEnvFile reads a dotenv file, as `deno --env-file` and `node
// --env-file` take it: KEY=VALUE lines, blank lines and # comments
// skipped, an optional "export " in front, and a value in matching
// single or double quotes taken without them. No escapes, no ${VAR}. A
// secret in a file, unlike one in --env, is not on the command line for
// ps and sudo's log to show.
func readEnvFile(path string) (map[string]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, errdefs.Invalid("--env-file: %v", err)
	}
	env := map[string]string{}
	for i, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(strings.TrimSuffix(line, "\r"))
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(strings.TrimPrefix(line, "export "), "=")
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if !ok || k == "" {
			return nil, errdefs.Invalid("--env-file %s:%d: want KEY=VALUE", path, i+1)
		}
		if len(v) >= 2 && (v[0] == '"' || v[0] == '\'') && v[len(v)-1] == v[0] {
			v = v[1 : len(v)-1]
		}
		env[k] = v
	}
	return env, nil
}

// devListen is the address spry dev listens on: --listen HOST with
// --port, or --listen HOST:PORT as spry serve takes it. An IPv6 HOST may
// come bracketed ([::1]) or not.
func devListen(host string, port int, portSet bool) (string, error) {
	if _, _, err := net.SplitHostPort(host); err == nil {
		if portSet {
			return "", errdefs.Invalid("--listen %s already has a port; drop --port", host)
		}
		return host, nil
	}
	if strings.HasPrefix(host, "[") && strings.HasSuffix(host, "]") {
		host = host[1 : len(host)-1]
	}
	return net.JoinHostPort(host, strconv.Itoa(port)), nil
}

// defaultDevName is the function's name when --name is not given: the
// file's name without its extension, or for index.ts and the like, or a
// directory, the directory's name, as a project made by `spry init NAME`
// has it.
func defaultDevName(file string) (string, error) {
	base := filepath.Base(file)
	name := strings.TrimSuffix(base, filepath.Ext(base))
	if fi, err := os.Stat(file); err == nil && fi.IsDir() {
		abs, err := filepath.Abs(file)
		if err != nil {
			return "", err
		}
		name = filepath.Base(abs)
	} else if name == "index" {
		if abs, err := filepath.Abs(file); err == nil {
			name = filepath.Base(filepath.Dir(abs))
		}
	}
	if err := names.Function(name); err != nil {
		return "", errdefs.Invalid("%v; pass --name", err)
	}
	return name, nil
}
