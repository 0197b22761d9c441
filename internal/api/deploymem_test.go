package api

import (
	"bytes"
	"encoding/json"
	"net/http"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// deployAllocs sends a JSON deploy of about size bytes of code (refused
// after its body is decoded, for a bad setting, so nothing builds) and
// returns what the process allocated meanwhile and the most heap it
// held above what it held before, sampled.
func deployAllocs(t *testing.T, e *env, size int) (body int, total, peak uint64) {
	t.Helper()
	var code strings.Builder
	for i := 0; code.Len() < size; i++ {
		code.WriteString("export const v = \"a line of code\";\n")
	}
	b, err := json.Marshal(map[string]string{"code": code.String(), "memory": "bogus"})
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest("PUT", e.srv.URL+"/api/v1/functions/big", bytes.NewReader(b))
	req.Header.Set("Authorization", "Bearer "+e.admin)
	req.Header.Set("Content-Type", "application/json")
	code.Reset()
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	var high atomic.Uint64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		var m runtime.MemStats
		for {
			runtime.ReadMemStats(&m)
			if m.HeapAlloc > high.Load() {
				high.Store(m.HeapAlloc)
			}
			select {
			case <-stop:
				return
			case <-time.After(200 * time.Microsecond):
			}
		}
	}()
	res, err := e.srv.Client().Do(req)
	close(stop)
	<-sampled
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	runtime.ReadMemStats(&after)
	if res.StatusCode != http.StatusBadRequest {
		t.Fatalf("deploy: %d, want 400 for the bad setting", res.StatusCode)
	}
	return len(b), after.TotalAlloc - before.TotalAlloc, high.Load() - min(high.Load(), before.HeapAlloc)
}

// A JSON deploy holds few copies of its body: before, it was read whole,
// copied into a string, copied again into the decoder's buffer, decoded
// and copied once more, some six times its size allocated (a 120 MiB
// body could take the best part of a GB).
func TestJSONDeployMemory(t *testing.T) {
	e := newEnv(t)
	e.api.cfg.MaxCodeBytes = 32 << 20
	n, total, peak := deployAllocs(t, e, 16<<20)
	t.Logf("JSON deploy of a %d byte body: %d bytes allocated (%.1fx), peak heap +%d (%.1fx)", n, total, float64(total)/float64(n), peak, float64(peak)/float64(n))
	if total > uint64(4*n) {
		t.Errorf("a JSON deploy of %d bytes allocated %d (%.1fx), want under 4x", n, total, float64(total)/float64(n))
	}
}

// jsonText decodes a JSON string as encoding/json does, into bytes.
func TestJSONText(t *testing.T) {
	for _, s := range []string{
		`""`, `"plain"`, `"a\"b\\c\/d\b\f\n\r\t"`, `"\u00e9\u4e16"`, `"é世"`,
		`"\ud83d\ude00"`, `"\ud83d"`, `"\ud83dx"`, `"\ude00\ud83d"`, `"\ud83d\u0041"`, `"end\\"`,
	} {
		var want string
		if err := json.Unmarshal([]byte(s), &want); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
		var got jsonText
		if err := json.Unmarshal([]byte(s), &got); err != nil || string(got) != want {
			t.Errorf("%s: %q, %v; want %q", s, got, err, want)
		}
	}
}

// FuzzJSONText: whatever string encoding/json decodes, jsonText decodes
// to the same.
func FuzzJSONText(f *testing.F) {
	f.Add(`"a\ud83d\ude00\n"`)
	f.Fuzz(func(t *testing.T, s string) {
		var want string
		if json.Unmarshal([]byte(s), &want) != nil {
			return
		}
		var got jsonText
		if err := json.Unmarshal([]byte(s), &got); err != nil || string(got) != want {
			t.Fatalf("%q: %q, %v; want %q", s, got, err, want)
		}
	})
}

// A JSON deploy's body is checked as a json.Decoder would: unknown
// names, more than one value and bytes that are not UTF-8 are 400s.
func TestDeployBodyStrict(t *testing.T) {
	for _, tc := range []struct {
		body string
		ok   bool
	}{
		{`{"code":"x","memory":"128Mi","min":1}`, true},
		{`{"CODE":"x"}`, true}, // encoding/json matches names in any case
		{`{"code":"x","nope":1}`, false},
		{`{"code":"x"} {}`, false},
		{`{"code":"x"}}`, false},
		{"{\"code\":\"\xff\"}", false},
		{`[]`, false},
		{`{"code":5}`, false},
		{`  `, false},
	} {
		_, err := decodeDeployBody(strings.NewReader(tc.body), -1, 1<<20)
		if (err == nil) != tc.ok {
			t.Errorf("%q: %v, want ok %v", tc.body, err, tc.ok)
		}
		if tc.body == `{"code":"x"} {}` && (err == nil || !strings.Contains(err.Error(), "more than one value")) {
			t.Errorf("%q: %v, want \"more than one value\"", tc.body, err)
		}
	}
}
