package api

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/spry-run/spry/internal/auth"
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
	return writeJSON(w, http.StatusOK, map[string]any{"user": p.User, "admin": p.Admin, "token_id": p.TokenID,
		"scopes": auth.Strings(p.Scopes), "expires_at": timeOrNil(p.ExpiresAt)})
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
	if err := names.User(name); err != nil {
		return err
	}
	if p := principal(r); !p.Admin && p.User != name {
		return errdefs.New(errdefs.ErrPermissionDenied, "only an admin may see other users")
	}
	u, err := a.users.GetUser(r.Context(), name)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, userView(u))
}

// CreateUserBody is the body of POST /api/v1/users. The user's first
// token has every right and, unless Expiry says otherwise, no expiry.
type CreateUserBody struct {
	Name  string `json:"name"`
	Admin bool   `json:"admin,omitempty"`
	Expiry
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
	expires, err := auth.Expiry(a.cfg.Now(), body.ExpiresIn, body.ExpiresAt)
	if err != nil {
		return err
	}
	u := store.User{Name: body.Name, Admin: body.Admin, CreatedAt: a.cfg.Now()}
	var (
		tok string
		t   store.Token
	)
	// Not while a deletion of the name runs (its sweeps would take what
	// the new user makes), nor the deletion while the user is being
	// made, token and all.
	err = a.gate.change(r.Context(), u.Name, false, func() error {
		var err error
		tok, t, err = a.auth.CreateUser(r.Context(), u, "created with the user", auth.TokenOptions{ExpiresAt: expires})
		return err
	})
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusCreated, map[string]any{"user": userView(u), "token": tok, "token_id": t.ID, "expires_at": timeOrNil(t.ExpiresAt)})
}

func (a *API) deleteUser(w http.ResponseWriter, r *http.Request) error {
	if err := requireAdmin(r); err != nil {
		return err
	}
	name := r.PathValue("name")
	if err := names.User(name); err != nil {
		return err
	}
	if name == principal(r).User {
		return errdefs.New(errdefs.ErrConflict, "you cannot delete yourself")
	}
	// One deletion at a time, by an admin who is still there: two admins
	// deleting each other at once would otherwise both pass their checks,
	// both delete the other's functions, and then the store would refuse
	// the second (the last admin), who would be left without functions.
	// The wait ends with the request: the other deletion may be of this
	// admin, and cancel it.
	select {
	case a.deleting <- struct{}{}:
	case <-r.Context().Done():
		return context.Cause(r.Context())
	}
	defer func() { <-a.deleting }()
	if me, err := a.users.GetUser(r.Context(), principal(r).User); err != nil || !me.Admin {
		if err != nil && !errors.Is(err, errdefs.ErrNotFound) {
			return err
		}
		return errdefs.New(errdefs.ErrUnauthenticated, "your user was deleted or is no longer an admin")
	}
	// Alone at the gate: the requests made as or for the user have ended
	// (cancelled), none starts, and the name is not made again, until
	// the user and all it had are gone.
	err := a.gate.change(r.Context(), name, true, func() error {
		if _, err := a.users.GetUser(r.Context(), name); err != nil {
			return err
		}
		// A user's functions go first, so that a failure leaves the user
		// to delete again, not functions without a user (a user made
		// again under the name would have them). Each goes whole, so the
		// same DELETE again carries on with those left.
		if err := a.deleteFunctionsOf(r.Context(), name); err != nil {
			return err
		}
		if err := a.users.DeleteUser(r.Context(), name); err != nil {
			return err
		}
		if a.cfg.Forget != nil {
			a.cfg.Forget.ForgetUser(name)
		}
		a.endFollows(name, "", errdefs.New(errdefs.ErrUnauthenticated, "user %s was deleted", name))
		return nil
	})
	if err != nil {
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
