package build

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/spry-run/spry/internal/errdefs"
	"github.com/spry-run/spry/internal/npmtest"
)

// writeProject writes files (slash-separated names) into a new directory.
func writeProject(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	writeFiles(t, dir, files)
	return dir
}

func writeFiles(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, body := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// codeOf returns the bundle without its inline source map (which holds
// the original sources).
func codeOf(res Result) string {
	code := string(res.Code)
	if i := strings.Index(code, "//# sourceMappingURL="); i >= 0 {
		code = code[:i]
	}
	return code
}

// checkNoPaths fails if s holds dir (as given or with symbolic links
// resolved) or the temporary directory.
func checkNoPaths(t *testing.T, s string, dir string) {
	t.Helper()
	paths := []string{dir, os.TempDir() + "/spry-build-"}
	if real, err := filepath.EvalSymlinks(dir); err == nil {
		paths = append(paths, real)
	}
	for _, p := range paths {
		if strings.Contains(s, p) {
			t.Errorf("%q leaks the server path %s", s, p)
		}
	}
}

const utilTS = `import { double } from "./math.js";
import data from "../data/config.json";

export function greet(name: string): string {
  return "hello " + name + " " + double(data.n);
}
`

var projectFiles = map[string]string{
	"index.ts":         "import { greet } from \"./lib/util.ts\";\nimport { version } from \"./version\";\nexport default { fetch(req: Request): Response { return new Response(greet(\"x\") + \" v\" + version); } };\n",
	"lib/util.ts":      utilTS,
	"lib/math.js":      "export function double(n) { return n * 2; }\n",
	"version.ts":       "export const version: number = 3;\n",
	"data/config.json": `{"n": 21}`,
	"unused.ts":        "this is not even valid TypeScript",
}

func TestBundleDir(t *testing.T) {
	dir := writeProject(t, projectFiles)
	res, err := BundleDir(context.Background(), dir, DirOptions{})
	if err != nil {
		t.Fatal(err)
	}
	checkResult(t, res)
	code := codeOf(res)
	for _, want := range []string{"function double(n)", "function greet(name)", "// lib/util.ts", "// lib/math.js", "// data/config.json", "var version = 3", "as default"} {
		if !strings.Contains(code, want) {
			t.Errorf("output lacks %q:\n%s", want, code)
		}
	}
	checkNoPaths(t, string(res.Code), dir)
	if out := runDeno(t, res.Code); out != "hello x 42 v3" {
		t.Errorf("bundle answered %q", out)
	}

	// The same files elsewhere give the same bytes: nothing depends on
	// where the build ran.
	again, err := BundleDir(context.Background(), writeProject(t, projectFiles), DirOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if again.Digest != res.Digest {
		t.Errorf("digest %s in another directory, want %s", again.Digest, res.Digest)
	}
	// And through a symbolic link to the directory.
	link := filepath.Join(t.TempDir(), "link")
	if err := os.Symlink(dir, link); err != nil {
		t.Fatal(err)
	}
	viaLink, err := BundleDir(context.Background(), link, DirOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if viaLink.Digest != res.Digest {
		t.Errorf("digest %s through a link, want %s", viaLink.Digest, res.Digest)
	}
}

func TestBundleDirEntry(t *testing.T) {
	const def = "export default { fetch() { return new Response(%q) } };\n"
	tests := []struct {
		name    string
		files   map[string]string
		entry   string
		want    string // text the chosen entry returns
		wantErr string
	}{
		{name: "index.ts", files: map[string]string{"index.ts": fmt.Sprintf(def, "index.ts"), "main.ts": fmt.Sprintf(def, "main.ts")}, want: "index.ts"},
		{name: "index.js before main.ts", files: map[string]string{"index.js": fmt.Sprintf(def, "index.js"), "main.ts": fmt.Sprintf(def, "main.ts")}, want: "index.js"},
		{name: "main.js", files: map[string]string{"main.js": fmt.Sprintf(def, "main.js"), "mod.ts": fmt.Sprintf(def, "mod.ts")}, want: "main.js"},
		{name: "mod.ts", files: map[string]string{"mod.ts": fmt.Sprintf(def, "mod.ts"), "src/index.ts": fmt.Sprintf(def, "src")}, want: "mod.ts"},
		{name: "src/index.ts", files: map[string]string{"src/index.ts": fmt.Sprintf(def, "src")}, want: "src"},
		{name: "package.json main", files: map[string]string{"package.json": `{"main": "./app/server.ts"}`, "app/server.ts": fmt.Sprintf(def, "main field"), "index.ts": fmt.Sprintf(def, "index.ts")}, want: "main field"},
		{name: "package.json main without ./", files: map[string]string{"package.json": `{"main": "server.js"}`, "server.js": fmt.Sprintf(def, "server.js")}, want: "server.js"},
		{name: "package.json module", files: map[string]string{"package.json": `{"module": "esm/index.mjs"}`, "esm/index.mjs": fmt.Sprintf(def, "module field")}, want: "module field"},
		{name: "package.json exports string", files: map[string]string{"package.json": `{"exports": "./e.ts"}`, "e.ts": fmt.Sprintf(def, "exports")}, want: "exports"},
		{name: "package.json exports dot conditions", files: map[string]string{"package.json": `{"exports": {".": {"types": "./e.d.ts", "import": "./e.mjs"}, "./x": "./x.js"}}`, "e.mjs": fmt.Sprintf(def, "exports import")}, want: "exports import"},
		{name: "package.json main missing falls back", files: map[string]string{"package.json": `{"main": "dist/index.js"}`, "index.ts": fmt.Sprintf(def, "fallback")}, want: "fallback"},
		{name: "package.json main outside is ignored", files: map[string]string{"package.json": `{"main": "../index.ts"}`, "main.ts": fmt.Sprintf(def, "main.ts")}, want: "main.ts"},
		{name: "option", files: map[string]string{"index.ts": fmt.Sprintf(def, "index.ts"), "fn/hello.ts": fmt.Sprintf(def, "option")}, entry: "fn/hello.ts", want: "option"},
		{name: "option with ./", files: map[string]string{"fn/hello.ts": fmt.Sprintf(def, "option")}, entry: "./fn/hello.ts", want: "option"},
		{name: "option missing", files: map[string]string{"index.ts": fmt.Sprintf(def, "index.ts")}, entry: "nope.ts", wantErr: `entry "nope.ts": does not exist`},
		{name: "option outside", files: map[string]string{"index.ts": fmt.Sprintf(def, "index.ts")}, entry: "../index.ts", wantErr: `entry: path "../index.ts" is outside the project`},
		{name: "option absolute", files: map[string]string{"index.ts": fmt.Sprintf(def, "index.ts")}, entry: "/etc/passwd", wantErr: "must be relative to the project"},
		{name: "option bad extension", files: map[string]string{"index.py": "x"}, entry: "index.py", wantErr: "must end in .ts"},
		{name: "none", files: map[string]string{"lib/util.ts": fmt.Sprintf(def, "x"), "README.md": "hi"}, wantErr: `no entry point found: looked for package.json "main", "module" and "exports", then index.ts, index.js, main.ts, main.js, mod.ts, src/index.ts`},
		{name: "package.json main commonjs", files: map[string]string{"package.json": `{"main": "main.cjs"}`, "main.cjs": "module.exports = { fetch: () => new Response(\"cjs main\") };\n"}, want: "cjs main"},
		{name: "option commonjs typescript", files: map[string]string{"fn.cts": "export = { fetch: () => new Response(\"cts\") };\n"}, entry: "fn.cts", want: "cts"},
		{name: "package.json main not an entry", files: map[string]string{"package.json": `{"main": "data.json"}`, "data.json": "{}"}, wantErr: `(package.json names "data.json", which must end in .ts, .mts, .cts, .tsx, .js, .mjs, .cjs or .jsx)`},
		{name: "package.json main missing, no fallback", files: map[string]string{"package.json": `{"main": "dist/index.js", "module": "../up.js"}`}, wantErr: `(package.json names "dist/index.js", which does not exist; package.json names "../up.js": path "../up.js" is outside the project)`},
		{name: "package.json dependencies not an object", files: map[string]string{"package.json": `{"dependencies": "x"}`, "index.ts": fmt.Sprintf(def, "x")}, wantErr: `package.json: in "dependencies": a string where an object of strings must be, at line 1, column 20`},
		{name: "package.json dependency version not a string", files: map[string]string{"package.json": "{\"dependencies\": {\n  \"ms\": 2}}", "index.ts": fmt.Sprintf(def, "x")}, wantErr: `package.json: in "dependencies": a number where a string must be, at line 2, column 9`},
		{name: "bad package.json", files: map[string]string{"package.json": `{"main": }`, "index.ts": fmt.Sprintf(def, "x")}, wantErr: "package.json: invalid character '}' looking for beginning of value at line 1, column 10"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := writeProject(t, tt.files)
			res, err := BundleDir(context.Background(), dir, DirOptions{Entry: tt.entry})
			if tt.wantErr != "" {
				if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want ErrInvalidArgument %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(codeOf(res), fmt.Sprintf("%q", tt.want)) {
				t.Errorf("bundle is not of the %s entry:\n%s", tt.want, codeOf(res))
			}
		})
	}
}

func TestBundleDirErrors(t *testing.T) {
	outside := t.TempDir()
	writeFiles(t, outside, map[string]string{
		"secret.json": `{"password": "hunter2"}`,
		"secret.ts":   "export default 'hunter2'",
		"secret.map":  `{"version": 3, "sources": ["hunter2"], "mappings": "AAAA"}`,
	})
	tests := []struct {
		name    string
		files   map[string]string
		setup   func(t *testing.T, dir string)
		opts    DirOptions
		class   error
		wantMsg []string
	}{
		{
			name: "syntax error in a nested file",
			files: map[string]string{
				"index.ts":    "import { f } from './lib/util.ts';\nexport default { fetch: () => new Response(f()) };\n",
				"lib/util.ts": "export function f() {\n  const a = 1;\n  a b;\n  return 'x';\n}\n",
			},
			wantMsg: []string{`lib/util.ts:3:5: Expected ";" but found "b" (in "a b;")`},
		},
		{
			// Only the bundle is deployed: the file such an import names
			// is not there at run time.
			name: "computed import in a project file",
			files: map[string]string{
				"index.ts":    "import { load } from './lib/load.ts';\nexport default { fetch: async () => new Response(await load('x')) };\n",
				"lib/load.ts": "export async function load(name: string) {\n  const path = `./${name}.ts`;\n  return (await import(path)).default;\n}\n",
				"lib/x.ts":    "export default 'x';\n",
			},
			wantMsg: []string{"lib/load.ts:3:17: import() of a computed specifier cannot be bundled"},
		},
		{
			name: "missing import",
			files: map[string]string{
				"index.ts": "export { default } from './lib/x.ts';\n",
				"lib/x.ts": "import y from './nope.ts';\nexport default y;\n",
			},
			wantMsg: []string{`lib/x.ts:1:15: Could not resolve "./nope.ts"`},
		},
		{
			name:  "import outside the project",
			files: map[string]string{},
			setup: func(t *testing.T, dir string) {
				rel, err := filepath.Rel(dir, filepath.Join(outside, "secret.json"))
				if err != nil {
					t.Fatal(err)
				}
				writeFiles(t, dir, map[string]string{"index.ts": "import s from '" + filepath.ToSlash(rel) + "';\nexport default s;\n"})
			},
			wantMsg: []string{`index.ts:1:15: cannot import "secret.json": it is outside the project directory`},
		},
		{
			name:    "absolute import",
			files:   map[string]string{"index.ts": "import s from '" + outside + "/secret.ts';\nexport default s;\n"},
			wantMsg: []string{`cannot import "secret.ts": it is outside the project directory`},
		},
		{
			name:  "symbolic link out of the project",
			files: map[string]string{"index.ts": "import s from './lib/secret.ts';\nexport default s;\n"},
			setup: func(t *testing.T, dir string) {
				os.Mkdir(filepath.Join(dir, "lib"), 0o755)
				if err := os.Symlink(filepath.Join(outside, "secret.ts"), filepath.Join(dir, "lib/secret.ts")); err != nil {
					t.Fatal(err)
				}
			},
			wantMsg: []string{`index.ts:1:15: cannot import "secret.ts": it is outside the project directory`},
		},
		{
			name:  "entry is a link out of the project",
			files: map[string]string{},
			setup: func(t *testing.T, dir string) {
				os.Symlink(filepath.Join(outside, "secret.ts"), filepath.Join(dir, "index.ts"))
			},
			wantMsg: []string{"no entry point found"},
		},
		{
			name: "invalid UTF-8 in a nested file",
			files: map[string]string{
				"index.ts": "export { default } from './lib/a.ts';\n",
				"lib/a.ts": "export default 1;\n// h\xe9llo\n",
			},
			wantMsg: []string{"lib/a.ts:2:5: code is not valid UTF-8: invalid byte 0xe9 at offset 22"},
		},
		{
			name:    "file source map",
			files:   map[string]string{"index.js": "export default 1;\n//# sourceMappingURL=file:///etc/passwd\n"},
			wantMsg: []string{"index.js:2:5: sourceMappingURL must not be a file: URL"},
		},
		{
			name:    "relative source map out of the project",
			files:   map[string]string{"lib/a.js": "export default 1;\n//# sourceMappingURL=../../../../../../../../etc/passwd\n", "index.ts": "export { default } from './lib/a.js';\n"},
			wantMsg: []string{"lib/a.js:2:5: sourceMappingURL points outside the project directory"},
		},
		{
			name:    "absolute source map path",
			files:   map[string]string{"index.js": "export default 1;\n/*# sourceMappingURL=/etc/passwd */\n"},
			wantMsg: []string{"index.js:2:5: sourceMappingURL points outside the project directory"},
		},
		{
			// esbuild ends the URL at U+FEFF, which Go's unicode.IsSpace
			// does not count; "%zz" then made it a URL that does not
			// parse, which was let through.
			name:    "source map path hidden behind U+FEFF",
			files:   map[string]string{"index.js": "export default 1;\n//# sourceMappingURL=/etc/passwd\uFEFF%zz\n"},
			wantMsg: []string{"index.js:2:5: sourceMappingURL points outside the project directory"},
		},
		{
			// esbuild does not end the URL at U+0085 (which Go's
			// unicode.IsSpace counts), nor in a block comment at U+2028:
			// it read the map outside and put its sources in the bundle.
			name:    "source map path hidden behind U+0085",
			files:   map[string]string{"index.js": "export default 1;\n//# sourceMappingURL=./x\u0085/" + strings.Repeat("../", 40) + outside[1:] + "/secret.map\n"},
			wantMsg: []string{"index.js:2:5: sourceMappingURL points outside the project directory"},
		},
		{
			name:    "source map path hidden behind U+2028 in a block comment",
			files:   map[string]string{"index.js": "export default 1;\n/*# sourceMappingURL=./x\u2028/" + strings.Repeat("../", 40) + outside[1:] + "/secret.map */\n"},
			wantMsg: []string{"index.js:2:5: sourceMappingURL points outside the project directory"},
		},
		{
			// esbuild reads "lnk/%2e%2e/x.map" with the ".." after the
			// link (npm makes one to any directory a workspace names);
			// cleaned first, it looked like "x.map", inside.
			name:  "source map path through a link and an escaped ..",
			files: map[string]string{"index.js": "export default 1;\n//# sourceMappingURL=lnk/%2e%2e/secret.map\n"},
			setup: func(t *testing.T, dir string) {
				if err := os.MkdirAll(filepath.Join(outside, "sub"), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.Symlink(filepath.Join(outside, "sub"), filepath.Join(dir, "lnk")); err != nil {
					t.Fatal(err)
				}
			},
			wantMsg: []string{"index.js:2:5: sourceMappingURL points outside the project directory"},
		},
		{
			name:    "unsupported file type",
			files:   map[string]string{"index.ts": "import t from './notes.txt';\nexport default t;\n", "notes.txt": "hi"},
			wantMsg: []string{`index.ts:1:15: cannot import "notes.txt": only .ts`},
		},
		{
			name:    "no default export",
			files:   map[string]string{"lib/main.ts": "export const x = 1;\n", "package.json": `{"main": "lib/main.ts"}`},
			wantMsg: []string{"lib/main.ts: no default export"},
		},
		{
			name:    "file too large",
			files:   map[string]string{"index.ts": "export { default } from './big.ts';\n", "big.ts": "export default '" + strings.Repeat("x", 200) + "';\n"},
			opts:    DirOptions{MaxSize: 100},
			class:   errdefs.ErrTooLarge,
			wantMsg: []string{`index.ts:1:25: "big.ts" is larger than 100 bytes`},
		},
		{
			name:    "bad tsconfig",
			files:   map[string]string{"index.ts": "export default 1;\n", "tsconfig.json": "{\"compilerOptions\": [}"},
			wantMsg: []string{"tsconfig.json: invalid character"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := writeProject(t, tt.files)
			if tt.setup != nil {
				tt.setup(t, dir)
			}
			_, err := BundleDir(context.Background(), dir, tt.opts)
			class := tt.class
			if class == nil {
				class = errdefs.ErrInvalidArgument
			}
			if !errors.Is(err, class) {
				t.Fatalf("err = %v, want class %v", err, class)
			}
			for _, s := range tt.wantMsg {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not contain %q", err, s)
				}
			}
			if strings.Contains(err.Error(), "hunter2") {
				t.Errorf("error leaks a file outside the project: %q", err)
			}
			checkNoPaths(t, err.Error(), dir)
		})
	}
}

// TestBundleDirTsconfig: compilerOptions apply, but "extends" can't make
// esbuild read a file elsewhere.
func TestBundleDirTsconfig(t *testing.T) {
	dir := writeProject(t, map[string]string{
		"index.tsx": "export default { fetch: () => new Response(String(<p>hi</p>)) };\n",
		"tsconfig.json": `{
  // JSONC: comments and trailing commas
  "extends": "/etc/passwd",
  "compilerOptions": { "jsxFactory": "h", "jsxFragmentFactory": "Fragment", },
}`,
	})
	res, err := BundleDir(context.Background(), dir, DirOptions{Entry: "index.tsx"})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(codeOf(res), `h("p", null, "hi")`) {
		t.Errorf("jsxFactory not applied:\n%s", codeOf(res))
	}
}

func TestBundleDirBuiltins(t *testing.T) {
	dir := writeProject(t, map[string]string{
		"index.ts": `import { join } from "path";
var require = "the user's own";
import { readFileSync } from "node:fs";
import * as b from "buffer";
import { sep } from "./lib/sep.cjs";
export default { fetch: () => new Response(join("a", "b") + sep + typeof readFileSync + typeof b.Buffer + require) };
`,
		"lib/sep.cjs": "const path = require('path');\nmodule.exports = { sep: path.sep };\n",
	})
	res, err := BundleDir(context.Background(), dir, DirOptions{})
	if err != nil {
		t.Fatal(err)
	}
	code := codeOf(res)
	for _, want := range []string{`from "node:path"`, `from "node:fs"`, `from "node:buffer"`, `__require("node:path")`, requireBanner} {
		if !strings.Contains(code, want) {
			t.Errorf("output lacks %q:\n%s", want, code)
		}
	}
	if out := runDeno(t, res.Code); out != "a/b/functionfunctionthe user's own" {
		t.Errorf("bundle answered %q", out)
	}

	// Without CommonJS requires, no banner.
	dir = writeProject(t, map[string]string{"index.ts": "import { join } from 'path';\nexport default () => new Response(join('a'));\n"})
	res, err = BundleDir(context.Background(), dir, DirOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(codeOf(res), "createRequire") {
		t.Errorf("unneeded banner:\n%s", codeOf(res))
	}
}

func TestBundleDirImportMap(t *testing.T) {
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		switch r.URL.Path {
		case "/std/strings.ts":
			fmt.Fprint(w, "export const upper = (s: string): string => s.toUpperCase();\n")
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()

	for _, name := range []string{"deno.json", "deno.jsonc"} {
		t.Run(name, func(t *testing.T) {
			dir := writeProject(t, map[string]string{
				name: `{
  // comments are fine
  "imports": {
    "utils": "./lib/utils.ts",
    "@/": "./src/",
    "std/": "` + srv.URL + `/std/",
    "fs": "node:fs", // trailing comma next
  },
}`,
				"index.ts":      "import { a } from 'utils';\nimport { b } from '@/deep/b.ts';\nimport { upper } from 'std/strings.ts';\nimport { existsSync } from 'fs';\nexport default () => new Response(upper(a + b) + typeof existsSync);\n",
				"lib/utils.ts":  "export const a = 'a';\n",
				"src/deep/b.ts": "import { a } from 'utils';\nexport const b = a + 'b';\n",
			})
			res, err := BundleDir(context.Background(), dir, DirOptions{HTTPClient: srv.Client()})
			if err != nil {
				t.Fatal(err)
			}
			code := codeOf(res)
			for _, want := range []string{"// lib/utils.ts", "// src/deep/b.ts", "toUpperCase()", `from "node:fs"`} {
				if !strings.Contains(code, want) {
					t.Errorf("output lacks %q:\n%s", want, code)
				}
			}
			if out := runDeno(t, res.Code); out != "AABfunction" {
				t.Errorf("bundle answered %q", out)
			}
		})
	}

	t.Run("importMap file", func(t *testing.T) {
		dir := writeProject(t, map[string]string{
			"deno.json":            `{"importMap": "./maps/import_map.json"}`,
			"maps/import_map.json": `{"imports": {"x": "../lib/x.ts"}}`,
			"index.ts":             "import x from 'x';\nexport default () => new Response(x);\n",
			"lib/x.ts":             "export default 'x';\n",
		})
		if _, err := BundleDir(context.Background(), dir, DirOptions{}); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("target outside", func(t *testing.T) {
		dir := writeProject(t, map[string]string{
			"deno.json": `{"imports": {"x": "../../etc/passwd"}}`,
			"index.ts":  "import x from 'x';\nexport default x;\n",
		})
		_, err := BundleDir(context.Background(), dir, DirOptions{})
		if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), `deno.json: imports: "x": path "../../etc/passwd" is outside the project`) {
			t.Fatalf("err = %v", err)
		}
	})
}

// remoteServer serves a small tree of modules and counts requests.
type remoteServer struct {
	*httptest.Server
	mu   sync.Mutex
	hits map[string]int
}

func newRemoteServer(t *testing.T) *remoteServer {
	rs := &remoteServer{hits: map[string]int{}}
	rs.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rs.mu.Lock()
		rs.hits[r.URL.Path]++
		rs.mu.Unlock()
		switch r.URL.Path {
		case "/mod.ts":
			w.Header().Set("Content-Type", "application/typescript")
			fmt.Fprint(w, "import { dep } from './lib/dep.ts';\nimport { up } from '../other/up.js';\nexport const hello = (n: string): string => up(dep + n);\n")
		case "/lib/dep.ts":
			fmt.Fprint(w, "export const dep: string = 'remote-';\n")
		case "/other/up.js":
			fmt.Fprint(w, "export { up } from '/moved/up.js';\n")
		case "/moved/up.js":
			http.Redirect(w, r, "/final/up.js", http.StatusFound)
		case "/final/up.js":
			fmt.Fprint(w, "import { suffix } from './suffix.js';\nexport const up = (s) => s.toUpperCase() + suffix;\n")
		case "/final/suffix.js":
			fmt.Fprint(w, "export const suffix = '!';\n")
		case "/noext":
			w.Header().Set("Content-Type", "application/typescript; charset=utf-8")
			fmt.Fprint(w, "export const typed: number = 1;\n")
		case "/big.js":
			fmt.Fprint(w, "export default '"+strings.Repeat("x", 2000)+"';\n")
		case "/bare.js":
			fmt.Fprint(w, "import x from 'lodash';\nexport default x;\n")
		case "/latin1.js":
			fmt.Fprint(w, "export default 1; // caf\xe9\n")
		case "/filemap.js":
			fmt.Fprint(w, "export default 1;\n//# sourceMappingURL=file:///etc/passwd\n")
		case "/slow.js":
			select {
			case <-r.Context().Done():
			case <-time.After(10 * time.Second):
			}
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(rs.Close)
	return rs
}

func (rs *remoteServer) count() map[string]int {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	out := map[string]int{}
	for k, v := range rs.hits {
		out[k] = v
	}
	return out
}

func TestBundleDirRemote(t *testing.T) {
	rs := newRemoteServer(t)
	dir := writeProject(t, map[string]string{
		"index.ts": "import { hello } from '" + rs.URL + "/mod.ts';\nimport { typed } from '" + rs.URL + "/noext#frag';\nexport default { fetch: () => new Response(hello('x') + typed) };\n",
	})
	res, err := BundleDir(context.Background(), dir, DirOptions{HTTPClient: rs.Client()})
	if err != nil {
		t.Fatal(err)
	}
	checkResult(t, res)
	code := codeOf(res)
	for _, want := range []string{"// http-url:" + rs.URL + "/mod.ts", "var dep = \"remote-\"", "toUpperCase()", "var suffix = \"!\"", "var typed = 1"} {
		if !strings.Contains(code, want) {
			t.Errorf("output lacks %q:\n%s", want, code)
		}
	}
	if strings.Contains(code, "import ") {
		t.Errorf("output still imports something:\n%s", code)
	}
	want := map[string]int{"/mod.ts": 1, "/lib/dep.ts": 1, "/other/up.js": 1, "/moved/up.js": 1, "/final/up.js": 1, "/final/suffix.js": 1, "/noext": 1}
	if got := rs.count(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("requests = %v, want each module fetched once: %v", got, want)
	}

	// The bundle runs with the server gone, and without asking it again.
	rs.Close()
	if out := runDeno(t, res.Code); out != "REMOTE-X!1" {
		t.Errorf("bundle answered %q", out)
	}
	if got := rs.count(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("running the bundle contacted the server: %v", got)
	}
}

func TestBundleDirRemoteErrors(t *testing.T) {
	rs := newRemoteServer(t)
	tests := []struct {
		name    string
		path    string
		opts    DirOptions
		class   error
		wantMsg string
	}{
		{name: "not found", path: "/nope.ts", wantMsg: "index.ts:1:15: fetch " + rs.URL + "/nope.ts: 404 Not Found"},
		{name: "too large", path: "/big.js", opts: DirOptions{MaxFetchBytes: 1000}, class: errdefs.ErrTooLarge, wantMsg: rs.URL + "/big.js is larger than 1000 bytes"},
		{name: "bare import", path: "/bare.js", wantMsg: `cannot resolve "lodash" from ` + rs.URL + "/bare.js"},
		{name: "not UTF-8", path: "/latin1.js", wantMsg: rs.URL + "/latin1.js:1:25: code is not valid UTF-8"},
		{name: "file source map", path: "/filemap.js", wantMsg: rs.URL + "/filemap.js:2:5: sourceMappingURL must not be a file: URL"},
		{name: "timeout", path: "/slow.js", opts: DirOptions{FetchTimeout: 200 * time.Millisecond}, class: errdefs.ErrTimeout, wantMsg: "no answer within 200ms"},
		{name: "credentials", path: "", wantMsg: "must not hold credentials"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			u := rs.URL + tt.path
			if tt.name == "credentials" {
				u = strings.Replace(rs.URL, "http://", "http://user:pw@", 1) + "/mod.ts"
			}
			dir := writeProject(t, map[string]string{"index.ts": "import x from '" + u + "';\nexport default x;\n"})
			opts := tt.opts
			opts.HTTPClient = rs.Client()
			_, err := BundleDir(context.Background(), dir, opts)
			class := tt.class
			if class == nil {
				class = errdefs.ErrInvalidArgument
			}
			if !errors.Is(err, class) || !strings.Contains(err.Error(), tt.wantMsg) {
				t.Fatalf("err = %v, want %v %q", err, class, tt.wantMsg)
			}
		})
	}

	// The default client refuses to fetch from addresses that aren't
	// public, like this loopback test server, by address or by a name,
	// and does not tell what the name resolved to.
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(rs.URL, "http://"))
	for _, u := range []string{rs.URL, "http://localhost:" + port} {
		dir := writeProject(t, map[string]string{"index.ts": "import x from '" + u + "/mod.ts';\nexport default x;\n"})
		_, err := BundleDir(context.Background(), dir, DirOptions{})
		if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "not on a public address") {
			t.Fatalf("default client, %s: err = %v", u, err)
		}
		if msg := strings.ReplaceAll(err.Error(), u, ""); strings.Contains(msg, "127.0.0.1") || strings.Contains(msg, "::1") {
			t.Errorf("the error names the address: %v", err)
		}
	}
	if n := rs.count()["/mod.ts"]; n != 0 {
		t.Errorf("default client reached the server %d times", n)
	}
}

func TestPublicOnly(t *testing.T) {
	for addr, ok := range map[string]bool{
		"93.184.215.14:443":          true,
		"[2606:4700::6810:85e5]:443": true,
		"127.0.0.1:80":               false,
		"10.1.2.3:80":                false,
		"172.16.0.1:80":              false,
		"192.168.1.1:80":             false,
		"169.254.169.254:80":         false,
		"100.64.0.1:80":              false,
		"0.0.0.0:80":                 false,
		"[::1]:80":                   false,
		"[fd00::1]:80":               false,
		"[fe80::1]:80":               false,
		"[::ffff:127.0.0.1]:80":      false,
		"[64:ff9b::a00:1]:80":        false,
		"224.0.0.1:80":               false,
		"[2002:a00:1::1]:80":         false, // 6to4 of 10.0.0.1
		"[2001:0:4136:e378::1]:80":   false, // Teredo
	} {
		if err := publicOnly("tcp", addr, nil); (err == nil) != ok {
			t.Errorf("publicOnly(%s) = %v, want ok %v", addr, err, ok)
		}
	}
}

func TestBundleDirContext(t *testing.T) {
	dir := writeProject(t, projectFiles)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := BundleDir(ctx, dir, DirOptions{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}

	// Cancelled while a remote module is being fetched.
	rs := newRemoteServer(t)
	dir = writeProject(t, map[string]string{"index.ts": "import x from '" + rs.URL + "/slow.js';\nexport default x;\n"})
	ctx, cancel = context.WithCancel(context.Background())
	time.AfterFunc(200*time.Millisecond, cancel)
	start := time.Now()
	_, err := BundleDir(ctx, dir, DirOptions{HTTPClient: rs.Client()})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("took %v to give up", d)
	}

	// Cancelled while npm runs (a fake npm that hangs).
	dir = writeProject(t, map[string]string{"index.ts": "export default 1;\n", "package.json": `{"dependencies": {"x": "1"}}`})
	ctx, cancel = context.WithCancel(context.Background())
	time.AfterFunc(200*time.Millisecond, cancel)
	start = time.Now()
	_, err = BundleDir(ctx, dir, DirOptions{NPM: fakeNPM(t, "sleep 30")})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("took %v to give up", d)
	}
}

// fakeNPM is an npm that runs script, but answers the build's question
// whether it knows the allow-* settings as the real one does (with the
// value the environment gives).
func fakeNPM(t *testing.T, script string) string {
	t.Helper()
	return fakeNPMIn(t, t.TempDir(), script)
}

// fakeNPMIn is fakeNPM, written in dir.
func fakeNPMIn(t *testing.T, dir, script string) string {
	t.Helper()
	p := filepath.Join(dir, "npm")
	ask := `if [ "$1 $2 $3" = "config get allow-git" ]; then echo "$npm_config_allow_git"; exit 0; fi`
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+ask+"\n"+script+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestBundleDirInstallFake(t *testing.T) {
	files := map[string]string{
		"index.ts":     "export default 1;\n",
		"package.json": `{"dependencies": {"x": "^1.0.0"}}`,
		".npmrc":       "registry=http://169.254.169.254/\n//registry.npmjs.org/:_authToken=secret\nlegacy-peer-deps=true\ngit=/bin/sh\n",
	}

	t.Run("environment and arguments", func(t *testing.T) {
		dir := writeProject(t, files)
		out := filepath.Join(t.TempDir(), "out")
		t.Setenv("NPM_TOKEN", "server-secret")
		cache := filepath.Join(t.TempDir(), "cache")
		_, err := BundleDir(context.Background(), dir, DirOptions{NPMCache: cache, NPM: fakeNPM(t, `{ echo "args: $*"; echo "pwd: $(pwd)"; env | sort; } > `+out)})
		if err != nil {
			t.Fatal(err)
		}
		b, _ := os.ReadFile(out)
		got := string(b)
		real, _ := filepath.EvalSymlinks(dir)
		for _, want := range []string{
			"args: install --omit=dev --ignore-scripts --no-audit --no-fund --loglevel=error\n",
			"pwd: " + real + "\n",
			"npm_config_cache=" + cache + "\n",
			"npm_config_ignore_scripts=true\n",
			"npm_config_registry=https://registry.npmjs.org/\n",
			"npm_config_legacy_peer_deps=true\n",
			"npm_config_allow_git=none\n",
			"npm_config_allow_remote=none\n",
			"npm_config_allow_file=none\n",
			"npm_config_allow_directory=root\n",
			"PATH=",
		} {
			if !strings.Contains(got, want) {
				t.Errorf("npm run lacks %q:\n%s", want, got)
			}
		}
		for _, bad := range []string{"server-secret", "NPM_TOKEN", "169.254", "_authToken", "\ngit=", "npm_config_git="} {
			if strings.Contains(got, bad) {
				t.Errorf("npm run has %q:\n%s", bad, got)
			}
		}
		if _, err := os.Stat(filepath.Join(dir, ".npmrc")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf(".npmrc is still there for npm to read: %v", err)
		}
		if _, err := os.Stat(cache); err != nil {
			t.Errorf("cache not created: %v", err)
		}
	})

	t.Run("lockfile means npm ci", func(t *testing.T) {
		dir := writeProject(t, map[string]string{
			"index.ts":          "export default 1;\n",
			".npmrc":            "legacy-peer-deps=true\n",
			"package.json":      `{"dependencies": {"x": "^1.0.0"}}`,
			"package-lock.json": `{"lockfileVersion": 3, "packages": {"": {}, "node_modules/x": {"version": "1.0.0", "resolved": "https://registry.npmjs.org/x/-/x-1.0.0.tgz"}}}`,
		})
		out := filepath.Join(t.TempDir(), "out")
		if _, err := BundleDir(context.Background(), dir, DirOptions{NPM: fakeNPM(t, `echo "$1 $npm_config_legacy_peer_deps" > `+out)}); err != nil {
			t.Fatal(err)
		}
		if b, _ := os.ReadFile(out); string(b) != "ci true\n" {
			t.Errorf("npm ran %q, want ci with legacy-peer-deps", b)
		}
	})

	t.Run("failure shows the tail of stderr", func(t *testing.T) {
		dir := writeProject(t, files)
		script := `for i in $(seq 1 30); do echo "npm error line $i in $(pwd)" >&2; done
echo "npm error A complete log of this run can be found in: $HOME/.npm/_logs/x.log" >&2
exit 1`
		_, err := BundleDir(context.Background(), dir, DirOptions{NPM: fakeNPM(t, script)})
		if !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Fatalf("err = %v", err)
		}
		msg := err.Error()
		if !strings.HasPrefix(msg, "dependency install failed:\nnpm error line 11 in .\n") || !strings.HasSuffix(msg, "npm error line 30 in .") {
			t.Errorf("message = %q", msg)
		}
		if strings.Contains(msg, "line 10 ") || strings.Contains(msg, "complete log") {
			t.Errorf("message = %q", msg)
		}
		checkNoPaths(t, msg, dir)
	})

	t.Run("timeout", func(t *testing.T) {
		dir := writeProject(t, files)
		start := time.Now()
		_, err := BundleDir(context.Background(), dir, DirOptions{NPM: fakeNPM(t, "sleep 30 & wait"), InstallTimeout: 300 * time.Millisecond})
		if !errors.Is(err, errdefs.ErrTimeout) || !strings.Contains(err.Error(), "dependency install timed out after 300ms") {
			t.Fatalf("err = %v", err)
		}
		if d := time.Since(start); d > 10*time.Second {
			t.Errorf("took %v", d)
		}
	})
}

func TestBundleDirDependencyRefusals(t *testing.T) {
	noNPM := fakeNPM(t, "echo npm must not run >&2; exit 1")
	tests := []struct {
		name    string
		files   map[string]string
		wantMsg string
	}{
		{"file dependency", map[string]string{"package.json": `{"dependencies": {"x": "file:/etc"}}`}, `package.json: dependencies: x: "file:/etc" is not a version range`},
		{"git dependency", map[string]string{"package.json": `{"dependencies": {"x": "git+https://example.com/x.git"}}`}, "is not a version range"},
		{"github shorthand", map[string]string{"package.json": `{"dependencies": {"x": "user/repo"}}`}, "is not a version range"},
		{"tarball URL", map[string]string{"package.json": `{"optionalDependencies": {"x": "http://169.254.169.254/x.tgz"}}`}, "optionalDependencies: x:"},
		{"bad name", map[string]string{"package.json": `{"dependencies": {"../x": "1"}}`}, `"../x" is not a valid package name`},
		{"bad alias", map[string]string{"package.json": `{"dependencies": {"x": "npm:y@file:/etc"}}`}, "is not a version range"},
		{"override", map[string]string{"package.json": `{"dependencies": {"x": "1"}, "overrides": {"y": {"z": "file:/etc"}}}`}, "overrides:"},
		{"workspace outside", map[string]string{"package.json": `{"dependencies": {"x": "1"}, "workspaces": ["../*"]}`}, "workspaces:"},
		// npm lets a workspace, as the root, depend on a directory
		// anywhere, and links it into node_modules.
		{"workspace directory dependency", map[string]string{"package.json": `{"dependencies": {"x": "1"}, "workspaces": ["pkgs/*"]}`, "pkgs/w/package.json": `{"name": "w", "dependencies": {"leak": "file:/usr/lib"}}`}, `pkgs/w/package.json: dependencies: leak: "file:/usr/lib" is not a version range`},
		{"workspace git dependency", map[string]string{"package.json": `{"dependencies": {"x": "1"}, "workspaces": ["w"]}`, "w/package.json": `{"name": "w", "optionalDependencies": {"g": "git+https://example.com/g.git"}}`}, "w/package.json: optionalDependencies: g:"},
		{"lockfile elsewhere", map[string]string{"package.json": `{"dependencies": {"x": "1"}}`, "package-lock.json": `{"packages": {"node_modules/x": {"resolved": "http://169.254.169.254/x.tgz"}}}`}, "node_modules/x is resolved to"},
		{"lockfile link outside", map[string]string{"package.json": `{"dependencies": {"x": "1"}}`, "package-lock.json": `{"packages": {"node_modules/x": {"resolved": "../../etc", "link": true}}}`}, "is outside the project"},
		{"lockfile path", map[string]string{"package.json": `{"dependencies": {"x": "1"}}`, "package-lock.json": `{"packages": {"../../x": {}}}`}, "outside the project"},
		{"lockfile v1", map[string]string{"package.json": `{"dependencies": {"x": "1"}}`, "package-lock.json": `{"dependencies": {"x": {"version": "file:/etc"}}}`}, "x is not from the registry"},
		{"npm: versions conflict", map[string]string{"index.ts": "import a from 'npm:x@1';\nimport b from 'npm:x@2/sub';\nexport default [a, b];\n"}, "npm:x is imported with different versions (1, 2)"},
		{"npm: bad specifier", map[string]string{"index.ts": "import a from 'npm:x@file:/etc';\nexport default a;\n"}, `index.ts:1:15: npm:x@file:/etc: "file:" is not a version range`},
		{"npm: bad subpath", map[string]string{"index.ts": "import a from 'npm:x@1/../../y';\nexport default a;\n"}, "invalid subpath"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			files := map[string]string{"index.ts": "export default 1;\n"}
			for k, v := range tt.files {
				files[k] = v
			}
			_, err := BundleDir(context.Background(), writeProject(t, files), DirOptions{NPM: noNPM})
			if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), tt.wantMsg) {
				t.Fatalf("err = %v, want %q", err, tt.wantMsg)
			}
		})
	}
}

