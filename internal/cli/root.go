// Package cli is the spry command tree: `spry serve` runs the platform,
// the other commands talk to its API. The tree is built by a function, with
// the environment and streams passed in, so tests can run commands in
// process.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/spry-run/spry/internal/client"
	"github.com/spry-run/spry/internal/errdefs"
)

// Env is what a command may read and write of the outside world.
type Env struct {
	Args    []string
	Environ []string
	Stdin   io.Reader
	Stdout  io.Writer
	Stderr  io.Writer
	// Sleep waits d or until ctx ends, before a request the server
	// refused as busy is sent again; nil waits for real. Tests set it.
	Sleep func(ctx context.Context, d time.Duration) error
}

// Main runs the CLI and returns the process exit code.
func Main(ctx context.Context, env Env) int {
	root, conn := newRoot(env)
	root.SetArgs(env.Args)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	var exit *exitError
	if errors.As(err, &exit) {
		return exit.code
	}
	var ce *client.Error
	if errors.As(err, &ce) && ce.Status == http.StatusUnauthorized && conn.tokenFrom != "" {
		// Which token the server refused: a stale SPRY_TOKEN wins over
		// a fresh spry login, and the message alone did not say so.
		fmt.Fprintf(env.Stderr, "error: %v (the token from %s)\n", err, conn.tokenFrom)
		return errdefs.ExitCode(err)
	}
	fmt.Fprintln(env.Stderr, "error:", err)
	if errors.As(err, &ce) || errdefs.Code(err) != "internal" {
		return errdefs.ExitCode(err)
	}
	return 1
}

// exitError ends a command with a code and no further message.
type exitError struct{ code int }

func (e *exitError) Error() string { return fmt.Sprintf("exit %d", e.code) }

// NewRoot builds the command tree.
func NewRoot(env Env) *cobra.Command {
	root, _ := newRoot(env)
	return root
}

// newRoot builds the command tree and returns with it where its commands
// find their server and token.
func newRoot(env Env) (*cobra.Command, *connFlags) {
	root := &cobra.Command{
		Use:           "spry",
		Short:         "Spry: deploy JavaScript and TypeScript functions and call them over HTTP",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetIn(env.Stdin)
	root.SetOut(env.Stdout)
	root.SetErr(env.Stderr)
	// A flag that does not parse is bad input (exit 2), as the server's
	// 400s are.
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return errdefs.Invalid("%v", err) })
	conn := &connFlags{env: env}
	root.PersistentFlags().StringVar(&conn.url, "url", "", "Spry server URL (default $SPRY_URL, the login config, or http://127.0.0.1:8080)")
	root.PersistentFlags().StringVar(&conn.token, "token", "", "API token (default $SPRY_TOKEN or the login config)")
	root.PersistentFlags().StringVar(&conn.ca, "ca-cert", "", "PEM `file` of a CA certificate to trust besides the system's, for a server whose certificate a private CA signed or that signed its own (default $SPRY_CA_CERT or the login config)")
	offline := []*cobra.Command{newServeCmd(env), newDevCmd(env), newInitCmd(), newLogoutCmd(env), newRestoreCmd(), newVersionCmd()}
	reachesNoServer(offline...)
	root.AddCommand(offline...)
	root.AddCommand(
		newDeployCmd(conn),
		newInvokeCmd(conn),
		newInvocationsCmd(conn),
		newScheduleCmd(conn),
		newLsCmd(conn),
		newRmCmd(conn),
		newConfigCmd(conn),
		newLogsCmd(conn),
		newVersionsCmd(conn),
		newRollbackCmd(conn),
		newTrafficCmd(conn),
		newTagCmd(conn),
		newEnvCmd(conn),
		newSecretCmd(conn),
		newKVCmd(conn),
		newLoginCmd(conn),
		newWhoamiCmd(conn),
		newUsageCmd(conn),
		newUserCmd(conn),
		newTokenCmd(conn),
		newBackupCmd(conn),
	)
	argsAreInput(root)
	return root, conn
}

// connFlags' names: where the other commands find their server.
var connFlagNames = []string{"url", "token", "ca-cert"}

// reachesNoServer is for the commands that call no server (serve, dev,
// init, logout, restore, version): --url, --token and --ca-cert, which
// every command inherits, are left out of their help, and given, they
// are bad input rather than ignored (spry serve --token T made no
// admin token of T).
func reachesNoServer(cmds ...*cobra.Command) {
	for _, c := range cmds {
		c.SetHelpFunc(func(c *cobra.Command, args []string) {
			for _, name := range connFlagNames {
				if f := c.InheritedFlags().Lookup(name); f != nil {
					f.Hidden = true
				}
			}
			c.Root().HelpFunc()(c, args)
		})
		c.PreRunE = func(c *cobra.Command, _ []string) error {
			for _, name := range connFlagNames {
				if c.Flags().Changed(name) {
					return errdefs.Invalid("--%s means nothing to spry %s, which calls no server", name, c.Name())
				}
			}
			return nil
		}
	}
}

// argsAreInput makes wrong arguments bad input (exit 2) throughout the
// tree, as flags are: cobra's own errors have no class (exit 1), and a
// group given a subcommand it does not know printed its help and exited 0.
// A command with subcommands that takes arguments of its own (versions
// NAME, besides versions rm) says so with its Args, and is checked by them.
func argsAreInput(c *cobra.Command) {
	if c.HasSubCommands() && c.Args == nil {
		if c.SuggestionsMinimumDistance <= 0 {
			c.SuggestionsMinimumDistance = 2 // cobra's default, set only on its own path
		}
		c.Args = func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return errdefs.Invalid("unknown command %q for %q%s", args[0], cmd.CommandPath(), suggest(cmd, args[0]))
			}
			return nil
		}
		if c.RunE == nil && c.Run == nil {
			c.RunE = func(cmd *cobra.Command, _ []string) error { return cmd.Help() }
		}
	} else if check := c.Args; check != nil {
		c.Args = func(cmd *cobra.Command, args []string) error {
			if err := check(cmd, args); err != nil {
				return errdefs.Invalid("%v", err)
			}
			return nil
		}
	}
	for _, sub := range c.Commands() {
		argsAreInput(sub)
	}
}

func suggest(cmd *cobra.Command, arg string) string {
	s := cmd.SuggestionsFor(arg)
	if len(s) == 0 {
		return ""
	}
	return "; did you mean " + strings.Join(s, " or ") + "?"
}

// Version is set at build time with -ldflags.
var Version = "dev"

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print spry's version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fmt.Fprintln(cmd.OutOrStdout(), "spry", Version)
			return nil
		},
	}
}

func lookupEnv(environ []string, key string) string {
	for i := len(environ) - 1; i >= 0; i-- {
		kv := environ[i]
		if len(kv) > len(key) && kv[:len(key)] == key && kv[len(key)] == '=' {
			return kv[len(key)+1:]
		}
	}
	return ""
}

// OSEnv is the real process environment.
func OSEnv() Env {
	return Env{Args: os.Args[1:], Environ: os.Environ(), Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr}
}
