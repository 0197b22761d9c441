package api

import (
	"encoding/base64"
	"errors"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spry-run/spry/internal/errdefs"
	"github.com/spry-run/spry/internal/functions"
	"github.com/spry-run/spry/internal/names"
	"github.com/spry-run/spry/internal/store"
)

// FunctionView is a function as the API shows it.
type FunctionView struct {
	Owner   string `json:"owner"`
	Name    string `json:"name"`
	Version int64  `json:"version"`
	Runtime string `json:"runtime"`
	Access  string `json:"access"` // "public" or "private"
	// AsyncRetries is how many times a failed asynchronous invocation
	// is tried again (also in Limits when not the default).
	AsyncRetries int `json:"async_retries"`
	// AsyncOnFailure is the function (of the same owner) its failed
	// asynchronous invocations are sent on to; none if empty.
	AsyncOnFailure string            `json:"async_on_failure,omitempty"`
	URL            string            `json:"url"`
	Digest         string            `json:"digest"`
	Size           int64             `json:"size"`
	State          string            `json:"state"`
	Instances      int               `json:"instances"`
	Env            map[string]string `json:"env,omitempty"`
	Secrets        []string          `json:"secrets,omitempty"` // names only; values are never returned
	Limits         store.Limits      `json:"limits"`
	Traffic        []store.Split     `json:"traffic,omitempty"`
	Tags           map[string]int64  `json:"tags,omitempty"`
	CreatedAt      time.Time         `json:"created_at"`
	UpdatedAt      time.Time         `json:"updated_at"`
	DeployedBy     string            `json:"deployed_by,omitempty"`
	LastInvokedAt  *time.Time        `json:"last_invoked_at"`
}

// DeployBody is the JSON form of a deploy (the CLI's); a body of any
// other content type is the code itself, with settings in the query.
type DeployBody struct {
	Code string `json:"code,omitempty"`
	// Archive, instead of Code, is a project as tar.gz, tar or zip
	// (base64 in JSON), bundled from Entry or its package.json.
	Archive  []byte            `json:"archive,omitempty"`
	Entry    string            `json:"entry,omitempty"`
	Filename string            `json:"filename,omitempty"`
	Runtime  string            `json:"runtime,omitempty"`
	Env      map[string]string `json:"env,omitempty"`
	// Secrets are set like env but stored encrypted and never shown again.
	Secrets map[string]string `json:"secrets,omitempty"`
	SettingsBody
}

// SettingsBody is the per-function settings of a deploy or a config
// change; empty keeps the live version's (or takes the server's
// default).
type SettingsBody struct {
	Memory      string `json:"memory,omitempty"`  // e.g. "128Mi"
	Timeout     string `json:"timeout,omitempty"` // e.g. "2s"
	Network     string `json:"network,omitempty"` // "none" or "egress"
	Min         *int   `json:"min,omitempty"`
	Max         *int   `json:"max,omitempty"`
	Concurrency *int   `json:"concurrency,omitempty"`
	CPU         string `json:"cpu,omitempty"`                 // e.g. "0.5"
	Target      string `json:"target_utilization,omitempty"`  // e.g. "70"
	Grace       string `json:"scale_to_zero_after,omitempty"` // e.g. "10m"
	Isolation   string `json:"isolation,omitempty"`           // "standard" or "gvisor"
	// Cron is the schedule of the function's scheduled handler; "" or
	// "none" removes it, nil keeps the live version's.
	Cron *string `json:"cron,omitempty"`
	// Access is "public" or "private" (callable only with a token of
	// the owner's or an admin's with scope invoke).
	Access string `json:"access,omitempty"`
	// AsyncRetries is how many times a failed asynchronous invocation
	// is tried again: 0, 1 or 2.
	AsyncRetries *int `json:"async_retries,omitempty"`
	// AsyncOnFailure names another function of the same owner that gets
	// the event of each asynchronous invocation that failed; "" or
	// "none" removes it, nil keeps the live version's. It need not
	// exist yet: it is looked up when an invocation fails.
	AsyncOnFailure *string `json:"async_on_failure,omitempty"`
}

