// Package storetest is the conformance suite for store.Store. Every
// implementation runs it from its own tests, so that they all behave the
// same way: the same orderings, the same error classes, the same time
// precision.
package storetest

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spry-run/spry/internal/errdefs"
	"github.com/spry-run/spry/internal/store"
)

// Run runs the suite against the implementation that open returns. open is
// called once per subtest and must return a new, empty store; Run closes it
// when the subtest ends.
func Run(t *testing.T, open func(t *testing.T) store.Store) {
	tests := []struct {
		name string
		fn   func(*testing.T, store.Store)
	}{
		{"Users", testUsers},
		{"CreateUserWithTokens", testCreateUserWithTokens},
		{"DeleteUser", testDeleteUser},
		{"Tokens", testTokens},
		{"RevokedTokensBounded", testRevokedTokensBounded},
		{"Deploy", testDeploy},
		{"ConfigRoundTrip", testConfigRoundTrip},
		{"ListFunctions", testListFunctions},
		{"ListFunctionsPaged", testListFunctionsPaged},
		{"DeleteFunction", testDeleteFunction},
		{"SetLive", testSetLive},
		{"Routing", testRouting},
		{"SetLastInvoked", testSetLastInvoked},
		{"ScheduleMarks", testScheduleMarks},
		{"Digests", testDigests},
		{"CountSecretVersions", testCountSecretVersions},
		{"SecretKeyCheck", testSecretKeyCheck},
		{"NotFound", testNotFound},
		{"ConcurrentDeploy", testConcurrentDeploy},
		{"VersionRetention", testVersionRetention},
		{"DeleteVersion", testDeleteVersion},
		{"DeleteVersionRacesRouting", testDeleteVersionRacesRouting},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := open(t)
			t.Cleanup(func() {
				if err := s.Close(); err != nil {
					t.Errorf("Close: %v", err)
				}
			})
			tt.fn(t, s)
		})
	}
}

// base has a sub-millisecond part on purpose: implementations may drop it,
// and the suite must accept that.
var base = time.Date(2025, 3, 14, 15, 9, 26, 535897932, time.UTC)

// at returns a distinct, increasing time for each n.
func at(n int) time.Time { return base.Add(time.Duration(n) * time.Second) }

// sameTime compares at millisecond precision, the coarsest an
// implementation may store.
func sameTime(a, b time.Time) bool {
	return a.Truncate(time.Millisecond).Equal(b.Truncate(time.Millisecond))
}

func noErr(t *testing.T, err error, what string) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: unexpected error: %v", what, err)
	}
}

func wantErr(t *testing.T, err, class error, what string) {
	t.Helper()
	if !errors.Is(err, class) {
		t.Fatalf("%s: got error %v, want one of class %q", what, err, class)
	}
}

func checkUser(t *testing.T, got, want store.User) {
	t.Helper()
	if got.Name != want.Name || got.Admin != want.Admin || !sameTime(got.CreatedAt, want.CreatedAt) {
		t.Errorf("user: got %+v, want %+v", got, want)
	}
}

func checkToken(t *testing.T, got, want store.Token) {
	t.Helper()
	if got.ID != want.ID || got.User != want.User || !bytes.Equal(got.Hash, want.Hash) ||
		got.Name != want.Name || !sameTime(got.CreatedAt, want.CreatedAt) ||
		!sameTime(got.RevokedAt, want.RevokedAt) || !sameTime(got.ExpiresAt, want.ExpiresAt) ||
		!slices.Equal(got.Scopes, want.Scopes) {
		t.Errorf("token: got %+v, want %+v", got, want)
	}
}

func checkVersion(t *testing.T, got, want store.Version) {
	t.Helper()
	if got.Owner != want.Owner || got.Name != want.Name || got.Number != want.Number ||
		got.Digest != want.Digest || got.Size != want.Size || got.CreatedBy != want.CreatedBy ||
		!sameTime(got.CreatedAt, want.CreatedAt) || !reflect.DeepEqual(got.Config, want.Config) {
		t.Errorf("version: got %+v, want %+v", got, want)
	}
}

func checkFunction(t *testing.T, got, want store.Function) {
	t.Helper()
	if got.ID != want.ID || got.Owner != want.Owner || got.Name != want.Name ||
		got.LiveVersion != want.LiveVersion || !sameTime(got.CreatedAt, want.CreatedAt) ||
		!sameTime(got.UpdatedAt, want.UpdatedAt) || !sameTime(got.LastInvokedAt, want.LastInvokedAt) {
		t.Errorf("function: got %+v, want %+v", got, want)
	}
	checkVersion(t, got.Live, want.Live)
}

// version returns a version of owner/name deployed at at(n), with a digest
// that is unique to (owner, name, n).
func version(owner, name string, n int) store.Version {
	return store.Version{
		Owner:     owner,
		Name:      name,
		Digest:    fmt.Sprintf("sha256:%s-%s-%d", owner, name, n),
		Size:      int64(1000 + n),
		Config:    store.Config{Runtime: "node22", Env: map[string]string{"N": fmt.Sprint(n)}},
		CreatedAt: at(n),
		CreatedBy: owner,
	}
}

// numbered returns v as the store should have stored it.
func numbered(v store.Version, n int64) store.Version {
	v.Number = n
	return v
}

func deploy(t *testing.T, s store.Store, id string, v store.Version) store.Version {
	t.Helper()
	got, err := s.Deploy(t.Context(), id, v)
	noErr(t, err, fmt.Sprintf("Deploy %s/%s", v.Owner, v.Name))
	return got
}

func mustUser(t *testing.T, s store.Store, name string) {
	t.Helper()
	noErr(t, s.CreateUser(t.Context(), store.User{Name: name, CreatedAt: at(0)}), "CreateUser "+name)
}

func testUsers(t *testing.T, s store.Store) {
	ctx := t.Context()
	bob := store.User{Name: "bob", CreatedAt: at(1)}
	alice := store.User{Name: "alice", Admin: true, CreatedAt: at(2)}
	// Created out of order so that the listing order is the store's doing.
	noErr(t, s.CreateUser(ctx, bob), "CreateUser bob")
	noErr(t, s.CreateUser(ctx, alice), "CreateUser alice")

	got, err := s.GetUser(ctx, "alice")
	noErr(t, err, "GetUser alice")
	checkUser(t, got, alice)

	err = s.CreateUser(ctx, store.User{Name: "alice", CreatedAt: at(3)})
	wantErr(t, err, errdefs.ErrAlreadyExists, "CreateUser duplicate")
	got, err = s.GetUser(ctx, "alice")
	noErr(t, err, "GetUser alice after duplicate")
	checkUser(t, got, alice)

	list, err := s.ListUsers(ctx)
	noErr(t, err, "ListUsers")
	if len(list) != 2 {
		t.Fatalf("ListUsers: got %d users, want 2: %+v", len(list), list)
	}
	checkUser(t, list[0], alice)
	checkUser(t, list[1], bob)

	noErr(t, s.DeleteUser(ctx, "bob"), "DeleteUser bob")
	_, err = s.GetUser(ctx, "bob")
	wantErr(t, err, errdefs.ErrNotFound, "GetUser deleted")
	list, err = s.ListUsers(ctx)
	noErr(t, err, "ListUsers after delete")
	if len(list) != 1 || list[0].Name != "alice" {
		t.Errorf("ListUsers after delete: got %+v, want only alice", list)
	}
}

