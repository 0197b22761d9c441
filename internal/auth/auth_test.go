package auth

import (
	"strings"
	"testing"
	"time"
)

func FuzzParse(f *testing.F) {
	f.Add("spry_0123456789abcdef_" + strings.Repeat("A", 43))
	f.Add("spry__")
	f.Add("Bearer x")
	f.Add("spry_0123456789abcdeg_" + strings.Repeat("A", 43))
	f.Fuzz(func(t *testing.T, s string) {
		id, secret, ok := parse(s)
		// The router's check, which does not allocate, knows a token
		// as parse does.
		if strings.TrimSpace(s) == s && IsSpryBearer([]byte("Bearer "+s)) != ok {
			t.Fatalf("IsSpryBearer(Bearer %q) = %v, parse %v", s, !ok, ok)
		}
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

// IsSpryBearer knows a token of Spry's shape in an Authorization value,
// as parse knows it, and nothing else.
func TestIsSpryBearer(t *testing.T) {
	tok, _ := (&Service{now: time.Now}).newToken("alice", "t", TokenOptions{})
	if _, _, ok := parse(tok); !ok {
		t.Fatalf("parse(%q) refused a new token", tok)
	}
	for _, c := range []struct {
		v    string
		want bool
	}{
		{"Bearer " + tok, true},
		{"bearer  " + tok + " ", true},
		{"BEARER " + tok, true},
		{"Basic " + tok, false},
		{tok, false},
		{"Bearer " + tok[:len(tok)-1], false},
		{"Bearer " + tok + "x", false},
		{"Bearer " + strings.Replace(tok, "spry_", "spri_", 1), false},
		{"Bearer " + tok[:21] + "." + tok[22:], false},
		{"Bearer " + tok[:5] + "g" + tok[6:], false},
		{"Bearer " + tok[:30] + "+" + tok[31:], false},
		{"Bearer my-own-token", false},
		{"", false},
	} {
		if got := IsSpryBearer([]byte(c.v)); got != c.want {
			t.Errorf("IsSpryBearer(%q) = %v, want %v", c.v, got, c.want)
		}
	}
}
