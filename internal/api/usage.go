package api

import (
	"net/http"

	"github.com/spry-run/spry/internal/auth"
	"github.com/spry-run/spry/internal/errdefs"
	"github.com/spry-run/spry/internal/names"
)

// Use is one budget of a user: what they use of it, and its bound, which
// is absent (omitted from the JSON) when the server sets none.
type Use struct {
	Used  int64 `json:"used"`
	Limit int64 `json:"limit,omitempty"`
}

// UsageView is the answer to GET /api/v1/usage: what one user uses of
// each budget the server holds them to, so that they can see how near a
// 429 or a quota_exceeded they are before they meet it.
type UsageView struct {
	User string `json:"user"`
	// Functions is how many functions they have (--max-functions-per-user).
	Functions Use `json:"functions"`
	// Instances are their functions' instances starting, running or
	// stopping (--max-instances-per-user).
	Instances Use `json:"instances"`
	// MemoryBytes is the memory limits of those instances added up
	// (--max-memory-per-user): what they are promised, not what they
	// use of it.
	MemoryBytes Use `json:"memory_bytes"`
	// KVBytes is what the ctx.kv of all of their functions holds, keys
	// and values (--kv-max-bytes-per-user).
	KVBytes Use `json:"kv_bytes"`
	// AsyncInvocations are their asynchronous invocations not finished
	// (--async-max-per-user).
	AsyncInvocations Use `json:"async_invocations"`
	// AsyncBytes is what their asynchronous invocations hold
	// (--async-max-bytes-per-user): the bodies of those not finished,
	// each counted with async.MaxResponse for the response it may keep,
	// and the responses kept of those finished.
	AsyncBytes Use `json:"async_bytes"`
	// Tokens are their tokens neither revoked nor expired
	// (MaxTokensPerUser).
	Tokens Use `json:"tokens"`
	// Pids and OpenFiles are what their instances count against the
	// budgets of processes (threads included) and open files
	// (--user-pids, --user-files): each admitted instance not yet ended
	// at its limits, or more if it holds more, as last counted when the
	// shares were given or rewritten, added up; what a start is checked
	// against. Absent when the server does not report them.
	Pids      *Use `json:"pids,omitempty"`
	OpenFiles *Use `json:"open_files,omitempty"`
}

// usageUser is whose usage a request is about: the caller's own, or, for
// an admin, ?user='s. Others' usage is refused as others' functions are
// (403), whether or not the user exists.
func usageUser(r *http.Request) (string, error) {
	p := principal(r)
	user := r.URL.Query().Get("user")
	if user == "" || user == p.User {
		return p.User, nil
	}
	if err := names.User(user); err != nil {
		return "", err
	}
	if !p.CanManage(user) {
		return "", errdefs.New(errdefs.ErrPermissionDenied, "you may not see the usage of user %q", user)
	}
	return user, nil
}

// usage answers GET /api/v1/usage from the totals the server keeps as it
// enforces each budget: the activator's per-owner counts (read under its
// leaf lock), the backend's per-owner pids and open files (atomics, not
// the lock held across its /proc reads), the key-value store's per-owner total, an indexed count of
// the user's functions, the invocation store's per-owner bytes (kept by
// triggers) and indexed count of those not finished (at most
// --async-max-per-user), and an indexed read of their tokens (at most
// MaxTokensPerUser live, and the revoked not yet pruned). No lock is
// held across a query, so it may be asked often.
func (a *API) usage(w http.ResponseWriter, r *http.Request) error {
	user, err := usageUser(r)
	if err != nil {
		return err
	}
	ctx := r.Context()
	if user != principal(r).User {
		if _, err := a.users.GetUser(ctx, user); err != nil {
			return err
		}
	}
	out := UsageView{User: user}
	n, limit, err := a.fns.Count(ctx, user)
	if err != nil {
		return err
	}
	out.Functions = Use{Used: int64(n), Limit: int64(limit)}
	if a.instances != nil {
		u := a.instances.OwnerUsage(user)
		out.Instances = Use{Used: int64(u.Instances), Limit: int64(u.MaxInstances)}
		out.MemoryBytes = Use{Used: int64(u.MemoryMiB) << 20, Limit: int64(u.MaxMemoryMiB) << 20}
	}
	if a.cfg.Budgets != nil {
		pids, pidsLimit, files, filesLimit := a.cfg.Budgets.OwnerBudgets(user)
		out.Pids = &Use{Used: pids, Limit: pidsLimit}
		out.OpenFiles = &Use{Used: int64(files), Limit: int64(filesLimit)}
	}
	if a.cfg.KV != nil {
		used, err := a.cfg.KV.OwnerUsed(ctx, user)
		if err != nil {
			return err
		}
		out.KVBytes = Use{Used: used, Limit: a.cfg.KV.MaxBytesPerOwner()}
	}
	if a.cfg.Invocations != nil {
		u, err := a.cfg.Invocations.Usage(ctx, user)
		if err != nil {
			return err
		}
		b := a.cfg.Invocations.Bounds()
		out.AsyncInvocations = Use{Used: int64(u.Pending), Limit: int64(b.Pending)}
		out.AsyncBytes = Use{Used: u.Bytes, Limit: b.Bytes}
	}
	ts, err := a.tokens.ListTokens(ctx, user)
	if err != nil {
		return err
	}
	now := a.cfg.Now()
	for _, t := range ts {
		// As createToken counts them against the bound.
		if t.RevokedAt.IsZero() && !auth.Expired(t, now) {
			out.Tokens.Used++
		}
	}
	out.Tokens.Limit = MaxTokensPerUser
	return writeJSON(w, http.StatusOK, out)
}
