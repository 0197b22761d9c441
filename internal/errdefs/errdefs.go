// Package errdefs defines Spry's error classes. Every layer wraps its errors
// with one of these classes (with %w) so that the API can map a class to an
// HTTP status and a stable code in one place, and the CLI to an exit code,
// without driver or database errors leaking to users.
package errdefs

import (
	"errors"
	"fmt"
	"net/http"
	"syscall"
)

// Error classes. Wrap them with fmt.Errorf("...: %w", errdefs.ErrNotFound)
// or build one with the helpers below.
var (
	ErrInvalidArgument  = errors.New("invalid argument")
	ErrUnauthenticated  = errors.New("unauthenticated")
	ErrPermissionDenied = errors.New("permission denied")
	ErrNotFound         = errors.New("not found")
	ErrMethodNotAllowed = errors.New("method not allowed")
	ErrAlreadyExists    = errors.New("already exists")
	ErrConflict         = errors.New("conflict")
	ErrPrecondition     = errors.New("precondition failed")
	ErrTooLarge         = errors.New("too large")
	ErrUnsupportedMedia = errors.New("unsupported media type")
	ErrRateLimited      = errors.New("rate limited")
	ErrQuotaExceeded    = errors.New("quota exceeded")
	ErrUnavailable      = errors.New("unavailable")
	ErrTimeout          = errors.New("timeout")
	ErrBadGateway       = errors.New("bad gateway")
	ErrFunctionFailed   = errors.New("function failed")
	// The runtime's answers for a function (the router's client sees
	// them; the API never gives them): a handler that threw, a method
	// Node.js does not know.
	ErrFunctionError      = errors.New("function error")
	ErrNotImplemented     = errors.New("not implemented")
	ErrInternal           = errors.New("internal error")
	ErrRequestHeaderLarge = errors.New("request header too large")
	ErrRequestTimeout     = errors.New("request timeout")
	// ErrVersionNotSupported: a request line of an HTTP major version
	// other than 1 (RFC 9110 15.6.6).
	ErrVersionNotSupported = errors.New("HTTP version not supported")
	// ErrInsufficientStorage: the data directory's disk is full. An
	// error whose cause is a full disk (ENOSPC, EDQUOT, SQLite's
	// SQLITE_FULL) has this class without being wrapped with it.
	ErrInsufficientStorage = errors.New("insufficient storage")
)

type class struct {
	err    error
	status int
	code   string
	exit   int
}

// classes is the single table that maps an error class to its HTTP status,
// its API code and the CLI exit code.
var classes = []class{
	{ErrInvalidArgument, http.StatusBadRequest, "invalid_argument", 2},
	{ErrUnauthenticated, http.StatusUnauthorized, "unauthenticated", 3},
	{ErrPermissionDenied, http.StatusForbidden, "permission_denied", 3},
	{ErrNotFound, http.StatusNotFound, "not_found", 4},
	{ErrMethodNotAllowed, http.StatusMethodNotAllowed, "method_not_allowed", 2},
	{ErrAlreadyExists, http.StatusConflict, "already_exists", 5},
	{ErrConflict, http.StatusConflict, "conflict", 5},
	// A conditional write (If-Match, ifVersion) whose condition no
	// longer holds: read again and retry.
	{ErrPrecondition, http.StatusPreconditionFailed, "precondition_failed", 5},
	{ErrTooLarge, http.StatusRequestEntityTooLarge, "too_large", 2},
	{ErrRequestHeaderLarge, http.StatusRequestHeaderFieldsTooLarge, "header_too_large", 2},
	{ErrUnsupportedMedia, http.StatusUnsupportedMediaType, "unsupported_media_type", 2},
	{ErrRateLimited, http.StatusTooManyRequests, "rate_limited", 6},
	// A quota is not lifted by waiting, so not 429: the user must free
	// something or have the limit raised.
	{ErrQuotaExceeded, http.StatusForbidden, "quota_exceeded", 3},
	{ErrUnavailable, http.StatusServiceUnavailable, "unavailable", 6},
	// Not 503: the server is up and answers the rest; writes fail until
	// an operator frees space (then they work again, without a restart).
	{ErrInsufficientStorage, http.StatusInsufficientStorage, "insufficient_storage", 6},
	{ErrTimeout, http.StatusGatewayTimeout, "timeout", 6},
	// The client did not send its request (its body) in time.
	{ErrRequestTimeout, http.StatusRequestTimeout, "request_timeout", 6},
	{ErrBadGateway, http.StatusBadGateway, "bad_gateway", 6},
	{ErrFunctionFailed, http.StatusBadGateway, "function_failed", 6},
	{ErrFunctionError, http.StatusInternalServerError, "function_error", 6},
	{ErrNotImplemented, http.StatusNotImplemented, "not_implemented", 2},
	{ErrVersionNotSupported, http.StatusHTTPVersionNotSupported, "http_version_not_supported", 2},
	{ErrInternal, http.StatusInternalServerError, "internal", 1},
}

func lookup(err error) class {
	for _, c := range classes {
		if errors.Is(err, c.err) {
			return c
		}
	}
	if diskFull(err) {
		return lookup(ErrInsufficientStorage)
	}
	return class{ErrInternal, http.StatusInternalServerError, "internal", 1}
}

// sqliteFull is SQLite's SQLITE_FULL result code.
const sqliteFull = 13

// diskFull reports whether err's cause is a full disk, so that no store
// need wrap each of its writes' errors: the kernel's ENOSPC or EDQUOT,
// or SQLite's SQLITE_FULL, which the driver (modernc.org/sqlite, kept
// out of this package) reports as an error with a result code rather
// than the errno.
func diskFull(err error) bool {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return true
	}
	var coded interface{ Code() int }
	return errors.As(err, &coded) && coded.Code()&0xff == sqliteFull
}

// HTTPStatus returns the HTTP status for err's class (500 when it has none).
func HTTPStatus(err error) int { return lookup(err).status }

// Code returns the stable API code for err's class ("internal" when it has none).
func Code(err error) string { return lookup(err).code }

// ExitCode returns the CLI exit code for err's class.
func ExitCode(err error) int { return lookup(err).exit }

// FromCode returns the class for an API code, so a client can turn an API
// error back into a class that errors.Is understands.
func FromCode(code string) error {
	for _, c := range classes {
		if c.code == code {
			return c.err
		}
	}
	return ErrInternal
}

// Public reports whether err's message may be shown to a client. Errors
// without a class are internal and their text (which may hold paths or
// driver details) is replaced by a generic message.
func Public(err error) bool {
	c := lookup(err)
	return errors.Is(err, c.err)
}

// Message is the message a client is shown for err: its own if Public,
// else its class's, since the cause's text may name paths or driver
// details.
func Message(err error) string {
	if Public(err) {
		return err.Error()
	}
	if errors.Is(lookup(err).err, ErrInsufficientStorage) {
		return "the server's disk is full"
	}
	return "internal error"
}

// Invalid returns an ErrInvalidArgument with a formatted message.
func Invalid(format string, args ...any) error {
	return &msgError{msg: fmt.Sprintf(format, args...), class: ErrInvalidArgument}
}

// New returns an error of the given class whose message is exactly msg, so
// clients see msg rather than "msg: class".
func New(class error, format string, args ...any) error {
	return &msgError{msg: fmt.Sprintf(format, args...), class: class}
}

type msgError struct {
	msg   string
	class error
}

func (e *msgError) Error() string { return e.msg }
func (e *msgError) Unwrap() error { return e.class }
