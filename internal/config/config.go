// Package config resolves settings once at start: command-line flags win,
// then SPRY_* environment variables, then defaults. The environment is
// passed in as a slice, so tests never touch the real one.
package config

import (
	"fmt"
	"strings"

	"github.com/spf13/pflag"
)

// ApplyEnv sets every flag not given on the command line from the
// environment variable SPRY_<FLAG_NAME> (upper case, '-' as '_'), if set.
func ApplyEnv(fs *pflag.FlagSet, env []string) error {
	vals := map[string]string{}
	for _, kv := range env {
		if k, v, ok := strings.Cut(kv, "="); ok {
			vals[k] = v
		}
	}
	var err error
	fs.VisitAll(func(f *pflag.Flag) {
		if err != nil || f.Changed {
			return
		}
		name := EnvName(f.Name)
		if v, ok := vals[name]; ok {
			if e := fs.Set(f.Name, v); e != nil {
				err = fmt.Errorf("%s=%q: %w", name, v, e)
			}
		}
	})
	return err
}

// EnvName is the environment variable that sets a flag.
func EnvName(flag string) string {
	return "SPRY_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}
