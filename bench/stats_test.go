package main

import (
	"encoding/json"
	"io"
	"math"
	"strconv"
	"testing"
	"time"
)

func seq(n int) []float64 {
	xs := make([]float64, n)
	for i := range xs {
		xs[i] = float64(n - i) // reversed: percentile must sort
	}
	return xs
}

func TestPercentileNearestRank(t *testing.T) {
	tests := []struct {
		name string
		xs   []float64
		p    float64
		want float64
	}{
		{"one value, p50", []float64{7}, 50, 7},
		{"one value, p99", []float64{7}, 99, 7},
		{"two values, p50 is the lower", []float64{2, 1}, 50, 1},
		{"four values, p50", seq(4), 50, 2},
		{"ten values, p90", seq(10), 90, 9},
		{"ten values, p0 is the minimum", seq(10), 0, 1},
		{"ten values, p100 is the maximum", seq(10), 100, 10},
		{"100 values, p50", seq(100), 50, 50},
		{"100 values, p99", seq(100), 99, 99},
		{"200 values, p99 is the 198th", seq(200), 99, 198},
		{"200 values, p50 is the 100th", seq(200), 50, 100},
		{"20 values, p99 is the maximum", seq(20), 99, 20},
		// 99.9/100*1000 is 999.0000000000001 in floating point: the
		// nearest rank is still 999, not the maximum.
		{"1000 values, p99.9 is the 999th", seq(1000), 99.9, 999},
		{"2000 values, p99.9 is the 1998th", seq(2000), 99.9, 1998},
		{"1001 values, p99.9 is the 1000th", seq(1001), 99.9, 1000},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := percentile(tt.xs, tt.p); got != tt.want {
				t.Errorf("percentile(n=%d, %v) = %v, want %v", len(tt.xs), tt.p, got, tt.want)
			}
		})
	}
	if !math.IsNaN(percentile(nil, 50)) {
		t.Error("percentile of no values is not NaN")
	}
	xs := []float64{3, 1, 2}
	percentile(xs, 50)
	if xs[0] != 3 || xs[1] != 1 || xs[2] != 2 {
		t.Errorf("percentile reordered its input: %v", xs)
	}
}

func TestWrkErrors(t *testing.T) {
	tests := []struct {
		name string
		r    wrkResult
		want float64
	}{
		{"none", wrkResult{}, 0},
		// wrk prints "Non-2xx or 3xx responses" from the same counter
		// as summary.errors.status (status > 399): one error, not two.
		{"status errors, as wrk reports them", wrkResult{ErrStatus: 5, Non2xx: 5}, 5},
		{"socket errors", wrkResult{ErrConnect: 1, ErrRead: 2, ErrWrite: 3, ErrTimeout: 4}, 10},
		{"both", wrkResult{ErrRead: 2, ErrStatus: 3, Non2xx: 3}, 5},
		{"only the printed line was parsed", wrkResult{Non2xx: 4}, 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.r.errors(); got != tt.want {
				t.Errorf("errors() = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestCapacityVerdict(t *testing.T) {
	tests := []struct {
		reached float64
		want    string
	}{
		{0, pass},
		{300, pass},
		{2000, pass},
		{2000.5, miss},
		{3099, miss},
		{math.NaN(), miss},
	}
	for _, tt := range tests {
		if got, _ := capacityVerdict(tt.reached, 5, 10*time.Second); got != tt.want {
			t.Errorf("capacityVerdict(%v ms) = %s, want %s", tt.reached, got, tt.want)
		}
	}
}

func TestRowJSON(t *testing.T) {
	one := 1.5
	nan := math.NaN()
	tests := []struct {
		name string
		r    Row
		want string
	}{
		{"a figure", Row{Scenario: "s", Metric: "m", Value: 2.5, Unit: "ms", Verdict: pass},
			`{"scenario":"s","metric":"m","value":2.5,"unit":"ms","verdict":"PASS"}`},
		{"a ratio", Row{Scenario: "s", Metric: "m", Value: 1.5, Unit: "x", Ratio: &one, Verdict: pass},
			`{"scenario":"s","metric":"m","value":1.5,"unit":"x","ratio":1.5,"verdict":"PASS"}`},
		// No figure is null, never 0: a 0 ms that never happened reads as
		// the best result there could be.
		{"no figure", Row{Scenario: "s", Metric: "m", Value: nan, Unit: "ms", Verdict: miss, Note: "never"},
			`{"scenario":"s","metric":"m","value":null,"unit":"ms","verdict":"MISS","note":"never"}`},
		{"no ratio", Row{Scenario: "s", Metric: "m", Value: math.Inf(1), Unit: "x", Ratio: &nan, Verdict: info},
			`{"scenario":"s","metric":"m","value":null,"unit":"x","ratio":null,"verdict":"INFO"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := json.Marshal(tt.r)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tt.want {
				t.Errorf("got  %s\nwant %s", got, tt.want)
			}
		})
	}
	rep := &Report{Results: []Row{{Metric: "m", Value: nan}}}
	if _, err := json.Marshal(sanitize(rep)); err != nil {
		t.Fatal(err)
	}
	if !math.IsNaN(rep.Results[0].Value) {
		t.Error("sanitize changed the table's value")
	}
}

func TestColdHits(t *testing.T) {
	ok := func(ttfbMs float64, cold string) hit {
		return hit{Status: 200, Body: []byte(helloBody), TTFB: time.Duration(ttfbMs * float64(time.Millisecond)), Cold: cold}
	}
	hits := []hit{
		ok(4, "3.10"),
		ok(0.3, ""), // answered warm: not a cold start
		{Status: 503, Body: []byte("busy")},
		ok(6, "5.00"),
		ok(5, "4.00"),
		{Err: io.ErrUnexpectedEOF},
	}
	name := func(i int) string { return "f" + strconv.Itoa(i) }
	ttfb, hdr, errs, notCold, firstErr := coldHits(hits, name)
	if errs != 2 || notCold != 1 {
		t.Errorf("errs, notCold = %d, %d, want 2, 1", errs, notCold)
	}
	if len(ttfb) != 3 || len(hdr) != 3 {
		t.Fatalf("ttfb %v, hdr %v: want the three cold starts only", ttfb, hdr)
	}
	if p50 := percentile(ttfb, 50); p50 != 5 {
		t.Errorf("TTFB p50 = %v, want 5 (the warm 0.3 ms call left out)", p50)
	}
	if p50 := percentile(hdr, 50); p50 != 4 {
		t.Errorf("header p50 = %v, want 4", p50)
	}
	if firstErr == "" {
		t.Error("no first error")
	}
}

func TestHitOK(t *testing.T) {
	tests := []struct {
		name string
		h    hit
		ok   bool
	}{
		{"200 with the body", hit{Status: 200, Body: []byte(helloBody), Attempts: 1}, true},
		{"503", hit{Status: 503, Body: []byte("x"), Attempts: 1}, false},
		{"another body", hit{Status: 200, Body: []byte("Hello"), Attempts: 1}, false},
		{"transport error", hit{Err: io.EOF, Attempts: 1}, false},
		// Go resent the GET after its reused connection failed: the
		// first attempt was dropped.
		{"resent after a dropped connection", hit{Status: 200, Body: []byte(helloBody), Attempts: 2}, false},
	}
	for _, tt := range tests {
		if err := tt.h.ok(helloBody); (err == nil) != tt.ok {
			t.Errorf("%s: ok() = %v", tt.name, err)
		}
	}
}
