package build

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/evanw/esbuild/pkg/api"

	"github.com/spry-run/spry/internal/errdefs"
	"github.com/spry-run/spry/internal/sandbox"
)

// DirOptions tune BundleDir.
type DirOptions struct {
	// Entry is the entry file, relative to the directory (slash-separated).
	// Empty means: package.json "main", "module" or "exports" ".", else the
	// first of DefaultEntries that exists.
	Entry string
	// Runtime is the runtime the bundle is for, "deno" or "node"; it picks
	// the package.json "exports" conditions of dependencies. Empty means
	// either: only conditions both understand.
	Runtime string
	// MaxSize bounds each source file of the project (not of its
	// dependencies); 0 means DefaultMaxSize.
	MaxSize int64

	// NPM is the npm program; empty means "npm" on PATH.
	NPM string
	// NPMCache is npm's cache directory, created if missing; empty means a
	// temporary one for this build.
	NPMCache string
	// TempDir is where the build's scratch directories are made; empty
	// means os.TempDir(). A server gives its own, cleared at its start, so
	// that a build cut off by a kill leaves nothing for good.
	TempDir string
	// NPMCacheMaxBytes bounds NPMCache, which builds share: past it, after
	// an install, the least recently written entries go until it is down
	// to 3/4 of it. 0 means DefaultNPMCacheMaxBytes.
	NPMCacheMaxBytes int64
	// Logger hears of the npm cache's pruning; nil means slog.Default().
	Logger *slog.Logger
	// Registry is the npm registry; empty means DefaultRegistry.
	Registry string
	// JSRRegistry is the registry of the @jsr scope, where jsr: imports
	// are installed from; empty means DefaultJSRRegistry.
	JSRRegistry string
	// InstallTimeout bounds each npm run; 0 means DefaultInstallTimeout.
	InstallTimeout time.Duration
	// NPMUID, if not 0, is the host uid (and gid) npm runs as, so that a
	// flaw in npm's handling of a hostile package (its tarball unpacking,
	// say) cannot write or read what the caller can. npm then owns the
	// project directory, its temporary directories and NPMCache, and
	// must be able to reach them: the project directory's parents must
	// be searchable by others, as BundleFile's own is.
	NPMUID int
	// Cgroups, if set, runs each npm in a cgroup of its own, bounded by
	// NPMLimits and NPMWriteBytes, so that one deploy's install cannot
	// take the host's memory, CPU, processes or disk from every other
	// tenant.
	Cgroups *sandbox.Builds
	// NPMLimits bound each npm run under Cgroups; a zero field takes
	// DefaultNPMLimits'.
	NPMLimits sandbox.Resources
	// NPMWriteBytes bounds what each npm run under Cgroups may write, to
	// disk or elsewhere, all its processes together; 0 means
	// DefaultNPMWriteBytes.
	NPMWriteBytes int64

	// HTTPClient fetches remote (http: and https:) imports. nil means a
	// client that only connects to public addresses.
	HTTPClient *http.Client
	// FetchTimeout bounds the fetch of one remote module; 0 means
	// DefaultFetchTimeout.
	FetchTimeout time.Duration
	// MaxFetchBytes bounds one remote module; 0 means DefaultMaxFetchBytes.
	MaxFetchBytes int64
}

// DefaultEntries are the entry files BundleDir looks for, in order, when
// neither DirOptions.Entry nor package.json names one.
var DefaultEntries = []string{"index.ts", "index.js", "main.ts", "main.js", "mod.ts", "src/index.ts"}

// dirLoaders maps the extensions a project may import to esbuild loaders.
var dirLoaders = map[string]api.Loader{
	".ts":   api.LoaderTS,
	".mts":  api.LoaderTS,
	".cts":  api.LoaderTS,
	".tsx":  api.LoaderTSX,
	".js":   api.LoaderJS,
	".mjs":  api.LoaderJS,
	".cjs":  api.LoaderJS,
	".jsx":  api.LoaderJSX,
	".json": api.LoaderJSON,
}

// maxDependencyFile bounds one file of a dependency.
const maxDependencyFile = 64 << 20

// nodeBuiltins are Node's built-in modules, imported bare by npm packages
// (and by code written for Node).
var nodeBuiltins = []string{
	"assert", "assert/strict", "async_hooks", "buffer", "child_process", "cluster", "console", "constants",
	"crypto", "dgram", "diagnostics_channel", "dns", "dns/promises", "domain", "events", "fs", "fs/promises",
	"http", "http2", "https", "inspector", "inspector/promises", "module", "net", "os", "path", "path/posix",
	"path/win32", "perf_hooks", "process", "punycode", "querystring", "readline", "readline/promises", "repl",
	"stream", "stream/consumers", "stream/promises", "stream/web", "string_decoder", "sys", "timers",
	"timers/promises", "tls", "trace_events", "tty", "url", "util", "util/types", "v8", "vm", "wasi",
	"worker_threads", "zlib",
}

