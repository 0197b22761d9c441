package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/spry-run/spry/internal/errdefs"
)

// clientError says whether err is answered with a 4xx.
func clientError(err error) bool {
	s := errdefs.HTTPStatus(err)
	return s >= 400 && s < 500
}

// dupKey says, by encoding/json's own tokens, whether an object in data
// names a key twice, exactly.
func dupKey(data []byte) bool {
	dec := json.NewDecoder(bytes.NewReader(data))
	type frame struct {
		object bool
		keys   map[string]bool
		key    bool // the next string is a key
	}
	var stack []*frame
	for {
		tok, err := dec.Token()
		if err != nil {
			return false
		}
		var top *frame
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		if top != nil && top.object && top.key {
			if d, ok := tok.(json.Delim); ok && d == '}' {
				stack = stack[:len(stack)-1]
				if len(stack) > 0 {
					stack[len(stack)-1].key = stack[len(stack)-1].object
				}
				continue
			}
			k := tok.(string)
			if top.keys[k] {
				return true
			}
			top.keys[k] = true
			top.key = false
			continue
		}
		switch tok {
		case json.Delim('{'):
			stack = append(stack, &frame{object: true, keys: map[string]bool{}, key: true})
			continue
		case json.Delim('['):
			stack = append(stack, &frame{})
			continue
		case json.Delim(']'):
			stack = stack[:len(stack)-1]
		}
		// A value ended: the parent object's next token is a key.
		if len(stack) > 0 {
			stack[len(stack)-1].key = stack[len(stack)-1].object
		}
	}
}

// FuzzCheckJSON: on any body encoding/json takes, checkJSON neither
// panics nor takes one with a key twice, a null among env values, text
// that is not UTF-8 or anything after the value; what it takes decodes
// to what it says.
func FuzzCheckJSON(f *testing.F) {
	for _, s := range []string{
		`{"memory":"256Mi"}`, `{"env":{"A":"1","B":"2"},"unset_env":["C"]}`, `{"env":{"A":null}}`,
		`{"memory":"1","MEMORY":"2"}`, `{"env":{"A":"1"},"env":{"B":"2"}}`, `{"secrets":{"S":"\ud800"}}`,
		`{"min":null,"cron":null}`, `null`, `{} ]`, `{"env":{"A":"\ud83d\ude00"}}`, `{"\u0065nv":{}}`,
		`{"unset_env":[null]}`, "{\"env\":{\"A\":\"\xff\"}}", `{"env":{"a":"1","A":"2"}}`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		data := []byte(s)
		var body ConfigBody
		if json.Unmarshal(data, &body) != nil {
			return
		}
		err := checkJSON(data, reflect.TypeFor[ConfigBody]())
		if err != nil {
			if !clientError(err) {
				t.Fatalf("%q: %v is no 4xx", s, err)
			}
			return
		}
		if dupKey(data) || !utf8.Valid(data) || bytes.TrimSpace(data)[0] == 'n' {
			t.Fatalf("%q taken", s)
		}
		for k, v := range body.Env {
			if !utf8.ValidString(k) || !utf8.ValidString(v) || strings.ContainsRune(v, utf8.RuneError) && !strings.Contains(s, "\ufffd") && !strings.Contains(strings.ToLower(s), `\ufffd`) {
				t.Fatalf("%q: env %q=%q", s, k, v)
			}
		}
		// Decoding into a map, which keeps every key as sent, sees the
		// same env.
		var m map[string]json.RawMessage
		if json.Unmarshal(data, &m) == nil {
			for k, raw := range m {
				if strings.EqualFold(k, "env") {
					var env map[string]*string
					if json.Unmarshal(raw, &env) == nil {
						for name, v := range env {
							if v == nil || body.Env[name] != *v {
								t.Fatalf("%q: env %s is %q, sent %v", s, name, body.Env[name], v)
							}
						}
					}
				}
			}
		}
	})
}

// FuzzDecodeDeployBody: a JSON deploy's body is refused with a 4xx, or
// taken with code that is UTF-8 (what the build reads) and that
// encoding/json decodes to the same.
func FuzzDecodeDeployBody(f *testing.F) {
	for _, s := range []string{
		`{"code":"export default {}"}`, `{"code":"a\ud800b"}`, `{"code":"x","Code":"y"}`, `{"archive":"AAAA","entry":"a.ts"}`,
		`{"code":"x","env":{"A":null}}`, `{"code":"\ud83d\ude00","min":1,"cron":null}`, `null`, `{"code":"x"}]`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := decodeDeployBody(strings.NewReader(s), int64(len(s)), 1<<20)
		if err != nil {
			if !clientError(err) {
				t.Fatalf("%q: %v is no 4xx", s, err)
			}
			return
		}
		if !utf8.Valid(d.Code) {
			t.Fatalf("%q: code %q is not UTF-8", s, d.Code)
		}
		var plain struct {
			Code *string `json:"code"`
		}
		if err := json.Unmarshal([]byte(s), &plain); err != nil {
			t.Fatalf("%q taken, but encoding/json says %v", s, err)
		}
		if plain.Code != nil && *plain.Code != string(d.Code) {
			t.Fatalf("%q: code %q, encoding/json %q", s, d.Code, *plain.Code)
		}
	})
}

