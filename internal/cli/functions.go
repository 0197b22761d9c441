package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/spf13/cobra"

	"github.com/spry-run/spry/internal/api"
	"github.com/spry-run/spry/internal/archive"
	"github.com/spry-run/spry/internal/build"
	"github.com/spry-run/spry/internal/client"
	"github.com/spry-run/spry/internal/errdefs"
	"github.com/spry-run/spry/internal/functions"
	"github.com/spry-run/spry/internal/names"
)

func newDeployCmd(conn *connFlags) *cobra.Command {
	var name, runtime, owner, entry, registry string
	var envs []string
	var asJSON, bundleHere bool
	var lim limitFlags
	cmd := &cobra.Command{
		Use:   "deploy FILE_OR_DIR",
		Short: "Deploy a function from a file, or a project directory with dependencies (a new version each time)",
		Long: `Deploy a function. FILE is one TypeScript or JavaScript module. A directory is
packed (without what its .gitignore excludes, .git and node_modules) and the
server installs its package.json dependencies and bundles it from --entry, its
package.json, or index.ts/index.js/main.ts/mod.ts. With --bundle the project is
bundled here instead (npm on this machine) and only the bundle is sent.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			path := args[0]
			fi, err := os.Stat(path)
			if err != nil {
				return errdefs.Invalid("%v", err)
			}
			body := api.DeployBody{Runtime: runtime, Entry: entry}
			switch {
			case !fi.IsDir():
				code, err := os.ReadFile(path)
				if err != nil {
					return errdefs.Invalid("%v", err)
				}
				body.Code, body.Filename = string(code), filepath.Base(path)
			case bundleHere:
				if registry == "" {
					registry = os.Getenv("npm_config_registry")
				}
				res, err := build.BundleDir(cmd.Context(), path, build.DirOptions{Entry: entry, Runtime: runtime, Registry: registry})
				if err != nil {
					return err
				}
				body.Code, body.Filename = string(res.Code), "bundle.js"
			default:
				if body.Archive, err = archive.PackProject(path); err != nil {
					return err
				}
			}
			if name == "" {
				abs, _ := filepath.Abs(path)
				base := filepath.Base(abs)
				name = strings.TrimSuffix(base, filepath.Ext(base))
				// Said here, with the way out: the server's answer would
				// name a name the user never gave.
				if err := names.Function(name); err != nil {
					return errdefs.Invalid("%v; pass --name", err)
				}
			}
			env, err := parseEnv("--env", envs)
			if err != nil {
				return err
			}
			c, err := conn.client()
			if err != nil {
				return err
			}
			body.Env = env
			lim.apply(cmd, &body.SettingsBody)
			v, err := c.Deploy(cmd.Context(), owner, name, body)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), v)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "deployed %s/%s version %d\n%s\n", v.Owner, v.Name, v.Version, v.URL)
			return nil
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "function name (default: the file or directory name without its extension)")
	cmd.Flags().StringVar(&entry, "entry", "", "a project's entry file, relative to its directory")
	cmd.Flags().BoolVar(&bundleHere, "bundle", false, "bundle a project directory here rather than on the server")
	cmd.Flags().StringVar(&registry, "npm-registry", "", "with --bundle: the npm registry for dependencies (default: $npm_config_registry, else npm's public registry)")
	cmd.Flags().StringVar(&runtime, "runtime", "", "runtime: deno or node (default: the live version's, or deno)")
	cmd.Flags().StringArrayVarP(&envs, "env", "e", nil, "environment variable KEY=VALUE, available as ctx.env (repeatable)")
	cmd.Flags().StringVar(&owner, "owner", "", "deploy into another user's namespace (admin only)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the result as JSON")
	lim.register(cmd)
	return cmd
}

// limitFlags are the per-function settings flags.
type limitFlags struct {
	memory, timeout, network string
	cpu, target, grace       string
	isolation, cron, access  string
	asyncOnFailure           string
	min, max, concurrency    int
	asyncRetries             int
}

func (l *limitFlags) register(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&l.memory, "memory", "", "memory limit of each instance, e.g. 128Mi or 1Gi (default: the server's)")
	f.StringVar(&l.timeout, "timeout", "", "longest an invocation may run, e.g. 2s (default: the server's)")
	f.StringVar(&l.network, "network", "", "network access: none, or egress (public internet only; the default)")
	f.IntVar(&l.min, "min", 0, "instances kept running even when idle")
	f.IntVar(&l.max, "max", 0, "most instances to scale to")
	f.IntVar(&l.concurrency, "concurrency", 0, "most requests one instance handles at once")
	f.StringVar(&l.cpu, "cpu", "", "CPU quota of each instance, e.g. 0.5 or 2 (default: the server's)")
	f.StringVar(&l.target, "target-utilization", "", "share of --concurrency the autoscaler aims for, e.g. 70 (percent)")
	f.StringVar(&l.grace, "scale-to-zero-after", "", "stop the last instance after this long without requests (default: the server's)")
	f.StringVar(&l.cron, "cron", "", `run the function's scheduled handler on this schedule, a cron expression in UTC: "*/5 * * * *" (minute hour day month weekday; an optional seconds field first), or @hourly, @every 10m; "none" removes it`)
	f.StringVar(&l.access, "access", "", "public (anyone may call it; the default), or private: only a token of the owner's or an admin's with scope invoke")
	f.StringVar(&l.isolation, "isolation", "", "standard (bubblewrap), or gvisor: a user-space kernel in between (slower to start; no network)")
	f.IntVar(&l.asyncRetries, "async-retries", 2, "how many times a failed asynchronous invocation is tried again: 0 (for a function that must not run twice), 1 or 2")
	f.StringVar(&l.asyncOnFailure, "async-on-failure", "", `another function of yours that gets the event of each asynchronous invocation that failed (it need not exist yet); "none" removes it`)
}

// apply copies the flags the user set into body.
func (l *limitFlags) apply(cmd *cobra.Command, body *api.SettingsBody) {
	body.Memory, body.Timeout, body.Network = l.memory, l.timeout, l.network
	body.CPU, body.Target, body.Grace, body.Isolation = l.cpu, l.target, l.grace, l.isolation
	body.Access = l.access
	f := cmd.Flags()
	if f.Changed("min") {
		body.Min = &l.min
	}
	if f.Changed("max") {
		body.Max = &l.max
	}
	if f.Changed("concurrency") {
		body.Concurrency = &l.concurrency
	}
	if f.Changed("cron") {
		body.Cron = &l.cron
	}
	if f.Changed("async-retries") {
		body.AsyncRetries = &l.asyncRetries
	}
	if f.Changed("async-on-failure") {
		body.AsyncOnFailure = &l.asyncOnFailure
	}
}

// parseEnv parses KEY=VALUE pairs; flag names where they came from
// ("--env"), or is "" for arguments.
func parseEnv(flag string, kvs []string) (map[string]string, error) {
	if len(kvs) == 0 {
		return nil, nil
	}
	env := map[string]string{}
	for _, kv := range kvs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, errdefs.Invalid("%s: want KEY=VALUE", strings.TrimSpace(flag+" "+strconv.Quote(kv)))
		}
		if err := checkUTF8("environment variable", k, v); err != nil {
			return nil, err
		}
		env[k] = v
	}
	return env, nil
}

