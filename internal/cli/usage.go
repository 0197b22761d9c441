package cli

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/spry-run/spry/internal/api"
)

func newUsageCmd(conn *connFlags) *cobra.Command {
	var user string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "usage",
		Short: "Show what you use of the server's per-user budgets: functions, instances, their memory, pids and open files, kv bytes, async invocations and their bytes, tokens",
		Long: `Show what you use of each per-user budget the server holds you to, and
its limit: functions (--max-functions-per-user), instances starting,
running or stopping (--max-instances-per-user), the memory limits of
those instances added up (--max-memory-per-user), the processes and
open files they count against your budgets (--user-pids, --user-files:
each instance at its share, or more if it holds more, as the server
checks a start against them), the bytes of your
functions' ctx.kv entries (--kv-max-bytes-per-user), your asynchronous
invocations not finished (--async-max-per-user) and the bytes they all
hold (--async-max-bytes-per-user: bodies of those not finished, each
with 64 KiB for its response, and responses of those finished), and
tokens neither revoked nor expired. A budget the server does not bound
shows "-"; one the server does not report (pids and open files,
without those budgets) has no row.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := conn.client()
			if err != nil {
				return err
			}
			u, err := c.Usage(cmd.Context(), user)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), u)
			}
			return printUsage(cmd.OutOrStdout(), u)
		},
	}
	cmd.Flags().StringVar(&user, "user", "", "show another user's usage (admin only)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the API's view as JSON")
	return cmd
}

// printUsage prints u as a table: each budget, what is used of it, its
// limit and the share of it used.
func printUsage(w io.Writer, u api.UsageView) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "RESOURCE\tUSED\tLIMIT\tUSED%")
	type row struct {
		name  string
		use   api.Use
		bytes bool
	}
	rows := []row{
		{"functions", u.Functions, false},
		{"instances", u.Instances, false},
		{"memory", u.MemoryBytes, true},
	}
	// Reported by servers that keep them.
	if u.Pids != nil {
		rows = append(rows, row{"pids", *u.Pids, false})
	}
	if u.OpenFiles != nil {
		rows = append(rows, row{"open files", *u.OpenFiles, false})
	}
	rows = append(rows,
		row{"kv", u.KVBytes, true},
		row{"async invocations", u.AsyncInvocations, false},
		row{"async bytes", u.AsyncBytes, true},
		row{"tokens", u.Tokens, false},
	)
	for _, r := range rows {
		show := strconv.FormatInt
		if r.bytes {
			show = func(n int64, _ int) string { return sizeString(n) }
		}
		limit, share := "-", "-"
		if r.use.Limit > 0 {
			limit, share = show(r.use.Limit, 10), percent(r.use.Used, r.use.Limit)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.name, show(r.use.Used, 10), limit, share)
	}
	return tw.Flush()
}

// sizeString is n bytes for a reader: exact below 1 KiB, else in the
// largest binary unit it reaches, to one decimal ("1.5 KiB", "256 MiB").
func sizeString(n int64) string {
	if n < 1024 {
		return strconv.FormatInt(n, 10) + " B"
	}
	f, unit := float64(n), -1
	for f >= 1024 && unit < len("KMGTPE")-1 {
		f /= 1024
		unit++
	}
	return strings.TrimSuffix(strconv.FormatFloat(f, 'f', 1, 64), ".0") + " " + "KMGTPE"[unit:unit+1] + "iB"
}

// percent is used as a whole share of limit, rounded down so that 100%
// means the budget is full; a use that is not nothing shows as at least
// "<1%".
func percent(used, limit int64) string {
	p := float64(used) / float64(limit) * 100
	if used > 0 && p < 1 {
		return "<1%"
	}
	return strconv.Itoa(int(p)) + "%"
}
