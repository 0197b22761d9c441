package cli

import (
	"strings"
	"testing"
)

// A value that is not UTF-8 (a binary key file on stdin, an argument in
// another encoding) is refused by the CLI, exit 2, naming the variable:
// JSON would carry it with each bad byte made U+FFFD, and the function
// would get another value than the one set, without a word.
func TestEnvAndSecretValuesMustBeUTF8(t *testing.T) {
	url, admin := apiServer(t)
	_, must := cliAt(t, url)
	must(admin, "deploy", helloFile(t, "f.ts"))
	for _, tc := range []struct {
		stdin string
		args  []string
		want  string
	}{
		{"\xff\xfebinary\n", []string{"secret", "set", "f", "KEY"}, "KEY"},
		{"", []string{"env", "set", "f", "OK=1", "LATIN1=caf\xe9"}, "LATIN1"},
		{"", []string{"deploy", helloFile(t, "f.ts"), "--env", "LATIN1=caf\xe9"}, "LATIN1"},
	} {
		code, _, stderr := spry(t, nil, tc.stdin, append(tc.args, "--url", url, "--token", admin)...)
		if code != 2 || !strings.Contains(stderr, tc.want) || !strings.Contains(stderr, "UTF-8") {
			t.Errorf("spry %q: exit %d, stderr %q; want 2 naming %s", tc.args, code, stderr, tc.want)
		}
	}
	if out := must(admin, "versions", "f", "--json"); strings.Count(out, `"version"`) != 1 {
		t.Errorf("a refused value made a version:\n%s", out)
	}
}