// A user made with tokens is made with all of them or not at all.
func testCreateUserWithTokens(t *testing.T, s store.Store) {
	ctx := t.Context()
	carol := store.User{Name: "carol", CreatedAt: at(1)}
	c1 := store.Token{ID: "c1", User: "carol", Hash: []byte{1}, Name: "first", CreatedAt: at(1)}
	noErr(t, s.CreateUser(ctx, carol, c1), "CreateUser carol with a token")
	got, err := s.GetUser(ctx, "carol")
	noErr(t, err, "GetUser carol")
	checkUser(t, got, carol)
	tok, err := s.GetToken(ctx, "c1")
	noErr(t, err, "GetToken c1")
	checkToken(t, tok, c1)

	// A token that cannot be stored (its id is taken) takes the user
	// with it.
	dave := store.User{Name: "dave", CreatedAt: at(2)}
	err = s.CreateUser(ctx, dave, store.Token{ID: "d1", User: "dave", Hash: []byte{2}, CreatedAt: at(2)}, store.Token{ID: "c1", User: "dave", Hash: []byte{3}, CreatedAt: at(2)})
	wantErr(t, err, errdefs.ErrAlreadyExists, "CreateUser dave with a taken token id")
	_, err = s.GetUser(ctx, "dave")
	wantErr(t, err, errdefs.ErrNotFound, "GetUser dave after a failed CreateUser")
	_, err = s.GetToken(ctx, "d1")
	wantErr(t, err, errdefs.ErrNotFound, "GetToken d1 after a failed CreateUser")
	tok, err = s.GetToken(ctx, "c1")
	noErr(t, err, "GetToken c1 after dave's failed CreateUser")
	checkToken(t, tok, c1)

	// Nor does a user whose name is taken get its tokens.
	err = s.CreateUser(ctx, store.User{Name: "carol", CreatedAt: at(3)}, store.Token{ID: "c2", User: "carol", Hash: []byte{4}, CreatedAt: at(3)})
	wantErr(t, err, errdefs.ErrAlreadyExists, "CreateUser carol again")
	_, err = s.GetToken(ctx, "c2")
	wantErr(t, err, errdefs.ErrNotFound, "GetToken c2 of a user made twice")

	// The user and its tokens made so are ordinary ones.
	noErr(t, s.CreateUser(ctx, dave, store.Token{ID: "d1", User: "dave", Hash: []byte{2}, CreatedAt: at(2)}), "CreateUser dave")
	noErr(t, s.DeleteUser(ctx, "dave"), "DeleteUser dave")
	_, err = s.GetToken(ctx, "d1")
	wantErr(t, err, errdefs.ErrNotFound, "GetToken d1 of a deleted user")
}

func testDeleteUser(t *testing.T, s store.Store) {
	ctx := t.Context()
	mustUser(t, s, "alice")
	mustUser(t, s, "bob")
	for i, tok := range []store.Token{
		{ID: "a1", User: "alice", Hash: []byte{1}, CreatedAt: at(1)},
		{ID: "a2", User: "alice", Hash: []byte{2}, CreatedAt: at(2)},
		{ID: "b1", User: "bob", Hash: []byte{3}, CreatedAt: at(3)},
	} {
		noErr(t, s.CreateToken(ctx, tok), fmt.Sprintf("CreateToken %d", i))
	}

	noErr(t, s.DeleteUser(ctx, "alice"), "DeleteUser alice")
	wantErr(t, s.DeleteUser(ctx, "alice"), errdefs.ErrNotFound, "DeleteUser again")
	for _, id := range []string{"a1", "a2"} {
		_, err := s.GetToken(ctx, id)
		wantErr(t, err, errdefs.ErrNotFound, "GetToken of deleted user")
	}
	if _, err := s.GetToken(ctx, "b1"); err != nil {
		t.Errorf("GetToken of another user: %v", err)
	}

	// A new account with the same name must not inherit the old tokens.
	mustUser(t, s, "alice")
	toks, err := s.ListTokens(ctx, "alice")
	noErr(t, err, "ListTokens of recreated user")
	if len(toks) != 0 {
		t.Errorf("ListTokens of recreated user: got %+v, want none", toks)
	}

	// The last admin stays: there would be no one left to manage users.
	noErr(t, s.CreateUser(ctx, store.User{Name: "root1", Admin: true, CreatedAt: at(4)}), "CreateUser root1")
	noErr(t, s.CreateUser(ctx, store.User{Name: "root2", Admin: true, CreatedAt: at(5)}), "CreateUser root2")
	noErr(t, s.DeleteUser(ctx, "root1"), "DeleteUser of one of two admins")
	wantErr(t, s.DeleteUser(ctx, "root2"), errdefs.ErrConflict, "DeleteUser of the last admin")
	if _, err := s.GetUser(ctx, "root2"); err != nil {
		t.Errorf("the last admin is gone: %v", err)
	}
	// Two admins deleting each other at once: one of them stays.
	noErr(t, s.CreateUser(ctx, store.User{Name: "root3", Admin: true, CreatedAt: at(6)}), "CreateUser root3")
	errs := make(chan error, 2)
	for _, name := range []string{"root2", "root3"} {
		go func() { errs <- s.DeleteUser(ctx, name) }()
	}
	e1, e2 := <-errs, <-errs
	if (e1 == nil) == (e2 == nil) || !errors.Is(errors.Join(e1, e2), errdefs.ErrConflict) {
		t.Errorf("two admins deleting each other: %v and %v, want one success and one conflict", e1, e2)
	}
}

