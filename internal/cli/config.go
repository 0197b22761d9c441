package cli

import (
	"bufio"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/spf13/cobra"

	"github.com/spry-run/spry/internal/api"
	"github.com/spry-run/spry/internal/errdefs"
)

func newConfigCmd(conn *connFlags) *cobra.Command {
	var owner, runtime string
	var lim limitFlags
	cmd := &cobra.Command{
		Use:   "config NAME",
		Short: "Change a function's settings (a new version with the same code)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			body := api.ConfigBody{Runtime: runtime}
			lim.apply(cmd, &body.SettingsBody)
			return configure(cmd, conn, owner, args[0], body)
		},
	}
	lim.register(cmd)
	cmd.Flags().StringVar(&runtime, "runtime", "", "the live version's runtime only: to change it, redeploy with spry deploy --runtime")
	cmd.Flags().StringVar(&owner, "owner", "", "the function's owner (admin only)")
	return cmd
}

func newEnvCmd(conn *connFlags) *cobra.Command {
	var owner string
	cmd := &cobra.Command{Use: "env", Short: "Manage a function's environment variables (ctx.env, process.env)"}
	cmd.PersistentFlags().StringVar(&owner, "owner", "", "the function's owner (admin only)")
	set := &cobra.Command{
		Use:   "set NAME KEY=VALUE...",
		Short: "Set environment variables (a new version)",
		Args:  cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			env, err := parseEnv("", args[1:])
			if err != nil {
				return err
			}
			return configure(cmd, conn, owner, args[0], api.ConfigBody{Env: env})
		},
	}
	unset := &cobra.Command{
		Use:   "unset NAME KEY...",
		Short: "Remove environment variables (a new version)",
		Args:  cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return configure(cmd, conn, owner, args[0], api.ConfigBody{UnsetEnv: args[1:]})
		},
	}
	var envJSON bool
	ls := &cobra.Command{
		Use:   "ls NAME",
		Short: "List environment variables (secrets by name only)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			v, err := getFunction(cmd, conn, owner, args[0])
			if err != nil {
				return err
			}
			if envJSON {
				// The function's view's, {} and [] rather than absent.
				env := v.Env
				if env == nil {
					env = map[string]string{}
				}
				return printJSON(cmd.OutOrStdout(), struct {
					Env     map[string]string `json:"env"`
					Secrets []string          `json:"secrets"`
				}{env, nonNil(v.Secrets)})
			}
			keys := make([]string, 0, len(v.Env))
			for k := range v.Env {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			for _, k := range keys {
				fmt.Fprintf(cmd.OutOrStdout(), "%s=%s\n", k, visible(v.Env[k]))
			}
			for _, k := range v.Secrets {
				fmt.Fprintf(cmd.OutOrStdout(), "%s=<secret>\n", k)
			}
			return nil
		},
	}
	ls.Flags().BoolVar(&envJSON, "json", false, `print JSON: {"env":{"KEY":"value"},"secrets":["NAME"]}`)
	cmd.AddCommand(set, unset, ls)
	return cmd
}

func newSecretCmd(conn *connFlags) *cobra.Command {
	var owner string
	cmd := &cobra.Command{Use: "secret", Short: "Manage a function's secrets: env vars stored encrypted and never shown"}
	cmd.PersistentFlags().StringVar(&owner, "owner", "", "the function's owner (admin only)")
	set := &cobra.Command{
		Use:   "set NAME KEY",
		Short: "Set a secret, reading its value from stdin (a new version)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			value, err := readSecret(cmd.InOrStdin())
			if err != nil {
				return err
			}
			if err := checkUTF8("secret", args[1], value); err != nil {
				return err
			}
			return configure(cmd, conn, owner, args[0], api.ConfigBody{Secrets: map[string]string{args[1]: value}})
		},
	}
	unset := &cobra.Command{
		Use:   "unset NAME KEY...",
		Short: "Remove secrets (a new version)",
		Args:  cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return configure(cmd, conn, owner, args[0], api.ConfigBody{UnsetSecrets: args[1:]})
		},
	}
	var secretsJSON bool
	ls := &cobra.Command{
		Use:   "ls NAME",
		Short: "List secret names",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			v, err := getFunction(cmd, conn, owner, args[0])
			if err != nil {
				return err
			}
			if secretsJSON {
				return printJSON(cmd.OutOrStdout(), nonNil(v.Secrets))
			}
			for _, k := range v.Secrets {
				fmt.Fprintln(cmd.OutOrStdout(), k)
			}
			return nil
		},
	}
	ls.Flags().BoolVar(&secretsJSON, "json", false, "print the names as JSON")
	cmd.AddCommand(set, unset, ls)
	return cmd
}

// readSecret reads a value from stdin: all of it, less one trailing
// newline (so `echo value | spry secret set` works).
func readSecret(r io.Reader) (string, error) {
	data, err := io.ReadAll(io.LimitReader(bufio.NewReader(r), 64<<10+1))
	if err != nil {
		return "", err
	}
	if len(data) > 64<<10 {
		return "", errdefs.Invalid("secret is over 64 KiB")
	}
	v := strings.TrimSuffix(strings.TrimSuffix(string(data), "\n"), "\r")
	if v == "" {
		return "", errdefs.Invalid("no secret value on stdin")
	}
	return v, nil
}

func getFunction(cmd *cobra.Command, conn *connFlags, owner, name string) (api.FunctionView, error) {
	c, err := conn.client()
	if err != nil {
		return api.FunctionView{}, err
	}
	return c.Function(cmd.Context(), owner, name)
}

// configure applies a change and says whether it made a version. A
// change that changes nothing makes none, and the API answers 200 with
// the function as it was either way, so the version is read first, as
// kubectl apply reads the object to say "unchanged".
func configure(cmd *cobra.Command, conn *connFlags, owner, name string, body api.ConfigBody) error {
	c, err := conn.client()
	if err != nil {
		return err
	}
	before, err := c.Function(cmd.Context(), owner, name)
	if err != nil {
		return err
	}
	v, err := c.Configure(cmd.Context(), owner, name, body)
	if err != nil {
		return err
	}
	if v.Version == before.Version {
		fmt.Fprintf(cmd.OutOrStdout(), "%s/%s unchanged: still version %d\n", v.Owner, v.Name, v.Version)
		return nil
	}
	fmt.Fprintf(cmd.OutOrStdout(), "%s/%s is now version %d\n", v.Owner, v.Name, v.Version)
	return nil
}
