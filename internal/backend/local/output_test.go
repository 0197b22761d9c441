package local

import (
	"context"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

func TestRuneCut(t *testing.T) {
	for _, tt := range []struct {
		b    string
		want int
	}{
		{"", 0},
		{"abc", 3},
		{"ab\xc3", 2},         // é cut after its first byte
		{"ab\xc3\xa9", 4},     // é whole
		{"ab\xe2\x82", 2},     // € cut after two bytes
		{"ab\xe2\x82\xac", 5}, // € whole
		{"a\xf0\x9f\x98", 1},  // 😀 cut after three bytes
		{"a\xf0\x9f\x98\x80", 5},
		{"\x80\x80\x80\x80", 4}, // not UTF-8: nothing to save
	} {
		if got := runeCut([]byte(tt.b)); got != tt.want {
			t.Errorf("runeCut(%q) = %d, want %d", tt.b, got, tt.want)
		}
	}
}

// A line longer than a log line may be is split, but never inside a
// character.
func TestLongLineSplitBetweenCharacters(t *testing.T) {
	e := newEnv(t, 0)
	inst, err := e.b.Start(context.Background(), e.spec(t, `export default { fetch() {
		console.log("x".repeat(16383) + "é".repeat(20000));
		return new Response("ok");
	} }`))
	if err != nil {
		t.Fatal(err)
	}
	if code, _ := get(t, inst, "/"); code != 200 {
		t.Fatalf("status %d", code)
	}
	const want = 16383 + 2*20000
	var parts []string
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		var cur []string
		total := 0
		for _, l := range strings.Split(e.logs.String(), "\n") {
			if l, ok := strings.CutPrefix(l, "stdout: "); ok {
				cur = append(cur, l)
				total += len(l)
			}
		}
		parts = cur
		if total >= want {
			break
		}
	}
	total := 0
	for _, l := range parts {
		if !utf8.ValidString(l) {
			t.Errorf("a %d-byte part of the line is not UTF-8 (ends %q)", len(l), l[max(0, len(l)-4):])
		}
		total += len(l)
	}
	if total != want {
		t.Errorf("the parts hold %d bytes, want %d", total, want)
	}
}

// V8's abort at its heap limit is known on either runtime, for either
// reason V8 gives: the lines are theirs, as the pinned Deno and Node
// write them.
func TestHeapAbort(t *testing.T) {
	for _, tc := range []struct {
		line string
		want bool
	}{
		{"# Fatal JavaScript out of memory: Reached heap limit", true},
		{"# Fatal JavaScript out of memory: Ineffective mark-compacts near heap limit", true},
		{"FATAL ERROR: Reached heap limit Allocation failed - JavaScript heap out of memory", true},
		{"FATAL ERROR: Ineffective mark-compacts near heap limit Allocation failed - JavaScript heap out of memory", true},
		{"<--- Last few GCs --->", false},
		{"[28793:0x563a688b4000]      314 ms: Mark-Compact (reduce) 48.0 (48.4) -> 48.0 (48.4) MB", false},
		{"RangeError: Maximum call stack size exceeded", false},
	} {
		if got := heapAbort([]byte(tc.line)); got != tc.want {
			t.Errorf("heapAbort(%q) = %v, want %v", tc.line, got, tc.want)
		}
	}
}