func TestParseNPMImport(t *testing.T) {
	for spec, want := range map[string]npmImport{
		"ms":                    {name: "ms"},
		"ms@2.1.3":              {name: "ms", rng: "2.1.3"},
		"/ms@^2":                {name: "ms", rng: "^2"},
		"preact@10/hooks":       {name: "preact", rng: "10", sub: "/hooks"},
		"preact/hooks":          {name: "preact", sub: "/hooks"},
		"@std/path@1.0.0/posix": {name: "@std/path", rng: "1.0.0", sub: "/posix"},
		"@scope/pkg":            {name: "@scope/pkg"},
		"x@>=1 <2":              {name: "x", rng: ">=1 <2"},
	} {
		got, err := parseNPMImport(spec)
		if err != nil || got != want {
			t.Errorf("parseNPMImport(%q) = %+v, %v; want %+v", spec, got, err, want)
		}
	}
	for _, bad := range []string{"", "@scope", "x@", "x@1/../y", "X Y", "x@http://a", "x@1//y", ".x"} {
		if _, err := parseNPMImport(bad); err == nil {
			t.Errorf("parseNPMImport(%q) succeeded", bad)
		}
	}
}

func TestStripJSONC(t *testing.T) {
	in := `{
  // line comment with "quote"
  "a": "// not a comment", /* block
  comment */ "b": [1, 2,],
  "c": "trailing \" , }",
}`
	var v struct {
		A string
		B []int
		C string
	}
	if err := unmarshalJSONC([]byte(in), &v); err != nil {
		t.Fatal(err)
	}
	if v.A != "// not a comment" || len(v.B) != 2 || v.C != `trailing " , }` {
		t.Errorf("got %+v", v)
	}
}

