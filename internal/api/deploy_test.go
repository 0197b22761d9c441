package api

import (
	"archive/tar"
	"bytes"
	"encoding/base64"
	"net/http"
	"testing"
)

// A JSON deploy sends the code or, in its place, a project archive:
// one with both is a 400, storing nothing. Before, the archive was
// deployed and the code dropped without a word.
func TestDeployCodeAndArchive(t *testing.T) {
	e := newEnv(t)
	e.deploy(e.admin, "/api/v1/functions/f")
	var tarball bytes.Buffer
	tw := tar.NewWriter(&tarball)
	src := "export default { fetch() { return new Response('from the archive') } }"
	if err := tw.WriteHeader(&tar.Header{Name: "index.ts", Mode: 0o644, Size: int64(len(src))}); err != nil {
		t.Fatal(err)
	}
	if _, err := tw.Write([]byte(src)); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	archive := base64.StdEncoding.EncodeToString(tarball.Bytes())
	for _, body := range []string{
		`{"code":"export default { fetch() { return new Response('x') } }","archive":"` + archive + `"}`,
		`{"code":"export default { fetch() { return new Response('x') } }","archive":""}`,
	} {
		status, b := e.do(e.admin, "PUT", "/api/v1/functions/f", body)
		wantError(t, body, status, b, http.StatusBadRequest, "invalid_argument")
	}
	var fn FunctionView
	e.mustDo(e.admin, "GET", "/api/v1/functions/f", "", http.StatusOK, &fn)
	if fn.Version != 1 {
		t.Errorf("version %d after refused deploys, want 1", fn.Version)
	}
}