func testTokens(t *testing.T, s store.Store) {
	ctx := t.Context()
	mustUser(t, s, "alice")
	mustUser(t, s, "bob")
	late := store.Token{ID: "tok1", User: "alice", Hash: bytes.Repeat([]byte{0xab}, 32), Name: "laptop", CreatedAt: at(2), ExpiresAt: at(9), Scopes: []string{"deploy", "metrics"}}
	early := store.Token{ID: "tok2", User: "alice", Hash: bytes.Repeat([]byte{0x00, 0xff}, 16), Name: "ci", CreatedAt: at(1)}
	other := store.Token{ID: "tok3", User: "bob", Hash: []byte("h3"), Name: "", CreatedAt: at(3)}
	for _, tok := range []store.Token{late, early, other} {
		noErr(t, s.CreateToken(ctx, tok), "CreateToken "+tok.ID)
	}

	got, err := s.GetToken(ctx, "tok1")
	noErr(t, err, "GetToken")
	checkToken(t, got, late)
	if !got.RevokedAt.IsZero() {
		t.Errorf("new token has RevokedAt %v, want zero", got.RevokedAt)
	}

	errCases := []struct {
		name string
		tok  store.Token
		want error
	}{
		{"DuplicateID", store.Token{ID: "tok1", User: "alice", Hash: []byte{1}, CreatedAt: at(4)}, errdefs.ErrAlreadyExists},
		{"DuplicateIDOtherUser", store.Token{ID: "tok1", User: "bob", Hash: []byte{1}, CreatedAt: at(4)}, errdefs.ErrAlreadyExists},
		{"MissingUser", store.Token{ID: "tok9", User: "nobody", Hash: []byte{1}, CreatedAt: at(4)}, errdefs.ErrNotFound},
	}
	for _, tc := range errCases {
		t.Run(tc.name, func(t *testing.T) {
			wantErr(t, s.CreateToken(ctx, tc.tok), tc.want, "CreateToken")
		})
	}
	got, err = s.GetToken(ctx, "tok1")
	noErr(t, err, "GetToken after duplicate")
	checkToken(t, got, late)

	listCases := []struct {
		user string
		want []store.Token
	}{
		{"alice", []store.Token{early, late}},
		{"bob", []store.Token{other}},
		{"nobody", nil},
	}
	for _, tc := range listCases {
		t.Run("List/"+tc.user, func(t *testing.T) {
			list, err := s.ListTokens(ctx, tc.user)
			noErr(t, err, "ListTokens")
			if len(list) != len(tc.want) {
				t.Fatalf("ListTokens: got %d tokens, want %d: %+v", len(list), len(tc.want), list)
			}
			for i := range list {
				checkToken(t, list[i], tc.want[i])
			}
		})
	}

	noErr(t, s.RevokeToken(ctx, "tok1", at(10)), "RevokeToken")
	revoked := late
	revoked.RevokedAt = at(10)
	got, err = s.GetToken(ctx, "tok1")
	noErr(t, err, "GetToken revoked")
	checkToken(t, got, revoked)
	got, err = s.GetToken(ctx, "tok2")
	noErr(t, err, "GetToken other")
	checkToken(t, got, early)
	list, err := s.ListTokens(ctx, "alice")
	noErr(t, err, "ListTokens after revoke")
	if len(list) != 2 {
		t.Fatalf("ListTokens after revoke: got %+v", list)
	}
	checkToken(t, list[1], revoked)

	noErr(t, s.RevokeToken(ctx, "tok1", at(12)), "RevokeToken again")
	got, err = s.GetToken(ctx, "tok1")
	noErr(t, err, "GetToken revoked twice")
	checkToken(t, got, revoked)

	wantErr(t, s.RevokeToken(ctx, "missing", at(11)), errdefs.ErrNotFound, "RevokeToken missing")
}

func testDeploy(t *testing.T, s store.Store) {
	ctx := t.Context()
	v1 := version("alice", "hello", 1)
	v1.Number = 99 // must be ignored
	got := deploy(t, s, "id-1", v1)
	want1 := numbered(v1, 1)
	checkVersion(t, got, want1)

	fn, err := s.GetFunction(ctx, "alice", "hello")
	noErr(t, err, "GetFunction after first deploy")
	checkFunction(t, fn, store.Function{
		ID: "id-1", Owner: "alice", Name: "hello", LiveVersion: 1,
		CreatedAt: at(1), UpdatedAt: at(1), Live: want1,
	})

	v2 := version("alice", "hello", 2)
	got = deploy(t, s, "id-2", v2)
	want2 := numbered(v2, 2)
	checkVersion(t, got, want2)

	fn, err = s.GetFunction(ctx, "alice", "hello")
	noErr(t, err, "GetFunction after second deploy")
	// The id of a later deploy is ignored: a function's id never changes.
	checkFunction(t, fn, store.Function{
		ID: "id-1", Owner: "alice", Name: "hello", LiveVersion: 2,
		CreatedAt: at(1), UpdatedAt: at(2), Live: want2,
	})

	for _, want := range []store.Version{want1, want2} {
		got, err := s.GetVersion(ctx, "alice", "hello", want.Number)
		noErr(t, err, fmt.Sprintf("GetVersion %d", want.Number))
		checkVersion(t, got, want)
	}

	vs, err := s.ListVersions(ctx, "alice", "hello")
	noErr(t, err, "ListVersions")
	if len(vs) != 2 {
		t.Fatalf("ListVersions: got %d versions, want 2: %+v", len(vs), vs)
	}
	checkVersion(t, vs[0], want2)
	checkVersion(t, vs[1], want1)

	// Numbering is per function.
	got = deploy(t, s, "id-3", version("alice", "other", 3))
	if got.Number != 1 {
		t.Errorf("first deploy of another function: got number %d, want 1", got.Number)
	}

	// Function ids are unique, and a failed Deploy leaves nothing behind.
	_, err = s.Deploy(ctx, "id-1", version("bob", "hello", 4))
	wantErr(t, err, errdefs.ErrAlreadyExists, "Deploy with another function's id")
	_, err = s.GetFunction(ctx, "bob", "hello")
	wantErr(t, err, errdefs.ErrNotFound, "GetFunction after failed deploy")

	// But an existing function ignores the id, even one that is taken.
	got = deploy(t, s, "id-3", version("alice", "hello", 5))
	if got.Number != 3 {
		t.Errorf("Deploy with a taken id to an existing function: got number %d, want 3", got.Number)
	}
	fn, err = s.GetFunction(ctx, "alice", "hello")
	noErr(t, err, "GetFunction after third deploy")
	if fn.ID != "id-1" {
		t.Errorf("function id changed from %q to %q", "id-1", fn.ID)
	}
}

func testConfigRoundTrip(t *testing.T, s store.Store) {
	cases := []struct {
		name string
		cfg  store.Config
	}{
		{"Empty", store.Config{}},
		{"RuntimeOnly", store.Config{Runtime: "node22"}},
		{"Full", store.Config{
			Runtime: "python3.13",
			Env: map[string]string{
				"DATABASE_URL": "postgres://u:p@db/x?sslmode=disable",
				"EMPTY":        "",
				"UNICODE":      "héllo, 世界 \u2028 \"quoted\" \\ \n\t",
				"JSONISH":      `{"a":[1,2]}`,
			},
			Limits: store.Limits{
				MemoryMiB: 256, TimeoutMs: 30000, Network: "none",
				MinScale: 1, MaxScale: 10, Concurrency: 4,
			},
		}},
		{"LimitsOnly", store.Config{Runtime: "go", Limits: store.Limits{MaxScale: 3}}},
		// 0 is a setting of its own, not the default.
		{"NoAsyncRetries", store.Config{Runtime: "go", Limits: store.Limits{AsyncRetries: store.SomeInt(0)}}},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			v := version("alice", fmt.Sprintf("cfg%d", i), i)
			v.Config = tc.cfg
			got := deploy(t, s, fmt.Sprintf("cfg-id-%d", i), v)
			if !reflect.DeepEqual(got.Config, tc.cfg) {
				t.Errorf("Deploy returned config %+v, want %+v", got.Config, tc.cfg)
			}
			fn, err := s.GetFunction(t.Context(), v.Owner, v.Name)
			noErr(t, err, "GetFunction")
			if !reflect.DeepEqual(fn.Live.Config, tc.cfg) {
				t.Errorf("GetFunction: Live.Config = %+v, want %+v", fn.Live.Config, tc.cfg)
			}
			gv, err := s.GetVersion(t.Context(), v.Owner, v.Name, 1)
			noErr(t, err, "GetVersion")
			if !reflect.DeepEqual(gv.Config, tc.cfg) {
				t.Errorf("GetVersion: Config = %+v, want %+v", gv.Config, tc.cfg)
			}
		})
	}
}