// needNPM skips tests that run npm when npm is missing or in -short
// mode, and otherwise starts a registry on loopback with the test
// packages: the tests never reach the public registry.
func needNPM(t *testing.T) *npmtest.Registry {
	t.Helper()
	if testing.Short() {
		t.Skip("runs npm")
	}
	if _, err := exec.LookPath("npm"); err != nil {
		t.Skip("npm not found")
	}
	return npmtest.Start(t, npmtest.IsNumber, npmtest.MS)
}

// TestBundleDirNPMDependency installs a package with the real npm,
// bundles it, and runs the bundle.
func TestBundleDirNPMDependency(t *testing.T) {
	reg := needNPM(t)
	t.Parallel()
	files := map[string]string{
		"package.json": `{"name": "fn", "dependencies": {"is-number": "7.0.0"}, "devDependencies": {"ms": "2.1.3"}}`,
		"index.ts":     "import isNumber from 'is-number';\nexport default { fetch: () => new Response(String(isNumber('42')) + String(isNumber('x'))) };\n",
	}
	cache := t.TempDir()
	dir := writeProject(t, files)
	res, err := BundleDir(context.Background(), dir, DirOptions{NPMCache: cache, Registry: reg.URL})
	if err != nil {
		t.Fatal(err)
	}
	code := codeOf(res)
	for _, want := range []string{"// node_modules/is-number/index.js", "Number.isFinite", "__commonJS"} {
		if !strings.Contains(code, want) {
			t.Errorf("output lacks %q:\n%s", want, code)
		}
	}
	checkNoPaths(t, string(res.Code), dir)
	if _, err := os.Stat(filepath.Join(dir, "node_modules/ms")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a dev dependency was installed: %v", err)
	}
	if out := runDeno(t, res.Code); out != "truefalse" {
		t.Errorf("bundle answered %q", out)
	}

	// With the lockfile npm wrote, elsewhere: npm ci, same bytes.
	lock, err := os.ReadFile(filepath.Join(dir, "package-lock.json"))
	if err != nil {
		t.Fatal(err)
	}
	files["package-lock.json"] = string(lock)
	again, err := BundleDir(context.Background(), writeProject(t, files), DirOptions{NPMCache: cache, Registry: reg.URL})
	if err != nil {
		t.Fatal(err)
	}
	if again.Digest != res.Digest {
		t.Errorf("digest with the lockfile %s, want %s", again.Digest, res.Digest)
	}
}

