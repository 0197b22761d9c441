package cli

import (
	"path/filepath"
	"strings"
	"testing"
)

// A project `spry init` makes deploys as a directory too (`spry deploy
// .`), for either runtime: the Node one's entry, index.mjs, is none of
// the names the server looks for without package.json's "main".
func TestInitProjectDeploysAsADirectory(t *testing.T) {
	url, token := apiServer(t)
	for _, runtime := range []string{"deno", "node"} {
		t.Run(runtime, func(t *testing.T) {
			parent := t.TempDir()
			name := "hello-" + runtime
			if code, _, stderr := spry(t, nil, "", "init", name, "--runtime", runtime, "--dir", parent); code != 0 {
				t.Fatalf("init: exit %d: %s", code, stderr)
			}
			code, stdout, stderr := spry(t, nil, "", "deploy", filepath.Join(parent, name), "--runtime", runtime, "--url", url, "--token", token)
			if code != 0 {
				t.Fatalf("deploy: exit %d: %s", code, stderr)
			}
			if !strings.HasPrefix(stdout, "deployed admin/"+name+" version 1\n") {
				t.Errorf("deploy: stdout %q", stdout)
			}
		})
	}
}
