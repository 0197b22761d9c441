package errdefs

import (
	"errors"
	"fmt"
	"net/http"
	"testing"
)

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
			if !errors.Is(FromCode(tt.code), lookup(tt.err).err) {
				t.Errorf("FromCode(%q) does not round trip", tt.code)
			}
		})
	}
}
