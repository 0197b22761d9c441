package cli

import (
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/spry-run/spry/internal/errdefs"
)

func newLoginCmd(conn *connFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "login",
		Short: "Check a server URL and token and save them for later commands",
		Long:  "Check a server URL and token (from --url/--token or SPRY_URL/SPRY_TOKEN) and save them in $SPRY_CONFIG, else $XDG_CONFIG_HOME/spry/config.json, else ~/.config/spry/config.json (mode 0600).",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			url, token, _, err := conn.resolve() // login rewrites a broken file
			if err != nil {
				return err
			}
			if token == "" {
				return errdefs.New(errdefs.ErrUnauthenticated, "no token: pass --token or set SPRY_TOKEN")
			}
			who, err := conn.newClient(url, token).Whoami(cmd.Context())
			if err != nil {
				return err
			}
			p, err := writeFileConfig(conn.env.Environ, fileConfig{URL: url, Token: token})
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "logged in to %s as %s; saved to %s\n", url, who.User, p)
			return nil
		},
	}
}

func newUserCmd(conn *connFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "user", Short: "Manage users (admin only)"}
	var admin bool
	create := &cobra.Command{
		Use:   "create NAME",
		Short: "Create a user and print their API token",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := conn.client()
			if err != nil {
				return err
			}
			u, err := c.CreateUser(cmd.Context(), args[0], admin)
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), u.Token)
			fmt.Fprintf(cmd.ErrOrStderr(), "created user %s; the token above is shown only once\n", u.User.Name)
			return nil
		},
	}
	create.Flags().BoolVar(&admin, "admin", false, "make the user an admin")
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
				fmt.Fprintf(tw, "%s\t%v\t%s\n", u.Name, u.Admin, u.CreatedAt.Format("2006-01-02 15:04:05"))
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
	var name, user string
	create := &cobra.Command{
		Use:   "create",
		Short: "Create an API token and print it",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := conn.client()
			if err != nil {
				return err
			}
			t, err := c.CreateToken(cmd.Context(), user, name)
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), t.Token)
			fmt.Fprintf(cmd.ErrOrStderr(), "created token %s for %s; it is shown only once\n", t.ID, t.User)
			return nil
		},
	}
	create.Flags().StringVar(&name, "name", "", "a note saying what the token is for")
	create.Flags().StringVar(&user, "user", "", "create it for another user (admin only)")
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
			fmt.Fprintln(tw, "ID\tUSER\tNAME\tCREATED\tREVOKED")
			for _, t := range ts {
				revoked := ""
				if t.RevokedAt != nil {
					revoked = t.RevokedAt.Format("2006-01-02 15:04:05")
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", t.ID, t.User, visible(t.Name), t.CreatedAt.Format("2006-01-02 15:04:05"), revoked)
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
		Short: "Print whose the token is, whether they are an admin, and the token's id",
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
			fmt.Fprintf(cmd.OutOrStdout(), "%s (%stoken %s)\n", who.User, admin, who.TokenID)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}