// A dependency that is a server file (file:, here declared by a
// workspace) is refused, by the workspace checks and by npm itself: its
// text never reaches the bundle.
func TestBundleDirNPMRefusesServerFiles(t *testing.T) {
	reg := needNPM(t)
	t.Parallel()
	// A package tarball on the server (npm unpacks it into node_modules,
	// where the bundle may import it).
	pkg := filepath.Join(t.TempDir(), "package")
	if err := os.Mkdir(pkg, 0o755); err != nil {
		t.Fatal(err)
	}
	const secret = "server-secret-5d2a"
	for name, text := range map[string]string{
		"package.json": `{"name": "leak", "version": "1.0.0", "main": "index.js"}`,
		"index.js":     `module.exports = "` + secret + `";`,
	} {
		if err := os.WriteFile(filepath.Join(pkg, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	leak := filepath.Join(t.TempDir(), "leak.tgz")
	if out, err := exec.Command("tar", "czf", leak, "-C", filepath.Dir(pkg), "package").CombinedOutput(); err != nil {
		t.Fatalf("tar: %v %s", err, out)
	}
	dir := writeProject(t, map[string]string{
		"package.json":   `{"name": "fn", "dependencies": {"is-number": "7.0.0"}, "workspaces": ["w"]}`,
		"w/package.json": `{"name": "w", "version": "1.0.0", "dependencies": {"leak": "file:` + leak + `"}}`,
		"index.ts":       "import s from 'leak';\nexport default () => new Response(s);\n",
	})
	res, err := BundleDir(context.Background(), dir, DirOptions{NPMCache: t.TempDir(), Registry: reg.URL})
	if err == nil && strings.Contains(string(res.Code), secret) {
		t.Fatal("a server tarball named by a workspace's file: dependency is in the bundle")
	}
	if err != nil && strings.Contains(err.Error(), secret) {
		t.Fatalf("the error quotes the server file: %v", err)
	}
}

func TestBundleDirNPMSpecifier(t *testing.T) {
	reg := needNPM(t)
	t.Parallel()
	dir := writeProject(t, map[string]string{
		"index.ts":  "import ms from 'npm:ms@2.1.3';\nimport isNumber from 'num';\nexport default () => new Response(ms(60000) + isNumber(1));\n",
		"deno.json": `{"imports": {"num": "npm:is-number@7.0.0"}}`,
	})
	res, err := BundleDir(context.Background(), dir, DirOptions{Registry: reg.URL})
	if err != nil {
		t.Fatal(err)
	}
	code := codeOf(res)
	for _, want := range []string{"// node_modules/.spry-npm/node_modules/ms/index.js", "// node_modules/.spry-npm/node_modules/is-number/index.js"} {
		if !strings.Contains(code, want) {
			t.Errorf("output lacks %q:\n%s", want, code)
		}
	}
	if strings.Contains(code, "npm:") {
		t.Errorf("output still imports npm: specifiers:\n%s", code)
	}
	if out := runDeno(t, res.Code); out != "1mtrue" {
		t.Errorf("bundle answered %q", out)
	}
}

// jsr: imports are installed from JSR's npm registry (here a second
// registry on loopback, for the @jsr scope) and bundled.
func TestBundleDirJSRSpecifier(t *testing.T) {
	reg := needNPM(t)
	jsr := npmtest.Start(t, npmtest.Greet)
	t.Parallel()
	dir := writeProject(t, map[string]string{
		"index.ts": "import { greet } from 'jsr:@spry/greet@^1';\nimport { shout } from 'jsr:@spry/greet@^1/loud';\nimport isNumber from 'npm:is-number@7';\n" +
			"export default () => new Response(greet('a') + ' ' + shout('b') + ' ' + isNumber(1));\n",
	})
	res, err := BundleDir(context.Background(), dir, DirOptions{Registry: reg.URL, JSRRegistry: jsr.URL})
	if err != nil {
		t.Fatal(err)
	}
	if code := codeOf(res); strings.Contains(code, "jsr:") || strings.Contains(code, "npm:") || len(res.Fetched) != 0 {
		t.Errorf("output still imports jsr: or npm: specifiers (%v):\n%s", res.Fetched, code)
	}
	if out := runDeno(t, res.Code); out != "hello a HELLO B true" {
		t.Errorf("bundle answered %q", out)
	}

	for spec, msg := range map[string]string{
		"jsr:@spry/missing@1":  "dependency install failed",
		"jsr:spry/greet":       "a JSR package is named @scope/name",
		"jsr:@Spry/greet":      "a JSR package is named @scope/name",
		"jsr:@spry/Greet":      "is not a valid package name",
		"jsr:@spry/greet@1/..": "invalid subpath",
	} {
		dir := writeProject(t, map[string]string{"index.ts": "import x from '" + spec + "';\nexport default x;\n"})
		_, err := BundleDir(context.Background(), dir, DirOptions{Registry: reg.URL, JSRRegistry: jsr.URL})
		if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), msg) {
			t.Errorf("%s: err = %v, want %q", spec, err, msg)
		}
	}
}

func TestBundleDirNPMFailure(t *testing.T) {
	reg := needNPM(t)
	t.Parallel()
	dir := writeProject(t, map[string]string{
		"package.json": `{"dependencies": {"spry-definitely-not-a-package-xyz": "^1.0.0"}}`,
		"index.ts":     "export default 1;\n",
	})
	_, err := BundleDir(context.Background(), dir, DirOptions{Registry: reg.URL})
	if !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("err = %v, want ErrInvalidArgument", err)
	}
	msg := err.Error()
	if !strings.HasPrefix(msg, "dependency install failed:\n") || !strings.Contains(msg, "spry-definitely-not-a-package-xyz") || !strings.Contains(msg, "404") {
		t.Errorf("message = %q", msg)
	}
	checkNoPaths(t, msg, dir)
}

