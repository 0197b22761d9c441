package api

import (
	"context"
	"path/filepath"
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
