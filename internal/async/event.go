package async

import (
	"encoding/base64"
	"encoding/json"
	"time"
	"unicode/utf8"
)

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
// none came), what went wrong, and how long it took.
type LastAttempt struct {
	Status     int     `json:"status"`
	Error      string  `json:"error"`
	DurationMS float64 `json:"duration_ms"`
}

// EventRequest is the failed invocation's request: its body as text if
// it is UTF-8, else base64, as the API shows responses.
type EventRequest struct {
	ContentType string `json:"content_type"`
	Body        string `json:"body"`
	Encoding    string `json:"encoding"` // text or base64
}

// failureEvent builds the event of inv, which failed with r as its last
// attempt. inv must have its request's body (a claimed one's).
func failureEvent(inv *Invocation, r Result) []byte {
	ev := FailureEvent{
		Invocation:  FailedInvocation{ID: inv.ID, Function: inv.Function, Path: inv.Path, Attempts: inv.Attempts, CreatedAt: inv.CreatedAt.UTC()},
		LastAttempt: LastAttempt{Status: r.Status, Error: r.Error, DurationMS: float64(r.Duration.Microseconds()) / 1000},
		Request:     EventRequest{ContentType: inv.ContentType},
	}
	ev.Request.Body, ev.Request.Encoding = EncodeBody(inv.Body)
	b, err := json.Marshal(ev)
	if err != nil {
		// Of strings, numbers and a time: it cannot fail.
		panic(err)
	}
	return b
}

// EncodeBody is how a body is shown in JSON (an invocation's response in
// the API, a failed request in its event): as text if it is UTF-8, else
// as base64.
func EncodeBody(b []byte) (body, encoding string) {
	if utf8.Valid(b) {
		return string(b), "text"
	}
	return base64.StdEncoding.EncodeToString(b), "base64"
}
