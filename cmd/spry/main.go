// Command spry is the Spry platform (spry serve) and its CLI.
package main

import (
	"context"
	"os"

	"github.com/spry-run/spry/internal/cli"
	"github.com/spry-run/spry/internal/sandbox"
)

func main() {
	// A sandbox's exec step re-runs this binary; it must not reach the CLI.
	sandbox.MaybeExec()
	os.Exit(cli.Main(context.Background(), cli.OSEnv()))
}