// TestBundleDirNPMLockOutOfStep: a dependency added to package.json but
// not to its lockfile fails npm ci with npm's reason, not the page of
// ci's options npm prints after it (all the failure showed).
func TestBundleDirNPMLockOutOfStep(t *testing.T) {
	reg := needNPM(t)
	t.Parallel()
	files := map[string]string{
		"package.json": `{"name": "fn", "dependencies": {"is-number": "7.0.0"}}`,
		"index.ts":     "export default { fetch: () => new Response('ok') };\n",
	}
	dir := writeProject(t, files)
	cache := t.TempDir()
	if _, err := BundleDir(context.Background(), dir, DirOptions{NPMCache: cache, Registry: reg.URL}); err != nil {
		t.Fatal(err)
	}
	// The lockfile npm wrote, and a dependency added since.
	writeFiles(t, dir, map[string]string{"package.json": `{"name": "fn", "dependencies": {"is-number": "7.0.0", "ms": "2.1.3"}}`})
	_, err := BundleDir(context.Background(), dir, DirOptions{NPMCache: cache, Registry: reg.URL})
	if !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("err = %v, want ErrInvalidArgument", err)
	}
	msg := err.Error()
	for _, want := range []string{"are in sync", "npm install", "Missing: ms@2.1.3 from lock file"} {
		if !strings.Contains(msg, want) {
			t.Errorf("message lacks %q:\n%s", want, msg)
		}
	}
	if strings.Contains(msg, "Usage:") || strings.Contains(msg, "--dry-run") {
		t.Errorf("message holds npm ci's usage:\n%s", msg)
	}
}

