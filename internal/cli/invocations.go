package cli

import (
	"encoding/base64"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/spry-run/spry/internal/api"
	"github.com/spry-run/spry/internal/errdefs"
)

func newInvocationsCmd(conn *connFlags) *cobra.Command {
	var owner string
	var asJSON bool
	var limit int
	cmd := &cobra.Command{
		Use:   "invocations NAME [ID]",
		Short: "List a function's asynchronous invocations (spry invoke --async), or show one with its last answer",
		Args:  cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := conn.client()
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if len(args) == 2 {
				v, err := c.Invocation(cmd.Context(), owner, args[0], args[1])
				if err != nil {
					return err
				}
				if asJSON {
					return printJSON(out, v)
				}
				return printInvocation(out, v)
			}
			if limit < 1 || limit > 10000 {
				return errdefs.Invalid("--limit must be from 1 to 10000")
			}
			vs, more, err := c.Invocations(cmd.Context(), owner, args[0], limit)
			if err != nil {
				return err
			}
			if more {
				// Said on stderr, as kv ls says it: a script reading
				// stdout would otherwise take the newest for all.
				fmt.Fprintf(cmd.ErrOrStderr(), "more: the newest %d are shown; spry invocations %s --limit %d for more\n", len(vs), args[0], min(2*limit, 10000))
			}
			if asJSON {
				return printJSON(out, nonNil(vs))
			}
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tSTATUS\tATTEMPTS\tCODE\tCREATED\tPATH")
			for _, v := range vs {
				fmt.Fprintf(tw, "%s\t%s\t%d/%d\t%s\t%s\t%s\n", v.ID, v.Status, v.Attempts, v.MaxAttempts, code(v.HTTPStatus),
					v.CreatedAt.Local().Format("2006-01-02 15:04:05"), visible(v.Path))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVar(&owner, "owner", "", "the function's owner (admin only)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().IntVar(&limit, "limit", 20, "list at most this many, newest first")
	return cmd
}

// visibleLines is visible for each line of s: the answer's lines stay
// lines.
func visibleLines(s string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		lines[i] = visible(strings.TrimSuffix(l, "\r"))
	}
	return strings.Join(lines, "\n")
}

func code(status int) string {
	if status == 0 {
		return "-"
	}
	return strconv.Itoa(status)
}

// printInvocation shows one invocation, field by field, and its last
// answer's body (as it came if it is text, else said in bytes).
func printInvocation(w io.Writer, v api.InvocationView) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	at := func(t *time.Time) string {
		if t == nil {
			return "-"
		}
		return t.Local().Format(time.RFC3339)
	}
	fmt.Fprintf(tw, "id:\t%s\n", v.ID)
	fmt.Fprintf(tw, "function:\t%s/%s\n", v.Owner, v.Function)
	fmt.Fprintf(tw, "path:\t%s\n", visible(v.Path))
	fmt.Fprintf(tw, "status:\t%s\n", v.Status)
	fmt.Fprintf(tw, "attempts:\t%d of %d\n", v.Attempts, v.MaxAttempts)
	fmt.Fprintf(tw, "created:\t%s\n", at(&v.CreatedAt))
	fmt.Fprintf(tw, "started:\t%s\n", at(v.StartedAt))
	fmt.Fprintf(tw, "finished:\t%s\n", at(v.FinishedAt))
	if v.NextAttemptAt != nil {
		fmt.Fprintf(tw, "next attempt:\t%s\n", at(v.NextAttemptAt))
	}
	if v.Attempts > 0 {
		fmt.Fprintf(tw, "last answer:\t%s in %.1fms\n", code(v.HTTPStatus), v.DurationMS)
	}
	if v.Error != "" {
		fmt.Fprintf(tw, "error:\t%s\n", visible(v.Error))
	}
	if v.ForwardedTo != "" {
		fmt.Fprintf(tw, "sent on as:\t%s (of its --async-on-failure function)\n", v.ForwardedTo)
	}
	if v.FailureOf != "" {
		fmt.Fprintf(tw, "failure of:\t%s\n", v.FailureOf)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if v.Response == nil || v.Response.Body == "" {
		return nil
	}
	body := v.Response.Body
	if v.Response.Encoding == "base64" {
		b, _ := base64.StdEncoding.DecodeString(body)
		body = fmt.Sprintf("(%d bytes that are not text; --json shows them in base64)", len(b))
	}
	more := ""
	if v.Response.Truncated {
		more = " (its first 64 KiB)"
	}
	_, err := fmt.Fprintf(w, "\nresponse%s:\n%s\n", more, visibleLines(body))
	return err
}