var builtinFilter = "^(" + strings.Join(quoteMetas(nodeBuiltins), "|") + ")$"

func quoteMetas(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = regexp.QuoteMeta(s)
	}
	return out
}

// requireBanner gives CommonJS code bundled into the ES module a require
// for the Node built-ins it loads (esbuild's __require shim uses it).
const requireBanner = `import { createRequire as __spryCreateRequire } from "node:module"; const require = __spryCreateRequire(import.meta.url);`

// Markers passed as PluginData to build.Resolve, to stop the plugin from
// handling a specifier it produced itself.
type (
	resolveLiteral struct{} // resolve as esbuild would, without the plugin
	resolveMapped  struct{} // already mapped by the import map
)

// remoteData is the PluginData of a fetched module: its final URL.
type remoteData struct{ url string }

// BundleDir bundles the project in dir into a single ES module whose
// default export is the function, as Bundle does for one file.
//
// Everything is resolved now, at deploy time, so that a cold start never
// fetches anything:
//   - relative imports across the project's files (TypeScript, JavaScript,
//     JSON);
//   - package.json dependencies, installed with npm (see npmRunner.install:
//     install scripts never run) and bundled;
//   - npm:name@range/sub imports, installed with npm into
//     node_modules/.spry-npm and bundled;
//   - jsr:@scope/name@range/sub imports, installed with npm from JSR's npm
//     registry (as @jsr/scope__name) and bundled;
//   - http: and https: imports, fetched (with their relative imports) and
//     bundled;
//   - deno.json (or deno.jsonc, or its "importMap" file) "imports", exact
//     and prefix ("key/") mappings to paths, URLs or npm: specifiers.
//
// node: imports, bare Node built-ins (as node:name) and data: imports
// stay for the runtime. No file outside dir is read: imports that
// resolve outside it (through "..", an absolute path or a symbolic link)
// are errors. The project's .npmrc is not given to npm (only a few
// harmless settings of it are kept, see npmrcAllowed), and BundleDir
// writes node_modules in dir.
//
// Errors are of class errdefs.ErrInvalidArgument (entry, configuration,
// build errors with file:line:col relative to dir, failed installs or
// fetches, no default export), errdefs.ErrTooLarge, or errdefs.ErrTimeout
// (npm or a fetch took too long); ctx.Err() is returned as is if ctx is
// done. Messages never hold the server's paths.
func BundleDir(ctx context.Context, dir string, opts DirOptions) (Result, error) {
	if err := ctx.Err(); err != nil {
		return Result{}, err
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return Result{}, fmt.Errorf("build: %w", err)
	}
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return Result{}, fmt.Errorf("build: %w", err)
	}
	b := &dirBuild{ctx: ctx, dir: real, given: abs, opts: opts}
	defer b.cleanup()
	return b.run()
}

// BundleFile bundles one file: as Bundle does, unless it imports npm:,
// jsr: or URL specifiers, which Bundle leaves for the runtime to fetch;
// then as BundleDir does a project of that file alone, so they are
// installed or fetched now and a cold start never fetches anything.
// opts.Entry is not used.
func BundleFile(ctx context.Context, src Source, opts DirOptions) (Result, error) {
	res, err := Bundle(ctx, src, Options{MaxSize: opts.MaxSize})
	if err != nil || len(res.Fetched) == 0 {
		return res, err
	}
	tmp, err := os.MkdirTemp(opts.TempDir, "spry-build-")
	if err != nil {
		return Result{}, fmt.Errorf("build: %w", err)
	}
	defer os.RemoveAll(tmp)
	if err := os.Chmod(tmp, 0o711); err != nil { // for NPMUID
		return Result{}, fmt.Errorf("build: %w", err)
	}
	opts.Entry = src.Filename
	if opts.Entry == "" {
		opts.Entry = DefaultFilename
	}
	if err := os.WriteFile(filepath.Join(tmp, opts.Entry), src.Code, 0o644); err != nil {
		return Result{}, fmt.Errorf("build: %w", err)
	}
	return BundleDir(ctx, tmp, opts)
}

// dirBuild is one BundleDir call.
type dirBuild struct {
	ctx   context.Context
	dir   string // absolute, symbolic links resolved: esbuild's paths start with it
	given string // dir as given, absolute
	opts  DirOptions
	cfg   projectConfig
	entry string // relative to dir, slash-separated

	fetch   *fetcher
	imports npmImports
	npmDir  string // where npm: imports are installed, once they are
	runner  *npmRunner
	tmp     string // HOME, TMPDIR and maybe the npm cache; removed at the end

	mu    sync.Mutex
	class error // the error class a plugin asked for (ErrTooLarge, ErrTimeout)
}

