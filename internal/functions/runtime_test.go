package functions

import (
	"archive/tar"
	"bytes"
	"testing"
)

// A deploy that names no runtime keeps the live version's, and its code
// is built for that runtime: before, it was built for the server's
// default (deno) and run on node, so a project whose package.json (or
// a dependency's) has a "deno" condition ran its Deno build on node.
func TestRedeployBuildsForTheLiveRuntime(t *testing.T) {
	ctx := t.Context()
	st, blobs := stores(t)
	s := New(st, blobs, retirer{}, box(t), noLogs{}, Config{DefaultRuntime: "deno", Runtimes: []string{"deno", "node"}, MaxCodeBytes: 1 << 20})
	project := tarball(t, map[string]string{
		"package.json": `{"name": "p", "exports": {".": {"deno": "./deno.js", "default": "./node.js"}}}`,
		"deno.js":      `export default { fetch() { return new Response("built for deno") } }`,
		"node.js":      `export default { fetch() { return new Response("built for node") } }`,
	})
	for i, runtime := range []string{"node", ""} {
		fn, err := s.Deploy(ctx, DeployRequest{Owner: "alice", Name: "f", Archive: project, Runtime: runtime, By: "alice"})
		if err != nil {
			t.Fatal(err)
		}
		code, err := blobs.Get(fn.Live.Digest)
		if err != nil {
			t.Fatal(err)
		}
		if fn.Live.Config.Runtime != "node" || !bytes.Contains(code, []byte("built for node")) {
			t.Errorf("deploy %d (runtime %q): runs on %s the bundle %s", i+1, runtime, fn.Live.Config.Runtime, code)
		}
	}
}

// tarball is a tar archive of files.
func tarball(t *testing.T, files map[string]string) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for name, body := range files {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}