func testListFunctions(t *testing.T, s store.Store) {
	ctx := t.Context()
	// Deployed out of order, and one twice, so that order and Live are
	// the store's doing.
	deploys := []store.Version{
		version("bob", "zeta", 1),
		version("alice", "beta", 2),
		version("carol", "x", 3),
		version("bob", "alpha", 4),
		version("alice", "alpha", 5),
		version("alice", "alpha", 6),
	}
	for i, v := range deploys {
		deploy(t, s, fmt.Sprintf("id-%d", i), v)
	}
	fn := func(id string, v store.Version, number int64, created int) store.Function {
		return store.Function{
			ID: id, Owner: v.Owner, Name: v.Name, LiveVersion: number,
			CreatedAt: at(created), UpdatedAt: v.CreatedAt, Live: numbered(v, number),
		}
	}
	aliceAlpha := fn("id-4", deploys[5], 2, 5)
	aliceBeta := fn("id-1", deploys[1], 1, 2)
	bobAlpha := fn("id-3", deploys[3], 1, 4)
	bobZeta := fn("id-0", deploys[0], 1, 1)
	carolX := fn("id-2", deploys[2], 1, 3)

	cases := []struct {
		owner string
		want  []store.Function
	}{
		{"", []store.Function{aliceAlpha, aliceBeta, bobAlpha, bobZeta, carolX}},
		{"alice", []store.Function{aliceAlpha, aliceBeta}},
		{"bob", []store.Function{bobAlpha, bobZeta}},
		{"carol", []store.Function{carolX}},
		{"nobody", nil},
	}
	for _, tc := range cases {
		t.Run("owner="+tc.owner, func(t *testing.T) {
			list, err := s.ListFunctions(ctx, tc.owner, store.Page{})
			noErr(t, err, "ListFunctions")
			if len(list) != len(tc.want) {
				t.Fatalf("ListFunctions(%q): got %d functions, want %d: %+v", tc.owner, len(list), len(tc.want), list)
			}
			for i := range list {
				checkFunction(t, list[i], tc.want[i])
			}
			if tc.owner == "" {
				return
			}
			// A function deployed twice counts once.
			n, err := s.CountFunctions(ctx, tc.owner)
			noErr(t, err, "CountFunctions")
			if n != len(tc.want) {
				t.Errorf("CountFunctions(%q) = %d, want %d", tc.owner, n, len(tc.want))
			}
		})
	}
}

// Walking pages gives the whole list in order, whatever the page size,
// and a page may start after a function that no longer exists.
func testListFunctionsPaged(t *testing.T, s store.Store) {
	ctx := t.Context()
	key := func(owner, name string) store.FunctionKey { return store.FunctionKey{Owner: owner, Name: name} }
	for i, k := range []store.FunctionKey{
		key("bob", "b"), key("alice", "c"), key("alice", "a"), key("carol", "a"), key("bob", "a"), key("alice", "b"), key("alice-x", "a"),
	} {
		deploy(t, s, fmt.Sprintf("id-%d", i), version(k.Owner, k.Name, i+1))
	}
	all := []store.FunctionKey{key("alice", "a"), key("alice", "b"), key("alice", "c"), key("alice-x", "a"), key("bob", "a"), key("bob", "b"), key("carol", "a")}
	keys := func(fns []store.Function) []store.FunctionKey {
		var out []store.FunctionKey
		for _, f := range fns {
			out = append(out, store.FunctionKey{Owner: f.Owner, Name: f.Name})
		}
		return out
	}
	for _, owner := range []string{"", "alice", "bob"} {
		var want []store.FunctionKey
		for _, k := range all {
			if owner == "" || k.Owner == owner {
				want = append(want, k)
			}
		}
		for limit := 1; limit <= len(all)+1; limit++ {
			var got []store.FunctionKey
			page := store.Page{Limit: limit}
			for n := 0; ; n++ {
				fns, err := s.ListFunctions(ctx, owner, page)
				noErr(t, err, "ListFunctions")
				if len(fns) > limit || n > len(all) {
					t.Fatalf("owner %q, limit %d: page %d has %d functions", owner, limit, n, len(fns))
				}
				got = append(got, keys(fns)...)
				if len(fns) < limit {
					break
				}
				last := fns[len(fns)-1]
				page.After = store.FunctionKey{Owner: last.Owner, Name: last.Name}
			}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("owner %q, limit %d: walked %v, want %v", owner, limit, got, want)
			}
		}
	}
	noErr(t, s.DeleteFunction(ctx, "alice", "b"), "DeleteFunction")
	fns, err := s.ListFunctions(ctx, "", store.Page{After: store.FunctionKey{Owner: "alice", Name: "b"}, Limit: 2})
	noErr(t, err, "ListFunctions after a deleted key")
	if got := fmt.Sprint(keys(fns)); got != "[{alice c} {alice-x a}]" {
		t.Fatalf("after deleted alice/b: got %s", got)
	}
}

func testDeleteFunction(t *testing.T, s store.Store) {
	ctx := t.Context()
	deploy(t, s, "id-a", version("alice", "hello", 1))
	deploy(t, s, "id-a2", version("alice", "hello", 2))
	other := deploy(t, s, "id-o", version("alice", "other", 3))

	noErr(t, s.DeleteFunction(ctx, "alice", "hello"), "DeleteFunction")

	_, err := s.GetFunction(ctx, "alice", "hello")
	wantErr(t, err, errdefs.ErrNotFound, "GetFunction deleted")
	for _, n := range []int64{1, 2} {
		_, err := s.GetVersion(ctx, "alice", "hello", n)
		wantErr(t, err, errdefs.ErrNotFound, fmt.Sprintf("GetVersion %d of deleted", n))
	}
	_, err = s.ListVersions(ctx, "alice", "hello")
	wantErr(t, err, errdefs.ErrNotFound, "ListVersions deleted")
	wantErr(t, s.DeleteFunction(ctx, "alice", "hello"), errdefs.ErrNotFound, "DeleteFunction again")

	list, err := s.ListFunctions(ctx, "alice", store.Page{})
	noErr(t, err, "ListFunctions")
	if len(list) != 1 || list[0].Name != "other" {
		t.Errorf("ListFunctions after delete: got %+v, want only other", list)
	}
	gv, err := s.GetVersion(ctx, "alice", "other", 1)
	noErr(t, err, "GetVersion of other function")
	checkVersion(t, gv, other)

	// A new function with the old name is a new function: new id, new
	// numbering, new creation time.
	v := version("alice", "hello", 7)
	got := deploy(t, s, "id-b", v)
	checkVersion(t, got, numbered(v, 1))
	fn, err := s.GetFunction(ctx, "alice", "hello")
	noErr(t, err, "GetFunction recreated")
	checkFunction(t, fn, store.Function{
		ID: "id-b", Owner: "alice", Name: "hello", LiveVersion: 1,
		CreatedAt: at(7), UpdatedAt: at(7), Live: numbered(v, 1),
	})
	vs, err := s.ListVersions(ctx, "alice", "hello")
	noErr(t, err, "ListVersions recreated")
	if len(vs) != 1 {
		t.Errorf("ListVersions recreated: got %+v, want one version", vs)
	}
}

