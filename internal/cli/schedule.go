package cli

import (
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/spry-run/spry/internal/api"
)

func newScheduleCmd(conn *connFlags) *cobra.Command {
	var owner string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "schedule NAME",
		Short: "Show a function's schedule (--cron), when it runs next, and how its last runs went",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := conn.client()
			if err != nil {
				return err
			}
			v, err := c.Schedule(cmd.Context(), owner, args[0])
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), v)
			}
			return printSchedule(cmd.OutOrStdout(), v)
		},
	}
	cmd.Flags().StringVar(&owner, "owner", "", "the function's owner (admin only)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// printSchedule shows the schedule, its next time, and its last runs
// newest first.
func printSchedule(w io.Writer, v api.ScheduleView) error {
	if v.Cron == "" {
		fmt.Fprintln(w, "no schedule (spry config NAME --cron EXPR sets one)")
	} else {
		next := "none"
		if v.NextRunAt != nil {
			next = v.NextRunAt.Local().Format(time.RFC3339)
		}
		fmt.Fprintf(w, "cron:      %s\nnext run:  %s\n", visible(v.Cron), next)
	}
	if len(v.Runs) == 0 {
		fmt.Fprintln(w, "no runs since the server started")
		return nil
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SCHEDULED FOR\tSTATUS\tDURATION\tERROR")
	for _, r := range v.Runs {
		took := "-"
		if r.FinishedAt != nil && r.Status != "skipped" {
			took = fmt.Sprintf("%.1fms", r.DurationMS)
		}
		errText := "-"
		if r.Error != "" {
			errText = visible(r.Error)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.ScheduledTime.Local().Format("2006-01-02 15:04:05"), r.Status, took, errText)
	}
	return tw.Flush()
}
