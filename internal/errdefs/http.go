package errdefs

import (
	"encoding/json"
	"net/http"
)

// Body is the JSON shape of every error Spry's HTTP endpoints return:
// {"error":{"code":"not_found","message":"..."}}.
type Body struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

// Encode returns err's HTTP status and its JSON body (newline-terminated),
// for servers that do not write through an http.ResponseWriter. Errors
// without a class get a generic message; the caller logs the cause.
func Encode(err error) (status int, body []byte) {
	var b Body
	b.Error.Code = Code(err)
	b.Error.Message = Message(err)
	data, _ := json.Marshal(b)
	return HTTPStatus(err), append(data, '\n')
}

// WriteHTTP writes err as a JSON error with its class's status.
func WriteHTTP(w http.ResponseWriter, err error) {
	status, body := Encode(err)
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Del("Content-Length")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}
