package cli

import (
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// docs/cli.md names every command and every flag that --help shows, so
// that what a user finds in one they find in the other.
func TestDocsNameEveryCommandAndFlag(t *testing.T) {
	data, err := os.ReadFile("../../docs/cli.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(data)
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		if c.Hidden || c.Name() == "help" {
			return
		}
		if c.HasParent() && !strings.Contains(doc, c.CommandPath()) {
			t.Errorf("docs/cli.md does not name %q", c.CommandPath())
		}
		c.LocalNonPersistentFlags().VisitAll(func(f *pflag.Flag) {
			if f.Hidden || f.Name == "help" {
				return
			}
			if !strings.Contains(doc, "--"+f.Name) {
				t.Errorf("docs/cli.md does not name %s --%s", c.CommandPath(), f.Name)
			}
			if f.Shorthand != "" && !regexp.MustCompile(`[\s\[(|`+"`"+`]-`+f.Shorthand+`[\s\]|`+"`"+`,)]`).MatchString(doc) {
				t.Errorf("docs/cli.md does not name %s -%s", c.CommandPath(), f.Shorthand)
			}
		})
		c.PersistentFlags().VisitAll(func(f *pflag.Flag) {
			if !strings.Contains(doc, "--"+f.Name) {
				t.Errorf("docs/cli.md does not name %s --%s", c.CommandPath(), f.Name)
			}
		})
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	root := NewRoot(Env{})
	root.InitDefaultCompletionCmd() // cobra adds it at Execute
	walk(root)
}
