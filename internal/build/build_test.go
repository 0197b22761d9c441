package build

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/evanw/esbuild/pkg/api"

	"github.com/spry-run/spry/internal/errdefs"
)

const objectTS = `interface Env { greeting: string }

export default {
  fetch(req: Request, ctx: Env): Response {
    return new Response(ctx.greeting + " " + new URL(req.url).pathname);
  },
};
`

const functionTS = `export default async function (req: Request): Promise<Response> {
  return new Response("hi");
}
`

const functionJS = `export default async function handler(req, ctx) {
  return new Response("hi from js");
}
`

// typesTS uses only type-level features; none of them may reach the output.
const typesTS = `interface Greeter<T extends string = string> { greet(name: T): string }
type Handler = (req: Request) => Promise<Response>;
function identity<T>(x: T): T { return x; }
declare const unused: number;
const greeter: Greeter = { greet: (n) => "hi " + n };
const h: Handler = async (req) => new Response(identity<string>(greeter.greet("x")) as string);
export default { fetch: h } satisfies { fetch: Handler };
`

const syntaxErrorTS = "const a = 1;\nconst b = 2;\nconst c = 3 x;\nexport default {};\n"

func TestBundle(t *testing.T) {
	tests := []struct {
		name     string
		src      Source
		opts     Options
		wantErr  error    // class; nil means success
		wantMsg  []string // substrings of the error message
		contains []string // substrings of the output
		absent   []string // must not appear in the output
	}{
		{
			name:     "ts object form",
			src:      Source{Filename: "hello.ts", Code: []byte(objectTS)},
			contains: []string{"fetch(req, ctx)", "as default"},
			absent:   []string{"interface", ": Request"},
		},
		{
			name:     "ts function form",
			src:      Source{Filename: "hello.ts", Code: []byte(functionTS)},
			contains: []string{"async function", "as default"},
			absent:   []string{"Promise<Response>"},
		},
		{
			name:     "js",
			src:      Source{Filename: "hello.js", Code: []byte(functionJS)},
			contains: []string{"function handler(req, ctx)", "as default"},
		},
		{
			name:     "mjs and mts",
			src:      Source{Filename: "hello.mts", Code: []byte(functionTS)},
			contains: []string{"as default"},
		},
		{
			name:     "tsx",
			src:      Source{Filename: "page.tsx", Code: []byte("import React from 'npm:react';\nconst x: number = 1;\nexport default () => <p>{x}</p>;\n")},
			contains: []string{"React.createElement", `from "npm:react"`},
		},
		{
			name:     "type-only features are stripped",
			src:      Source{Filename: "types.ts", Code: []byte(typesTS)},
			contains: []string{"function identity(x)", "as default"},
			absent:   []string{"interface", "Greeter<", "type Handler", "declare", "satisfies", "<T>", ": T", "<string>"},
		},
		{
			name:    "syntax error reports line and column",
			src:     Source{Filename: "hello.ts", Code: []byte(syntaxErrorTS)},
			wantErr: errdefs.ErrInvalidArgument,
			wantMsg: []string{`hello.ts:3:13: Expected ";" but found "x" (in "const c = 3 x;")`},
		},
		{
			// esbuild counts bytes; the message counts characters.
			name:    "syntax error column counts characters",
			src:     Source{Filename: "hello.ts", Code: []byte("const s = 'ééé'; const c = 3 x\nexport default 1\n")},
			wantErr: errdefs.ErrInvalidArgument,
			wantMsg: []string{"hello.ts:1:30: "},
		},
		{
			name:    "long line is cut",
			src:     Source{Filename: "hello.ts", Code: []byte("const a = [" + strings.Repeat("1, ", 500) + "1 2];\nexport default a\n")},
			wantErr: errdefs.ErrInvalidArgument,
			wantMsg: []string{"hello.ts:1:1514: ", `(in "...1, 1, `, `1 2];")`},
		},
		{
			name:    "at most five errors",
			src:     Source{Filename: "many.ts", Code: []byte(manyImports(7))},
			wantErr: errdefs.ErrInvalidArgument,
			wantMsg: []string{`many.ts:1:8: Could not resolve "./m0.ts"`, `many.ts:5:8: Could not resolve "./m4.ts"`, "\n(and 2 more)"},
		},
		{
			name:    "missing default export",
			src:     Source{Filename: "hello.ts", Code: []byte("export function fetch() { return new Response('x') }\n")},
			wantErr: errdefs.ErrInvalidArgument,
			wantMsg: []string{"hello.ts: no default export; export default { fetch(req, ctx) { ... } } or export default function (req, ctx) { ... }"},
		},
		{
			name:    "re-exported star is not a default export",
			src:     Source{Filename: "hello.ts", Code: []byte("export * from 'npm:hono';\n")},
			wantErr: errdefs.ErrInvalidArgument,
			wantMsg: []string{"no default export"},
		},
		{
			name:    "default filename",
			src:     Source{Code: []byte("export const x = 1;\n")},
			wantErr: errdefs.ErrInvalidArgument,
			wantMsg: []string{"index.ts: no default export"},
		},
		{
			name:    "empty",
			src:     Source{Filename: "hello.ts"},
			wantErr: errdefs.ErrInvalidArgument,
			wantMsg: []string{"code is empty"},
		},
		{
			name:    "whitespace only",
			src:     Source{Filename: "hello.ts", Code: []byte(" \n\t\r\n  ")},
			wantErr: errdefs.ErrInvalidArgument,
			wantMsg: []string{"code is empty"},
		},
		{
			name:    "too large",
			src:     Source{Filename: "hello.ts", Code: []byte(functionTS)},
			opts:    Options{MaxSize: 10},
			wantErr: errdefs.ErrTooLarge,
			wantMsg: []string{fmt.Sprintf("code is %d bytes; the limit is 10 bytes", len(functionTS))},
		},
		{
			name:    "too large for the default limit",
			src:     Source{Filename: "hello.ts", Code: bytes.Repeat([]byte(" "), DefaultMaxSize+1)},
			wantErr: errdefs.ErrTooLarge,
			wantMsg: []string{"the limit is 5242880 bytes"},
		},
		{
			name:    "invalid utf-8",
			src:     Source{Filename: "hello.ts", Code: []byte("export default 1;\n// h\xe9llo\n")},
			wantErr: errdefs.ErrInvalidArgument,
			wantMsg: []string{"hello.ts: code is not valid UTF-8: invalid byte 0xe9 at offset 22 (line 2, column 5)"},
		},
		{
			name:    "truncated utf-8 at the end",
			src:     Source{Filename: "hello.ts", Code: []byte("export default 'é\xe2\x82")},
			wantErr: errdefs.ErrInvalidArgument,
			wantMsg: []string{"at offset 18 "},
		},
		{name: "filename with slash", src: Source{Filename: "src/hello.ts", Code: []byte(functionTS)}, wantErr: errdefs.ErrInvalidArgument, wantMsg: []string{"base name"}},
		{name: "filename with backslash", src: Source{Filename: `src\hello.ts`, Code: []byte(functionTS)}, wantErr: errdefs.ErrInvalidArgument, wantMsg: []string{"base name"}},
		{name: "filename with control character", src: Source{Filename: "hel\nlo.ts", Code: []byte(functionTS)}, wantErr: errdefs.ErrInvalidArgument, wantMsg: []string{"control character"}},
		{name: "filename with NUL", src: Source{Filename: "hello\x00.ts", Code: []byte(functionTS)}, wantErr: errdefs.ErrInvalidArgument, wantMsg: []string{"control character"}},
		{name: "filename with unsupported extension", src: Source{Filename: "hello.py", Code: []byte(functionTS)}, wantErr: errdefs.ErrInvalidArgument, wantMsg: []string{"must end in .ts"}},
		{name: "filename without extension", src: Source{Filename: "hello", Code: []byte(functionTS)}, wantErr: errdefs.ErrInvalidArgument},
		{name: "filename commonjs", src: Source{Filename: "hello.cjs", Code: []byte(functionJS)}, wantErr: errdefs.ErrInvalidArgument},
		{name: "filename only an extension", src: Source{Filename: ".ts", Code: []byte(functionTS)}, wantErr: errdefs.ErrInvalidArgument},
		{name: "filename too long", src: Source{Filename: strings.Repeat("a", 300) + ".ts", Code: []byte(functionTS)}, wantErr: errdefs.ErrInvalidArgument},
		{name: "filename not utf-8", src: Source{Filename: "h\xffllo.ts", Code: []byte(functionTS)}, wantErr: errdefs.ErrInvalidArgument},
		{
			name: "external imports are left for the runtime",
			src: Source{Filename: "hello.ts", Code: []byte(`import { Hono } from "npm:hono@4";
import { serve } from "jsr:@std/http";
import { Buffer } from "node:buffer";
import { a } from "https://deno.land/x/a/mod.ts";
import { b } from "http://example.com/b.js";
import c from "data:text/javascript,export default 1";
export default { fetch: () => new Response(String([Hono, serve, Buffer, a, b, c])) };
`)},
			contains: []string{
				`import { Hono } from "npm:hono@4";`,
				`import { serve } from "jsr:@std/http";`,
				`import { Buffer } from "node:buffer";`,
				`import { a } from "https://deno.land/x/a/mod.ts";`,
				`import { b } from "http://example.com/b.js";`,
				`import c from "data:text/javascript,export default 1";`,
			},
		},
		{
			name:    "relative imports do not resolve",
			src:     Source{Filename: "hello.ts", Code: []byte("import x from './x.ts';\nexport default x;\n")},
			wantErr: errdefs.ErrInvalidArgument,
			wantMsg: []string{`hello.ts:1:15: Could not resolve "./x.ts"`},
		},
		{
			name:    "absolute imports do not resolve",
			src:     Source{Filename: "hello.ts", Code: []byte("import x from '/etc/hostname.json';\nexport default x;\n")},
			wantErr: errdefs.ErrInvalidArgument,
			wantMsg: []string{`Could not resolve "/etc/hostname.json"`},
		},
		{
			name:    "bare imports do not resolve",
			src:     Source{Filename: "hello.ts", Code: []byte("import x from 'lodash';\nexport default x;\n")},
			wantErr: errdefs.ErrInvalidArgument,
			wantMsg: []string{`Could not resolve "lodash"`},
		},
		{
			name:    "file source map is refused",
			src:     Source{Filename: "hello.js", Code: []byte("export default 1;\n//# sourceMappingURL=FILE:///etc/passwd\n")},
			wantErr: errdefs.ErrInvalidArgument,
			wantMsg: []string{"hello.js:2:5: sourceMappingURL must not be a file: URL"},
		},
		{
			name:    "computed import() is refused",
			src:     Source{Filename: "hello.ts", Code: []byte("const name = './extra.ts';\nexport default { async fetch() { return new Response((await import(name)).x) } };\n")},
			wantErr: errdefs.ErrInvalidArgument,
			wantMsg: []string{"hello.ts:2:61: import() of a computed specifier cannot be bundled"},
		},
		{
			name:    "computed require() is refused",
			src:     Source{Filename: "hello.js", Code: []byte("const n = 'fs';\nconst fs = require(n);\nexport default () => new Response(typeof fs);\n")},
			wantErr: errdefs.ErrInvalidArgument,
			wantMsg: []string{"hello.js:2:12: require() of a computed specifier cannot be bundled"},
		},
		{
			name:     "literal import() stays",
			src:      Source{Filename: "hello.ts", Code: []byte("export default { async fetch() { return new Response(String(await import('node:os'))) } };\n")},
			contains: []string{`import("node:os")`},
		},
		{
			name:     "relative source map is ignored",
			src:      Source{Filename: "hello.js", Code: []byte("export default 1;\n//# sourceMappingURL=hello.js.map\n")},
			contains: []string{"as default"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			res, err := Bundle(context.Background(), tt.src, tt.opts)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want class %v", err, tt.wantErr)
				}
				for _, s := range tt.wantMsg {
					if !strings.Contains(err.Error(), s) {
						t.Errorf("error %q does not contain %q", err, s)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("Bundle: %v", err)
			}
			checkResult(t, res)
			// Ignore the inline source map: it holds the original source.
			code := string(res.Code)
			if i := strings.Index(code, "//# sourceMappingURL="); i >= 0 {
				code = code[:i]
			}
			for _, s := range tt.contains {
				if !strings.Contains(code, s) {
					t.Errorf("output does not contain %q:\n%s", s, code)
				}
			}
			for _, s := range tt.absent {
				if strings.Contains(code, s) {
					t.Errorf("output contains %q:\n%s", s, code)
				}
			}
		})
	}
}

