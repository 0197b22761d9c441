package api

import (
	"context"
	"io"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/spry-run/spry/internal/kv"
)

// withKV gives e's API a real key-value store.
func withKV(t *testing.T, e *env) *kv.Store {
	t.Helper()
	s, err := kv.Open(context.Background(), filepath.Join(t.TempDir(), "kv.db"), kv.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	e.api.cfg.KV = s
	return s
}

// A value's answer is about as large as the value: indenting a deeply
// nested one (2,000 levels in 4,000 bytes: 8 MB indented; 10,000 levels,
// 200 MB, and a page of them a thousand times that) would let any user
// make the server build answers it cannot hold.
func TestKVDeepValue(t *testing.T) {
	e := newEnv(t)
	withKV(t, e)
	e.deploy(e.admin, "/api/v1/functions/f")
	const depth = 2000
	value := strings.Repeat("[", depth) + strings.Repeat("]", depth)
	e.mustDo(e.admin, "PUT", "/api/v1/functions/f/kv/deep", value, 204, nil)
	for _, path := range []string{"/api/v1/functions/f/kv/deep", "/api/v1/functions/f/kv"} {
		st, body := e.do(e.admin, "GET", path, "")
		if st != 200 || !strings.Contains(string(body), value) {
			t.Errorf("GET %s: %d, %d bytes, without the value as stored", path, st, len(body))
		}
		if len(body) > 2*len(value) {
			t.Errorf("GET %s: %d bytes for a value of %d", path, len(body), len(value))
		}
	}
}

// Conditional writes through the API, as HTTP's: a read's ETag is the
// value's version; If-Match (that ETag, or *) and If-None-Match: * make
// a PUT or DELETE that the key's state no longer meets a 412, which
// changes nothing.
func TestKVConditionalRequests(t *testing.T) {
	e := newEnv(t)
	withKV(t, e)
	e.deploy(e.admin, "/api/v1/functions/f")
	const key = "/api/v1/functions/f/kv/k"
	call := func(method, body string, headers ...string) (int, string, string) {
		t.Helper()
		req, err := http.NewRequest(method, e.srv.URL+key, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+e.admin)
		for i := 0; i < len(headers); i += 2 {
			req.Header.Add(headers[i], headers[i+1])
		}
		res, err := e.srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, res.Header.Get("ETag"), string(b)
	}
	etags := map[string]string{} // by the step that made them
	for _, tt := range []struct {
		step, method, body string
		headers            []string
		status             int
		value              string // the key's value after it, "" for none
	}{
		{"create if absent", "PUT", `1`, []string{"If-None-Match", "*"}, 204, "1"},
		{"create if absent, present", "PUT", `2`, []string{"If-None-Match", "*"}, 412, "1"},
		{"update if present", "PUT", `3`, []string{"If-Match", "*"}, 204, "3"},
		{"update for the first ETag", "PUT", `4`, []string{"If-Match", "@create if absent"}, 412, "3"},
		{"update for the ETag read", "PUT", `5`, []string{"If-Match", "@read"}, 204, "5"},
		{"delete for a stale ETag", "DELETE", ``, []string{"If-Match", "@read"}, 412, "5"},
		{"delete for the last write's ETag", "DELETE", ``, []string{"If-Match", "@update for the ETag read"}, 204, ""},
		{"update if present, absent", "PUT", `6`, []string{"If-Match", "*"}, 412, ""},
		{"a weak ETag", "PUT", `7`, []string{"If-Match", `W/"0000000000000001"`}, 400, ""},
		{"an ETag not quoted", "PUT", `7`, []string{"If-Match", "0000000000000001"}, 400, ""},
		{"two ETags", "PUT", `7`, []string{"If-Match", `"0000000000000001", "0000000000000002"`}, 400, ""},
		{"an ETag of another form", "PUT", `7`, []string{"If-Match", `"x"`}, 400, ""},
		{"If-None-Match of an ETag", "PUT", `7`, []string{"If-None-Match", `"0000000000000001"`}, 400, ""},
		{"both", "PUT", `7`, []string{"If-Match", "*", "If-None-Match", "*"}, 400, ""},
		{"unconditional", "PUT", `8`, nil, 204, "8"},
	} {
		if tt.step == "update for the ETag read" {
			st, etag, body := call("GET", "")
			if st != 200 || etag == "" || !strings.Contains(body, `"version":`+etag) {
				t.Fatalf("GET: %d, ETag %s, %s", st, etag, body)
			}
			etags["@read"] = etag
		}
		h := slices.Clone(tt.headers)
		for i, v := range h {
			if etag, ok := etags[v]; ok {
				h[i] = etag
			}
		}
		st, etag, body := call(tt.method, tt.body, h...)
		if st != tt.status {
			t.Errorf("%s: %d %s, want %d", tt.step, st, body, tt.status)
		}
		if tt.method == "PUT" && st == 204 {
			if etag == "" {
				t.Errorf("%s: no ETag", tt.step)
			}
			etags["@"+tt.step] = etag
		}
		if st == 412 && !strings.Contains(body, `"code":"precondition_failed"`) {
			t.Errorf("%s: %s", tt.step, body)
		}
		if st, _, body := call("GET", ""); (tt.value == "") != (st == 404) || (tt.value != "" && !strings.Contains(body, `"value":`+tt.value+`,`)) {
			t.Errorf("after %s: GET %d %s, want the value %q", tt.step, st, body, tt.value)
		}
	}
}
