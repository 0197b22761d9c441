package e2e

import (
	"archive/tar"
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spry-run/spry/internal/archive"
	"github.com/spry-run/spry/internal/npmtest"
)

func writeTree(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "proj")
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// TestDeployProjects: a directory with relative imports, an npm
// dependency (installed by the server's npm at deploy time from a
// registry on loopback, and bundled), a deno.json import map and a .gitignore; a bad dependency
// fails the deploy with npm's message and the previous version keeps
// serving; the raw API takes an archive; --bundle bundles on the client;
// Node runs the same kind of project.
func TestDeployProjects(t *testing.T) {
	reg := npmtest.Start(t, npmtest.IsNumber)
	jsr := npmtest.Start(t, npmtest.Greet)
	s := startServer(t, "--npm-registry", reg.URL, "--jsr-registry", jsr.URL)
	dir := writeTree(t, map[string]string{
		"index.ts": `import isNumber from "is-number";
import { greet } from "./lib/greet.ts";
import { shout } from "util/shout.ts";
export default { fetch(req: Request) {
	const q = new URL(req.url).searchParams.get("n") ?? "";
	return new Response(shout(greet(q)) + " " + isNumber(q));
} };`,
		"lib/greet.ts":      `export const greet = (s: string): string => "hello " + s;`,
		"vendor/shout.ts":   `export const shout = (s: string): string => s.toUpperCase();`,
		"deno.json":         `{"imports": {"util/": "./vendor/"}}`,
		"package.json":      `{"name": "proj", "dependencies": {"is-number": "7.0.0"}}`,
		".gitignore":        "scratch/\n",
		"scratch/broken.ts": "this is not code {",
	})
	out := s.mustSpry("deploy", dir, "--name", "proj")
	if !strings.Contains(out, "version 1") {
		t.Fatalf("deploy printed %q", out)
	}
	if r := s.get("/fn/admin/proj/?n=42"); r.status != 200 || string(r.body) != "HELLO 42 true" {
		t.Fatalf("project: %d %q", r.status, r.body)
	}

	// One file with npm: and jsr: imports: installed and bundled at
	// deploy, as a project's are (the instance has no network to fetch
	// them with).
	one := filepath.Join(writeTree(t, map[string]string{"one.ts": `import isNumber from "npm:is-number@7";
import { shout } from "jsr:@spry/greet@^1.2/loud";
export default { fetch: () => new Response(shout("x") + " " + isNumber("3")) };`}), "one.ts")
	s.mustSpry("deploy", one)
	if r := s.get("/fn/admin/one/"); r.status != 200 || string(r.body) != "HELLO X true" {
		t.Fatalf("one file with npm: and jsr: imports: %d %q", r.status, r.body)
	}

	// A dependency that does not exist: 400 with npm's words; version 1
	// still serves.
	bad := writeTree(t, map[string]string{
		"index.ts":     `import x from "spry-definitely-not-a-package-xyz"; export default () => new Response(String(x));`,
		"package.json": `{"dependencies": {"spry-definitely-not-a-package-xyz": "1.0.0"}}`,
	})
	_, errOut, code := s.spry("", "deploy", bad, "--name", "proj")
	if code == 0 || !strings.Contains(errOut, "dependency install failed") {
		t.Fatalf("bad dependency: exit %d, stderr %q", code, errOut)
	}
	if r := s.get("/fn/admin/proj/?n=x"); string(r.body) != "HELLO X false" {
		t.Fatalf("after a failed deploy: %d %q", r.status, r.body)
	}

	// The raw API takes a tar.gz.
	var buf bytes.Buffer
	ignore, _ := archive.LoadGitignore(dir)
	if err := archive.Pack(dir, &buf, ignore); err != nil {
		t.Fatal(err)
	}
	r := s.do("PUT", "/api/v1/functions/proj-raw", s.token, &buf, map[string]string{"Content-Type": "application/gzip"})
	if r.status != 201 {
		t.Fatalf("raw archive deploy: %d %s", r.status, r.body)
	}
	if r := s.get("/fn/admin/proj-raw/?n=7"); string(r.body) != "HELLO 7 true" {
		t.Fatalf("raw archive: %q", r.body)
	}
	// An archive that escapes its directory is refused.
	evil := s.do("PUT", "/api/v1/functions/evil", s.token, bytes.NewReader(tarWithEntry(t, "../../etc/x", "boom")), map[string]string{"Content-Type": "application/x-tar"})
	if evil.status != 400 {
		t.Fatalf("path traversal archive: %d %s", evil.status, evil.body)
	}

	// --bundle bundles here and sends only the bundle.
	s.mustSpry("deploy", dir, "--name", "proj-local", "--bundle", "--npm-registry", reg.URL)
	if r := s.get("/fn/admin/proj-local/?n=1"); string(r.body) != "HELLO 1 true" {
		t.Fatalf("--bundle: %q", r.body)
	}

	// Node, with an npm dependency and the Express contract.
	nodeDir := writeTree(t, map[string]string{
		"main.js":      `const isNumber = require("is-number"); module.exports = (req, res) => res.json({ ok: isNumber(req.query.n) });`,
		"package.json": `{"main": "main.js", "dependencies": {"is-number": "7.0.0"}}`,
	})
	s.mustSpry("deploy", nodeDir, "--name", "proj-node", "--runtime", "node")
	if r := s.get("/fn/admin/proj-node/?n=5"); strings.TrimSpace(string(r.body)) != `{"ok":true}` {
		t.Fatalf("node project: %d %q", r.status, r.body)
	}
}