// settings turns the body's settings into the strings ParseLimits reads.
func (d *SettingsBody) settings() map[string]string {
	m := map[string]string{}
	put := func(k, v string) {
		if v != "" {
			m[k] = v
		}
	}
	putInt := func(k string, v *int) {
		if v != nil {
			m[k] = strconv.Itoa(*v)
		}
	}
	put(functions.SettingMemory, d.Memory)
	put(functions.SettingTimeout, d.Timeout)
	put(functions.SettingNetwork, d.Network)
	putInt(functions.SettingMin, d.Min)
	putInt(functions.SettingMax, d.Max)
	putInt(functions.SettingConcurrency, d.Concurrency)
	putInt(functions.SettingAsyncRetries, d.AsyncRetries)
	put(functions.SettingCPU, d.CPU)
	put(functions.SettingTarget, d.Target)
	put(functions.SettingGrace, d.Grace)
	put(functions.SettingIsolation, d.Isolation)
	put(functions.SettingAccess, d.Access)
	if d.Cron != nil {
		m[functions.SettingCron] = *d.Cron
	}
	if d.AsyncOnFailure != nil {
		m[functions.SettingAsyncOnFailure] = *d.AsyncOnFailure
	}
	return m
}

func (a *API) baseURL(r *http.Request) string {
	if a.cfg.PublicURL != "" {
		return strings.TrimRight(a.cfg.PublicURL, "/")
	}
	// (X-Forwarded-* reach the API only from a trusted proxy, and well
	// formed: httpserve.RealClient.)
	scheme, host := "http", r.Host
	if r.TLS != nil || r.Header.Get("X-Forwarded-Proto") == "https" {
		scheme = "https"
	}
	if h := r.Header.Get("X-Forwarded-Host"); h != "" {
		host = h
	}
	return scheme + "://" + host
}

// functionURL is where owner/name answers: at its own host below the
// function domain, with the scheme and port of the base URL, or under
// /fn/ on the base URL.
func (a *API) functionURL(r *http.Request, owner, name string) string {
	base := a.baseURL(r)
	domain := strings.ToLower(strings.TrimSuffix(a.cfg.FunctionDomain, "."))
	u, err := url.Parse(base)
	if domain == "" || err != nil || u.Scheme == "" {
		return base + "/fn/" + owner + "/" + name
	}
	host := name + "." + owner + "." + domain
	if p := u.Port(); p != "" {
		host = net.JoinHostPort(host, p)
	}
	return u.Scheme + "://" + host
}

func (a *API) view(r *http.Request, fn store.Function) FunctionView {
	n := a.instanceCount(fn)
	state := "idle"
	if n > 0 {
		state = "running"
	}
	v := FunctionView{
		Owner:          fn.Owner,
		Name:           fn.Name,
		Version:        fn.LiveVersion,
		Runtime:        fn.Live.Config.Runtime,
		Access:         functions.Access(fn.Live.Config.Limits),
		AsyncRetries:   functions.AsyncRetries(fn.Live.Config.Limits),
		AsyncOnFailure: fn.Live.Config.Limits.AsyncOnFailure,
		URL:            a.functionURL(r, fn.Owner, fn.Name),
		Digest:         fn.Live.Digest,
		Size:           fn.Live.Size,
		State:          state,
		Instances:      n,
		Env:            fn.Live.Config.Env,
		Secrets:        functions.EnvKeys(fn.Live.Config.Secrets),
		Traffic:        fn.Routing.Traffic,
		Tags:           fn.Routing.Tags,
		Limits:         fn.Live.Config.Limits,
		CreatedAt:      fn.CreatedAt,
		UpdatedAt:      fn.UpdatedAt,
		DeployedBy:     fn.Live.CreatedBy,
	}
	if !fn.LastInvokedAt.IsZero() {
		t := fn.LastInvokedAt
		v.LastInvokedAt = &t
	}
	return v
}

// target resolves the owner and name a function request is about, and
// checks the caller may manage that owner's functions.
func (a *API) target(r *http.Request) (owner, name string, err error) {
	p := principal(r)
	owner = r.URL.Query().Get("owner")
	if owner == "" {
		owner = p.User
	}
	if err := names.User(owner); err != nil {
		return "", "", err
	}
	if !p.CanManage(owner) {
		return "", "", errdefs.New(errdefs.ErrPermissionDenied, "you may not manage functions of user %q", owner)
	}
	if err := a.holdUser(r, owner, errdefs.New(errdefs.ErrNotFound, "user %s was deleted", owner)); err != nil {
		return "", "", err
	}
	name = r.PathValue("name")
	if name != "" {
		if err := names.Function(name); err != nil {
			return "", "", err
		}
	}
	return owner, name, nil
}

