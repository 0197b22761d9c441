// Package build turns user source into the immutable bundle a version runs.
// It runs once, at deploy time, and is never on the request path: the
// bundle and its digest are stored and every later request runs them as is.
package build

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"path"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/evanw/esbuild/pkg/api"

	"github.com/spry-run/spry/internal/errdefs"
)

// DefaultMaxSize is the source size limit used when Options.MaxSize is 0.
const DefaultMaxSize = 5 << 20

// DefaultFilename is the name given to source that comes without one.
const DefaultFilename = "index.ts"

// maxFilenameLen keeps names usable as a single path component everywhere.
const maxFilenameLen = 255

// maxErrors is how many build errors are spelled out; more rarely help and
// would bloat the API response.
const maxErrors = 5

// maxLineText bounds the quoted source line in an error message, so one
// minified line can't make a megabyte-long error.
const maxLineText = 80

// Source is the code a user deploys.
type Source struct {
	// Filename is the file's base name, e.g. "hello.ts". Its extension picks
	// the loader (.ts, .mts, .tsx, .js, .mjs, .jsx); empty means "index.ts".
	Filename string
	Code     []byte
}

// Result is a built bundle.
type Result struct {
	Code   []byte // the bundled ES module, with an inline source map
	Digest string // "sha256:" + lowercase hex of Code
	// Fetched lists the imports Code leaves for the runtime that it would
	// have to fetch (npm:, jsr:, http:, https: specifiers). Bundle leaves
	// them all; BundleDir none.
	Fetched []string
}

// Options tune Bundle.
type Options struct {
	MaxSize int64 // maximum source size in bytes; 0 (or less) means 5 MiB
}

// loaders maps the extensions we accept to esbuild loaders. CommonJS
// extensions (.cjs, .cts) are left out: a function is an ES module.
var loaders = map[string]api.Loader{
	".ts":  api.LoaderTS,
	".mts": api.LoaderTS,
	".tsx": api.LoaderTSX,
	".js":  api.LoaderJS,
	".mjs": api.LoaderJS,
	".jsx": api.LoaderJSX,
}

// external lists the imports left for the runtime to resolve. Anything else
// (relative, absolute or bare paths) fails to resolve, because Stdin has no
// ResolveDir: a deploy is one file and must never read the server's disk.
//
// data: is external too: esbuild would otherwise inline the module and
// honour a sourceMappingURL=file:... comment inside it, reading a server
// file into the bundle. Deno and Node both import data: URLs themselves.
var external = []string{"npm:*", "jsr:*", "node:*", "https://*", "http://*", "data:*"}

// Bundle validates src and bundles it into a single ES module whose default
// export is the function. The same input always gives byte-identical output.
//
// Errors are of class errdefs.ErrInvalidArgument (bad filename, bad code,
// build errors, no default export) or errdefs.ErrTooLarge, with messages
// meant for the user; ctx.Err() is returned as is if ctx is done.
func Bundle(ctx context.Context, src Source, opts Options) (Result, error) {
	if err := ctx.Err(); err != nil {
		return Result{}, err
	}
	name := src.Filename
	if name == "" {
		name = DefaultFilename
	}
	loader, err := checkFilename(name)
	if err != nil {
		return Result{}, err
	}
	if err := checkCode(name, src.Code, opts.MaxSize); err != nil {
		return Result{}, err
	}

	// api.Build can't be interrupted, but a build takes milliseconds, so
	// checking ctx before and after is enough.
	bo := commonOptions()
	bo.Stdin = &api.StdinOptions{
		Contents:   string(src.Code),
		Loader:     loader,
		Sourcefile: name,
		// ResolveDir stays empty so that no import resolves to a file.
	}
	bo.Platform = api.PlatformNeutral
	bo.External = external
	// An explicit (empty) tsconfig keeps a tsconfig.json lying around the
	// server's working directory from changing the output.
	bo.TsconfigRaw = "{}"
	res := api.Build(bo)
	if err := ctx.Err(); err != nil {
		return Result{}, err
	}
	return finish(res, messageFormat{name: name, maxFile: maxFilenameLen})
}

