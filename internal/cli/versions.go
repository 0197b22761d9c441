package cli

import (
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/spry-run/spry/internal/api"
	"github.com/spry-run/spry/internal/errdefs"
)

func newVersionsCmd(conn *connFlags) *cobra.Command {
	var owner string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "versions NAME",
		Short: "List a function's versions with time, size, digest, who deployed, traffic and tags",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := conn.client()
			if err != nil {
				return err
			}
			vs, err := c.Versions(cmd.Context(), owner, args[0])
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), nonNil(vs))
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "VERSION\tLIVE\tTRAFFIC\tTAGS\tRUNTIME\tACCESS\tSIZE\tDIGEST\tDEPLOYED\tBY")
			for _, v := range vs {
				live := ""
				if v.Live {
					live = "*"
				}
				traffic := ""
				if v.Percent > 0 {
					traffic = strconv.Itoa(v.Percent) + "%"
				}
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n", v.Version, live, traffic, strings.Join(v.Tags, ","),
					v.Runtime, v.Access, v.Size, shortDigest(v.Digest), v.CreatedAt.Local().Format("2006-01-02 15:04:05"), v.CreatedBy)
			}
			return tw.Flush()
		},
	}
	// Persistent: rm takes it too.
	cmd.PersistentFlags().StringVar(&owner, "owner", "", "the function's owner (admin only)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.AddCommand(newVersionsRmCmd(conn, &owner))
	return cmd
}

func newVersionsRmCmd(conn *connFlags, owner *string) *cobra.Command {
	return &cobra.Command{
		Use:   "rm NAME VERSION",
		Short: "Delete a version that is not live, in a traffic split or tagged",
		Long: `Delete a version that is not live, in a traffic split or tagged: its record,
env and sealed secrets go at once, /fn/<owner>/<name>@VERSION/ answers 404,
its instances finish the requests they have and stop, and its bundle goes
at the next collection unless another version has the same code. Its log
lines stay. Its number is never given again. Roll back, change the traffic
or move the tag first to delete one that is.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			version, err := versionArg(args[1])
			if err != nil {
				return err
			}
			c, err := conn.client()
			if err != nil {
				return err
			}
			if err := c.DeleteVersion(cmd.Context(), *owner, args[0], version); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "removed version %d of %s\n", version, args[0])
			return nil
		},
	}
}

// versionArg reads a version number given as an argument.
func versionArg(s string) (int64, error) {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		return 0, errdefs.Invalid("version %q is not a positive number", s)
	}
	return n, nil
}

func shortDigest(d string) string {
	if len(d) > 19 {
		return d[:19]
	}
	return d
}

func newRollbackCmd(conn *connFlags) *cobra.Command {
	var owner string
	cmd := &cobra.Command{
		Use:   "rollback NAME [VERSION]",
		Short: "Make an earlier version live at once (default: the one before the live one)",
		Args:  cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			var version int64
			if len(args) == 2 {
				n, err := versionArg(args[1])
				if err != nil {
					return err
				}
				version = n
			}
			c, err := conn.client()
			if err != nil {
				return err
			}
			v, err := c.Rollback(cmd.Context(), owner, args[0], version)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s/%s: version %d is live\n", v.Owner, v.Name, v.Version)
			return nil
		},
	}
	cmd.Flags().StringVar(&owner, "owner", "", "the function's owner (admin only)")
	return cmd
}

func newTrafficCmd(conn *connFlags) *cobra.Command {
	var owner string
	cmd := &cobra.Command{
		Use:   "traffic NAME VERSION=PERCENT...",
		Short: "Split a function's traffic between versions, e.g. `spry traffic hello 7=90 8=10`",
		Args:  cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			split := api.TrafficBody{}
			for _, a := range args[1:] {
				k, v, ok := strings.Cut(a, "=")
				p, err := strconv.Atoi(strings.TrimSuffix(v, "%"))
				if !ok || err != nil {
					return errdefs.Invalid("%q: want VERSION=PERCENT", a)
				}
				split[k] = p
			}
			c, err := conn.client()
			if err != nil {
				return err
			}
			v, err := c.SetTraffic(cmd.Context(), owner, args[0], split)
			if err != nil {
				return err
			}
			if len(v.Traffic) == 0 {
				fmt.Fprintf(cmd.OutOrStdout(), "%s/%s: all traffic to version %d\n", v.Owner, v.Name, v.Version)
				return nil
			}
			var parts []string
			for _, s := range v.Traffic {
				parts = append(parts, fmt.Sprintf("v%d %d%%", s.Version, s.Percent))
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s/%s: %s\n", v.Owner, v.Name, strings.Join(parts, ", "))
			return nil
		},
	}
	cmd.Flags().StringVar(&owner, "owner", "", "the function's owner (admin only)")
	return cmd
}

func newTagCmd(conn *connFlags) *cobra.Command {
	var owner string
	var remove bool
	cmd := &cobra.Command{
		Use:   "tag NAME TAG [VERSION]",
		Short: "Give a version a fixed URL, /fn/<owner>/<name>@<tag>/ (--rm removes the tag)",
		Args:  cobra.RangeArgs(2, 3),
		RunE: func(cmd *cobra.Command, args []string) error {
			var version int64
			switch {
			case remove && len(args) == 2:
			case !remove && len(args) == 3:
				n, err := versionArg(args[2])
				if err != nil {
					return err
				}
				version = n
			default:
				return errdefs.Invalid("usage: spry tag NAME TAG VERSION, or spry tag --rm NAME TAG")
			}
			c, err := conn.client()
			if err != nil {
				return err
			}
			if err := c.SetTag(cmd.Context(), owner, args[0], args[1], version); err != nil {
				return err
			}
			if remove {
				fmt.Fprintf(cmd.OutOrStdout(), "removed tag %s\n", args[1])
			} else {
				fmt.Fprintf(cmd.OutOrStdout(), "%s@%s is version %d\n", args[0], args[1], version)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&remove, "rm", false, "remove the tag")
	cmd.Flags().StringVar(&owner, "owner", "", "the function's owner (admin only)")
	return cmd
}
