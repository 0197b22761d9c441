package async

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/spry-run/spry/internal/errdefs"
)

// A failure's event fits the bound of any invocation's body: what does
// not fit is cut, the response first, then the request's body, each a
// start of what it was (text never cut inside a rune, base64 a start of
// the bytes), as long as fits, and flagged truncated; the request's
// size says how long it was.
func TestFailureEventBound(t *testing.T) {
	binary := bytes.Repeat([]byte{0xff, 0, 1}, MaxBody/3+1)[:MaxBody]
	for _, tc := range []struct {
		name     string
		body     []byte
		response []byte
		status   int
		limit    int
		// What is cut: the response, the request's body.
		cutResp, cutReq bool
		tooLarge        bool
	}{
		{name: "small", body: []byte(`{"to":"x"}`), response: []byte("no"), status: 500, limit: MaxBody},
		{name: "no answer", body: []byte(strings.Repeat("a", 1000)), limit: MaxBody},
		{name: "response cut", body: bytes.Repeat([]byte("a"), 200<<10), response: bytes.Repeat([]byte("r"), MaxResponse), status: 500, limit: MaxBody, cutResp: true},
		{name: "both cut", body: bytes.Repeat([]byte("a"), MaxBody), response: bytes.Repeat([]byte("r"), MaxResponse), status: 503, limit: MaxBody, cutResp: true, cutReq: true},
		{name: "request cut, no answer", body: bytes.Repeat([]byte("a"), MaxBody), limit: MaxBody, cutReq: true},
		{name: "escapes", body: bytes.Repeat([]byte("\x01\"<é\u2028"), 20<<10), response: []byte("\x00\x00"), status: 400, limit: MaxBody, cutResp: true, cutReq: true},
		{name: "binary", body: binary, response: []byte{0xff}, status: 500, limit: MaxBody, cutResp: true, cutReq: true},
		{name: "runes", body: []byte(strings.Repeat("日本", 50<<10)), limit: 10 << 10, cutReq: true},
		{name: "lower bound", body: bytes.Repeat([]byte("a"), 10<<10), response: []byte("x"), status: 500, limit: 10 << 10, cutResp: true, cutReq: true},
		{name: "no room", body: []byte("a"), status: 500, limit: 100, tooLarge: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			inv := &Invocation{ID: NewID(), Function: "f", Path: "/x?y=1", ContentType: "text/plain", Attempts: 3,
				CreatedAt: time.Unix(1700000000, 0), Body: tc.body}
			r := Result{Status: tc.status, Error: "the function answered", Duration: time.Millisecond, ContentType: "text/plain", Body: tc.response}
			b, err := failureEvent(inv, r, tc.limit)
			if tc.tooLarge {
				if !errors.Is(err, errdefs.ErrTooLarge) {
					t.Fatalf("err %v, want too large", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(b) > tc.limit {
				t.Fatalf("the event is %d bytes, past %d", len(b), tc.limit)
			}
			var e FailureEvent
			if err := json.Unmarshal(b, &e); err != nil {
				t.Fatal(err)
			}
			if e.Request.Size != len(tc.body) || e.Request.Truncated != tc.cutReq || e.Invocation.ID != inv.ID || e.LastAttempt.Status != tc.status {
				t.Errorf("request %d bytes, truncated %v; want %d, %v", e.Request.Size, e.Request.Truncated, len(tc.body), tc.cutReq)
			}
			checkStart(t, "request", e.Request.Body, e.Request.Encoding, tc.body, tc.cutReq)
			switch resp := e.LastAttempt.Response; {
			case tc.status == 0:
				if resp != nil {
					t.Errorf("a response with no answer: %+v", resp)
				}
			case resp == nil || resp.Truncated != tc.cutResp || resp.ContentType != "text/plain":
				t.Errorf("response %+v, want truncated %v", resp, tc.cutResp)
			default:
				checkStart(t, "response", resp.Body, resp.Encoding, tc.response, tc.cutResp)
			}
			if tc.cutResp || tc.cutReq {
				// As long as fits: one more rune (6 bytes escaped at most)
				// or 3 more bytes (4 in base64) would not.
				if len(b) <= tc.limit-6 {
					t.Errorf("the event is %d bytes, more could have fit in %d", len(b), tc.limit)
				}
			}
		})
	}
}

// checkStart checks that body, as encoded, is all of want or, if cut,
// a start of it.
func checkStart(t *testing.T, what, body, encoding string, want []byte, cut bool) {
	t.Helper()
	got := []byte(body)
	switch encoding {
	case "base64":
		var err error
		if got, err = base64.StdEncoding.DecodeString(body); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if utf8.Valid(want) {
			t.Errorf("%s: base64 for a UTF-8 body", what)
		}
	case "text":
		if !utf8.Valid(want) || !utf8.ValidString(body) {
			t.Errorf("%s: text for a body that is not UTF-8", what)
		}
	default:
		t.Fatalf("%s: encoding %q", what, encoding)
	}
	if cut && (len(got) >= len(want) || !bytes.HasPrefix(want, got)) || !cut && !bytes.Equal(got, want) {
		t.Errorf("%s: %d bytes of %d (cut: %v), or not its start", what, len(got), len(want), cut)
	}
}