func testSetLive(t *testing.T, s store.Store) {
	ctx := t.Context()
	var vs []store.Version
	for n := 1; n <= 3; n++ {
		vs = append(vs, deploy(t, s, "id", version("alice", "hello", n)))
	}

	noErr(t, s.SetLive(ctx, "alice", "hello", 2, at(10)), "SetLive 2")
	rolledBack := store.Function{
		ID: "id", Owner: "alice", Name: "hello", LiveVersion: 2,
		CreatedAt: at(1), UpdatedAt: at(10), Live: vs[1],
	}
	fn, err := s.GetFunction(ctx, "alice", "hello")
	noErr(t, err, "GetFunction after SetLive")
	checkFunction(t, fn, rolledBack)

	cases := []struct {
		name      string
		owner, fn string
		number    int64
		want      error
	}{
		{"MissingVersion", "alice", "hello", 99, errdefs.ErrNotFound},
		{"VersionZero", "alice", "hello", 0, errdefs.ErrNotFound},
		{"MissingFunction", "alice", "nope", 1, errdefs.ErrNotFound},
		{"MissingOwner", "bob", "hello", 1, errdefs.ErrNotFound},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := s.SetLive(ctx, tc.owner, tc.fn, tc.number, at(20))
			wantErr(t, err, tc.want, "SetLive")
			fn, err := s.GetFunction(ctx, "alice", "hello")
			noErr(t, err, "GetFunction")
			checkFunction(t, fn, rolledBack)
		})
	}

	// The next version number follows the newest version, not the live one.
	got := deploy(t, s, "id", version("alice", "hello", 4))
	if got.Number != 4 {
		t.Errorf("Deploy after rollback: got number %d, want 4", got.Number)
	}
	fn, err = s.GetFunction(ctx, "alice", "hello")
	noErr(t, err, "GetFunction after redeploy")
	if fn.LiveVersion != 4 {
		t.Errorf("LiveVersion after redeploy: got %d, want 4", fn.LiveVersion)
	}
}

func testSetLastInvoked(t *testing.T, s store.Store) {
	ctx := t.Context()
	deploy(t, s, "id-aa", version("alice", "a", 1))
	deploy(t, s, "id-ab", version("alice", "b", 2))
	deploy(t, s, "id-ba", version("bob", "a", 3))

	noErr(t, s.SetLastInvoked(ctx, nil), "SetLastInvoked nil")
	noErr(t, s.SetLastInvoked(ctx, map[store.FunctionKey]time.Time{}), "SetLastInvoked empty")

	noErr(t, s.SetLastInvoked(ctx, map[store.FunctionKey]time.Time{
		{Owner: "alice", Name: "a"}:  at(10),
		{Owner: "bob", Name: "a"}:    at(11),
		{Owner: "ghost", Name: "x"}:  at(12),
		{Owner: "alice", Name: "zz"}: at(13),
	}), "SetLastInvoked")
	noErr(t, s.SetLastInvoked(ctx, map[store.FunctionKey]time.Time{
		{Owner: "alice", Name: "a"}: at(20),
	}), "SetLastInvoked again")

	cases := []struct {
		owner, name string
		want        time.Time
		updated     time.Time
	}{
		{"alice", "a", at(20), at(1)},
		{"alice", "b", time.Time{}, at(2)},
		{"bob", "a", at(11), at(3)},
	}
	for _, tc := range cases {
		t.Run(tc.owner+"/"+tc.name, func(t *testing.T) {
			fn, err := s.GetFunction(ctx, tc.owner, tc.name)
			noErr(t, err, "GetFunction")
			if !sameTime(fn.LastInvokedAt, tc.want) {
				t.Errorf("LastInvokedAt: got %v, want %v", fn.LastInvokedAt, tc.want)
			}
			if tc.want.IsZero() && !fn.LastInvokedAt.IsZero() {
				t.Errorf("LastInvokedAt: got %v, want zero", fn.LastInvokedAt)
			}
			// Invocations are not changes to the function.
			if !sameTime(fn.UpdatedAt, tc.updated) {
				t.Errorf("UpdatedAt: got %v, want %v", fn.UpdatedAt, tc.updated)
			}
		})
	}

	list, err := s.ListFunctions(ctx, "", store.Page{})
	noErr(t, err, "ListFunctions")
	for _, fn := range list {
		if fn.Owner == "alice" && fn.Name == "a" && !sameTime(fn.LastInvokedAt, at(20)) {
			t.Errorf("ListFunctions: alice/a LastInvokedAt = %v, want %v", fn.LastInvokedAt, at(20))
		}
	}
	for _, k := range []store.FunctionKey{{Owner: "ghost", Name: "x"}, {Owner: "alice", Name: "zz"}} {
		_, err := s.GetFunction(ctx, k.Owner, k.Name)
		wantErr(t, err, errdefs.ErrNotFound, "SetLastInvoked must not create "+k.Owner+"/"+k.Name)
	}
}

func testScheduleMarks(t *testing.T, s store.Store) {
	ctx := t.Context()
	deploy(t, s, "id-aa", version("alice", "a", 1))
	deploy(t, s, "id-ab", version("alice", "b", 2))

	noErr(t, s.MarkSchedules(ctx, nil), "MarkSchedules nil")
	noErr(t, s.MarkSchedules(ctx, map[string]store.ScheduleMark{
		"id-aa":    {Cron: "@hourly", At: at(10)},
		"id-ab":    {Cron: "*/5 * * * *", At: at(11)},
		"id-ghost": {Cron: "@daily", At: at(12)}, // no such function: dropped
	}), "MarkSchedules")
	noErr(t, s.MarkSchedules(ctx, map[string]store.ScheduleMark{"id-aa": {Cron: "@daily", At: at(20)}}), "MarkSchedules again")

	marks, err := s.ScheduleMarks(ctx)
	noErr(t, err, "ScheduleMarks")
	want := map[string]store.ScheduleMark{"id-aa": {Cron: "@daily", At: at(20)}, "id-ab": {Cron: "*/5 * * * *", At: at(11)}}
	if len(marks) != len(want) {
		t.Fatalf("ScheduleMarks: %v, want %v", marks, want)
	}
	for id, w := range want {
		if m := marks[id]; m.Cron != w.Cron || !sameTime(m.At, w.At) {
			t.Errorf("mark of %s: %+v, want %+v", id, m, w)
		}
	}
	// A function's mark goes with it.
	noErr(t, s.DeleteFunction(ctx, "alice", "a"), "DeleteFunction")
	marks, err = s.ScheduleMarks(ctx)
	noErr(t, err, "ScheduleMarks")
	if _, ok := marks["id-aa"]; ok || len(marks) != 1 {
		t.Errorf("after the delete: %v, want only id-ab's", marks)
	}
}