func (a *API) listFunctions(w http.ResponseWriter, r *http.Request) error {
	p := principal(r)
	owner := r.URL.Query().Get("owner")
	if owner != "" {
		if err := names.User(owner); err != nil {
			return err
		}
	}
	switch {
	case owner == "" && p.Admin:
		// The admin sees everyone's functions.
	case owner == "":
		owner = p.User
	case !p.CanManage(owner):
		return errdefs.New(errdefs.ErrPermissionDenied, "you may not list functions of user %q", owner)
	}
	page, err := parsePage(r.URL.Query())
	if err != nil {
		return err
	}
	if owner != "" && page.After.Owner != "" && page.After.Owner != owner {
		// A cursor of another owner's list (or of everyone's) would
		// give an empty or wrong page, not an error.
		return errdefs.Invalid("after is a cursor of another list than user %s's functions", owner)
	}
	want := page.Limit
	page.Limit++ // one more says whether there is a next page
	fns, err := a.fns.List(r.Context(), owner, page)
	if err != nil {
		return err
	}
	res := FunctionList{Functions: make([]FunctionView, 0, min(len(fns), want))}
	if len(fns) > want {
		fns = fns[:want]
		last := fns[want-1]
		res.Next = encodeCursor(store.FunctionKey{Owner: last.Owner, Name: last.Name})
	}
	for _, fn := range fns {
		res.Functions = append(res.Functions, a.view(r, fn))
	}
	return writeJSON(w, http.StatusOK, res)
}

// FunctionList is one page of functions; Next, if set, is the cursor
// (?after=) of the page after it.
type FunctionList struct {
	Functions []FunctionView `json:"functions"`
	Next      string         `json:"next,omitempty"`
}

// Page sizes of the function list.
const (
	DefaultPageSize = 100
	MaxPageSize     = 1000
)

// parsePage reads ?limit= and ?after= (a cursor from a previous page).
func parsePage(q url.Values) (store.Page, error) {
	page := store.Page{Limit: DefaultPageSize}
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > MaxPageSize {
			return page, errdefs.Invalid("limit must be a whole number from 1 to %d", MaxPageSize)
		}
		page.Limit = n
	}
	if q.Has("after") {
		// An empty one is no cursor a page gave: a script passing on
		// the last page's missing next would start over, for ever.
		key, ok := decodeCursor(q.Get("after"))
		if !ok {
			return page, errdefs.Invalid("after is not a cursor from this list's next")
		}
		page.After = key
	}
	return page, nil
}

// A cursor is the last function of a page, owner/name, base64url: opaque
// to clients, so its form may change.
func encodeCursor(k store.FunctionKey) string {
	return base64.RawURLEncoding.EncodeToString([]byte(k.Owner + "/" + k.Name))
}

func decodeCursor(s string) (store.FunctionKey, bool) {
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return store.FunctionKey{}, false
	}
	owner, name, ok := strings.Cut(string(b), "/")
	if !ok || names.User(owner) != nil || names.Function(name) != nil {
		return store.FunctionKey{}, false
	}
	return store.FunctionKey{Owner: owner, Name: name}, true
}

func (a *API) getFunction(w http.ResponseWriter, r *http.Request) error {
	owner, name, err := a.target(r)
	if err != nil {
		return err
	}
	fn, err := a.fns.Get(r.Context(), owner, name)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, a.view(r, fn))
}