func manyImports(n int) string {
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, "import \"./m%d.ts\";\n", i)
	}
	b.WriteString("export default {};\n")
	return b.String()
}

// TestBundleDeterministic checks that the same input gives the same bytes,
// concurrently and whatever the working directory holds, since the digest
// identifies a version.
func TestBundleDeterministic(t *testing.T) {
	src := Source{Filename: "hello.ts", Code: []byte(typesTS + "import x from 'npm:x';\nconsole.log(x);\n")}
	first, err := Bundle(context.Background(), src, Options{})
	if err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 8)
	for range 8 {
		go func() {
			res, err := Bundle(context.Background(), src, Options{})
			if err == nil && (res.Digest != first.Digest || !bytes.Equal(res.Code, first.Code)) {
				err = fmt.Errorf("digest %s differs from %s", res.Digest, first.Digest)
			}
			errs <- err
		}()
	}
	for range 8 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}

	// A tsconfig.json in the working directory must not change the output.
	dir := t.TempDir()
	tsconfig := `{"compilerOptions":{"experimentalDecorators":true,"jsxFactory":"h","useDefineForClassFields":false}}`
	if err := os.WriteFile(filepath.Join(dir, "tsconfig.json"), []byte(tsconfig), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Chdir(dir)
	again, err := Bundle(context.Background(), src, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if again.Digest != first.Digest {
		t.Errorf("digest in %s is %s, want %s", dir, again.Digest, first.Digest)
	}
}

func TestBundleContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := Bundle(ctx, Source{Filename: "hello.ts", Code: []byte(functionTS)}, Options{})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
}

