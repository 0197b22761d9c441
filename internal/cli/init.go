package cli

import (
	"fmt"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/spry-run/spry/internal/scaffold"
)

func newInitCmd() *cobra.Command {
	var runtime, parent string
	cmd := &cobra.Command{
		Use:   "init NAME",
		Short: "Create a new function project in the directory NAME: the function, a test and a README",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			dir := filepath.Join(parent, name)
			files, err := scaffold.Create(dir, name, runtime)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			for _, f := range files {
				fmt.Fprintf(w, "created %s\n", filepath.Join(dir, f))
			}
			// The project, not its entry file: an import of another of
			// its files, or a dependency added to package.json, then
			// works in both.
			test, flag := "deno test --allow-read index_test.ts", ""
			if runtime == "node" {
				test, flag = "node --test", " --runtime node"
			}
			fmt.Fprintf(w, "\nNext:\n  cd %s\n  sudo spry dev .%s   # serve it on http://127.0.0.1:8787/, reloading on save\n  %s\n  spry deploy . --name %s%s\n",
				dir, flag, test, name, flag)
			return nil
		},
	}
	cmd.Flags().StringVar(&runtime, "runtime", "deno", "runtime: deno or node")
	cmd.Flags().StringVar(&parent, "dir", ".", "directory to create the project in")
	return cmd
}