func (b *dirBuild) cleanup() {
	if b.tmp != "" {
		os.RemoveAll(b.tmp)
	}
}

func (b *dirBuild) run() (Result, error) {
	cfg, err := readConfig(b.dir)
	if err != nil {
		return Result{}, err
	}
	b.cfg = cfg
	if b.entry, err = findEntry(b.dir, b.opts.Entry, cfg.pkg, b.opts.Runtime); err != nil {
		return Result{}, err
	}
	timeout := b.opts.FetchTimeout
	if timeout <= 0 {
		timeout = DefaultFetchTimeout
	}
	maxFetch := b.opts.MaxFetchBytes
	if maxFetch <= 0 {
		maxFetch = DefaultMaxFetchBytes
	}
	client := b.opts.HTTPClient
	if client == nil {
		client = defaultClient()
	}
	agent := "Spry"
	if b.opts.Runtime == "deno" {
		agent = "Deno/2"
	}
	b.fetch = &fetcher{client: client, timeout: timeout, max: maxFetch, agent: agent}

	if cfg.pkg.hasDependencies() {
		if err := b.installProject(); err != nil {
			return Result{}, err
		}
	}

	// First pass: npm: imports are only collected (and left external);
	// remote modules are fetched once for all passes.
	res, err := b.build(true, false)
	if err != nil {
		return Result{}, err
	}
	deps, err := b.imports.dependencies()
	if err != nil {
		return Result{}, err
	}
	if len(deps) > 0 {
		if err := b.installImports(deps); err != nil {
			return Result{}, err
		}
		if res, err = b.build(false, false); err != nil {
			return Result{}, err
		}
	}
	if needsRequire(res.Metafile) {
		if res, err = b.build(len(deps) == 0, true); err != nil {
			return Result{}, err
		}
	}
	return finish(res, b.messageFormat())
}

// build runs esbuild once. It returns an error only for a failed build
// (formatted) or a done ctx; the result still has to be finished.
func (b *dirBuild) build(collect, banner bool) (api.BuildResult, error) {
	conditions := []string{"node", "module"}
	if b.opts.Runtime == "deno" {
		conditions = append([]string{"deno"}, conditions...)
	}
	bo := commonOptions()
	bo.EntryPoints = []string{"./" + b.entry}
	bo.AbsWorkingDir = b.dir
	bo.Platform = api.PlatformNeutral
	bo.MainFields = []string{"main", "module"}
	bo.Conditions = conditions
	bo.TsconfigRaw = b.cfg.tsconfig
	// Libraries test NODE_ENV to drop development checks; reading
	// process.env at run time would also need an env permission in Deno.
	bo.Define = map[string]string{"process.env.NODE_ENV": `"production"`}
	bo.Plugins = []api.Plugin{{Name: "spry", Setup: func(pb api.PluginBuild) { b.setup(pb, collect) }}}
	if banner {
		bo.Banner = map[string]string{"js": requireBanner}
	}
	res := api.Build(bo)
	if err := b.ctx.Err(); err != nil {
		return res, err
	}
	if len(res.Errors) > 0 {
		return res, buildError(b.messageFormat(), res.Errors)
	}
	return res, nil
}

func (b *dirBuild) messageFormat() messageFormat {
	b.mu.Lock()
	defer b.mu.Unlock()
	return messageFormat{name: b.entry, maxFile: 4096, class: b.class, scrub: b.scrub, own: ownFile}
}

// ownFile says whether esbuild's name of a file is one of the project's
// own, not a dependency's or a fetched module's: those may import what
// they compute where they can do without (in a try, say), and the user
// cannot change them.
func ownFile(file string) bool {
	return !strings.HasPrefix(file, "http-url:") && !isDependency(file)
}

// setClass records the class of a plugin's error: the build error that
// reports it gets it.
func (b *dirBuild) setClass(err error) {
	for _, c := range []error{errdefs.ErrTooLarge, errdefs.ErrTimeout} {
		if errors.Is(err, c) {
			b.mu.Lock()
			b.class = c
			b.mu.Unlock()
		}
	}
}

// scrub takes the server's paths out of a message.
func (b *dirBuild) scrub(s string) string {
	type pair struct{ old, new string }
	var pairs []pair
	for _, p := range []string{b.dir, b.given} {
		pairs = append(pairs, pair{p + string(filepath.Separator), ""}, pair{p, "."})
	}
	if b.tmp != "" {
		pairs = append(pairs, pair{b.tmp, "<tmp>"})
	}
	if b.opts.NPMCache != "" {
		pairs = append(pairs, pair{b.opts.NPMCache, "<npm-cache>"})
	}
	// Longest first: where one path is a prefix of another, the longer
	// one must win.
	sort.SliceStable(pairs, func(i, j int) bool { return len(pairs[i].old) > len(pairs[j].old) })
	args := make([]string, 0, 2*len(pairs))
	for _, p := range pairs {
		args = append(args, p.old, p.new)
	}
	s = strings.ReplaceAll(s, "http-url:", "")
	return strings.NewReplacer(args...).Replace(s)
}