// checkUTF8 refuses a value that is not UTF-8 before it is sent: JSON
// would carry each of its bad bytes as U+FFFD, and the function get
// another value than the one set, without a word.
func checkUTF8(what, k, v string) error {
	if !utf8.ValidString(v) {
		return errdefs.Invalid("%s %s is not valid UTF-8 (encode a binary value, in base64 say, and decode it in the function)", what, k)
	}
	return nil
}

// nonNil is s, or an empty slice for nil: a list prints as [], not
// null, for jq '.[]'.
func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func newLsCmd(conn *connFlags) *cobra.Command {
	var owner string
	var asJSON bool
	cmd := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List functions",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := conn.client()
			if err != nil {
				return err
			}
			fns, err := c.Functions(cmd.Context(), owner)
			if err != nil {
				return err
			}
			if asJSON {
				return printJSON(cmd.OutOrStdout(), nonNil(fns))
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tVERSION\tRUNTIME\tACCESS\tURL\tSTATE\tLAST INVOKED")
			for _, f := range fns {
				last := "never"
				if f.LastInvokedAt != nil {
					last = ago(time.Since(*f.LastInvokedAt))
				}
				state := f.State
				if f.Instances > 0 {
					state = fmt.Sprintf("%s (%d)", f.State, f.Instances)
				}
				fmt.Fprintf(tw, "%s/%s\t%d\t%s\t%s\t%s\t%s\t%s\n", f.Owner, f.Name, f.Version, f.Runtime, f.Access, f.URL, state, last)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVar(&owner, "owner", "", "list another user's functions (admin only; the admin lists all by default)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func ago(d time.Duration) string {
	switch {
	case d < time.Second:
		return "just now"
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d.Hours()))
	default:
		return fmt.Sprintf("%dd ago", int(d.Hours()/24))
	}
}

func newRmCmd(conn *connFlags) *cobra.Command {
	var owner string
	cmd := &cobra.Command{
		Use:     "rm NAME",
		Aliases: []string{"delete"},
		Short:   "Delete a function, all its versions and instances",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := conn.client()
			if err != nil {
				return err
			}
			if err := c.DeleteFunction(cmd.Context(), owner, args[0]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "deleted %s\n", args[0])
			return nil
		},
	}
	cmd.Flags().StringVar(&owner, "owner", "", "the function's owner (admin only)")
	return cmd
}