// denoPath is the pinned Deno, relative to this package.
const denoPath = "../../runtimes/node_modules/@deno/linux-x64-glibc/deno"

// runDeno runs the bundle's handler once with the pinned Deno, offline
// (--cached-only, no network permission), and returns the response text.
// It skips the check when Deno isn't installed.
func runDeno(t *testing.T, bundle []byte) string {
	t.Helper()
	deno, err := filepath.Abs(denoPath)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(deno); err != nil {
		t.Log("deno not found; not running the bundle")
		return ""
	}
	dir := t.TempDir()
	harness := `import mod from "./bundle.mjs";
const handler = typeof mod === "function" ? mod : mod.fetch.bind(mod);
const res = await handler(new Request("http://localhost/"), {});
console.log(await res.text());
`
	writeFiles(t, dir, map[string]string{"bundle.mjs": string(bundle), "harness.mjs": harness})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, deno, "run", "--no-config", "--no-lock", "--no-prompt", "--cached-only", "--allow-read="+dir, filepath.Join(dir, "harness.mjs"))
	cmd.Env = []string{"HOME=" + dir, "DENO_DIR=" + filepath.Join(dir, ".deno"), "NO_COLOR=1", "DENO_NO_UPDATE_CHECK=1"}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("deno: %v\n%s\nbundle:\n%s", err, stderr.String(), bundle)
	}
	return strings.TrimSpace(string(out))
}