// rel returns p relative to the project, slash-separated.
func (b *dirBuild) rel(p string) string {
	r, err := filepath.Rel(b.dir, p)
	if err != nil {
		return filepath.Base(p)
	}
	return filepath.ToSlash(r)
}

// inside reports whether the real path p is the project or in it.
func (b *dirBuild) inside(p string) bool {
	return p == b.dir || strings.HasPrefix(p, b.dir+string(filepath.Separator))
}

// setup registers the plugin's callbacks. esbuild tries OnResolve
// callbacks in order; the first returning a path wins.
func (b *dirBuild) setup(pb api.PluginBuild, collect bool) {
	pb.OnResolve(api.OnResolveOptions{Filter: ".*"}, func(a api.OnResolveArgs) (api.OnResolveResult, error) { return b.resolveMapped(pb, a) })
	pb.OnResolve(api.OnResolveOptions{Filter: "^(npm|jsr):"}, func(a api.OnResolveArgs) (api.OnResolveResult, error) {
		return b.resolveNPM(pb, a, collect)
	})
	pb.OnResolve(api.OnResolveOptions{Filter: "^https?://"}, func(a api.OnResolveArgs) (api.OnResolveResult, error) {
		u, err := url.Parse(a.Path)
		if err != nil {
			return api.OnResolveResult{}, fmt.Errorf("invalid URL %s", quoteName(a.Path))
		}
		s, err := remoteURL(u)
		if err != nil {
			return api.OnResolveResult{}, err
		}
		return api.OnResolveResult{Path: s, Namespace: "http-url"}, nil
	})
	pb.OnResolve(api.OnResolveOptions{Filter: "^(node|data):"}, func(a api.OnResolveArgs) (api.OnResolveResult, error) {
		return api.OnResolveResult{Path: a.Path, External: true}, nil
	})
	pb.OnResolve(api.OnResolveOptions{Filter: builtinFilter}, func(a api.OnResolveArgs) (api.OnResolveResult, error) {
		if _, ok := a.PluginData.(resolveLiteral); ok {
			return api.OnResolveResult{}, nil
		}
		return api.OnResolveResult{Path: "node:" + a.Path, External: true}, nil
	})
	pb.OnResolve(api.OnResolveOptions{Filter: ".*", Namespace: "http-url"}, b.resolveInRemote)
	pb.OnLoad(api.OnLoadOptions{Filter: ".*", Namespace: "http-url"}, b.loadRemote)
	pb.OnLoad(api.OnLoadOptions{Filter: ".*", Namespace: "file"}, b.loadFile)
}

// resolveMapped applies the import map.
func (b *dirBuild) resolveMapped(pb api.PluginBuild, a api.OnResolveArgs) (api.OnResolveResult, error) {
	switch a.PluginData.(type) {
	case resolveLiteral, resolveMapped:
		return api.OnResolveResult{}, nil
	}
	if a.Namespace == "file" && isDependency(b.rel(a.Importer)) {
		return api.OnResolveResult{}, nil // packages don't see the import map
	}
	target, ok := b.cfg.imports.lookup(a.Path)
	if !ok {
		return api.OnResolveResult{}, nil
	}
	r := pb.Resolve(target, api.ResolveOptions{
		Importer:   a.Importer,
		Namespace:  "file",
		ResolveDir: b.dir,
		Kind:       a.Kind,
		PluginData: resolveMapped{},
	})
	return fromResolve(r, fmt.Sprintf("import map entry %s -> %s", quoteName(a.Path), quoteName(b.scrub(target))))
}

// fromResolve turns a build.Resolve result into a callback's result.
func fromResolve(r api.ResolveResult, what string) (api.OnResolveResult, error) {
	if len(r.Errors) > 0 {
		msgs := make([]api.Message, len(r.Errors))
		for i, m := range r.Errors {
			msgs[i] = api.Message{Text: what + ": " + m.Text}
		}
		return api.OnResolveResult{Errors: msgs}, nil
	}
	return api.OnResolveResult{
		Path:       r.Path,
		External:   r.External,
		Namespace:  r.Namespace,
		Suffix:     r.Suffix,
		PluginData: r.PluginData,
	}, nil
}

