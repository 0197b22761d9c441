package api

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/spry-run/spry/internal/errdefs"
	"github.com/spry-run/spry/internal/kv"
)

// KV is the functions' key-value storage (kv.Store), by function id.
type KV interface {
	GetEntry(ctx context.Context, fn, key string) (kv.Entry, bool, error)
	SetIf(ctx context.Context, fn, key string, value json.RawMessage, expireIn time.Duration, pre *kv.Precondition) (string, error)
	DeleteIf(ctx context.Context, fn, key string, pre *kv.Precondition) error
	List(ctx context.Context, fn, prefix, cursor string, limit int) ([]kv.Entry, string, error)
	Used(ctx context.Context, fn string) (int64, error)
	// OwnerUsed is what all of owner's functions' entries hold, and
	// MaxBytesPerOwner its bound (0: none).
	OwnerUsed(ctx context.Context, owner string) (int64, error)
	MaxBytesPerOwner() int64
}

// KVList is the answer to GET .../kv: a page of entries, the cursor of
// the next (null on the last), and what the function's entries hold.
type KVList struct {
	Entries []kv.Entry `json:"entries"`
	Cursor  *string    `json:"cursor"`
	Bytes   int64      `json:"bytes"`
}

// kvFunction resolves the request's function to the id its entries are
// kept under.
func (a *API) kvFunction(r *http.Request) (string, error) {
	if a.cfg.KV == nil {
		return "", errdefs.New(errdefs.ErrUnavailable, "this server keeps no key-value storage")
	}
	owner, name, err := a.target(r)
	if err != nil {
		return "", err
	}
	fn, err := a.fns.Get(r.Context(), owner, name)
	if err != nil {
		return "", err
	}
	return fn.ID, nil
}

func (a *API) listKV(w http.ResponseWriter, r *http.Request) error {
	id, err := a.kvFunction(r)
	if err != nil {
		return err
	}
	q := r.URL.Query()
	limit := 0
	if s := q.Get("limit"); s != "" {
		if limit, err = strconv.Atoi(s); err != nil || limit < 1 {
			return errdefs.Invalid("limit %q is not a number from 1 to %d", s, kv.MaxList)
		}
	}
	entries, next, err := a.cfg.KV.List(r.Context(), id, q.Get("prefix"), q.Get("cursor"), limit)
	if err != nil {
		return err
	}
	used, err := a.cfg.KV.Used(r.Context(), id)
	if err != nil {
		return err
	}
	out := KVList{Entries: entries, Bytes: used}
	if out.Entries == nil {
		out.Entries = []kv.Entry{}
	}
	if next != "" {
		out.Cursor = &next
	}
	return writeCompact(w, http.StatusOK, out)
}

func (a *API) getKV(w http.ResponseWriter, r *http.Request) error {
	id, err := a.kvFunction(r)
	if err != nil {
		return err
	}
	key := r.PathValue("key")
	e, ok, err := a.cfg.KV.GetEntry(r.Context(), id, key)
	if err != nil {
		return err
	}
	if !ok {
		return errdefs.New(errdefs.ErrNotFound, "the function has no key %q", key)
	}
	w.Header().Set("ETag", strconv.Quote(e.Version))
	return writeCompact(w, http.StatusOK, e)
}

// kvPrecondition reads a write's condition from If-Match (an ETag a
// read gave, or *: the key has a value) or If-None-Match (*: it has
// none), as HTTP's conditional requests; nil if it has neither.
func kvPrecondition(r *http.Request) (*kv.Precondition, error) {
	match, hasMatch := r.Header["If-Match"]
	none, hasNone := r.Header["If-None-Match"]
	switch {
	case hasMatch && hasNone:
		return nil, errdefs.Invalid("give If-Match or If-None-Match, not both")
	case hasNone:
		if len(none) != 1 || strings.TrimSpace(none[0]) != "*" {
			return nil, errdefs.Invalid("If-None-Match must be * (the key has no value)")
		}
		return &kv.Precondition{Absent: true}, nil
	case hasMatch:
		m := ""
		if len(match) == 1 {
			m = strings.TrimSpace(match[0])
		}
		if m == "*" {
			return &kv.Precondition{}, nil
		}
		// One strong ETag, as GET gave it: versions are exact.
		v, err := strconv.Unquote(m)
		if err != nil || !strings.HasPrefix(m, `"`) || v == "" {
			return nil, errdefs.Invalid("If-Match must be * or one ETag as a read of the key gave it, in quotes")
		}
		return &kv.Precondition{Version: v}, nil
	}
	return nil, nil
}

// putKV stores the body, a JSON value, under the key; ?expireIn= (ms)
// makes it expire.
func (a *API) putKV(w http.ResponseWriter, r *http.Request) error {
	id, err := a.kvFunction(r)
	if err != nil {
		return err
	}
	var expireIn time.Duration
	if s := r.URL.Query().Get("expireIn"); s != "" {
		ms, err := strconv.ParseInt(s, 10, 64)
		if err != nil || ms < 0 || ms > kv.MaxExpireIn.Milliseconds() {
			return errdefs.Invalid("expireIn %q is not a number of milliseconds from 0 (never) to %d", s, kv.MaxExpireIn.Milliseconds())
		}
		expireIn = time.Duration(ms) * time.Millisecond
	}
	// Room for the largest value with its escapes and spaces; its own
	// bound is checked once it is compacted.
	end, err := a.timeBody(w, r)
	if err != nil {
		return err
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 6*kv.MaxValueBytes))
	end()
	if err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			return errdefs.New(errdefs.ErrTooLarge, "kv: a value is at most %d bytes as JSON", kv.MaxValueBytes)
		}
		return bodyError(err)
	}
	pre, err := kvPrecondition(r)
	if err != nil {
		return err
	}
	version, err := a.cfg.KV.SetIf(r.Context(), id, r.PathValue("key"), body, expireIn, pre)
	if err != nil {
		return err
	}
	w.Header().Set("ETag", strconv.Quote(version))
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (a *API) deleteKV(w http.ResponseWriter, r *http.Request) error {
	id, err := a.kvFunction(r)
	if err != nil {
		return err
	}
	pre, err := kvPrecondition(r)
	if err != nil {
		return err
	}
	if err := a.cfg.KV.DeleteIf(r.Context(), id, r.PathValue("key"), pre); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}
