package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"unicode"

	"github.com/spf13/cobra"

	"github.com/spry-run/spry/internal/api"
	"github.com/spry-run/spry/internal/client"
	"github.com/spry-run/spry/internal/errdefs"
)

func newLogsCmd(conn *connFlags) *cobra.Command {
	var o client.LogOptions
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "logs NAME",
		Short: "Print a function's logs: its output, one access line per invocation, crashes and timeouts",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if cmd.Flags().Changed("tail") && o.Limit < 1 {
				return errdefs.Invalid("--tail %d: want at least 1", o.Limit)
			}
			if cmd.Flags().Changed("version") && o.Version < 1 {
				return errdefs.Invalid("--version %d: want a version number, 1 or more", o.Version)
			}
			c, err := conn.client()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			if o.Follow {
				// Ctrl-C is how a follow ends: exit 0, not the signal's
				// default death.
				var stop context.CancelFunc
				ctx, stop = signal.NotifyContext(ctx, os.Interrupt)
				defer stop()
			}
			out := cmd.OutOrStdout()
			// JSON lines: one entry a line, not indented.
			enc := json.NewEncoder(out)
			n := 0
			cut, err := c.Logs(ctx, args[0], o, func(l api.LogLine) error {
				n++
				if asJSON {
					return enc.Encode(l)
				}
				_, err := io.WriteString(out, logLine(l))
				return err
			})
			if err == nil && cut != "" {
				// Said on stderr, as spry invocations says it: a script
				// reading stdout would otherwise take the newest for all.
				fmt.Fprintf(cmd.ErrOrStderr(), "more: the newest %d entries are shown; spry logs %s --tail %d, or --since, for more\n", n, args[0], min(2*max(n, 1), 10000))
			}
			return err
		},
	}
	f := cmd.Flags()
	f.BoolVarP(&o.Follow, "follow", "f", false, "keep printing new entries as they come")
	f.StringVar(&o.Since, "since", "", "only entries newer than this: a duration (10m) or an RFC 3339 time")
	f.Int64Var(&o.Version, "version", 0, "only entries of this version")
	f.IntVarP(&o.Limit, "tail", "n", 0, "print only the newest N entries (default 1000)")
	f.StringVar(&o.Owner, "owner", "", "the function's owner (admin only)")
	f.BoolVar(&asJSON, "json", false, "print JSON lines")
	return cmd
}

// visible writes the control characters of a log line (C0 but tab, DEL,
// C1) as escapes. A line is whatever a function printed, and the terminal
// that shows it may be its owner's or the admin's: raw, an escape
// sequence could set that terminal's title or clipboard, or a carriage
// return and cursor moves could overwrite what the line's prefix says
// (its stream, say "system") and the lines above it. Bidirectional
// controls (U+202E...) are written so too: a terminal that applies the
// bidi algorithm would show the rest of the line reordered.
func visible(line string) string {
	i := strings.IndexFunc(line, isControl)
	if i < 0 {
		return line
	}
	var b strings.Builder
	b.WriteString(line[:i])
	for _, r := range line[i:] {
		switch {
		case !isControl(r):
			b.WriteRune(r)
		case r <= 0xff:
			fmt.Fprintf(&b, "\\x%02x", r)
		default:
			fmt.Fprintf(&b, "\\u%04x", r)
		}
	}
	return b.String()
}

func isControl(r rune) bool {
	return r != '\t' && (unicode.IsControl(r) || unicode.Is(unicode.Bidi_Control, r))
}

// logLine is how spry logs prints an entry. The platform's lines about no
// one version or instance (a failure sent on to its destination) show
// "-" for them.
func logLine(l api.LogLine) string {
	version, instance := "-", "-"
	if l.Version > 0 {
		version = fmt.Sprintf("v%d", l.Version)
	}
	if l.Instance != "" {
		instance = l.Instance
	}
	return fmt.Sprintf("%s %s %s %-6s %s\n", l.Time.UTC().Format("2006-01-02T15:04:05.000Z"), version, instance, l.Stream, visible(l.Line))
}