func testDigests(t *testing.T, s store.Store) {
	ctx := t.Context()
	check := func(step string, want ...string) {
		t.Helper()
		got, err := s.Digests(ctx)
		noErr(t, err, "Digests "+step)
		wantSet := map[string]bool{}
		for _, d := range want {
			wantSet[d] = true
		}
		if len(got) != len(wantSet) {
			t.Errorf("Digests %s: got %v, want %v", step, got, wantSet)
			return
		}
		for d := range wantSet {
			if !got[d] {
				t.Errorf("Digests %s: got %v, want %v", step, got, wantSet)
				return
			}
		}
	}
	check("empty")

	const d1, d2, d3 = "sha256:1111", "sha256:2222", "sha256:3333"
	with := func(v store.Version, d string) store.Version { v.Digest = d; return v }
	deploy(t, s, "id-a", with(version("alice", "a", 1), d1))
	deploy(t, s, "id-a", with(version("alice", "a", 2), d2)) // d1 is no longer live but still referenced
	deploy(t, s, "id-b", with(version("bob", "b", 3), d2))
	deploy(t, s, "id-c", with(version("bob", "c", 4), d3))
	check("after deploys", d1, d2, d3)

	noErr(t, s.DeleteFunction(ctx, "bob", "c"), "DeleteFunction bob/c")
	check("after deleting bob/c", d1, d2)
	noErr(t, s.DeleteFunction(ctx, "alice", "a"), "DeleteFunction alice/a")
	check("after deleting alice/a", d2) // still used by bob/b
	noErr(t, s.DeleteFunction(ctx, "bob", "b"), "DeleteFunction bob/b")
	check("after deleting all")
}

func testNotFound(t *testing.T, s store.Store) {
	ctx := t.Context()
	mustUser(t, s, "alice")
	noErr(t, s.CreateToken(ctx, store.Token{ID: "tok", User: "alice", Hash: []byte{1}, CreatedAt: at(1)}), "CreateToken")
	deploy(t, s, "id", version("alice", "hello", 1))

	cases := []struct {
		name string
		call func() error
	}{
		{"GetUser", func() error { _, err := s.GetUser(ctx, "nobody"); return err }},
		{"DeleteUser", func() error { return s.DeleteUser(ctx, "nobody") }},
		{"GetToken", func() error { _, err := s.GetToken(ctx, "nope"); return err }},
		{"RevokeToken", func() error { return s.RevokeToken(ctx, "nope", at(2)) }},
		{"GetFunction", func() error { _, err := s.GetFunction(ctx, "alice", "nope"); return err }},
		{"GetFunctionOtherOwner", func() error { _, err := s.GetFunction(ctx, "bob", "hello"); return err }},
		{"DeleteFunction", func() error { return s.DeleteFunction(ctx, "alice", "nope") }},
		{"GetVersionMissingFunction", func() error { _, err := s.GetVersion(ctx, "alice", "nope", 1); return err }},
		{"GetVersionMissingNumber", func() error { _, err := s.GetVersion(ctx, "alice", "hello", 2); return err }},
		{"ListVersions", func() error { _, err := s.ListVersions(ctx, "alice", "nope"); return err }},
		{"SetLive", func() error { return s.SetLive(ctx, "alice", "nope", 1, at(2)) }},
		{"DeleteVersionMissingFunction", func() error { return s.DeleteVersion(ctx, "alice", "nope", 1, at(2)) }},
		{"DeleteVersionMissingNumber", func() error { return s.DeleteVersion(ctx, "alice", "hello", 2, at(2)) }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			wantErr(t, tc.call(), errdefs.ErrNotFound, tc.name)
		})
	}
}

func testConcurrentDeploy(t *testing.T, s store.Store) {
	const n = 20
	ctx := t.Context()
	var (
		wg      sync.WaitGroup
		start   = make(chan struct{})
		numbers = make([]int64, n)
		errs    = make([]error, n)
	)
	for i := range n {
		wg.Go(func() {
			<-start
			v := version("alice", "hot", i)
			got, err := s.Deploy(ctx, fmt.Sprintf("id-%d", i), v)
			numbers[i], errs[i] = got.Number, err
		})
	}
	close(start) // release them together, to maximise contention
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("Deploy %d: %v", i, err)
		}
	}
	if t.Failed() {
		t.FailNow()
	}

	slices.Sort(numbers)
	for i, got := range numbers {
		if want := int64(i + 1); got != want {
			t.Fatalf("version numbers: got %v, want 1..%d each once", numbers, n)
		}
	}

	vs, err := s.ListVersions(ctx, "alice", "hot")
	noErr(t, err, "ListVersions")
	if len(vs) != n {
		t.Fatalf("ListVersions: got %d versions, want %d", len(vs), n)
	}
	for i, v := range vs {
		if want := int64(n - i); v.Number != want {
			t.Errorf("ListVersions[%d].Number = %d, want %d", i, v.Number, want)
		}
	}

	fn, err := s.GetFunction(ctx, "alice", "hot")
	noErr(t, err, "GetFunction")
	if fn.LiveVersion != n {
		t.Errorf("LiveVersion = %d, want %d", fn.LiveVersion, n)
	}
	// Whichever deploy created the function gave it its id.
	var idOK bool
	for i := range n {
		idOK = idOK || fn.ID == fmt.Sprintf("id-%d", i)
	}
	if !idOK {
		t.Errorf("function id %q is none of the ids deployed with", fn.ID)
	}
	checkVersion(t, fn.Live, vs[0])
}