func newInvokeCmd(conn *connFlags) *cobra.Command {
	var path, method, data, owner string
	var headers []string
	var include, fail, scheduled, async bool
	cmd := &cobra.Command{
		Use:   "invoke NAME[@TAG|@VERSION]",
		Short: "Call a function over HTTP and print its response body (or, with --async, queue the call and print its id)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			// NAME@TAG or NAME@VERSION calls that version, at the URL the
			// router gives it; the function is looked up by its name.
			name, at, pinned := strings.Cut(args[0], "@")
			if pinned {
				if err := names.Validate("tag or version", at); err != nil {
					return fmt.Errorf("%s: %w", args[0], err)
				}
				if scheduled || async {
					return errdefs.Invalid("%s: --scheduled and --async run the live version; call %s@%s without them, or %s with them", args[0], name, at, name)
				}
			}
			c, err := conn.client()
			if err != nil {
				return err
			}
			if scheduled {
				// Through the API: the runtime is asked on its control
				// socket, which no HTTP request reaches.
				if err := c.RunScheduled(cmd.Context(), owner, args[0]); err != nil {
					return err
				}
				fmt.Fprintln(cmd.OutOrStdout(), "scheduled run done")
				return nil
			}
			if async {
				return invokeAsync(cmd, c, owner, args[0], path, data, method, headers, include || fail)
			}
			// Bad input is said as such before anything is sent: Go's
			// request refused it as a parse error (exit 1) or, sent, as a
			// server that cannot be reached (exit 6).
			h, err := invokeRequest(method, path, headers)
			if err != nil {
				return err
			}
			// Ask the API whether the function is there (and whose it is,
			// without --owner): the router's 404 for one that is not
			// looks like a function's own answer, which is printed and
			// exits 0.
			private := false
			switch fn, err := c.Function(cmd.Context(), owner, name); {
			case err == nil:
				owner, private = fn.Owner, fn.Access == functions.AccessPrivate
			case owner != "" && errors.Is(err, errdefs.ErrPermissionDenied):
				// Another user's function: anyone may call it, only its
				// owner and the admins read it through the API.
			default:
				return err
			}
			var body io.Reader
			var read *readErr
			if data != "" {
				b, done, err := dataBody(cmd, data)
				if err != nil {
					return err
				}
				defer done()
				read = &readErr{r: b}
				body = read
			}
			if method == "" {
				method = "GET"
				if body != nil {
					method = "POST"
				}
			}
			if private && h.Get("Authorization") == "" {
				// The router takes it out before the function sees it;
				// a public function is never sent it (and the router takes a
				// Spry token out of any function's request, for one made
				// public since the API said it was private).
				h.Set("Authorization", "Bearer "+c.Token)
			}
			res, err := c.Invoke(cmd.Context(), owner, args[0], strings.ToUpper(method), path, body, h) // with its @
			if err != nil {
				if read != nil && read.err != nil {
					// Not the server's fault: the body could not be read.
					return errdefs.Invalid("--data %s: %v", data, read.err)
				}
				return err
			}
			defer res.Body.Close()
			out := cmd.OutOrStdout()
			if include {
				fmt.Fprintf(out, "%s %s\n", res.Proto, res.Status)
				_ = res.Header.Write(out)
				fmt.Fprintln(out)
			}
			// The platform's error (a timeout, a crash, a full queue) is
			// printed as any answer is, and is the command's failure too;
			// its body is short JSON, kept to say why.
			var head []byte
			if res.Header.Get("Spry-Error") != "" {
				if head, err = io.ReadAll(io.LimitReader(res.Body, 1<<20)); err != nil {
					return err
				}
				if _, err := out.Write(head); err != nil {
					return err
				}
			}
			if _, err := io.Copy(out, res.Body); err != nil {
				return err
			}
			if err := client.InvokeError(res, head); err != nil {
				return err
			}
			if fail && res.StatusCode >= 400 {
				fmt.Fprintf(cmd.ErrOrStderr(), "function answered %s\n", res.Status)
				return &exitError{code: 22}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVarP(&path, "path", "p", "/", "path (and query) to call on the function, e.g. '/users/1?full=1'")
	f.StringVarP(&method, "method", "X", "", "HTTP method (default GET, or POST with --data)")
	f.StringVarP(&data, "data", "d", "", "request body: a string, @FILE, or - for stdin")
	f.StringArrayVarP(&headers, "header", "H", nil, "request header 'Name: value' (repeatable)")
	f.BoolVarP(&include, "include", "i", false, "print the response status and headers")
	f.BoolVar(&fail, "fail", false, "exit with code 22 if the function answers 400 or more")
	f.BoolVar(&async, "async", false, "queue the call instead (a POST of --data to --path, with its Content-Type from -H), run later with retries, and print the invocation's id; see spry invocations")
	f.BoolVar(&scheduled, "scheduled", false, "run the function's scheduled handler now, as its schedule would (it need not have one), and wait for it")
	f.StringVar(&owner, "owner", "", "the function's owner (default: you)")
	return cmd
}

// invokeRequest checks invoke's method, path and headers, and returns
// the headers.
func invokeRequest(method, path string, headers []string) (http.Header, error) {
	// A method is a token, as a header's name is.
	if method != "" && !isToken(method) {
		return nil, errdefs.Invalid("--method %q: not an HTTP method", method)
	}
	if _, err := url.Parse(path); err != nil {
		return nil, errdefs.Invalid("--path %q: %v", path, errors.Unwrap(err))
	}
	h := http.Header{}
	for _, hv := range headers {
		k, v, ok := strings.Cut(hv, ":")
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		switch {
		case !ok:
			return nil, errdefs.Invalid("--header %q: want 'Name: value'", hv)
		case !isToken(k):
			return nil, errdefs.Invalid("--header %q: %q is not a header name", hv, k)
		case strings.ContainsFunc(v, func(r rune) bool { return r < ' ' && r != '\t' || r == 0x7f }):
			return nil, errdefs.Invalid("--header %q: a value may not hold control characters such as a newline", hv)
		}
		h.Add(k, v)
	}
	return h, nil
}

// isToken says whether s is an HTTP token (RFC 9110 5.6.2), as a method
// and a header's name are. (x/net's httpguts would pull in x/text.)
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if r > '~' || r <= ' ' || strings.ContainsRune(`"(),/:;<=>?@[\]{}`, r) {
			return false
		}
	}
	return true
}

