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

// WriteHTTP writes err as a JSON error with its class's status. Errors
// without a class are answered with a generic message; the caller logs the
// cause.
func WriteHTTP(w http.ResponseWriter, err error) {
	var b Body
	b.Error.Code = Code(err)
	if Public(err) {
		b.Error.Message = err.Error()
	} else {
		b.Error.Message = "internal error"
	}
	data, _ := json.Marshal(b)
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Del("Content-Length")
	w.WriteHeader(HTTPStatus(err))
	_, _ = w.Write(append(data, '\n'))
}