func testRouting(t *testing.T, s store.Store) {
	ctx := t.Context()
	for n := 1; n <= 3; n++ {
		deploy(t, s, "id", version("alice", "hello", n))
	}
	want := store.Routing{
		Traffic: []store.Split{{Version: 2, Percent: 90}, {Version: 3, Percent: 10}},
		Tags:    map[string]int64{"canary": 3, "stable": 1},
	}
	noErr(t, s.SetRouting(ctx, "alice", "hello", want, at(10)), "SetRouting")
	fn, err := s.GetFunction(ctx, "alice", "hello")
	noErr(t, err, "GetFunction")
	if !reflect.DeepEqual(fn.Routing, want) {
		t.Fatalf("routing = %+v, want %+v", fn.Routing, want)
	}
	fns, err := s.ListFunctions(ctx, "alice", store.Page{})
	noErr(t, err, "ListFunctions")
	if !reflect.DeepEqual(fns[0].Routing, want) {
		t.Fatalf("listed routing = %+v, want %+v", fns[0].Routing, want)
	}

	// Naming a missing version changes nothing.
	for _, bad := range []store.Routing{
		{Traffic: []store.Split{{Version: 9, Percent: 100}}},
		{Tags: map[string]int64{"x": 42}},
	} {
		wantErr(t, s.SetRouting(ctx, "alice", "hello", bad, at(11)), errdefs.ErrNotFound, "SetRouting with a missing version")
	}
	wantErr(t, s.SetRouting(ctx, "alice", "nope", store.Routing{}, at(11)), errdefs.ErrNotFound, "SetRouting of a missing function")
	fn, _ = s.GetFunction(ctx, "alice", "hello")
	if !reflect.DeepEqual(fn.Routing, want) {
		t.Fatalf("a failed SetRouting changed routing to %+v", fn.Routing)
	}

	// A rollback and a deploy clear the split and keep the tags.
	noErr(t, s.SetLive(ctx, "alice", "hello", 1, at(12)), "SetLive")
	fn, _ = s.GetFunction(ctx, "alice", "hello")
	if len(fn.Routing.Traffic) != 0 || fn.Routing.Tags["canary"] != 3 {
		t.Fatalf("after SetLive: routing %+v", fn.Routing)
	}
	noErr(t, s.SetRouting(ctx, "alice", "hello", want, at(13)), "SetRouting")
	deploy(t, s, "id", version("alice", "hello", 4))
	fn, _ = s.GetFunction(ctx, "alice", "hello")
	if len(fn.Routing.Traffic) != 0 || fn.Routing.Tags["stable"] != 1 || fn.LiveVersion != 4 {
		t.Fatalf("after Deploy: live %d routing %+v", fn.LiveVersion, fn.Routing)
	}
}

// A function keeps its newest MaxVersions versions and those a tag names;
// numbers are never reused.
func testVersionRetention(t *testing.T, s store.Store) {
	ctx := t.Context()
	deploy(t, s, "id-1", version("alice", "hello", 1))
	deploy(t, s, "id-1", version("alice", "hello", 2))
	noErr(t, s.SetRouting(ctx, "alice", "hello", store.Routing{Tags: map[string]int64{"stable": 2}}, at(1)), "SetRouting")
	n := int64(store.MaxVersions + 5)
	var last store.Version
	for i := int64(3); i <= n; i++ {
		last = deploy(t, s, "id-1", version("alice", "hello", int(i)))
	}
	if last.Number != n {
		t.Fatalf("the last deploy is version %d, want %d", last.Number, n)
	}
	vs, err := s.ListVersions(ctx, "alice", "hello")
	noErr(t, err, "ListVersions")
	if len(vs) != store.MaxVersions+1 || vs[0].Number != n || vs[len(vs)-1].Number != 2 {
		t.Fatalf("kept %d versions, %d to %d; want the newest %d and the tagged 2", len(vs), vs[0].Number, vs[len(vs)-1].Number, store.MaxVersions)
	}
	_, err = s.GetVersion(ctx, "alice", "hello", 1)
	wantErr(t, err, errdefs.ErrNotFound, "GetVersion of a pruned version")
	if _, err := s.GetVersion(ctx, "alice", "hello", 2); err != nil {
		t.Errorf("the tagged version was pruned: %v", err)
	}
}

func testSecretKeyCheck(t *testing.T, s store.Store) {
	ctx := t.Context()
	for _, want := range []string{"", "enc:v1:first", "enc:v1:second"} {
		if want != "" {
			noErr(t, s.SetSecretKeyCheck(ctx, want), "SetSecretKeyCheck")
		}
		got, err := s.SecretKeyCheck(ctx)
		noErr(t, err, "SecretKeyCheck")
		if got != want {
			t.Errorf("SecretKeyCheck = %q, want %q", got, want)
		}
	}
}

func testCountSecretVersions(t *testing.T, s store.Store) {
	ctx := t.Context()
	check := func(step string, want int) {
		t.Helper()
		got, err := s.CountSecretVersions(ctx)
		noErr(t, err, "CountSecretVersions "+step)
		if got != want {
			t.Errorf("CountSecretVersions %s: got %d, want %d", step, got, want)
		}
	}
	check("empty", 0)
	withSecret := func(v store.Version) store.Version {
		v.Config.Secrets = map[string]string{"KEY": "enc:v1:x"}
		return v
	}
	deploy(t, s, "id-a", version("alice", "a", 1))
	check("after a deploy without secrets", 0)
	deploy(t, s, "id-a", withSecret(version("alice", "a", 2)))
	deploy(t, s, "id-a", withSecret(version("alice", "a", 3)))
	deploy(t, s, "id-b", withSecret(version("bob", "b", 4)))
	v := version("bob", "b", 5)
	v.Config.Secrets = map[string]string{}
	deploy(t, s, "id-b", v)
	check("after deploys with secrets", 3)
	noErr(t, s.DeleteFunction(ctx, "alice", "a"), "DeleteFunction alice/a")
	check("after deleting alice/a", 1)
}

// A user's newest MaxRevokedTokens revoked tokens are kept; older revoked
// ones go, and neither tokens in use nor another user's are touched.
func testRevokedTokensBounded(t *testing.T, s store.Store) {
	ctx := t.Context()
	mustUser(t, s, "alice")
	mustUser(t, s, "bob")
	noErr(t, s.CreateToken(ctx, store.Token{ID: "live", User: "alice", Hash: []byte{1}, CreatedAt: at(1)}), "CreateToken live")
	noErr(t, s.CreateToken(ctx, store.Token{ID: "bobs", User: "bob", Hash: []byte{1}, CreatedAt: at(1)}), "CreateToken bobs")
	noErr(t, s.RevokeToken(ctx, "bobs", at(2)), "RevokeToken bobs")
	n := store.MaxRevokedTokens + 5
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("r%03d", i)
		noErr(t, s.CreateToken(ctx, store.Token{ID: id, User: "alice", Hash: []byte{1}, CreatedAt: at(2)}), "CreateToken "+id)
		noErr(t, s.RevokeToken(ctx, id, at(3+i)), "RevokeToken "+id)
	}
	toks, err := s.ListTokens(ctx, "alice")
	noErr(t, err, "ListTokens")
	revoked := map[string]bool{}
	for _, tok := range toks {
		if !tok.RevokedAt.IsZero() {
			revoked[tok.ID] = true
		}
	}
	if len(revoked) != store.MaxRevokedTokens || len(toks) != store.MaxRevokedTokens+1 {
		t.Errorf("alice has %d tokens, %d revoked; want %d revoked and the one in use", len(toks), len(revoked), store.MaxRevokedTokens)
	}
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("r%03d", i)
		if want := i >= n-store.MaxRevokedTokens; revoked[id] != want {
			t.Errorf("revoked token %s kept: %v, want %v", id, revoked[id], want)
		}
	}
	if _, err := s.GetToken(ctx, "live"); err != nil {
		t.Errorf("the token in use: %v", err)
	}
	if _, err := s.GetToken(ctx, "bobs"); err != nil {
		t.Errorf("another user's revoked token: %v", err)
	}
}