// readErr keeps the error its reader gave, which Go's client reports as
// the request's failure, as if the server could not be reached.
type readErr struct {
	r   io.Reader
	err error
}

func (r *readErr) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if err != nil && err != io.EOF && r.err == nil {
		r.err = err
	}
	return n, err
}

// invokeAsync is invoke --async: the call is queued through the API and
// its id printed. It is always a POST with the data's Content-Type (-H
// 'Content-Type: ...'), which is all an asynchronous invocation keeps.
func invokeAsync(cmd *cobra.Command, c *client.Client, owner, name, path, data, method string, headers []string, waits bool) error {
	if method != "" && !strings.EqualFold(method, "POST") {
		return errdefs.Invalid("--async sends a POST; --method %s cannot go with it", method)
	}
	if waits {
		return errdefs.Invalid("--include and --fail are about an answer, which --async does not wait for: see spry invocations %s ID", name)
	}
	contentType := ""
	for _, hv := range headers {
		k, v, ok := strings.Cut(hv, ":")
		if !ok || !strings.EqualFold(strings.TrimSpace(k), "Content-Type") {
			return errdefs.Invalid("--header %q: with --async only Content-Type is kept", hv)
		}
		contentType = strings.TrimSpace(v)
	}
	body, done, err := dataBody(cmd, data)
	if err != nil {
		return err
	}
	defer done()
	// One byte over the bound is enough for the server to refuse it.
	b, err := io.ReadAll(io.LimitReader(body, api.MaxInvocationBody+1))
	if err != nil {
		return err
	}
	v, err := c.Enqueue(cmd.Context(), owner, name, path, b, contentType)
	if err != nil {
		return err
	}
	fmt.Fprintln(cmd.OutOrStdout(), v.ID)
	return nil
}

// dataBody is what -d names: @FILE's contents, - for stdin, or the
// text itself (curl's convention), and what to call when it has been
// read. The text is a *strings.Reader, so that its request has a
// Content-Length.
func dataBody(cmd *cobra.Command, data string) (io.Reader, func(), error) {
	switch {
	case strings.HasPrefix(data, "@"):
		f, err := os.Open(data[1:])
		if err != nil {
			return nil, nil, errdefs.Invalid("%v", err)
		}
		if fi, err := f.Stat(); err == nil && fi.IsDir() {
			f.Close()
			return nil, nil, errdefs.Invalid("--data %s: a directory, not a file", data)
		}
		return f, func() { f.Close() }, nil
	case data == "-":
		return cmd.InOrStdin(), func() {}, nil
	}
	return strings.NewReader(data), func() {}, nil
}