func tarWithEntry(t *testing.T, name, content string) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(content)), Typeflag: tar.TypeReg}); err != nil {
		t.Fatal(err)
	}
	tw.Write([]byte(content))
	tw.Close()
	return buf.Bytes()
}

// TestDeployNPMWroteTooMuch: a deploy whose npm install writes more than
// --npm-disk (its dependency unpacks to 80 MiB, from a ~1 MiB tarball)
// fails with 413 naming the bound, and the next deploy, within it,
// installs.
func TestDeployNPMWroteTooMuch(t *testing.T) {
	// A random 16 KiB, over and over: gzip's window takes each repeat
	// whole, well under npm's 1000-to-1 bound on unpacking.
	chunk := make([]byte, 16<<10)
	rand.NewChaCha8([32]byte{1}).Read(chunk)
	big := npmtest.Package{Name: "big-files", Version: "1.0.0", Main: "index.js",
		Files: map[string]string{"index.js": "module.exports = 42;\n", "data.bin": strings.Repeat(string(chunk), 80<<6)}}
	reg := npmtest.Start(t, npmtest.IsNumber, big)
	s := startServer(t, "--npm-registry", reg.URL, "--npm-disk", "64")
	deploy := func(dep string) response {
		t.Helper()
		dir := writeTree(t, map[string]string{
			"index.ts":     `import x from "` + dep + `"; export default () => new Response(String(typeof x === "function" ? x(1) : x));`,
			"package.json": `{"dependencies": {"` + dep + `": "*"}}`,
		})
		var buf bytes.Buffer
		if err := archive.Pack(dir, &buf, nil); err != nil {
			t.Fatal(err)
		}
		return s.do("PUT", "/api/v1/functions/disk", s.token, &buf, map[string]string{"Content-Type": "application/gzip"})
	}
	r := deploy("big-files")
	if r.status != 413 || !strings.Contains(string(r.body), `"code":"too_large"`) || !strings.Contains(string(r.body), "npm may write at most 64 MiB") {
		t.Fatalf("deploy past the bound: %d %s", r.status, r.body)
	}
	if r := deploy("is-number"); r.status != 201 {
		t.Fatalf("the next deploy: %d %s", r.status, r.body)
	}
	if r := s.get("/fn/admin/disk/"); r.status != 200 || string(r.body) != "true" {
		t.Fatalf("after the deploy: %d %q", r.status, r.body)
	}
}

// TestDeployNPMOutOfMemory: a deploy whose npm install needs more memory
// than --npm-memory (its dependency's registry document alone is larger)
// fails with 413 naming the limit, and the server is fine: the previous
// version serves and the next deploy, within the limit, installs.
func TestDeployNPMOutOfMemory(t *testing.T) {
	big := npmtest.Package{Name: "big-meta", Version: "1.0.0", Main: "index.js",
		Files: map[string]string{"index.js": "module.exports = 42;\n"}, Description: strings.Repeat("x", 80<<20)}
	reg := npmtest.Start(t, npmtest.IsNumber, big)
	s := startServer(t, "--npm-registry", reg.URL, "--npm-memory", "64")
	deploy := func(dep string) response {
		t.Helper()
		dir := writeTree(t, map[string]string{
			"index.ts":     `import x from "` + dep + `"; export default () => new Response(String(x(1) ?? x));`,
			"package.json": `{"dependencies": {"` + dep + `": "*"}}`,
		})
		var buf bytes.Buffer
		if err := archive.Pack(dir, &buf, nil); err != nil {
			t.Fatal(err)
		}
		return s.do("PUT", "/api/v1/functions/mem", s.token, &buf, map[string]string{"Content-Type": "application/gzip"})
	}
	if r := deploy("is-number"); r.status != 201 {
		t.Fatalf("deploy within the limit: %d %s", r.status, r.body)
	}
	r := deploy("big-meta")
	if r.status != 413 || !strings.Contains(string(r.body), `"code":"too_large"`) || !strings.Contains(string(r.body), "npm may use at most 64 MiB") {
		t.Fatalf("deploy past the limit: %d %s", r.status, r.body)
	}
	if r := s.get("/fn/admin/mem/"); r.status != 200 || string(r.body) != "true" {
		t.Fatalf("after the failed deploy: %d %q", r.status, r.body)
	}
	if r := deploy("is-number"); r.status != 200 {
		t.Fatalf("the next deploy: %d %s", r.status, r.body)
	}
}

