package async

import (
	"encoding/base64"
	"encoding/json"
	"sort"
	"time"
	"unicode/utf8"

	"github.com/spry-run/spry/internal/errdefs"
)

// MaxBody bounds an asynchronous invocation's body, as Lambda's
// asynchronous payloads are: each is stored until it has run. A server
// holds them to the least of this and what its router takes
// (Config.MaxBody), and a failure's event to the same.
const MaxBody = 256 << 10

// FailureHeader names, in the request of a failure's event, the id of
// the invocation that failed.
const FailureHeader = "Spry-Failed-Invocation-Id"

// FailureEvent is the body of the event a failed invocation is sent on
// as to its function's on-failure destination.
type FailureEvent struct {
	Invocation  FailedInvocation `json:"invocation"`
	LastAttempt LastAttempt      `json:"last_attempt"`
	Request     EventRequest     `json:"request"`
}

// FailedInvocation is the invocation that failed.
type FailedInvocation struct {
	ID        string    `json:"id"`
	Function  string    `json:"function"`
	Path      string    `json:"path"`
	Attempts  int       `json:"attempts"`
	CreatedAt time.Time `json:"created_at"`
}

// LastAttempt is how its last attempt went: the answer's status (0 if
// none came), what went wrong, how long it took, and the answer.
type LastAttempt struct {
	Status     int     `json:"status"`
	Error      string  `json:"error"`
	DurationMS float64 `json:"duration_ms"`
	// Response is the answer's body as the invocation kept it (its
	// first MaxResponse bytes); nil if no answer came.
	Response *EventResponse `json:"response,omitempty"`
}

// EventResponse is the last answer's body, as the API shows it: as text
// if it is UTF-8, else base64. Truncated says it is not all of it: the
// invocation kept its first MaxResponse bytes, or the event cut it to
// fit.
type EventResponse struct {
	ContentType string `json:"content_type,omitempty"`
	Body        string `json:"body"`
	Encoding    string `json:"encoding"` // text or base64
	Truncated   bool   `json:"truncated"`
}

// EventRequest is the failed invocation's request: its body as text if
// it is UTF-8, else base64, as the API shows responses. Size is the
// body's size in bytes as it was enqueued; Truncated says Body is only
// its start, cut for the event to fit its bound.
type EventRequest struct {
	ContentType string `json:"content_type"`
	Body        string `json:"body"`
	Encoding    string `json:"encoding"` // text or base64
	Size        int    `json:"size"`
	Truncated   bool   `json:"truncated"`
}

// failureEvent builds the event of inv, which failed with r as its last
// attempt, at most limit bytes long (0: no bound), as any invocation's
// body is. inv must have its request's body (a claimed one's). What
// does not fit is cut: the response first, then the request's body,
// each flagged truncated. An event that would not fit even with both
// empty (a bound under the size of its path and error) is an
// errdefs.ErrTooLarge.
func failureEvent(inv *Invocation, r Result, limit int) ([]byte, error) {
	ev := FailureEvent{
		Invocation: FailedInvocation{ID: inv.ID, Function: inv.Function, Path: inv.Path, Attempts: inv.Attempts, CreatedAt: inv.CreatedAt.UTC()},
		// The error as the invocation keeps it.
		LastAttempt: LastAttempt{Status: r.Status, Error: truncate(r.Error, maxError), DurationMS: float64(r.Duration.Microseconds()) / 1000},
		Request:     EventRequest{ContentType: inv.ContentType, Size: len(inv.Body)},
	}
	req := part{raw: inv.Body}
	ev.Request.Body, ev.Request.Encoding = req.encode(len(req.raw))
	var resp part
	if r.Status != 0 {
		resp.raw = r.Body
		if len(resp.raw) > MaxResponse {
			resp.raw = resp.raw[:MaxResponse]
		}
		rv := &EventResponse{ContentType: truncate(r.ContentType, maxContentType), Truncated: r.Truncated || len(r.Body) > len(resp.raw)}
		rv.Body, rv.Encoding = resp.encode(len(resp.raw))
		ev.LastAttempt.Response = rv
	}
	b := marshal(ev)
	if limit <= 0 || len(b) <= limit {
		return b, nil
	}
	// The response first: the request is what the destination may
	// want to run again.
	if rv := ev.LastAttempt.Response; rv != nil && rv.Body != "" {
		rv.Truncated = true
		rv.Body = ""
		// The empty body's "" is in n, and within what fit is given.
		if n := len(marshal(ev)); n <= limit {
			rv.Body = resp.fit(limit - n + jsonLen(""))
			return marshal(ev), nil
		}
	}
	ev.Request.Truncated = true
	ev.Request.Body = ""
	n := len(marshal(ev))
	if n > limit {
		return nil, errdefs.New(errdefs.ErrTooLarge, "its event would take %d bytes with neither the request's body nor the response, past the %d an asynchronous invocation's body may have", n, limit)
	}
	ev.Request.Body = req.fit(limit - n + jsonLen(""))
	return marshal(ev), nil
}

func marshal(ev FailureEvent) []byte {
	b, err := json.Marshal(ev)
	if err != nil {
		// Of strings, numbers and a time: it cannot fail.
		panic(err)
	}
	return b
}

// jsonLen is how long s is as a JSON string, quotes and escapes
// included.
func jsonLen(s string) int {
	b, _ := json.Marshal(s)
	return len(b)
}

// part is a body the event shows, as text if all of it is UTF-8, else
// as base64: a cut keeps that choice.
type part struct{ raw []byte }

// encode shows the body's first n bytes.
func (p part) encode(n int) (body, encoding string) {
	if utf8.Valid(p.raw) {
		// No rune cut in two: the start stays text.
		for n > 0 && n < len(p.raw) && !utf8.RuneStart(p.raw[n]) {
			n--
		}
		return string(p.raw[:n]), "text"
	}
	return base64.StdEncoding.EncodeToString(p.raw[:n]), "base64"
}

// fit shows the longest start of the body that is at most budget bytes
// as a JSON string.
func (p part) fit(budget int) string {
	// The encoded length grows with n (escapes make it grow unevenly).
	n := sort.Search(len(p.raw)+1, func(n int) bool {
		s, _ := p.encode(n)
		return jsonLen(s) > budget
	}) - 1
	s, _ := p.encode(max(n, 0))
	return s
}

// EncodeBody is how a body is shown in JSON (an invocation's response in
// the API, a failed request in its event): as text if it is UTF-8, else
// as base64.
func EncodeBody(b []byte) (body, encoding string) {
	return part{raw: b}.encode(len(b))
}
