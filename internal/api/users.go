package api

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/spry-run/spry/internal/errdefs"
	"github.com/spry-run/spry/internal/names"
	"github.com/spry-run/spry/internal/store"
)

// UserView is a user as the API shows it.
type UserView struct {
	Name      string    `json:"name"`
	Admin     bool      `json:"admin"`
	CreatedAt time.Time `json:"created_at"`
}

func userView(u store.User) UserView {
	return UserView{Name: u.Name, Admin: u.Admin, CreatedAt: u.CreatedAt}
}

func requireAdmin(r *http.Request) error {
	if !principal(r).Admin {
		return errdefs.New(errdefs.ErrPermissionDenied, "only an admin may manage users")
	}
	return nil
}

func (a *API) whoami(w http.ResponseWriter, r *http.Request) error {
	p := principal(r)
	return writeJSON(w, http.StatusOK, map[string]any{"user": p.User, "admin": p.Admin, "token_id": p.TokenID})
}

func (a *API) listUsers(w http.ResponseWriter, r *http.Request) error {
	if err := requireAdmin(r); err != nil {
		return err
	}
	us, err := a.users.ListUsers(r.Context())
	if err != nil {
		return err
	}
	out := make([]UserView, 0, len(us))
	for _, u := range us {
		out = append(out, userView(u))
	}
	return writeJSON(w, http.StatusOK, map[string]any{"users": out})
}

func (a *API) getUser(w http.ResponseWriter, r *http.Request) error {
	name := r.PathValue("name")
	if p := principal(r); !p.Admin && p.User != name {
		return errdefs.New(errdefs.ErrPermissionDenied, "only an admin may see other users")
	}
	u, err := a.users.GetUser(r.Context(), name)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, userView(u))
}

// CreateUserBody is the body of POST /api/v1/users.
type CreateUserBody struct {
	Name  string `json:"name"`
	Admin bool   `json:"admin,omitempty"`
}

func (a *API) createUser(w http.ResponseWriter, r *http.Request) error {
	if err := requireAdmin(r); err != nil {
		return err
	}
	var body CreateUserBody
	if err := readJSON(w, r, &body); err != nil {
		return err
	}
	if err := names.User(body.Name); err != nil {
		return err
	}
	u := store.User{Name: body.Name, Admin: body.Admin, CreatedAt: a.cfg.Now()}
	if err := a.users.CreateUser(r.Context(), u); err != nil {
		return err
	}
	tok, t, err := a.auth.IssueToken(r.Context(), u.Name, "created with the user")
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusCreated, map[string]any{"user": userView(u), "token": tok, "token_id": t.ID})
}

func (a *API) deleteUser(w http.ResponseWriter, r *http.Request) error {
	if err := requireAdmin(r); err != nil {
		return err
	}
	name := r.PathValue("name")
	if name == principal(r).User {
		return errdefs.New(errdefs.ErrConflict, "you cannot delete yourself")
	}
	// One deletion at a time, by an admin who is still there: two admins
	// deleting each other at once would otherwise both pass their checks,
	// both delete the other's functions, and then the store would refuse
	// the second (the last admin), who would be left without functions.
	a.deleteMu.Lock()
	defer a.deleteMu.Unlock()
	if me, err := a.users.GetUser(r.Context(), principal(r).User); err != nil || !me.Admin {
		if err != nil && !errors.Is(err, errdefs.ErrNotFound) {
			return err
		}
		return errdefs.New(errdefs.ErrUnauthenticated, "your user was deleted or is no longer an admin")
	}
	if _, err := a.users.GetUser(r.Context(), name); err != nil {
		return err
	}
	// A user's functions go with the user: before (so that a failure
	// leaves the user to delete again) and after the user is gone (a
	// deploy stored in between; one stored after sees the user gone and
	// takes its function away itself, see deployFunction).
	if err := a.deleteFunctionsOf(r.Context(), name); err != nil {
		return err
	}
	if err := a.users.DeleteUser(r.Context(), name); err != nil {
		return err
	}
	a.endFollows(name, "", errdefs.New(errdefs.ErrUnauthenticated, "user %s was deleted", name))
	if err := a.deleteFunctionsOf(context.WithoutCancel(r.Context()), name); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// deleteFunctionsOf deletes every function of owner's.
func (a *API) deleteFunctionsOf(ctx context.Context, owner string) error {
	fns, err := a.fns.List(ctx, owner, store.Page{})
	if err != nil {
		return err
	}
	for _, fn := range fns {
		if err := a.fns.Delete(ctx, fn.Owner, fn.Name); err != nil && !errors.Is(err, errdefs.ErrNotFound) {
			return err
		}
	}
	return nil
}
