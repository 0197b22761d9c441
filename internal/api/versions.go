package api

import (
	"errors"
	"net/http"
	"sort"
	"time"

	"github.com/spry-run/spry/internal/errdefs"
	"github.com/spry-run/spry/internal/functions"
	"github.com/spry-run/spry/internal/store"
)

// VersionView is one version as the API shows it.
type VersionView struct {
	Version int64    `json:"version"`
	Live    bool     `json:"live"`
	Percent int      `json:"traffic_percent"`
	Tags    []string `json:"tags,omitempty"`
	Runtime string   `json:"runtime"`
	Access  string   `json:"access"` // "public" or "private", as this version was made
	// AsyncRetries is the version's: how many times a failed
	// asynchronous invocation is tried again.
	AsyncRetries int `json:"async_retries"`
	// AsyncOnFailure is the version's: the function its failed
	// asynchronous invocations are sent on to (none if empty).
	AsyncOnFailure string    `json:"async_on_failure,omitempty"`
	Digest         string    `json:"digest"`
	Size           int64     `json:"size"`
	CreatedAt      time.Time `json:"created_at"`
	CreatedBy      string    `json:"created_by"`
}

func (a *API) listVersions(w http.ResponseWriter, r *http.Request) error {
	owner, name, err := a.target(r)
	if err != nil {
		return err
	}
	fn, vs, err := a.fns.Versions(r.Context(), owner, name)
	if err != nil {
		return err
	}
	percent := map[int64]int{}
	if len(fn.Routing.Traffic) == 0 {
		percent[fn.LiveVersion] = 100
	}
	for _, sp := range fn.Routing.Traffic {
		percent[sp.Version] = sp.Percent
	}
	tags := map[int64][]string{}
	for t, v := range fn.Routing.Tags {
		tags[v] = append(tags[v], t)
	}
	out := make([]VersionView, 0, len(vs))
	for _, v := range vs {
		sort.Strings(tags[v.Number])
		out = append(out, VersionView{
			Version: v.Number, Live: v.Number == fn.LiveVersion, Percent: percent[v.Number], Tags: tags[v.Number],
			Runtime: v.Config.Runtime, Access: functions.Access(v.Config.Limits),
			AsyncRetries: functions.AsyncRetries(v.Config.Limits), AsyncOnFailure: v.Config.Limits.AsyncOnFailure, Digest: v.Digest, Size: v.Size, CreatedAt: v.CreatedAt, CreatedBy: v.CreatedBy,
		})
	}
	return writeJSON(w, http.StatusOK, map[string]any{"versions": out})
}

// deleteVersion deletes one version that nothing routes to (204); the
// live one, or one a traffic split or tag names, is a 409 saying which.
func (a *API) deleteVersion(w http.ResponseWriter, r *http.Request) error {
	owner, name, err := a.target(r)
	if err != nil {
		return err
	}
	n, ok := functions.ParseVersion(r.PathValue("version"))
	if !ok {
		return errdefs.Invalid("%q is not a version number: write it in decimal, without sign or leading zeros", r.PathValue("version"))
	}
	if err := a.fns.DeleteVersion(r.Context(), owner, name, n); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// RollbackBody is the body of POST .../rollback; version 0 (or none)
// means the version before the live one.
type RollbackBody struct {
	Version *int64 `json:"version,omitempty"`
}

func (a *API) rollback(w http.ResponseWriter, r *http.Request) error {
	owner, name, err := a.target(r)
	if err != nil {
		return err
	}
	// No body, also an empty one of unknown length (chunked), means the
	// version before the live one.
	var body RollbackBody
	if err := readJSON(w, r, &body); err != nil && err != errEmptyBody {
		return err
	}
	version := int64(0) // the one before the live one
	if body.Version != nil {
		if version = *body.Version; version <= 0 {
			return errdefs.Invalid("version must be positive")
		}
	}
	fn, err := a.fns.Rollback(r.Context(), owner, name, version)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, a.view(r, fn))
}

// runScheduled runs the function's scheduled handler now, on its live
// version, and answers once it has: 200, or the run's error (400 when
// the module has no scheduled method, 502 when it threw, 504 past the
// function's timeout).
func (a *API) runScheduled(w http.ResponseWriter, r *http.Request) error {
	owner, name, err := a.target(r)
	if err != nil {
		return err
	}
	if a.cfg.RunScheduled == nil {
		return errdefs.New(errdefs.ErrUnavailable, "this server runs no scheduled handlers")
	}
	if err := a.cfg.RunScheduled(r.Context(), owner, name); err != nil {
		// No instance for now (a full queue, the owner's instances), as
		// the router answers a request.
		if errors.Is(err, errdefs.ErrUnavailable) || errors.Is(err, errdefs.ErrRateLimited) {
			w.Header().Set("Retry-After", "1")
		}
		return err
	}
	return writeJSON(w, http.StatusOK, map[string]bool{"ok": true})
}

// TrafficBody is the body of PUT .../traffic: version number -> percent.
type TrafficBody map[string]int

func (a *API) setTraffic(w http.ResponseWriter, r *http.Request) error {
	owner, name, err := a.target(r)
	if err != nil {
		return err
	}
	var body TrafficBody
	if err := readJSON(w, r, &body); err != nil {
		return err
	}
	var split []store.Split
	for k, p := range body {
		n, ok := functions.ParseVersion(k)
		if !ok {
			return errdefs.Invalid("traffic key %q is not a version number", k)
		}
		split = append(split, store.Split{Version: n, Percent: p})
	}
	sort.Slice(split, func(i, j int) bool { return split[i].Version < split[j].Version })
	fn, err := a.fns.SetTraffic(r.Context(), owner, name, split)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, a.view(r, fn))
}

// TagBody is the body of PUT .../tags/{tag}.
type TagBody struct {
	Version int64 `json:"version"`
}

func (a *API) setTag(w http.ResponseWriter, r *http.Request) error {
	owner, name, err := a.target(r)
	if err != nil {
		return err
	}
	var body TagBody
	if err := readJSON(w, r, &body); err != nil {
		return err
	}
	if body.Version <= 0 {
		return errdefs.Invalid("version must be positive")
	}
	fn, err := a.fns.SetTag(r.Context(), owner, name, r.PathValue("tag"), body.Version)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, a.view(r, fn))
}

func (a *API) deleteTag(w http.ResponseWriter, r *http.Request) error {
	owner, name, err := a.target(r)
	if err != nil {
		return err
	}
	if _, err := a.fns.SetTag(r.Context(), owner, name, r.PathValue("tag"), 0); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}
