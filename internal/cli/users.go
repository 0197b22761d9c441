package cli

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/spry-run/spry/internal/api"
	"github.com/spry-run/spry/internal/auth"
	"github.com/spry-run/spry/internal/errdefs"
)

// timeLayout is how token and user times are shown (in UTC, as the
// server gives them).
const timeLayout = "2006-01-02 15:04:05"

// checkExpires checks an --expires value before anything is sent: it is
// bad input (exit 2) named as the flag, not as the API's field.
func checkExpires(v string) error {
	if v == "" {
		return nil
	}
	_, err := auth.ParseLifetime("--expires", v)
	return err
}

// expiryNote is "; it expires at ..." for a token that does, else "".
func expiryNote(at *time.Time) string {
	if at == nil {
		return ""
	}
	return "; it expires at " + at.UTC().Format(timeLayout) + " UTC"
}

func newLoginCmd(conn *connFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "login",
		Short: "Check a server URL and token and save them for later commands",
		Long:  "Check a server URL and token (from --url/--token or SPRY_URL/SPRY_TOKEN), and the CA certificate to trust for it if one is given (--ca-cert or SPRY_CA_CERT), and save them in $SPRY_CONFIG, else $XDG_CONFIG_HOME/spry/config.json, else ~/.config/spry/config.json (mode 0600).",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			url, token, _, err := conn.resolve() // login rewrites a broken file
			if err != nil {
				return err
			}
			if token == "" {
				return errdefs.New(errdefs.ErrUnauthenticated, "no token: pass --token or set SPRY_TOKEN")
			}
			c, err := conn.newClient(url, token)
			if err != nil {
				return err
			}
			who, err := c.Whoami(cmd.Context())
			if err != nil {
				return err
			}
			// Saved by its absolute name: later commands run elsewhere.
			ca, _ := conn.caCert(url)
			if ca != "" {
				if ca, err = filepath.Abs(ca); err != nil {
					return err
				}
			}
			p, err := writeFileConfig(conn.env.Environ, fileConfig{URL: url, Token: token, CACert: ca})
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "logged in to %s as %s; saved to %s\n", url, who.User, p)
			return nil
		},
	}
}

// newLogoutCmd removes what spry login saved. The token stays valid on
// the server (as gh auth logout leaves it): spry token revoke ends it.
func newLogoutCmd(env Env) *cobra.Command {
	return &cobra.Command{
		Use:   "logout",
		Short: "Remove the server URL and token spry login saved (the token stays valid: spry token revoke ID ends it)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			p, err := configPath(env.Environ)
			if err != nil {
				return err
			}
			fc, _ := readFileConfig(env.Environ)
			switch err := os.Remove(p); {
			case errors.Is(err, os.ErrNotExist):
				fmt.Fprintf(cmd.ErrOrStderr(), "not logged in: no %s\n", p)
				return nil
			case err != nil:
				return err
			}
			if fc.URL != "" {
				fmt.Fprintf(cmd.OutOrStdout(), "logged out of %s; removed %s\n", fc.URL, p)
			} else {
				fmt.Fprintf(cmd.OutOrStdout(), "removed %s\n", p)
			}
			return nil
		},
	}
}

func newUserCmd(conn *connFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "user", Short: "Manage users (admin only)"}
	var admin bool
	var userExpires string
	create := &cobra.Command{
		Use:   "create NAME",
		Short: "Create a user and print their API token",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkExpires(userExpires); err != nil {
				return err
			}
			c, err := conn.client()
			if err != nil {
				return err
			}
			u, err := c.CreateUser(cmd.Context(), api.CreateUserBody{Name: args[0], Admin: admin, Expiry: api.Expiry{ExpiresIn: userExpires}})
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), u.Token)
			fmt.Fprintf(cmd.ErrOrStderr(), "created user %s; the token above is shown only once%s\n", u.User.Name, expiryNote(u.ExpiresAt))
			return nil
		},
	}
	create.Flags().BoolVar(&admin, "admin", false, "make the user an admin")
	create.Flags().StringVar(&userExpires, "expires", "", "the first token expires after `duration` (720h, 30d; 1m to 3650d; default never)")
	var usersJSON bool
	ls := &cobra.Command{
		Use:   "ls",
		Short: "List users",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := conn.client()
			if err != nil {
				return err
			}
			us, err := c.Users(cmd.Context())
			if err != nil {
				return err
			}
			if usersJSON {
				return printJSON(cmd.OutOrStdout(), nonNil(us))
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tADMIN\tCREATED")
			for _, u := range us {
				fmt.Fprintf(tw, "%s\t%v\t%s\n", u.Name, u.Admin, u.CreatedAt.Format(timeLayout))
			}
			return tw.Flush()
		},
	}
	ls.Flags().BoolVar(&usersJSON, "json", false, "print JSON")
	rm := &cobra.Command{
		Use:   "rm NAME",
		Short: "Delete a user, their tokens and their functions",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := conn.client()
			if err != nil {
				return err
			}
			if err := c.DeleteUser(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "deleted user %s\n", args[0])
			return nil
		},
	}
	cmd.AddCommand(create, ls, rm)
	return cmd
}