// resolveNPM handles npm: and jsr: specifiers (a JSR package is
// installed from JSR's npm registry): collected (and external) in the
// first pass, resolved in the installed packages afterwards.
func (b *dirBuild) resolveNPM(pb api.PluginBuild, a api.OnResolveArgs, collect bool) (api.OnResolveResult, error) {
	var imp npmImport
	var err error
	if rest, ok := strings.CutPrefix(a.Path, "jsr:"); ok {
		imp, err = parseJSRImport(rest)
	} else {
		imp, err = parseNPMImport(strings.TrimPrefix(a.Path, "npm:"))
	}
	if err != nil {
		return api.OnResolveResult{}, err
	}
	if collect {
		b.imports.add(imp)
		return api.OnResolveResult{Path: a.Path, External: true}, nil
	}
	r := pb.Resolve(imp.name+imp.sub, api.ResolveOptions{
		Importer:   a.Importer,
		Namespace:  "file",
		ResolveDir: b.npmDir,
		Kind:       a.Kind,
		PluginData: resolveLiteral{},
	})
	return fromResolve(r, "cannot resolve "+a.Path)
}

// resolveInRemote resolves the imports of a fetched module that no other
// callback took: relative URLs.
func (b *dirBuild) resolveInRemote(a api.OnResolveArgs) (api.OnResolveResult, error) {
	base := a.Importer
	if d, ok := a.PluginData.(remoteData); ok {
		base = d.url
	}
	if !strings.HasPrefix(a.Path, "./") && !strings.HasPrefix(a.Path, "../") && !strings.HasPrefix(a.Path, "/") {
		return api.OnResolveResult{}, fmt.Errorf("cannot resolve %s from %s: a remote module can only import URLs, relative paths, npm:, jsr: and node: specifiers, or what the import map maps", quoteName(a.Path), base)
	}
	bu, err := url.Parse(base)
	if err != nil {
		return api.OnResolveResult{}, fmt.Errorf("invalid URL %s", quoteName(base))
	}
	ref, err := url.Parse(a.Path)
	if err != nil {
		return api.OnResolveResult{}, fmt.Errorf("invalid import %s", quoteName(a.Path))
	}
	s, err := remoteURL(bu.ResolveReference(ref))
	if err != nil {
		return api.OnResolveResult{}, err
	}
	return api.OnResolveResult{Path: s, Namespace: "http-url"}, nil
}

// loadRemote fetches a remote module.
func (b *dirBuild) loadRemote(a api.OnLoadArgs) (api.OnLoadResult, error) {
	mod, err := b.fetch.fetch(b.ctx, a.Path)
	if err != nil {
		b.setClass(err)
		return api.OnLoadResult{}, err
	}
	code := []byte(mod.code)
	if msg := checkSource(a.Path, code); msg != nil {
		return api.OnLoadResult{Errors: []api.Message{*msg}}, nil
	}
	// No ResolveDir: nothing in a remote module resolves on the disk.
	return api.OnLoadResult{Contents: &mod.code, Loader: mod.loader, PluginData: remoteData{mod.final}}, nil
}

// loadFile loads a file of the project or of its dependencies, after
// checking that it is inside the project (symbolic links resolved): the
// one place that guards every file esbuild reads for the bundle.
func (b *dirBuild) loadFile(a api.OnLoadArgs) (api.OnLoadResult, error) {
	rel := b.rel(a.Path)
	real, err := filepath.EvalSymlinks(a.Path)
	if err != nil {
		return api.OnLoadResult{}, fmt.Errorf("cannot read %s", quoteName(rel))
	}
	if !b.inside(real) {
		// Only the base name: the rest is the server's layout.
		return api.OnLoadResult{}, fmt.Errorf("cannot import %s: it is outside the project directory", quoteName(filepath.Base(real)))
	}
	ext := strings.ToLower(filepath.Ext(real))
	loader, ok := dirLoaders[ext]
	if !ok {
		return api.OnLoadResult{}, fmt.Errorf("cannot import %s: only .ts, .mts, .cts, .tsx, .js, .mjs, .cjs, .jsx and .json files can be imported", quoteName(rel))
	}
	dep := isDependency(b.rel(real))
	limit := b.opts.MaxSize
	if limit <= 0 {
		limit = DefaultMaxSize
	}
	if dep {
		limit = maxDependencyFile
	}
	f, err := os.Open(real)
	if err != nil {
		return api.OnLoadResult{}, fmt.Errorf("cannot read %s", quoteName(rel))
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		return api.OnLoadResult{}, fmt.Errorf("%s is not a regular file", quoteName(rel))
	}
	code, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return api.OnLoadResult{}, fmt.Errorf("cannot read %s", quoteName(rel))
	}
	if int64(len(code)) > limit {
		b.setClass(errdefs.ErrTooLarge)
		return api.OnLoadResult{}, fmt.Errorf("%s is larger than %d bytes", quoteName(rel), limit)
	}
	var utf8Check []byte
	if !dep {
		utf8Check = code // dependencies may have Latin-1 comments; esbuild copes
	}
	if msg := checkSource(rel, utf8Check); msg != nil {
		return api.OnLoadResult{Errors: []api.Message{*msg}}, nil
	}
	if msg := b.checkSourceMaps(rel, real, code); msg != nil {
		return api.OnLoadResult{Errors: []api.Message{*msg}}, nil
	}
	s := string(code)
	return api.OnLoadResult{Contents: &s, Loader: loader, ResolveDir: filepath.Dir(real)}, nil
}