// commonOptions returns the esbuild options every build shares: one
// self-contained ES module with an inline source map, in memory.
func commonOptions() api.BuildOptions {
	return api.BuildOptions{
		Bundle:    true,
		Format:    api.FormatESModule,
		Target:    api.ESNext,
		Write:     false,
		Metafile:  true,
		LogLevel:  api.LogLevelSilent,
		Sourcemap: api.SourceMapInline,
		// Without the sources' text: esbuild fills a missing
		// sourcesContent of an input source map by reading each source
		// it names from the disk, and a map may name any server file
		// (file:///etc/shadow in a data: map). Stack traces need only
		// the mappings.
		SourcesContent: api.SourcesContentExclude,
		Charset:        api.CharsetUTF8,
		// esbuild only notes (at debug level) an import() or require()
		// of a computed specifier it leaves as is; as warnings, finish
		// can refuse them: only the bundle is deployed, so such an
		// import of a file fails at run time.
		LogOverride: map[string]api.LogLevel{
			"unsupported-dynamic-import": api.LogLevelWarning,
			"unsupported-require-call":   api.LogLevelWarning,
		},
	}
}

// computedImportIDs are the esbuild message IDs of the imports
// commonOptions makes warnings of.
var computedImportIDs = map[string]string{
	"unsupported-dynamic-import": "import()",
	"unsupported-require-call":   "require()",
}

// computedImports turns esbuild's warnings about imports of a computed
// specifier in the user's own files (those mf.own accepts) into errors.
func computedImports(mf messageFormat, warnings []api.Message) []api.Message {
	var out []api.Message
	for _, w := range warnings {
		what, ok := computedImportIDs[w.ID]
		if !ok || w.Location == nil || (mf.own != nil && !mf.own(w.Location.File)) {
			continue
		}
		w.Text = what + " of a computed specifier cannot be bundled, and only the bundle is deployed: " +
			"give it a string literal (or a template literal such as `./dir/${name}.ts`, which bundles every file it matches)"
		out = append(out, w)
	}
	return out
}

// finish turns an esbuild result into a Result: errors become one
// ErrInvalidArgument, and the bundle must have a default export.
func finish(res api.BuildResult, mf messageFormat) (Result, error) {
	if len(res.Errors) > 0 {
		return Result{}, buildError(mf, res.Errors)
	}
	if msgs := computedImports(mf, res.Warnings); len(msgs) > 0 {
		return Result{}, buildError(mf, msgs)
	}
	if len(res.OutputFiles) != 1 {
		return Result{}, fmt.Errorf("build: esbuild wrote %d output files, want 1: %w", len(res.OutputFiles), errdefs.ErrInternal)
	}
	ok, fetched, err := outputMeta(res.Metafile)
	if err != nil {
		return Result{}, err
	}
	if !ok {
		return Result{}, errdefs.Invalid("%s: no default export; export default { fetch(req, ctx) { ... } } or export default function (req, ctx) { ... }", mf.name)
	}
	code := res.OutputFiles[0].Contents
	sum := sha256.Sum256(code)
	return Result{Code: code, Digest: "sha256:" + hex.EncodeToString(sum[:]), Fetched: fetched}, nil
}