func newTokenCmd(conn *connFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "token", Short: "Manage API tokens"}
	var name, user, expires string
	var scopes []string
	create := &cobra.Command{
		Use:   "create [NAME]",
		Short: "Create an API token and print it",
		Long: `Create an API token and print it (only this once).

--scope limits what it may do: read (see functions, versions, logs, kv,
env), invoke (call private functions, and nothing else), deploy (read,
invoke, and change functions), metrics (GET /metrics only; an admin's
tokens only), all (everything, the default; only all tokens manage
tokens and users). --expires makes it stop working after a
duration (Go's, like 720h, or days, like 30d).`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 1 {
				if name != "" && name != args[0] {
					return errdefs.Invalid("the token is named %q and --name %q: give one", args[0], name)
				}
				name = args[0]
			}
			if err := checkExpires(expires); err != nil {
				return err
			}
			if _, err := auth.ParseScopes(scopes); err != nil {
				return errdefs.Invalid("--scope: %v", err)
			}
			c, err := conn.client()
			if err != nil {
				return err
			}
			t, err := c.CreateToken(cmd.Context(), api.CreateTokenBody{Name: name, User: user, Scopes: scopes, Expiry: api.Expiry{ExpiresIn: expires}})
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), t.Token)
			fmt.Fprintf(cmd.ErrOrStderr(), "created token %s for %s, scopes %s; it is shown only once%s\n", t.ID, t.User, strings.Join(t.Scopes, ","), expiryNote(t.ExpiresAt))
			return nil
		},
	}
	create.Flags().StringVar(&name, "name", "", "a note saying what the token is for (or give it as NAME)")
	create.Flags().StringVar(&user, "user", "", "create it for another user (admin only)")
	create.Flags().StringVar(&expires, "expires", "", "expire after `duration` (720h, 30d; 1m to 3650d; default never)")
	create.Flags().StringSliceVar(&scopes, "scope", nil, "a `scope`, what it may do: read, invoke, deploy, metrics or all (repeat, or a comma list; default all)")
	var lsUser string
	var tokensJSON bool
	ls := &cobra.Command{
		Use:   "ls",
		Short: "List API tokens",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := conn.client()
			if err != nil {
				return err
			}
			ts, err := c.Tokens(cmd.Context(), lsUser)
			if err != nil {
				return err
			}
			if tokensJSON {
				return printJSON(cmd.OutOrStdout(), nonNil(ts))
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tUSER\tNAME\tSCOPES\tCREATED\tEXPIRES\tREVOKED")
			for _, t := range ts {
				revoked := ""
				if t.RevokedAt != nil {
					revoked = t.RevokedAt.Format(timeLayout)
				}
				expiry := "never"
				if t.ExpiresAt != nil {
					expiry = t.ExpiresAt.UTC().Format(timeLayout)
				}
				if t.Expired {
					expiry += " (expired)"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", t.ID, t.User, visible(t.Name), strings.Join(t.Scopes, ","), t.CreatedAt.Format(timeLayout), expiry, revoked)
			}
			return tw.Flush()
		},
	}
	ls.Flags().StringVar(&lsUser, "user", "", "list another user's tokens (admin only)")
	ls.Flags().BoolVar(&tokensJSON, "json", false, "print JSON")
	revoke := &cobra.Command{
		Use:   "revoke ID",
		Short: "Revoke an API token",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := conn.client()
			if err != nil {
				return err
			}
			if err := c.RevokeToken(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "revoked token %s\n", args[0])
			return nil
		},
	}
	cmd.AddCommand(create, ls, revoke)
	return cmd
}

func newWhoamiCmd(conn *connFlags) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "whoami",
		Short: "Print whose the token is, whether they are an admin, the token's id, scopes and expiry",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := conn.client()
			if err != nil {
				return err
			}
			who, err := c.Whoami(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), who)
			}
			admin := ""
			if who.Admin {
				admin = "admin, "
			}
			expiry := "never expires"
			if who.ExpiresAt != nil {
				expiry = "expires " + who.ExpiresAt.UTC().Format(timeLayout) + " UTC"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s (%stoken %s, scopes %s, %s)\n", who.User, admin, who.TokenID, strings.Join(who.Scopes, ","), expiry)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}
