package kv

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"sync"
	"time"

	"github.com/spry-run/spry/internal/errdefs"
)

// The runtime's side of ctx.kv speaks to ServeConn over one connection
// an instance keeps: each request is a line of JSON (JSON.stringify never
// writes a raw newline) with an "id", a number, which its answer, a line
// too, carries back. Requests sent at once are answered at once, and
// their answers may come in any order.
//
//	{"id":1,"op":"get","key":"k"}                          -> {"id":1,"value":V,"version":"v"} or {"id":1,"value":null,"version":null}
//	{"id":2,"op":"set","key":"k","value":V,"expireIn":ms}  -> {"id":2,"ok":true,"version":"v"}
//	{"id":3,"op":"add","key":"k","delta":n,"expireIn":ms}  -> {"id":3,"value":sum}
//	{"id":4,"op":"delete","key":"k"}                       -> {"id":4,"ok":true}
//	{"id":5,"op":"list","prefix":"p","cursor":"c","limit":n} -> {"id":5,"entries":[{"key":..,"value":..,"version":..}],"cursor":"c2"|null}
//
// set and delete may carry "ifVersion": a version, to be made only if
// the key's value still has it, or null, only if the key has none; if
// it does not hold, the answer is {"id":n,"ok":false}.
//
// An error is {"id":n,"error":{"code":"...","message":"..."}}, as the
// API's. A line that is not a request (too long, not JSON, no id) is
// answered with an error, with its id if it has one, once the requests
// before it are; and the connection is closed.

