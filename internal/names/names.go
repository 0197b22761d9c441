// Package names validates the identifiers users choose: function names,
// user names, version tags. One place, so the API, the router and the CLI
// agree on what is valid.
package names

import (
	"github.com/spry-run/spry/internal/errdefs"
)

// MaxLen is the longest name accepted, as for a DNS label.
const MaxLen = 63

// Validate reports whether s is a valid function or user name: 1 to 63
// characters of [a-z0-9-], not starting or ending with '-'. The error is of
// class errdefs.ErrInvalidArgument and says what is wrong.
func Validate(kind, s string) error {
	if s == "" {
		return errdefs.Invalid("%s name is empty", kind)
	}
	if len(s) > MaxLen {
		return errdefs.Invalid("%s name is %d characters long; the limit is %d", kind, len(s), MaxLen)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return errdefs.Invalid("%s name %q has an invalid character at position %d: use only a-z, 0-9 and '-'", kind, printable(s), i+1)
		}
	}
	if s[0] == '-' || s[len(s)-1] == '-' {
		return errdefs.Invalid("%s name %q must not start or end with '-'", kind, s)
	}
	return nil
}

// Function validates a function name.
func Function(s string) error { return Validate("function", s) }

// User validates a user name.
func User(s string) error { return Validate("user", s) }

// printable keeps error messages readable (and log-safe) for names that
// hold control characters or invalid UTF-8.
func printable(s string) string {
	if len(s) > MaxLen+10 {
		s = s[:MaxLen+10]
	}
	b := make([]rune, 0, len(s))
	for _, r := range s {
		if r < 0x20 || r == 0x7f || r == 0xfffd {
			r = '?'
		}
		b = append(b, r)
	}
	return string(b)
}
