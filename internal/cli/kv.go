package cli

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/spry-run/spry/internal/client"
	"github.com/spry-run/spry/internal/errdefs"
)

func newKVCmd(conn *connFlags) *cobra.Command {
	var owner string
	cmd := &cobra.Command{Use: "kv", Short: "Read and change a function's key-value storage (ctx.kv)"}
	cmd.PersistentFlags().StringVar(&owner, "owner", "", "the function's owner (admin only)")

	var o client.KVOptions
	var asJSON bool
	ls := &cobra.Command{
		Use:   "ls NAME",
		Short: "List keys and values, in key order (a page at a time: --cursor for the next)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if cmd.Flags().Changed("limit") && o.Limit < 1 {
				return errdefs.Invalid("--limit %d: want 1 to 1000", o.Limit)
			}
			c, err := conn.client()
			if err != nil {
				return err
			}
			page, err := c.KVList(cmd.Context(), owner, args[0], o)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), page)
			}
			for _, e := range page.Entries {
				fmt.Fprintf(cmd.OutOrStdout(), "%s\t%s\n", visible(e.Key), visible(string(e.Value)))
			}
			if page.Cursor != nil {
				fmt.Fprintf(cmd.ErrOrStderr(), "more: spry kv ls %s --cursor %q\n", args[0], *page.Cursor)
			}
			return nil
		},
	}
	ls.Flags().StringVar(&o.Prefix, "prefix", "", "only keys that start with this")
	ls.Flags().StringVar(&o.Cursor, "cursor", "", "the key after which the page starts (the last page's cursor)")
	ls.Flags().IntVar(&o.Limit, "limit", 0, "entries per page (default 100, at most 1000)")
	ls.Flags().BoolVar(&asJSON, "json", false, "print the page as JSON, with its cursor and the bytes the entries hold")

	get := &cobra.Command{
		Use:   "get NAME KEY",
		Short: "Print a key's value (JSON)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := conn.client()
			if err != nil {
				return err
			}
			v, err := c.KVGet(cmd.Context(), owner, args[0], args[1])
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s\n", v)
			return nil
		},
	}

	var asString bool
	var expireIn time.Duration
	set := &cobra.Command{
		Use:   "set NAME KEY VALUE",
		Short: "Store a value: JSON (42, true, {\"a\":1}, \"text\"), or any text with --string",
		Args:  cobra.ExactArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			value := json.RawMessage(args[2])
			if asString {
				value, _ = json.Marshal(args[2])
			} else if !json.Valid(value) {
				return errdefs.Invalid("the value %q is not JSON; quote a string (%q) or use --string", args[2], `"`+args[2]+`"`)
			}
			if expireIn < 0 {
				return errdefs.Invalid("--expire-in must not be negative")
			}
			c, err := conn.client()
			if err != nil {
				return err
			}
			return c.KVSet(cmd.Context(), owner, args[0], args[1], value, expireIn)
		},
	}
	set.Flags().BoolVar(&asString, "string", false, "store VALUE as a string, whatever it looks like")
	set.Flags().DurationVar(&expireIn, "expire-in", 0, "remove the value after this long (e.g. 1h; default never)")

	rm := &cobra.Command{
		Use:   "rm NAME KEY",
		Short: "Remove a key",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := conn.client()
			if err != nil {
				return err
			}
			return c.KVDelete(cmd.Context(), owner, args[0], args[1])
		},
	}
	cmd.AddCommand(ls, get, set, rm)
	return cmd
}
