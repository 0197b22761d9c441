package kv

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"time"

	"github.com/spry-run/spry/internal/errdefs"
)

// The runtime's side of ctx.kv speaks to ServeConn: one request per
// connection, a JSON object, the connection's write side then closed;
// one JSON object back, and the connection closed.
//
//	{"op":"get","key":"k"}                          -> {"value":V,"version":"v"} or {"value":null,"version":null}
//	{"op":"set","key":"k","value":V,"expireIn":ms}  -> {"ok":true,"version":"v"}
//	{"op":"add","key":"k","delta":n,"expireIn":ms}  -> {"value":sum}
//	{"op":"delete","key":"k"}                       -> {"ok":true}
//	{"op":"list","prefix":"p","cursor":"c","limit":n} -> {"entries":[{"key":..,"value":..,"version":..}],"cursor":"c2"|null}
//
// set and delete may carry "ifVersion": a version, to be made only if
// the key's value still has it, or null, only if the key has none; if
// it does not hold, the answer is {"ok":false}.
//
// An error is {"error":{"code":"...","message":"..."}}, as the API's.

// Request is one call of ctx.kv.
type Request struct {
	Op       string          `json:"op"`
	Key      string          `json:"key"`
	Value    json.RawMessage `json:"value"`
	ExpireIn int64           `json:"expireIn"` // ms; 0: never
	Prefix   string          `json:"prefix"`
	Cursor   string          `json:"cursor"`
	Limit    int             `json:"limit"`
	Delta    float64         `json:"delta"`
	// IfVersion, if present, makes set and delete conditional: a
	// version (a JSON string), or null for none.
	IfVersion json.RawMessage `json:"ifVersion"`
}

// precondition reads a request's ifVersion.
func (r *Request) precondition() (*Precondition, error) {
	if r.IfVersion == nil {
		return nil, nil
	}
	if string(r.IfVersion) == "null" {
		return &Precondition{Absent: true}, nil
	}
	var v string
	if err := json.Unmarshal(r.IfVersion, &v); err != nil || v == "" {
		return nil, errdefs.Invalid("kv: ifVersion must be a version (a string, as a read gives) or null")
	}
	return &Precondition{Version: v}, nil
}

// written is the answer to a set or delete.
type written struct {
	OK      bool    `json:"ok"`
	Version *string `json:"version,omitempty"`
}

// outcome answers a set or delete: a precondition that did not hold is
// not an error to the code, but ok false.
func outcome(version *string, err error) any {
	switch {
	case errors.Is(err, errdefs.ErrPrecondition):
		return written{}
	case err != nil:
		return errorBody(err)
	}
	return written{OK: true, Version: version}
}

// maxRequest bounds a request's bytes: the largest value, escaped at
// worst six bytes for one, and a key with the rest.
const maxRequest = 6*MaxValueBytes + 8*MaxKeyBytes + 1024

// connTimeout bounds one connection: a request that has not been sent
// whole in it is dropped.
const connTimeout = 10 * time.Second

// ServeConn answers one request of function fn's code on conn, and
// closes it.
func (s *Store) ServeConn(ctx context.Context, conn net.Conn, fn string) {
	defer conn.Close()
	_ = conn.SetReadDeadline(time.Now().Add(connTimeout))
	ctx, cancel := context.WithTimeout(ctx, connTimeout)
	defer cancel()
	res := s.answer(ctx, fn, conn)
	// Values go as stored: escaped for HTML, a '<' would be six bytes.
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(res); err != nil {
		buf.Reset()
		_ = enc.Encode(errorBody(err))
	}
	b := bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
	_ = conn.SetWriteDeadline(time.Now().Add(connTimeout))
	_, _ = conn.Write(b)
	// What is left of a request refused before its end is read (until
	// the client's end, a bound, or the deadline), so that the close does
	// not reset the connection before the client reads the answer.
	_, _ = io.Copy(io.Discard, io.LimitReader(conn, 4*maxRequest))
}

func (s *Store) answer(ctx context.Context, fn string, r io.Reader) any {
	var req Request
	lr := &io.LimitedReader{R: r, N: maxRequest}
	if err := json.NewDecoder(lr).Decode(&req); err != nil {
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded):
			return errorBody(errdefs.New(errdefs.ErrRequestTimeout, "kv: the request was not sent whole within %v", connTimeout))
		case lr.N == 0:
			return errorBody(errdefs.New(errdefs.ErrTooLarge, "kv: a request is at most %d bytes", maxRequest))
		}
		return errorBody(errdefs.Invalid("kv: the request is not a JSON object: %v", err))
	}
	switch req.Op {
	case "get":
		e, ok, err := s.GetEntry(ctx, fn, req.Key)
		if err != nil {
			return errorBody(err)
		}
		var version *string
		if ok {
			version = &e.Version
		} else {
			e.Value = json.RawMessage("null")
		}
		return struct {
			Value   json.RawMessage `json:"value"`
			Version *string         `json:"version"`
		}{e.Value, version}
	case "set":
		if req.ExpireIn < 0 || req.ExpireIn > MaxExpireIn.Milliseconds() {
			return errorBody(errdefs.Invalid("kv: expireIn must be between 0 (never) and %d ms", MaxExpireIn.Milliseconds()))
		}
		pre, err := req.precondition()
		if err != nil {
			return errorBody(err)
		}
		version, err := s.SetIf(ctx, fn, req.Key, req.Value, time.Duration(req.ExpireIn)*time.Millisecond, pre)
		return outcome(&version, err)
	case "add":
		if req.ExpireIn < 0 || req.ExpireIn > MaxExpireIn.Milliseconds() {
			return errorBody(errdefs.Invalid("kv: expireIn must be between 0 (keep) and %d ms", MaxExpireIn.Milliseconds()))
		}
		sum, err := s.Add(ctx, fn, req.Key, req.Delta, time.Duration(req.ExpireIn)*time.Millisecond)
		if err != nil {
			return errorBody(err)
		}
		return struct {
			Value float64 `json:"value"`
		}{sum}
	case "delete":
		pre, err := req.precondition()
		if err != nil {
			return errorBody(err)
		}
		return outcome(nil, s.DeleteIf(ctx, fn, req.Key, pre))
	case "list":
		entries, next, err := s.List(ctx, fn, req.Prefix, req.Cursor, req.Limit)
		if err != nil {
			return errorBody(err)
		}
		if entries == nil {
			entries = []Entry{}
		}
		var cursor *string
		if next != "" {
			cursor = &next
		}
		return struct {
			Entries []Entry `json:"entries"`
			Cursor  *string `json:"cursor"`
		}{entries, cursor}
	default:
		return errorBody(errdefs.Invalid("kv: unknown op %q (get, set, add, delete, list)", req.Op))
	}
}

type errorJSON struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

// errorBody is err as the API shows errors; one with no class (a disk
// error, say) says only that storage failed.
func errorBody(err error) errorJSON {
	var e errorJSON
	e.Error.Code = errdefs.Code(err)
	e.Error.Message = "kv: storage failed"
	if errdefs.Public(err) {
		e.Error.Message = err.Error()
	}
	return e
}