// checkSource reports code that is not UTF-8 or has a sourceMappingURL
// with a file: URL, as a message located in name.
func checkSource(name string, code []byte) *api.Message {
	if off := invalidUTF8(code); off >= 0 {
		line, col := position(code, off)
		return &api.Message{
			Text:     fmt.Sprintf("code is not valid UTF-8: invalid byte 0x%02x at offset %d", code[off], off),
			Location: &api.Location{File: name, Line: line, Column: col - 1},
		}
	}
	if off := fileSourceMap(code); off >= 0 {
		line, col := position(code, off)
		return &api.Message{Text: fileSourceMapText, Location: &api.Location{File: name, Line: line, Column: col - 1}}
	}
	return nil
}

// checkSourceMaps refuses sourceMappingURLs esbuild would read from the
// disk outside the project: file: URLs, and relative URLs (or absolute
// paths) that resolve outside it. esbuild resolves them against the file's
// directory as a file: URL, which this mirrors.
func (b *dirBuild) checkSourceMaps(rel, real string, code []byte) *api.Message {
	for _, ref := range sourceMapRefs(code) {
		bad := ""
		switch u, err := url.Parse(ref.url); {
		case strings.HasPrefix(ref.url, "data:"):
		case err != nil:
			bad = "sourceMappingURL is not a valid URL"
		case strings.EqualFold(u.Scheme, "file"):
			bad = fileSourceMapText
		case u.Scheme != "":
			// Other schemes are ignored by esbuild.
		default:
			base := &url.URL{Scheme: "file", Path: filepath.ToSlash(filepath.Dir(real)) + "/"}
			// Not cleaned first: a ".." left in the path ("%2e%2e" is no
			// dot segment to ResolveReference) follows a symbolic link
			// before it when esbuild reads the file, as EvalSymlinks
			// resolves it; cleaned, "lnk/../x.map" looked like "x.map".
			p := filepath.FromSlash(base.ResolveReference(u).Path)
			if r, err := filepath.EvalSymlinks(p); err == nil {
				p = r
			} else {
				p = filepath.Clean(p) // not there: esbuild can't read it either
			}
			if !b.inside(p) {
				bad = "sourceMappingURL points outside the project directory"
			}
		}
		if bad != "" {
			line, col := position(code, ref.off)
			return &api.Message{Text: bad, Location: &api.Location{File: rel, Line: line, Column: col - 1}}
		}
	}
	return nil
}

// needsRequire reports whether the bundle calls require() for an external
// module (CommonJS code requiring a Node built-in), which an ES module
// only can with the requireBanner.
func needsRequire(metafile string) bool {
	var meta struct {
		Outputs map[string]struct {
			Imports []struct {
				Kind     string `json:"kind"`
				External bool   `json:"external"`
			} `json:"imports"`
		} `json:"outputs"`
	}
	if err := json.Unmarshal([]byte(metafile), &meta); err != nil {
		return false
	}
	for _, o := range meta.Outputs {
		for _, imp := range o.Imports {
			if imp.External && (imp.Kind == "require-call" || imp.Kind == "require-resolve") {
				return true
			}
		}
	}
	return false
}

// installProject installs the package.json dependencies in the project.
func (b *dirBuild) installProject() error {
	if err := checkPackageJSON("package.json", b.cfg.pkg); err != nil {
		return err
	}
	if len(b.cfg.pkg.Workspaces) > 0 {
		if err := checkWorkspaces(b.dir); err != nil {
			return err
		}
	}
	n, err := b.npm()
	if err != nil {
		return err
	}
	registry := n.registry
	ci := false
	for _, lock := range []string{"package-lock.json", "npm-shrinkwrap.json"} {
		lb, err := readConfigFile(b.dir, lock)
		if err != nil {
			return err
		}
		if lb != nil {
			ci = true
			if err := checkLockfile(lb, registry, n.jsr); err != nil {
				return err
			}
		}
	}
	return n.install(b.ctx, b.dir, ci)
}