// checkFilename validates name and returns its loader. The name ends up in
// error messages and the source map, so it must be one printable path
// component.
func checkFilename(name string) (api.Loader, error) {
	if len(name) > maxFilenameLen {
		return 0, errdefs.Invalid("filename is %d bytes long; the limit is %d", len(name), maxFilenameLen)
	}
	if !utf8.ValidString(name) {
		return 0, errdefs.Invalid("filename %q is not valid UTF-8", name)
	}
	for _, r := range name {
		if unicode.IsControl(r) {
			return 0, errdefs.Invalid("filename %q contains a control character", name)
		}
	}
	if strings.ContainsAny(name, `/\`) {
		return 0, errdefs.Invalid("filename %q must be a base name, without '/' or '\\'", name)
	}
	ext := strings.ToLower(path.Ext(name))
	loader, ok := loaders[ext]
	if !ok || len(name) == len(ext) {
		return 0, errdefs.Invalid("filename %q must end in .ts, .mts, .tsx, .js, .mjs or .jsx", name)
	}
	return loader, nil
}

// checkCode rejects code esbuild should not see: empty, too large, not
// UTF-8 (esbuild would silently replace bad bytes), or pointing esbuild at
// a file on the server through a source map comment.
func checkCode(name string, code []byte, maxSize int64) error {
	if maxSize <= 0 {
		maxSize = DefaultMaxSize
	}
	if int64(len(code)) > maxSize {
		return errdefs.New(errdefs.ErrTooLarge, "code is %d bytes; the limit is %d bytes", len(code), maxSize)
	}
	if len(bytes.TrimSpace(code)) == 0 {
		return errdefs.Invalid("code is empty")
	}
	if off := invalidUTF8(code); off >= 0 {
		line, col := position(code, off)
		return errdefs.Invalid("%s: code is not valid UTF-8: invalid byte 0x%02x at offset %d (line %d, column %d)", name, code[off], off, line, col)
	}
	if off := fileSourceMap(code); off >= 0 {
		line, col := position(code, off)
		return errdefs.Invalid("%s:%d:%d: %s", name, line, col, fileSourceMapText)
	}
	return nil
}

// fileSourceMapText is the error for a sourceMappingURL with a file: URL.
const fileSourceMapText = "sourceMappingURL must not be a file: URL; inline the map as a data: URL or remove the comment"

// invalidUTF8 returns the byte offset of the first invalid UTF-8 sequence
// in b, or -1.
func invalidUTF8(b []byte) int {
	for i := 0; i < len(b); {
		if b[i] < utf8.RuneSelf {
			i++
			continue
		}
		r, size := utf8.DecodeRune(b[i:])
		if r == utf8.RuneError && size == 1 {
			return i
		}
		i += size
	}
	return -1
}

// sourceMappingPragma is what esbuild looks for in a comment to load an
// input source map.
const sourceMappingPragma = "sourceMappingURL="

// fileSourceMap returns the offset of a sourceMappingURL pragma whose URL
// has the file: scheme, or -1. With source maps on, esbuild reads such a
// file from the server's disk and embeds it in the bundle, which would let
// a user read server files. Relative URLs are harmless (esbuild can't
// resolve them without a ResolveDir) and data: URLs are useful, so only
// file: is refused. Scanning the whole code, not only comments, errs on
// the safe side.
func fileSourceMap(code []byte) int {
	for _, ref := range sourceMapRefs(code) {
		if len(ref.url) >= 5 && strings.EqualFold(ref.url[:5], "file:") {
			return ref.off
		}
	}
	return -1
}

// sourceMapRef is one sourceMappingURL pragma: its offset and the URL
// after it (up to white space).
type sourceMapRef struct {
	off int
	url string
}

// sourceMapRefs returns every sourceMappingURL pragma in code, wherever it
// is (in a comment or not). A pragma gives two refs when a line comment
// and a block comment would end its URL at different places, so that
// whichever esbuild reads is checked.
func sourceMapRefs(code []byte) []sourceMapRef {
	var refs []sourceMapRef
	for off := 0; ; {
		i := bytes.Index(code[off:], []byte(sourceMappingPragma))
		if i < 0 {
			return refs
		}
		start := off + i
		rest := bytes.TrimLeftFunc(code[start+len(sourceMappingPragma):], func(r rune) bool { return unicode.IsSpace(r) || pragmaSpace(r) })
		// In a // comment the URL ends at white space or the end of the
		// line (U+2028 and U+2029 included); in a /* */ one at white
		// space or "*/", not at U+2028 or U+2029. Where it would go on
		// past \n or \r, the URL does not parse for esbuild either.
		lineEnd := bytes.IndexFunc(rest, func(r rune) bool { return pragmaSpace(r) || lineTerminator(r) })
		blockEnd := bytes.IndexFunc(rest, func(r rune) bool { return pragmaSpace(r) || r == '\n' || r == '\r' })
		if c := bytes.Index(rest, []byte("*/")); c >= 0 && (blockEnd < 0 || c < blockEnd) {
			blockEnd = c
		}
		for _, end := range []int{lineEnd, blockEnd} {
			if end < 0 {
				end = len(rest)
			}
			ref := sourceMapRef{off: start, url: string(rest[:end])}
			if len(refs) == 0 || refs[len(refs)-1] != ref {
				refs = append(refs, ref)
			}
		}
		off = start + len(sourceMappingPragma)
	}
}

// pragmaSpace is white space as esbuild's lexer ends a pragma's URL at
// it (js_ast.IsWhitespace): not Go's unicode.IsSpace, which also counts
// line terminators and U+0085 but not U+FEFF. A URL read shorter or
// longer than esbuild reads it could hide a path from the checks
// ("/x.map\uFEFF%zz", "./a\u0085/../../etc/x.map").
func pragmaSpace(r rune) bool {
	switch r {
	case '\t', '\v', '\f', ' ', '\u00A0', '\u1680', '\u202F', '\u205F', '\u3000', '\uFEFF':
		return true
	}
	return r >= '\u2000' && r <= '\u200A'
}

// lineTerminator reports JavaScript's line terminators, which end a //
// comment.
func lineTerminator(r rune) bool {
	return r == '\n' || r == '\r' || r == '\u2028' || r == '\u2029'
}

// position returns the 1-based line and column (in characters) of byte
// offset off in code.
func position(code []byte, off int) (line, col int) {
	before := code[:off]
	lineStart := bytes.LastIndexByte(before, '\n') + 1
	return bytes.Count(before, []byte{'\n'}) + 1, utf8.RuneCount(before[lineStart:]) + 1
}

// messageFormat says how build errors name files.
type messageFormat struct {
	name    string              // for messages without a file
	maxFile int                 // longer file names are replaced by name
	class   error               // the error's class; nil means ErrInvalidArgument
	scrub   func(string) string // if set, applied to each message line
	// own, if set, says whether a message's file is the user's own code
	// (not a dependency's or a fetched module's); nil means every file.
	own func(file string) bool
}

// buildError turns esbuild's errors into one error (of class mf.class,
// ErrInvalidArgument by default) with up to maxErrors lines of
// `file:line:col: text (in "source line")`.
func buildError(mf messageFormat, msgs []api.Message) error {
	var b strings.Builder
	for i, m := range msgs {
		if i == maxErrors {
			fmt.Fprintf(&b, "\n(and %d more)", len(msgs)-maxErrors)
			break
		}
		if i > 0 {
			b.WriteByte('\n')
		}
		line := formatMessage(mf, m)
		if mf.scrub != nil {
			line = mf.scrub(line)
		}
		b.WriteString(line)
	}
	class := mf.class
	if class == nil {
		class = errdefs.ErrInvalidArgument
	}
	return errdefs.New(class, "%s", b.String())
}

func formatMessage(mf messageFormat, m api.Message) string {
	text := oneLine(m.Text)
	loc := m.Location
	if loc == nil {
		return mf.name + ": " + text
	}
	file := loc.File
	if file == "" || len(file) > mf.maxFile {
		file = mf.name
	}
	// esbuild's column is a 0-based byte offset into the line; users and
	// editors count characters from 1.
	col := loc.Column
	if col >= 0 && col <= len(loc.LineText) {
		col = utf8.RuneCountInString(loc.LineText[:col])
	}
	s := fmt.Sprintf("%s:%d:%d: %s", oneLine(file), loc.Line, col+1, text)
	if excerpt := lineExcerpt(loc.LineText, loc.Column); excerpt != "" {
		// Not %q: escaped quotes would make the code harder to read.
		s += ` (in "` + excerpt + `")`
	}
	return s
}

// lineExcerpt returns the source line, trimmed, and cut to about
// maxLineText characters around byte offset col when it is long.
func lineExcerpt(line string, col int) string {
	runes := []rune(line)
	if col < 0 || col > len(line) {
		col = 0
	}
	at := utf8.RuneCountInString(line[:col])
	start, end := 0, len(runes)
	if len(runes) > maxLineText {
		start = max(at-maxLineText/2, 0)
		end = min(start+maxLineText, len(runes))
		start = max(end-maxLineText, 0)
	}
	s := strings.TrimSpace(oneLine(string(runes[start:end])))
	if s == "" {
		return ""
	}
	if start > 0 {
		s = "..." + s
	}
	if end < len(runes) {
		s += "..."
	}
	return s
}

// oneLine replaces control characters (tabs, newlines) with spaces so each
// error stays on its own line.
func oneLine(s string) string {
	return strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, s)
}

// outputMeta reads what finish needs from esbuild's metafile: whether the
// bundle has a default export, and the imports it leaves for the runtime
// that the runtime would have to fetch (npm:, jsr:, http:, https:).
func outputMeta(metafile string) (hasDefault bool, fetched []string, err error) {
	var meta struct {
		Outputs map[string]struct {
			Exports []string `json:"exports"`
			Imports []struct {
				Path     string `json:"path"`
				External bool   `json:"external"`
			} `json:"imports"`
		} `json:"outputs"`
	}
	if err := json.Unmarshal([]byte(metafile), &meta); err != nil {
		return false, nil, fmt.Errorf("build: parse esbuild metafile: %v: %w", err, errdefs.ErrInternal)
	}
	for _, out := range meta.Outputs {
		hasDefault = hasDefault || slices.Contains(out.Exports, "default")
		for _, imp := range out.Imports {
			if imp.External && fetchedImport(imp.Path) && !slices.Contains(fetched, imp.Path) {
				fetched = append(fetched, imp.Path)
			}
		}
	}
	return hasDefault, fetched, nil
}

// fetchedImport says whether the runtime would fetch spec to import it.
func fetchedImport(spec string) bool {
	for _, p := range []string{"npm:", "jsr:", "http:", "https:"} {
		if strings.HasPrefix(spec, p) {
			return true
		}
	}
	return false
}
