package errdefs

import (
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"syscall"
	"testing"
)

// sqliteError is the shape of modernc.org/sqlite's error: a message and
// a result code.
type sqliteError struct{ code int }

func (e *sqliteError) Error() string { return fmt.Sprintf("sqlite error (%d)", e.code) }
func (e *sqliteError) Code() int     { return e.code }

func TestClasses(t *testing.T) {
	tests := []struct {
		err    error
		status int
		code   string
		public bool
	}{
		{fmt.Errorf("get x: %w", ErrNotFound), http.StatusNotFound, "not_found", true},
		{Invalid("bad name %q", "X"), http.StatusBadRequest, "invalid_argument", true},
		{New(ErrTooLarge, "code is over 1 MiB"), http.StatusRequestEntityTooLarge, "too_large", true},
		{errors.New("disk on fire"), http.StatusInternalServerError, "internal", false},
		{fmt.Errorf("x: %w", ErrInternal), http.StatusInternalServerError, "internal", true},
		{New(ErrFunctionError, "the function threw"), http.StatusInternalServerError, "function_error", true},
		{New(ErrNotImplemented, "FROB"), http.StatusNotImplemented, "not_implemented", true},
		{New(ErrVersionNotSupported, "HTTP/2.0"), http.StatusHTTPVersionNotSupported, "http_version_not_supported", true},
		// A full disk, however it is reported, is a 507 whose text (a
		// path, the driver's words) stays in the logs.
		{fmt.Errorf("store bundle: %w", &fs.PathError{Op: "write", Path: "/data/blobs/x", Err: syscall.ENOSPC}), http.StatusInsufficientStorage, "insufficient_storage", false},
		{fmt.Errorf("kv: %w", &sqliteError{13}), http.StatusInsufficientStorage, "insufficient_storage", false},
		{fmt.Errorf("quota: %w", syscall.EDQUOT), http.StatusInsufficientStorage, "insufficient_storage", false},
		{&sqliteError{5}, http.StatusInternalServerError, "internal", false},
		// A class given outright comes first.
		{fmt.Errorf("%w: %w", ErrTooLarge, syscall.ENOSPC), http.StatusRequestEntityTooLarge, "too_large", true},
	}
	for _, tt := range tests {
		t.Run(tt.err.Error(), func(t *testing.T) {
			if got := HTTPStatus(tt.err); got != tt.status {
				t.Errorf("status = %d, want %d", got, tt.status)
			}
			if got := Code(tt.err); got != tt.code {
				t.Errorf("code = %q, want %q", got, tt.code)
			}
			if got := Public(tt.err); got != tt.public {
				t.Errorf("public = %v, want %v", got, tt.public)
			}
			if msg := Message(tt.err); tt.public != (msg == tt.err.Error()) {
				t.Errorf("message = %q", msg)
			}
			if !errors.Is(FromCode(tt.code), lookup(tt.err).err) {
				t.Errorf("FromCode(%q) does not round trip", tt.code)
			}
		})
	}
}