// checkWorkspaces checks the dependencies of every package.json in the
// project but the root's (already checked) and node_modules': npm treats
// a workspace's dependencies as the root's, allowing it a directory
// anywhere on the server (linked into node_modules). Every package.json,
// not only those the workspace globs match, so that no glob dialect can
// differ from npm's.
func checkWorkspaces(dir string) error {
	return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return errdefs.Invalid("%s: cannot read it", quoteName(filepath.Base(p)))
		}
		if d.IsDir() && d.Name() == "node_modules" {
			return filepath.SkipDir
		}
		if d.IsDir() || d.Name() != "package.json" || p == filepath.Join(dir, "package.json") {
			return nil
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return fmt.Errorf("build: %w", err)
		}
		rel = filepath.ToSlash(rel)
		b, err := readConfigFile(dir, rel)
		if err != nil || b == nil {
			return err
		}
		var pkg packageJSON
		if err := json.Unmarshal(b, &pkg); err != nil {
			return errdefs.Invalid("%s: %v", rel, jsonError(b, err))
		}
		return checkPackageJSON(rel, &pkg)
	})
}

// installImports installs the packages npm: imports name.
func (b *dirBuild) installImports(deps map[string]string) error {
	n, err := b.npm()
	if err != nil {
		return err
	}
	dir, err := writeImportsPackage(b.dir, deps)
	if err != nil {
		return err
	}
	if err := n.install(b.ctx, dir, false); err != nil {
		return err
	}
	b.npmDir = dir
	return nil
}

// npm prepares the build's npmRunner (and the temporary directories it
// needs) on first use.
func (b *dirBuild) npm() (*npmRunner, error) {
	if b.runner != nil {
		return b.runner, nil
	}
	registry, err := registryURL(b.opts.Registry, DefaultRegistry)
	if err != nil {
		return nil, err
	}
	jsr, err := registryURL(b.opts.JSRRegistry, DefaultJSRRegistry)
	if err != nil {
		return nil, err
	}
	bin := b.opts.NPM
	if bin == "" {
		bin = "npm"
	}
	if bin, err = exec.LookPath(bin); err != nil {
		return nil, fmt.Errorf("build: npm is needed to install dependencies: %w", err)
	}
	if b.tmp == "" {
		if b.tmp, err = os.MkdirTemp(b.opts.TempDir, "spry-build-*"); err != nil {
			return nil, fmt.Errorf("build: %w", err)
		}
		if err := os.Chmod(b.tmp, 0o711); err != nil {
			return nil, fmt.Errorf("build: %w", err)
		}
		for _, d := range []string{"home", "tmp"} {
			if err := os.Mkdir(filepath.Join(b.tmp, d), 0o700); err != nil {
				return nil, fmt.Errorf("build: %w", err)
			}
			if err := b.own(filepath.Join(b.tmp, d)); err != nil {
				return nil, err
			}
		}
	}
	cache := b.opts.NPMCache
	if cache == "" {
		cache = filepath.Join(b.tmp, "cache")
	}
	if err := os.MkdirAll(cache, 0o700); err != nil {
		return nil, fmt.Errorf("build: npm cache: %w", err)
	}
	if err := b.own(cache); err != nil {
		return nil, err
	}
	extra, err := readNPMRC(b.dir)
	if err != nil {
		return nil, err
	}
	timeout := b.opts.InstallTimeout
	if timeout <= 0 {
		timeout = DefaultInstallTimeout
	}
	var shared *npmCache
	if b.opts.NPMCache != "" {
		shared = sharedNPMCache(cache)
	}
	cacheMax := b.opts.NPMCacheMaxBytes
	if cacheMax <= 0 {
		cacheMax = DefaultNPMCacheMaxBytes
	}
	maxWrite := b.opts.NPMWriteBytes
	if maxWrite <= 0 {
		maxWrite = DefaultNPMWriteBytes
	}
	log := b.opts.Logger
	if log == nil {
		log = slog.Default()
	}
	r := &npmRunner{
		bin:      bin,
		registry: registry,
		jsr:      jsr,
		cache:    cache,
		home:     filepath.Join(b.tmp, "home"),
		tmp:      filepath.Join(b.tmp, "tmp"),
		timeout:  timeout,
		extraEnv: extra,
		scrub:    b.scrub,
		own:      b.own,
		cgroups:  b.opts.Cgroups,
		limits:   npmLimits(b.opts.NPMLimits),
		maxWrite: maxWrite,
		shared:   shared,
		cacheMax: cacheMax,
		log:      log,
	}
	if uid := b.opts.NPMUID; uid != 0 {
		// No supplementary groups: not the server's (root's, say), whose
		// files npm could otherwise read.
		r.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid), Groups: []uint32{}}
	}
	if err := r.checkLocks(); err != nil {
		return nil, err
	}
	b.runner = r
	return r, nil
}