// DeleteVersion deletes a version no routing names, and refuses, changing
// nothing, one that is live, in the traffic split or tagged; the number of
// a deleted version is not given again, even the newest's.
func testDeleteVersion(t *testing.T, s store.Store) {
	ctx := t.Context()
	var vs []store.Version
	for n := 1; n <= 6; n++ {
		vs = append(vs, deploy(t, s, "id", version("alice", "hello", n)))
	}
	deploy(t, s, "id-o", version("alice", "other", 7))
	// Live 4 with 30% to 5, 3 tagged twice; 1, 2 and 6 are free.
	noErr(t, s.SetRouting(ctx, "alice", "hello", store.Routing{Tags: map[string]int64{"stable": 3, "old": 3}}, at(10)), "SetRouting tags")
	noErr(t, s.SetLive(ctx, "alice", "hello", 4, at(11)), "SetLive 4")
	fn, err := s.GetFunction(ctx, "alice", "hello")
	noErr(t, err, "GetFunction")
	r := fn.Routing
	r.Traffic = []store.Split{{Version: 4, Percent: 70}, {Version: 5, Percent: 30}}
	noErr(t, s.SetRouting(ctx, "alice", "hello", r, at(12)), "SetRouting traffic")

	cases := []struct {
		name    string
		fn      string
		number  int64
		want    error  // nil: deleted
		message string // in the error's text
	}{
		{"Live", "hello", 4, errdefs.ErrConflict, "version 4 of alice/hello is live"},
		{"InTrafficSplit", "hello", 5, errdefs.ErrConflict, "30% of its traffic split"},
		{"Tagged", "hello", 3, errdefs.ErrConflict, "tag old, stable"},
		{"Missing", "hello", 99, errdefs.ErrNotFound, "version 99"},
		{"Zero", "hello", 0, errdefs.ErrNotFound, "version 0"},
		{"MissingFunction", "nope", 1, errdefs.ErrNotFound, "nope"},
		{"Old", "hello", 1, nil, ""},
		{"Newest", "hello", 6, nil, ""},
		{"Again", "hello", 1, errdefs.ErrNotFound, "version 1"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := s.DeleteVersion(ctx, "alice", tc.fn, tc.number, at(20))
			if tc.want == nil {
				noErr(t, err, "DeleteVersion")
				_, err := s.GetVersion(ctx, "alice", tc.fn, tc.number)
				wantErr(t, err, errdefs.ErrNotFound, "GetVersion of a deleted version")
				return
			}
			wantErr(t, err, tc.want, "DeleteVersion")
			if !strings.Contains(err.Error(), tc.message) {
				t.Errorf("DeleteVersion: %q does not say %q", err, tc.message)
			}
		})
	}

	got, err := s.ListVersions(ctx, "alice", "hello")
	noErr(t, err, "ListVersions")
	var numbers []int64
	for _, v := range got {
		numbers = append(numbers, v.Number)
	}
	if !slices.Equal(numbers, []int64{5, 4, 3, 2}) {
		t.Errorf("versions after deleting 1 and 6: %v, want [5 4 3 2]", numbers)
	}
	fn, err = s.GetFunction(ctx, "alice", "hello")
	noErr(t, err, "GetFunction")
	if fn.LiveVersion != 4 || len(fn.Routing.Traffic) != 2 || len(fn.Routing.Tags) != 2 || !sameTime(fn.UpdatedAt, at(20)) {
		t.Errorf("function after deletes: live %d, routing %+v, updated %v", fn.LiveVersion, fn.Routing, fn.UpdatedAt)
	}
	checkVersion(t, fn.Live, vs[3])
	digests, err := s.Digests(ctx)
	noErr(t, err, "Digests")
	if digests[vs[0].Digest] || digests[vs[5].Digest] || !digests[vs[1].Digest] {
		t.Errorf("Digests after deletes: %v; want neither %s nor %s", digests, vs[0].Digest, vs[5].Digest)
	}
	// The other function is untouched.
	if _, err := s.GetVersion(ctx, "alice", "other", 1); err != nil {
		t.Errorf("another function's version 1: %v", err)
	}

	// 6 was the newest: the next deploy is 7, not 6 again.
	if v := deploy(t, s, "id", version("alice", "hello", 8)); v.Number != 7 {
		t.Errorf("the deploy after deleting the newest version is number %d, want 7", v.Number)
	}
}

// A rollback, split or tag to a version, at the same time as its
// deletion, either wins (and the deletion is a conflict) or comes after
// it (and finds no version): never a function whose routing names a
// deleted version, which it could not serve.
func testDeleteVersionRacesRouting(t *testing.T, s store.Store) {
	ctx := t.Context()
	change := []struct {
		name string
		to   func(n int64) error
	}{
		{"SetLive", func(n int64) error { return s.SetLive(ctx, "alice", "hello", n, at(30)) }},
		{"Traffic", func(n int64) error {
			return s.SetRouting(ctx, "alice", "hello", store.Routing{Traffic: []store.Split{{Version: 1, Percent: 50}, {Version: n, Percent: 50}}}, at(30))
		}},
		{"Tag", func(n int64) error {
			return s.SetRouting(ctx, "alice", "hello", store.Routing{Tags: map[string]int64{"t": n}}, at(30))
		}},
	}
	deploy(t, s, "id", version("alice", "hello", 1))
	for _, ch := range change {
		t.Run(ch.name, func(t *testing.T) {
			for range 10 {
				// A version to race over, and routing back to 1 alone.
				v := deploy(t, s, "id", version("alice", "hello", 2))
				noErr(t, s.SetLive(ctx, "alice", "hello", 1, at(31)), "SetLive 1")
				noErr(t, s.SetRouting(ctx, "alice", "hello", store.Routing{}, at(31)), "SetRouting none")
				var wg sync.WaitGroup
				start := make(chan struct{})
				var changeErr, deleteErr error
				wg.Go(func() { <-start; changeErr = ch.to(v.Number) })
				wg.Go(func() { <-start; deleteErr = s.DeleteVersion(ctx, "alice", "hello", v.Number, at(30)) })
				close(start)
				wg.Wait()
				switch {
				case changeErr == nil && errors.Is(deleteErr, errdefs.ErrConflict):
				case deleteErr == nil && errors.Is(changeErr, errdefs.ErrNotFound):
				default:
					t.Fatalf("%s and DeleteVersion of %d at once: %v, %v; want one to win", ch.name, v.Number, changeErr, deleteErr)
				}
				fn, err := s.GetFunction(ctx, "alice", "hello")
				noErr(t, err, "GetFunction")
				for _, n := range append([]int64{fn.LiveVersion}, slices.Collect(maps.Values(fn.Routing.Tags))...) {
					if _, err := s.GetVersion(ctx, "alice", "hello", n); err != nil {
						t.Fatalf("the function names version %d, which is gone: %v", n, err)
					}
				}
				for _, sp := range fn.Routing.Traffic {
					if _, err := s.GetVersion(ctx, "alice", "hello", sp.Version); err != nil {
						t.Fatalf("the split names version %d, which is gone: %v", sp.Version, err)
					}
				}
			}
		})
	}
}