// TestDeployRefusalsKeepServing: with the real binary, project shapes
// that cannot work are refused with a 400 naming the file and line (a
// syntax error in another file, a missing import, a computed import(),
// a package.json of the wrong shape, a hostile archive), each leaving
// version 1 live and alone, and nothing in the build's scratch
// directory; a CommonJS entry package.json names deploys.
func TestDeployRefusalsKeepServing(t *testing.T) {
	s := startServer(t)
	tmp := t.TempDir()
	s.env = []string{"TMPDIR=" + tmp}
	s.restart()
	good := writeTree(t, map[string]string{"index.ts": `export default { fetch: () => new Response("v1") };`})
	s.mustSpry("deploy", good, "--name", "app")

	tests := []struct {
		name  string
		files map[string]string
		want  string
	}{
		{"syntax error in an imported file", map[string]string{
			"index.ts": `import { x } from "./lib/x.ts"; export default { fetch: () => new Response(x) };`,
			"lib/x.ts": "export const x: string = (1 +;\n",
		}, `lib/x.ts:1:30: Unexpected ";"`},
		{"missing import", map[string]string{
			"index.ts": `import { x } from "./nope.ts"; export default { fetch: () => new Response(x) };`,
		}, `index.ts:1:19: Could not resolve "./nope.ts"`},
		{"computed import", map[string]string{
			"index.ts": "export default { async fetch() {\n  const name = \"./x.ts\";\n  return new Response((await import(name)).x);\n} };\n",
			"x.ts":     `export const x = "x";`,
		}, "index.ts:3:30: import() of a computed specifier cannot be bundled"},
		{"no default export", map[string]string{
			"index.ts": `export const fetch = () => new Response("x");`,
		}, "index.ts: no default export"},
		{"package.json of the wrong shape", map[string]string{
			"package.json": `{"dependencies": ["is-number"]}`,
			"index.ts":     `export default { fetch: () => new Response("x") };`,
		}, `package.json: in "dependencies": an array where an object of strings must be`},
	}
	for _, tt := range tests {
		_, errOut, code := s.spry("", "deploy", writeTree(t, tt.files), "--name", "app")
		if code == 0 || !strings.Contains(errOut, tt.want) {
			t.Errorf("%s: exit %d, stderr %q, want %q", tt.name, code, errOut, tt.want)
		}
	}
	evil := s.do("PUT", "/api/v1/functions/app", s.token, bytes.NewReader(tarWithEntry(t, "/etc/x.ts", "x")), map[string]string{"Content-Type": "application/x-tar"})
	if evil.status != 400 || !strings.Contains(string(evil.body), "absolute paths are not allowed") {
		t.Errorf("absolute path in an archive: %d %s", evil.status, evil.body)
	}
	if r := s.get("/fn/admin/app/"); r.status != 200 || string(r.body) != "v1" {
		t.Errorf("after the refusals: %d %q", r.status, r.body)
	}
	if out := s.mustSpry("versions", "app"); len(lines(out)) != 2 {
		t.Errorf("versions after the refusals:\n%s", out)
	}
	// The scratch directory (TMPDIR/spry-<id>) holds nothing of them.
	err := filepath.WalkDir(tmp, func(p string, d os.DirEntry, err error) error {
		if err == nil && p != tmp && (!d.IsDir() || filepath.Dir(p) != tmp) {
			t.Errorf("left in the temporary directory: %s", p)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}

	cjs := writeTree(t, map[string]string{
		"package.json": `{"main": "server.cjs"}`,
		"server.cjs":   `const { x } = require("./x.json"); module.exports = { fetch: () => new Response(x) };`,
		"x.json":       `{"x": "v2 from cjs"}`,
	})
	s.mustSpry("deploy", cjs, "--name", "app")
	if r := s.get("/fn/admin/app/"); r.status != 200 || string(r.body) != "v2 from cjs" {
		t.Errorf("a CommonJS entry: %d %q", r.status, r.body)
	}
}
