package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/spry-run/spry/internal/errdefs"
)

// deployWire is DeployBody as the server decodes it: the code straight
// into bytes (see jsonText).
type deployWire struct {
	DeployBody
	Code jsonText `json:"code,omitempty"`
}

// decodeDeployBody reads and decodes a JSON deploy, strictly, and
// refuses one that is not UTF-8 (the decoder would replace the bytes it
// cannot read, and deploy other code). It holds the body once, read
// into a buffer of its announced size, and the code once: reading it
// with io.ReadAll, copying it into a string for a json.Decoder (which
// copies it again, into a buffer it grows as it reads), and the code
// from a string into bytes allocated ten times the body and held five
// or six at once.
func decodeDeployBody(body io.Reader, length, limit int64) (deployWire, error) {
	var d deployWire
	b, err := readBody(body, length, limit)
	if err != nil {
		return d, err
	}
	if !utf8.Valid(b) {
		return d, errdefs.Invalid("request body is not valid UTF-8")
	}
	if len(bytes.TrimSpace(b)) == 0 {
		return d, errEmptyBody
	}
	// json.Unmarshal, unlike a Decoder, decodes from b where it is; it
	// has no DisallowUnknownFields, so the names are checked first, as
	// the decoder would (any case).
	var names map[string]skipJSON
	if err := json.Unmarshal(b, &names); err != nil {
		// In the words a Decoder's More gave it.
		if se, ok := errors.AsType[*json.SyntaxError](err); ok && strings.Contains(se.Error(), "after top-level value") {
			return d, errdefs.Invalid("invalid JSON body: more than one value")
		}
		return d, errdefs.Invalid("invalid JSON body: %v", err)
	}
	for k := range names {
		if !slices.ContainsFunc(deployFields, func(f string) bool { return strings.EqualFold(f, k) }) {
			return d, errdefs.Invalid("invalid JSON body: json: unknown field %q", k)
		}
	}
	if err := json.Unmarshal(b, &d); err != nil {
		return d, errdefs.Invalid("invalid JSON body: %v", err)
	}
	if err := checkJSON(b, reflect.TypeFor[deployWire]()); err != nil {
		return deployWire{}, err
	}
	return d, nil
}

// skipJSON takes any JSON value and keeps nothing of it.
type skipJSON struct{}

func (*skipJSON) UnmarshalJSON([]byte) error { return nil }

// deployFields are the JSON names of deployWire's fields.
var deployFields = func() []string {
	var out []string
	for _, f := range jsonFieldsOf(reflect.TypeFor[deployWire]()) {
		out = append(out, f.name)
	}
	return out
}()

// jsonText is a JSON string decoded into bytes (not base64, as []byte
// would be), with the one copy the decoded text needs.
type jsonText []byte

// UnmarshalJSON unquotes data, which the decoder has checked is a valid
// JSON value, as encoding/json unquotes a string: a lone surrogate
// becomes U+FFFD.
func (t *jsonText) UnmarshalJSON(data []byte) error {
	if string(data) == "null" {
		return nil
	}
	if len(data) < 2 || data[0] != '"' {
		return errors.New("code is not a string")
	}
	if !utf8.Valid(data) {
		// encoding/json makes each bad byte U+FFFD (decodeDeployBody
		// refuses such bodies before).
		var s string
		if err := json.Unmarshal(data, &s); err != nil {
			return err
		}
		*t = jsonText(s)
		return nil
	}
	s := data[1 : len(data)-1]
	out := make([]byte, 0, len(s))
	for len(s) > 0 {
		i := bytes.IndexByte(s, '\\')
		if i < 0 {
			out = append(out, s...)
			break
		}
		out = append(out, s[:i]...)
		s = s[i:]
		switch c := s[1]; c {
		case 'b':
			out = append(out, '\b')
		case 'f':
			out = append(out, '\f')
		case 'n':
			out = append(out, '\n')
		case 'r':
			out = append(out, '\r')
		case 't':
			out = append(out, '\t')
		case 'u':
			r := u4(s)
			s = s[6:]
			if utf16.IsSurrogate(r) {
				if dec := utf16.DecodeRune(r, u4(s)); dec != unicode.ReplacementChar {
					r = dec
					s = s[6:]
				} else {
					r = unicode.ReplacementChar
				}
			}
			out = utf8.AppendRune(out, r)
			continue
		default: // '"', '\\', '/'
			out = append(out, c)
		}
		s = s[2:]
	}
	*t = out
	return nil
}

// u4 reads the \uXXXX at the start of s, or -1.
func u4(s []byte) rune {
	if len(s) < 6 || s[0] != '\\' || s[1] != 'u' {
		return -1
	}
	n, err := strconv.ParseUint(string(s[2:6]), 16, 16)
	if err != nil {
		return -1
	}
	return rune(n)
}

// readBody reads a raw deploy's body into one buffer of its announced
// size (io.ReadAll grows its buffer as it reads, allocating twice the
// body), up to limit bytes.
func readBody(body io.Reader, length, limit int64) ([]byte, error) {
	var buf bytes.Buffer
	if length > 0 && length <= limit {
		buf.Grow(int(length) + bytes.MinRead)
	}
	if _, err := buf.ReadFrom(body); err != nil {
		return nil, bodyError(err)
	}
	return buf.Bytes(), nil
}

// timedBody is a request body that must arrive within d of its start
// (the server's own deadline covers the head, and fasthttp's the first
// 8 KiB of the body, read with it); a read that meets the deadline is a
// 408 request_timeout.
type timedBody struct {
	r       io.ReadCloser
	rc      *http.ResponseController
	d       time.Duration
	since   string // what d counts from, for the error
	expired bool
}

// newTimedBody starts r's body's deadline, d from now, which is since
// ("the deploy's admission").
func newTimedBody(w http.ResponseWriter, r *http.Request, d time.Duration, since string) (*timedBody, error) {
	rc := http.NewResponseController(w)
	if err := rc.SetReadDeadline(time.Now().Add(d)); err != nil {
		return nil, fmt.Errorf("bound the request body's time: %w", err)
	}
	return &timedBody{r: r.Body, rc: rc, d: d, since: since}, nil
}

func (b *timedBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err != nil && timedOut(err) {
		b.expired = true
		err = errdefs.New(errdefs.ErrRequestTimeout, "the request body did not arrive within %s of %s; send it faster, or a smaller one", b.d, b.since)
	}
	return n, err
}

func (b *timedBody) Close() error { return b.r.Close() }

// end lifts the deadline once the body is read (net/http then reads the
// connection for a hang-up, and a deadline passing would cancel the
// request; a kept-alive connection's next request has deadlines of its
// own). A deadline that passed stays: the rest of the body is not read,
// and the server closes the connection after its answer, rather than
// read the rest first as net/http would.
func (b *timedBody) end() {
	if !b.expired {
		_ = b.rc.SetReadDeadline(time.Time{})
	}
}

// timedOut says whether a read failed on its deadline.
func timedOut(err error) bool {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return true
	}
	ne, ok := errors.AsType[net.Error](err)
	return ok && ne.Timeout()
}