// Request is one call of ctx.kv.
type Request struct {
	// ID is a JSON number, given back in the answer as it came.
	ID       json.RawMessage `json:"id"`
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

// MaxRequest bounds a request's bytes, a line's (its newline aside):
// the largest value, escaped at worst six bytes for one, and a key with
// the rest. The runtimes' client refuses a longer one itself, as the
// server would, keeping its connection (kv_client.js, KV_MAX_REQUEST).
const MaxRequest = 6*MaxValueBytes + 8*MaxKeyBytes + 1024

// requestTimeout bounds the answer to one request (a write waiting for
// SQLite's lock, say); writeTimeout, the sending of one answer to a
// client that does not read.
const (
	requestTimeout = 10 * time.Second
	writeTimeout   = 10 * time.Second
)

// A kept connection is closed once no request has begun on it for
// ConnIdleTimeout, or a request has begun (its first byte came) and not
// ended (its newline) within LineTimeout: else a connection that stops
// in the middle of a line, or one an instance keeps and never uses,
// holds its goroutine and buffer until the instance ends. The runtimes'
// client connects again at its next call (kv_client.js).
const (
	ConnIdleTimeout = 60 * time.Second
	LineTimeout     = 10 * time.Second
)

// ConnInFlight is how many requests of one connection are answered at
// once when ServeConn is given no slots of its own.
const ConnInFlight = 8

// ServeConn answers the requests of function fn's code on conn until the
// client closes it, a line is not a request, no line begins within
// ConnIdleTimeout or one takes longer than LineTimeout, or ctx is done;
// then it closes conn, and returns once every request it read is
// answered.
//
// slots bounds the requests answered at once: one is taken for each
// until its answer is written, and while none is free the next line is
// not read. Shared by an instance's connections, it bounds the work the
// instance makes; nil is a bound of ConnInFlight for conn alone.
func (s *Store) ServeConn(ctx context.Context, conn net.Conn, fn string, slots chan struct{}) {
	if slots == nil {
		slots = make(chan struct{}, ConnInFlight)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Closing conn ends a read that waits for the next line.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer func() {
		stop()
		conn.Close()
	}()
	w := &answers{conn: conn, cancel: cancel}
	var inFlight sync.WaitGroup
	r := bufio.NewReaderSize(conn, 16<<10)
	for {
		line, err := s.nextLine(conn, r)
		if len(line) == 0 && err != nil {
			if errors.Is(err, errLineTooLong) {
				inFlight.Wait()
				w.send(nil, errorBody(errdefs.New(errdefs.ErrTooLarge, "kv: a request is at most %d bytes", MaxRequest)))
				lastWord(conn)
			}
			break // the client's end, or the connection's
		}
		var req Request
		if err := json.Unmarshal(line, &req); err != nil || !isNumber(req.ID) {
			// What was read before is answered first: the client may
			// then tell which requests were not read.
			inFlight.Wait()
			if err != nil {
				w.send(idIfNumber(req.ID), errorBody(errdefs.Invalid("kv: the request is not a JSON object: %v", err)))
			} else {
				w.send(nil, errorBody(errdefs.Invalid("kv: a request needs an id, a number")))
			}
			lastWord(conn)
			break
		}
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		inFlight.Go(func() {
			defer func() { <-slots }()
			rctx, rcancel := context.WithTimeout(ctx, requestTimeout)
			res := s.answer(rctx, fn, &req)
			rcancel()
			w.send(req.ID, res)
		})
		if err != nil {
			break // a last line without its newline, answered all the same
		}
	}
	inFlight.Wait()
}

// nextLine reads the next line as readLine does, waiting at most
// s.connIdle for its first byte and s.lineTime from then for the rest:
// past either it fails with os.ErrDeadlineExceeded.
func (s *Store) nextLine(conn net.Conn, r *bufio.Reader) ([]byte, error) {
	if r.Buffered() == 0 {
		_ = conn.SetReadDeadline(time.Now().Add(s.connIdle))
		if _, err := r.Peek(1); err != nil {
			return nil, err
		}
	}
	_ = conn.SetReadDeadline(time.Now().Add(s.lineTime))
	return readLine(r)
}

// drainTimeout bounds lastWord's wait for the client's end.
const drainTimeout = time.Second

// lastWord ends a connection whose last answer is written: its write
// side is closed, and what the client still sends is read (until its
// end, a bound, or drainTimeout) before the close, which with data
// unread would reset the connection: the client's write, or its read of
// the answer, could then fail before it learnt why.
func lastWord(conn net.Conn) {
	if cw, ok := conn.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	_ = conn.SetReadDeadline(time.Now().Add(drainTimeout))
	_, _ = io.Copy(io.Discard, io.LimitReader(conn, 4*MaxRequest))
}

// errLineTooLong is a line past MaxRequest.
var errLineTooLong = errors.New("kv: line too long")

// readLine reads the next line, without its newline: the last, which
// the client ended its connection after without one, comes with io.EOF.
func readLine(r *bufio.Reader) ([]byte, error) {
	frag, err := r.ReadSlice('\n')
	if err == nil {
		// The common line fits the buffer: no copy (json.Unmarshal copies
		// what it keeps).
		return frag[:len(frag)-1], nil
	}
	line := append([]byte(nil), frag...)
	for errors.Is(err, bufio.ErrBufferFull) {
		if len(line) > MaxRequest {
			return nil, errLineTooLong
		}
		frag, err = r.ReadSlice('\n')
		line = append(line, frag...)
	}
	if err == nil {
		line = line[:len(line)-1]
	}
	if len(line) > MaxRequest {
		return nil, errLineTooLong
	}
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, err // cut by the connection's end, not the client's
	}
	return line, err
}

// isNumber says whether raw, a JSON value, is a number.
func isNumber(raw json.RawMessage) bool {
	return len(raw) > 0 && (raw[0] == '-' || raw[0] >= '0' && raw[0] <= '9')
}

func idIfNumber(raw json.RawMessage) json.RawMessage {
	if isNumber(raw) {
		return raw
	}
	return nil
}

// answers writes a connection's answers, one at a time.
type answers struct {
	mu     sync.Mutex
	conn   net.Conn
	cancel context.CancelFunc // ends the connection when a write fails
}

// send writes res, a JSON object, as a line with id (none: nil) first.
func (a *answers) send(id json.RawMessage, res any) {
	var buf bytes.Buffer
	if id != nil {
		buf.WriteString(`{"id":`)
		buf.Write(id)
	}
	start := buf.Len()
	// Values go as stored: escaped for HTML, a '<' would be six bytes.
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(res); err != nil {
		buf.Truncate(start)
		_ = enc.Encode(errorBody(err))
	}
	b := buf.Bytes()
	if id != nil {
		// The object's '{' gives way to the id's ',', or, empty, to '}'.
		if b[start+1] == '}' {
			b[start] = '}'
			b = append(b[:start+1], '\n')
		} else {
			b[start] = ','
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	_ = a.conn.SetWriteDeadline(time.Now().Add(writeTimeout))
	if _, err := a.conn.Write(b); err != nil {
		a.cancel()
	}
}

func (s *Store) answer(ctx context.Context, fn string, req *Request) any {
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
// error, say) says only what its class says.
func errorBody(err error) errorJSON {
	var e errorJSON
	e.Error.Code = errdefs.Code(err)
	e.Error.Message = errdefs.Message(err)
	if !errdefs.Public(err) {
		e.Error.Message = "kv: " + e.Error.Message
	}
	return e
}