// FuzzInvocationPath: a path an invocation is taken with can be sent:
// it starts with /, is UTF-8 without white space, controls or a
// fragment, and parses as a request URI.
func FuzzInvocationPath(f *testing.F) {
	for _, s := range []string{"/", "/a?b=1", "x", "/a#b", "/a b", "/%zz", "/\xff", "//host/x", "/a%20b?c=%2F"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		err := checkInvocationPath(p)
		if err != nil {
			if !clientError(err) {
				t.Fatalf("%q: %v is no 4xx", p, err)
			}
			return
		}
		if !strings.HasPrefix(p, "/") || !utf8.ValidString(p) || strings.ContainsAny(p, "# \t\r\n\x00\x7f") || len(p) > maxInvocationPath {
			t.Fatalf("%q taken", p)
		}
		if _, err := http.NewRequest("POST", "http://127.0.0.1"+p, nil); err != nil {
			t.Fatalf("%q taken, but no request can go to it: %v", p, err)
		}
	})
}

// FuzzParseSince: ?since= is a non-negative duration before now or an
// RFC 3339 time; anything else is a 400, never a panic.
func FuzzParseSince(f *testing.F) {
	for _, s := range []string{"10m", "-5m", "0s", "2030-01-02T03:04:05Z", "2030-13-01T00:00:00Z", "9999999999h", "1.5h", ""} {
		f.Add(s)
	}
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	f.Fuzz(func(t *testing.T, s string) {
		got, err := parseSince(s, now)
		if err != nil {
			if !clientError(err) {
				t.Fatalf("%q: %v is no 4xx", s, err)
			}
			return
		}
		if _, derr := time.ParseDuration(s); derr == nil && got.After(now) {
			t.Fatalf("%q: %v is after now", s, got)
		}
	})
}

// FuzzKVPrecondition: If-Match and If-None-Match are read as HTTP's
// conditional requests or refused with a 400.
func FuzzKVPrecondition(f *testing.F) {
	for _, s := range [][2]string{{`"0000000000000001"`, ""}, {"*", ""}, {"", "*"}, {"garbage", ""}, {`""`, ""}, {"*", "*"}} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, match, none string) {
		r, _ := http.NewRequest("PUT", "http://x/", nil)
		if match != "" {
			r.Header.Set("If-Match", match)
		}
		if none != "" {
			r.Header.Set("If-None-Match", none)
		}
		pre, err := kvPrecondition(r)
		switch {
		case err != nil:
			if !clientError(err) {
				t.Fatalf("%q %q: %v is no 4xx", match, none, err)
			}
		case match == "" && none == "":
			if pre != nil {
				t.Fatalf("a precondition of nothing: %+v", pre)
			}
		case pre == nil:
			t.Fatalf("%q %q: no precondition", match, none)
		case match != "" && none != "":
			t.Fatalf("%q %q: both taken", match, none)
		}
	})
}

// FuzzCheckQuery: a query string either parses, each key once, or is a
// 400; what is taken is read back the same by the handlers' r.URL.Query.
func FuzzCheckQuery(f *testing.F) {
	for _, s := range []string{"owner=alice", "a=1&a=2", "%zz", "a;b", "limit=10&after=x", "a=%00", "=", "&&"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		err := checkQuery(raw)
		if err != nil {
			if !clientError(err) {
				t.Fatalf("%q: %v is no 4xx", raw, err)
			}
			return
		}
		q, perr := url.ParseQuery(raw)
		if perr != nil {
			t.Fatalf("%q taken, but does not parse: %v", raw, perr)
		}
		for k, vs := range q {
			if len(vs) != 1 {
				t.Fatalf("%q taken with %s %d times", raw, k, len(vs))
			}
		}
	})
}

// The seeds of the fuzz tests hold as tests too: bodyError, the answer
// for a body that could not be read, keeps the classes of a body over
// its limit and past its deadline, and makes the rest a 400.
func TestBodyError(t *testing.T) {
	for _, tc := range []struct {
		err    error
		status int
	}{
		{&http.MaxBytesError{Limit: 10}, 0}, // fail makes it a 413
		{errdefs.New(errdefs.ErrRequestTimeout, "slow"), http.StatusRequestTimeout},
		{io.ErrUnexpectedEOF, http.StatusBadRequest},
		{errors.New("invalid byte in chunk length"), http.StatusBadRequest},
	} {
		got := bodyError(tc.err)
		if tc.status == 0 {
			if got != tc.err {
				t.Errorf("%v: %v", tc.err, got)
			}
			continue
		}
		if s := errdefs.HTTPStatus(got); s != tc.status {
			t.Errorf("%v: %d, want %d", tc.err, s, tc.status)
		}
	}
}
