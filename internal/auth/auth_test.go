package auth

import (
	"strings"
	"testing"
)

func FuzzParse(f *testing.F) {
	f.Add("spry_0123456789abcdef_" + strings.Repeat("A", 43))
	f.Add("spry__")
	f.Add("Bearer x")
	f.Add("spry_0123456789abcdeg_" + strings.Repeat("A", 43))
	f.Fuzz(func(t *testing.T, s string) {
		id, secret, ok := parse(s)
		if !ok {
			return
		}
		if len(id) != 16 || len(secret) != 43 || s != "spry_"+id+"_"+secret {
			t.Fatalf("parse(%q) = %q, %q", s, id, secret)
		}
	})
}

func TestBearerToken(t *testing.T) {
	tests := []struct {
		in   string
		want string
		ok   bool
	}{
		{"Bearer abc", "abc", true},
		{"bearer abc", "abc", true},
		{"Basic abc", "", false},
		{"Bearer ", "", false},
		{"", "", false},
	}
	for _, tt := range tests {
		got, ok := BearerToken(tt.in)
		if got != tt.want || ok != tt.ok {
			t.Errorf("BearerToken(%q) = %q, %v", tt.in, got, ok)
		}
	}
}