// checkResult verifies what every successful bundle must satisfy: the
// digest is sha256 of Code, and Code, read back as JavaScript, is an ES
// module with a default export.
func checkResult(t *testing.T, res Result) {
	t.Helper()
	sum := sha256.Sum256(res.Code)
	if want := "sha256:" + hex.EncodeToString(sum[:]); res.Digest != want {
		t.Errorf("Digest = %s, want %s", res.Digest, want)
	}
	// Reparse the output independently of Bundle, so a wrong metafile
	// reading in Bundle can't hide a missing default export.
	out := api.Build(api.BuildOptions{
		Stdin:    &api.StdinOptions{Contents: string(res.Code), Loader: api.LoaderJS, Sourcefile: "out.js"},
		Bundle:   true,
		Format:   api.FormatESModule,
		Platform: api.PlatformNeutral,
		Metafile: true,
		LogLevel: api.LogLevelSilent,
		External: []string{"*"},
	})
	if len(out.Errors) > 0 {
		t.Fatalf("output does not parse: %v\n%s", out.Errors[0].Text, res.Code)
	}
	var meta struct {
		Outputs map[string]struct{ Exports []string }
	}
	if err := json.Unmarshal([]byte(out.Metafile), &meta); err != nil {
		t.Fatal(err)
	}
	for _, o := range meta.Outputs {
		for _, e := range o.Exports {
			if e == "default" {
				return
			}
		}
	}
	t.Errorf("output has no default export:\n%s", res.Code)
}