func (a *API) deleteFunction(w http.ResponseWriter, r *http.Request) error {
	owner, name, err := a.target(r)
	if err != nil {
		return err
	}
	if err := a.fns.Delete(r.Context(), owner, name); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (a *API) deployFunction(w http.ResponseWriter, r *http.Request) error {
	owner, name, err := a.target(r)
	if err != nil {
		return err
	}
	if owner != principal(r).User {
		if _, err := a.users.GetUser(r.Context(), owner); err != nil {
			return err
		}
	}
	q := r.URL.Query()
	req := functions.DeployRequest{Owner: owner, Name: name, By: principal(r).User, Filename: q.Get("filename"), Runtime: q.Get("runtime")}
	isJSON := mediaType(r.Header.Get("Content-Type")) == "application/json"
	if err := checkDeployQuery(q, isJSON); err != nil {
		return err
	}
	// Admitted before the body is read: a deploy waiting holds no body.
	user := principal(r).User
	if err := a.deploys.acquire(r.Context(), user); err != nil {
		if errors.Is(err, errdefs.ErrRateLimited) || errors.Is(err, errdefs.ErrUnavailable) {
			w.Header().Set("Retry-After", deployRetryAfter)
		}
		return err
	}
	defer a.deploys.release(user)
	// The body must come within the deadline, or the slot is held for
	// as long as a client takes to send it.
	timed, err := newTimedBody(w, r, a.cfg.DeployBodyTimeout, "the deploy's admission")
	if err != nil {
		return err
	}
	defer timed.end()
	limit := a.cfg.MaxCodeBytes
	if isJSON {
		// JSON escaping can grow code up to six-fold (\u00XX); allow for
		// it here and apply the code limit to the decoded code.
		limit = limit*6 + maxJSONBody
	}
	body := http.MaxBytesReader(w, timed, limit)
	if isJSON {
		d, err := decodeDeployBody(body, r.ContentLength, limit)
		if err != nil {
			return err
		}
		if d.Code != nil && d.Archive != nil {
			return errdefs.Invalid("the body has both code and an archive; send one of them")
		}
		req.Code = d.Code
		req.Archive, req.Entry = d.Archive, d.Entry
		if d.Filename != "" {
			req.Filename = d.Filename
		}
		if d.Runtime != "" {
			req.Runtime = d.Runtime
		}
		req.Env = d.Env
		req.Secrets = d.Secrets
		req.Settings = d.settings()
	} else {
		code, err := readBody(body, r.ContentLength, limit)
		if err != nil {
			return err
		}
		if isArchive(r.Header.Get("Content-Type")) {
			req.Archive, req.Entry = code, q.Get("entry")
		} else {
			req.Code = code
		}
		req.Settings = map[string]string{}
		for _, k := range functions.Settings {
			if v := q.Get(k); v != "" {
				req.Settings[k] = v
			}
		}
	}
	// Read whole: the build has no deadline but the request's.
	timed.end()
	fn, err := a.fns.Deploy(r.Context(), req)
	if err != nil {
		return err
	}
	// The owner cannot have been deleted meanwhile: its deletion waits
	// for this deploy (which holds the owner, see userGate) and then
	// takes the function away with the rest.
	status := http.StatusOK
	if fn.LiveVersion == 1 {
		status = http.StatusCreated
	}
	return writeJSON(w, status, a.view(r, fn))
}

// deployQuery are the query parameters a deploy reads besides the
// settings, which a deploy of a raw body reads there too.
var deployQuery = []string{"owner", "filename", "runtime", "entry"}

// checkDeployQuery refuses a query parameter the deploy would not read:
// a misspelt setting (target_utilization), or a setting beside a JSON
// body, which carries its own, deployed the function without it, and
// without a word.
func checkDeployQuery(q url.Values, isJSON bool) error {
	for k := range q {
		switch {
		case slices.Contains(deployQuery, k):
		case slices.Contains(functions.Settings, k):
			if isJSON {
				return errdefs.Invalid("query parameter %q: a JSON deploy takes its settings in its body", k)
			}
		default:
			return errdefs.Invalid("unknown query parameter %q: a deploy takes %s, and the settings %s", k, strings.Join(deployQuery, ", "), strings.Join(functions.Settings, ", "))
		}
	}
	return nil
}

// ConfigBody is the body of PATCH /api/v1/functions/{name}: a change of
// configuration, made as a new version with the same code.
type ConfigBody struct {
	Runtime string `json:"runtime,omitempty"`
	SettingsBody
	Env          map[string]string `json:"env,omitempty"`
	UnsetEnv     []string          `json:"unset_env,omitempty"`
	Secrets      map[string]string `json:"secrets,omitempty"`
	UnsetSecrets []string          `json:"unset_secrets,omitempty"`
}

func (a *API) configureFunction(w http.ResponseWriter, r *http.Request) error {
	owner, name, err := a.target(r)
	if err != nil {
		return err
	}
	var body ConfigBody
	// Env and secrets up to their bound, which JSON escaping can grow
	// six-fold (\u00XX), fit; the bound itself is checked on them.
	if err := readJSONLimit(w, r, &body, 6*functions.MaxEnvBytes+maxJSONBody); err != nil {
		return err
	}
	change := functions.Change{
		Runtime:      body.Runtime,
		Settings:     body.settings(),
		SetEnv:       body.Env,
		UnsetEnv:     body.UnsetEnv,
		SetSecrets:   body.Secrets,
		UnsetSecrets: body.UnsetSecrets,
	}
	if change.Runtime == "" && len(change.Settings)+len(change.SetEnv)+len(change.UnsetEnv)+len(change.SetSecrets)+len(change.UnsetSecrets) == 0 {
		// Each change is a new version: an empty one would only push
		// real ones out of the versions kept.
		return errdefs.Invalid("the change is empty: name at least one setting, env or secret to change")
	}
	fn, err := a.fns.Reconfigure(r.Context(), owner, name, principal(r).User, change)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, a.view(r, fn))
}

// isArchive reports whether a raw deploy body is a project archive.
// mediaType is a Content-Type's type/subtype, lower-cased, without
// parameters.
func mediaType(contentType string) string {
	ct, _, _ := strings.Cut(contentType, ";")
	return strings.TrimSpace(strings.ToLower(ct))
}

func isArchive(contentType string) bool {
	switch mediaType(contentType) {
	case "application/gzip", "application/x-gzip", "application/x-tar", "application/zip", "application/x-zip-compressed":
		return true
	}
	return false
}
