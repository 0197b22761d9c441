package functions

import (
	"strconv"
	"testing"
)

func TestParseVersion(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		ok   bool
	}{
		{"1", 1, true},
		{"42", 42, true},
		{"9223372036854775807", 9223372036854775807, true},
		{"0", 0, false},
		{"-1", 0, false},
		{"01", 0, false},
		{"+3", 0, false},
		{" 3", 0, false},
		{"3 ", 0, false},
		{"0x10", 0, false},
		{"1_000", 0, false},
		{"9223372036854775808", 0, false},
		{"", 0, false},
		{"stable", 0, false},
	} {
		n, ok := ParseVersion(tc.in)
		if n != tc.want || ok != tc.ok {
			t.Errorf("ParseVersion(%q) = %d, %v; want %d, %v", tc.in, n, ok, tc.want, tc.ok)
		}
	}
}

// FuzzParseVersion: every accepted spelling is the one FormatInt writes,
// so no version has two names.
func FuzzParseVersion(f *testing.F) {
	for _, s := range []string{"1", "01", "+1", "-0", "18446744073709551616"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, ok := ParseVersion(s)
		if ok && (n <= 0 || strconv.FormatInt(n, 10) != s) {
			t.Fatalf("ParseVersion(%q) = %d accepted", s, n)
		}
	})
}