func FuzzBundle(f *testing.F) {
	seeds := []struct{ filename, code string }{
		{"hello.ts", objectTS},
		{"hello.ts", functionTS},
		{"hello.js", functionJS},
		{"types.ts", typesTS},
		{"page.tsx", "export default () => <p>hi</p>;"},
		{"page.jsx", "export default function () { return <div a='1'>{1}</div> }"},
		{"hello.mjs", "module.exports = { fetch() {} };"},
		{"hello.ts", syntaxErrorTS},
		{"hello.ts", manyImports(7)},
		{"hello.ts", "export const x = 1;"},
		{"hello.ts", "export * from 'npm:x'; export { default } from 'jsr:@a/b';"},
		{"hello.ts", "import x from 'data:text/javascript,export default 1'; export default x"},
		{"hello.ts", "export default 1\n//# sourceMappingURL=file:///etc/passwd"},
		{"hello.ts", "export default 1\n//# sourceMappingURL=data:application/json,{}"},
		{"hello.ts", "export default `${"},
		{"hello.ts", ""},
		{"hello.ts", " \n "},
		{"hello.ts", "export default '\xff'"},
		{"", "export default {}"},
		{"a/b.ts", "export default {}"},
		{"x.py", "export default {}"},
		{"x\x00.ts", "export default {}"},
	}
	for _, s := range seeds {
		f.Add(s.filename, []byte(s.code))
	}
	f.Fuzz(func(t *testing.T, filename string, code []byte) {
		res, err := Bundle(context.Background(), Source{Filename: filename, Code: code}, Options{MaxSize: 1 << 16})
		if err != nil {
			if errors.Is(err, errdefs.ErrInternal) || errdefs.Code(err) == "internal" {
				t.Fatalf("internal error for %q: %v", code, err)
			}
			if !errors.Is(err, errdefs.ErrInvalidArgument) && !errors.Is(err, errdefs.ErrTooLarge) {
				t.Fatalf("unexpected error class for %q: %v", code, err)
			}
			return
		}
		checkResult(t, res)
	})
}

// A data: source map that names server files as its sources does not get
// their text into the bundle: esbuild would read each source a map
// lacks the text of from the disk.
func TestBundleReadsNoServerFile(t *testing.T) {
	secret := filepath.Join(t.TempDir(), "secret.txt")
	const content = "server-secret-7c1f"
	if err := os.WriteFile(secret, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, source := range []string{"file://" + secret, secret} {
		m := `{"version":3,"sources":["` + source + `"],"mappings":"AAAA"}`
		code := "export default 1;\n//# sourceMappingURL=data:application/json;base64," + base64.StdEncoding.EncodeToString([]byte(m)) + "\n"
		res, err := Bundle(context.Background(), Source{Filename: "hello.js", Code: []byte(code)}, Options{})
		if err != nil {
			t.Fatalf("%s: %v", source, err)
		}
		out := string(res.Code)
		if i := strings.Index(out, "base64,"); i >= 0 {
			end := strings.IndexAny(out[i+7:], "\n ")
			if end < 0 {
				end = len(out) - i - 7
			}
			if dec, err := base64.StdEncoding.DecodeString(out[i+7 : i+7+end]); err == nil {
				out += string(dec)
			}
		}
		if strings.Contains(out, content) {
			t.Fatalf("%s: the server file's text is in the bundle", source)
		}
	}
}