// findEntry picks the entry file: opts.Entry, else package.json's, else
// the first of DefaultEntries. It returns it relative to dir,
// slash-separated.
func findEntry(dir, entry string, pkg *packageJSON, runtime string) (string, error) {
	if entry != "" {
		rel, err := localPath(entry)
		if err != nil {
			return "", errdefs.Invalid("entry: %v", err)
		}
		if err := checkEntryFile(dir, rel); err != nil {
			return "", errdefs.Invalid("entry %s: %v", quoteName(entry), err)
		}
		return rel, nil
	}
	// Why each entry package.json names was passed over, for the error
	// if nothing is found: a project whose "main" is not built yet falls
	// back to index.ts, but one whose "main" cannot be an entry must say so.
	var skipped []string
	if pkg != nil {
		for _, c := range packageEntries(pkg, runtime) {
			rel, err := localPath(c)
			if err != nil {
				skipped = append(skipped, fmt.Sprintf("package.json names %s: %v", quoteName(c), err))
				continue
			}
			err = checkEntryFile(dir, rel)
			if err == nil {
				return rel, nil
			}
			skipped = append(skipped, fmt.Sprintf("package.json names %s, which %v", quoteName(c), err))
		}
	}
	for _, c := range DefaultEntries {
		if checkEntryFile(dir, c) == nil {
			return c, nil
		}
	}
	msg := fmt.Sprintf("no entry point found: looked for package.json \"main\", \"module\" and \"exports\", then %s; add one of them or name the entry file", strings.Join(DefaultEntries, ", "))
	if len(skipped) > 0 {
		msg += " (" + strings.Join(skipped, "; ") + ")"
	}
	return "", errdefs.Invalid("%s", msg)
}

// packageEntries lists the entry candidates package.json names, in order:
// "main", "module", then "exports" for ".".
func packageEntries(pkg *packageJSON, runtime string) []string {
	var out []string
	for _, raw := range []json.RawMessage{pkg.Main, pkg.Module} {
		var s string
		if json.Unmarshal(raw, &s) == nil && s != "" {
			out = append(out, s)
		}
	}
	var exports any
	if json.Unmarshal(pkg.Exports, &exports) == nil {
		if m, ok := exports.(map[string]any); ok {
			if dot, ok := m["."]; ok {
				exports = dot
			}
		}
		conditions := []string{"node", "import", "module", "default"}
		if runtime == "deno" {
			conditions = append([]string{"deno"}, conditions...)
		}
		if s := exportTarget(exports, conditions, 0); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// exportTarget follows conditions in an "exports" value to a path.
func exportTarget(v any, conditions []string, depth int) string {
	if depth > 8 {
		return ""
	}
	switch v := v.(type) {
	case string:
		return v
	case map[string]any:
		for _, c := range conditions {
			if x, ok := v[c]; ok {
				if s := exportTarget(x, conditions, depth+1); s != "" {
					return s
				}
			}
		}
	case []any:
		for _, x := range v {
			if s := exportTarget(x, conditions, depth+1); s != "" {
				return s
			}
		}
	}
	return ""
}

// checkEntryFile checks that rel is a regular file in dir (not through a
// symbolic link out of it) with an extension an entry may have: any
// module a project may import, CommonJS included (esbuild makes its
// module.exports the bundle's default export), but JSON.
func checkEntryFile(dir, rel string) error {
	ext := strings.ToLower(filepath.Ext(rel))
	if _, ok := dirLoaders[ext]; !ok || ext == ".json" {
		return errors.New("must end in .ts, .mts, .cts, .tsx, .js, .mjs, .cjs or .jsx")
	}
	p := filepath.Join(dir, filepath.FromSlash(rel))
	real, err := filepath.EvalSymlinks(p)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return errors.New("does not exist")
		}
		return errors.New("cannot be read")
	}
	if real != dir && !strings.HasPrefix(real, dir+string(filepath.Separator)) {
		return errors.New("is outside the project directory")
	}
	fi, err := os.Stat(real)
	if err != nil || !fi.Mode().IsRegular() {
		return errors.New("is not a regular file")
	}
	return nil
}

// own gives the tree at dir to NPMUID, if set. A tree already its own at
// the top (a cache of earlier builds) is left as it is: what npm wrote in
// it is npm's.
func (b *dirBuild) own(dir string) error {
	uid := b.opts.NPMUID
	if uid == 0 {
		return nil
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("build: %w", err)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) == uid {
		return nil
	}
	err = filepath.WalkDir(dir, func(path string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		// Lchown: a link is given away, never what it points to.
		return os.Lchown(path, uid, uid)
	})
	if err != nil {
		return fmt.Errorf("build: give npm its directory: %w", err)
	}
	return nil
}
