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

// A deploy refuses a query parameter it would not read: a misspelt
// setting, or a setting beside a JSON body, deployed without it, in
// silence, and stores nothing.
func TestDeployQuery(t *testing.T) {
	e := newEnv(t)
	e.deploy(e.admin, "/api/v1/functions/f")
	for _, tt := range []struct {
		query string
		json  bool
		want  int
	}{
		{"memory=256Mi&target-utilization=50&filename=f.ts", false, http.StatusOK},
		{"target_utilization=50", false, http.StatusBadRequest},
		{"memroy=256Mi", false, http.StatusBadRequest},
		{"memory=256Mi", true, http.StatusBadRequest},
		{"owner=admin", true, http.StatusOK},
	} {
		var status int
		var b []byte
		if tt.json {
			status, b = e.do(e.admin, "PUT", "/api/v1/functions/f?"+tt.query, `{"code":"export default { fetch() { return new Response('y') } }"}`)
		} else {
			status, b = e.deployRaw(e.admin, "f", tt.query)
		}
		if status != tt.want {
			t.Errorf("?%s (JSON %v): %d %s, want %d", tt.query, tt.json, status, b, tt.want)
		}
	}
	var fn FunctionView
	e.mustDo(e.admin, "GET", "/api/v1/functions/f", "", http.StatusOK, &fn)
	if fn.Version != 3 {
		t.Errorf("version %d after two good deploys and three refused, want 3", fn.Version)
	}
}