// BundleFile leaves a file without npm:, jsr: or URL imports to Bundle,
// and installs those of a file that has them.
func TestBundleFile(t *testing.T) {
	plain := Source{Filename: "a.ts", Code: []byte("import { Buffer } from 'node:buffer';\nexport default () => new Response(String(Buffer.alloc(1).length));\n")}
	want, err := Bundle(context.Background(), plain, Options{})
	if err != nil {
		t.Fatal(err)
	}
	got, err := BundleFile(context.Background(), plain, DirOptions{NPM: fakeNPM(t, "exit 1")})
	if err != nil || got.Digest != want.Digest || len(got.Fetched) != 0 {
		t.Fatalf("plain file: %v, digest %s want %s, fetched %v", err, got.Digest, want.Digest, got.Fetched)
	}

	fetched := Source{Filename: "b.ts", Code: []byte("import isNumber from 'npm:is-number@7';\nimport { greet } from 'jsr:@spry/greet@1';\nexport default () => new Response(greet(String(isNumber(2))));\n")}
	left, err := Bundle(context.Background(), fetched, Options{})
	if err != nil || !slices.Equal(left.Fetched, []string{"npm:is-number@7", "jsr:@spry/greet@1"}) {
		t.Fatalf("Bundle: %v, fetched %q", err, left.Fetched)
	}
	reg := needNPM(t)
	jsr := npmtest.Start(t, npmtest.Greet)
	res, err := BundleFile(context.Background(), fetched, DirOptions{Registry: reg.URL, JSRRegistry: jsr.URL})
	if err != nil || len(res.Fetched) != 0 {
		t.Fatalf("BundleFile: %v, fetched %q", err, res.Fetched)
	}
	if out := runDeno(t, res.Code); out != "hello true" {
		t.Errorf("bundle answered %q", out)
	}
}

// An npm that does not know the allow-* settings (before 11.x) is not
// used: it would ignore them and install git and file dependencies.
func TestBundleDirRefusesAnNPMWithoutLocks(t *testing.T) {
	old := filepath.Join(t.TempDir(), "npm")
	if err := os.WriteFile(old, []byte("#!/bin/sh\necho undefined\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	dir := writeProject(t, map[string]string{"index.ts": "export default 1;\n", "package.json": `{"dependencies": {"x": "1.0.0"}}`})
	_, err := BundleDir(context.Background(), dir, DirOptions{NPM: old})
	if err == nil || !strings.Contains(err.Error(), "allow-git") {
		t.Fatalf("err = %v, want the npm refused for want of allow-git", err)
	}
}

// With NPMUID, npm runs as that uid, never as root: it owns the project
// and its temporary and cache directories, and reads nothing of root's.
// It has no group of root's either.
func TestBundleDirNPMRunsUnprivileged(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to switch uids")
	}
	const uid = 2999999
	// Everything npm is given lives below directories others may search,
	// as the server's builds do.
	top, err := os.MkdirTemp("", "spry-npmuid-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(top)
	if err := os.Chmod(top, 0o711); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(top, "src")
	writeFiles(t, dir, map[string]string{
		"index.ts":     "export default 1;\n",
		"package.json": `{"dependencies": {"x": "^1.0.0"}}`,
	})
	secret := filepath.Join(top, "secret")
	if err := os.WriteFile(secret, []byte("root only"), 0o600); err != nil {
		t.Fatal(err)
	}
	// The server may have supplementary groups (root's own, under sudo):
	// npm must have none of them, nor read a file one of them may.
	const group = 2999998
	groups, err := syscall.Getgroups()
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Setgroups([]int{group}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := syscall.Setgroups(groups); err != nil {
			t.Error(err)
		}
	})
	groupSecret := filepath.Join(top, "group-secret")
	if err := os.WriteFile(groupSecret, []byte("group only"), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(groupSecret, 0, group); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(top, "bin")
	if err := os.Mkdir(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	npm := filepath.Join(bin, "npm")
	script := `#!/bin/sh
if [ "$1 $2 $3" = "config get allow-git" ]; then echo "$npm_config_allow_git"; exit 0; fi
{ id -u; id -G; cat ` + secret + ` 2>/dev/null || echo denied; cat ` + groupSecret + ` 2>/dev/null || echo denied; touch "$npm_config_cache/x" && echo cache-ok; } > out
`
	if err := os.WriteFile(npm, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	cache := filepath.Join(top, "cache")
	if _, err := BundleDir(context.Background(), dir, DirOptions{NPM: npm, NPMCache: cache, NPMUID: uid}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "out"))
	if err != nil {
		t.Fatal(err)
	}
	// Only its own group: none of root's supplementary groups, whose
	// files (0640 root:root, say) it could read.
	if got, want := string(b), fmt.Sprintf("%d\n%d\ndenied\ndenied\ncache-ok\n", uid, uid); got != want {
		t.Errorf("npm saw %q, want %q", got, want)
	}
}

// TestBundleDirComputedImports: an import() of a template literal bundles
// every file it may name, and a dependency's computed import() (its
// code, not the user's to change) is left as it is.
func TestBundleDirComputedImports(t *testing.T) {
	dir := writeProject(t, map[string]string{
		"index.ts": `import dep from "dep";
const lang = "fr";
const t = await import(` + "`./locales/${lang}.ts`" + `);
export default { fetch: () => new Response(t.hello + " " + dep) };
`,
		"locales/en.ts":                 `export const hello = "hello";`,
		"locales/fr.ts":                 `export const hello = "bonjour";`,
		"node_modules/dep/package.json": `{"name": "dep", "main": "index.js"}`,
		"node_modules/dep/index.js":     "let opt = null;\ntry { opt = require(process.env.OPTIONAL_DEP || 'x'); } catch {}\nmodule.exports = opt ? 'with' : 'without';\n",
	})
	res, err := BundleDir(context.Background(), dir, DirOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if out := runDeno(t, res.Code); out != "bonjour without" {
		t.Errorf("bundle answered %q", out)
	}
}
