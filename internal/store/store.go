// Package store defines Spry's persistent records and the small per-resource
// interfaces that hold them. Implementations live in sub-packages
// (store/sqlite now, store/postgres later) and all pass the conformance
// suite in store/storetest. Every method takes ctx first and returns errors
// of the errdefs classes (ErrNotFound, ErrAlreadyExists, ErrConflict), never
// raw driver errors.
package store

import (
	"context"
	"encoding/json"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spry-run/spry/internal/errdefs"
)

// User is an account. Functions live in their owner's namespace.
type User struct {
	Name      string
	Admin     bool
	CreatedAt time.Time
}

// Token is an API token. Only a hash of its secret is stored; ID is public
// and is the part of the token used to look it up.
type Token struct {
	ID        string
	User      string
	Hash      []byte // SHA-256 of the secret part
	Name      string
	CreatedAt time.Time
	RevokedAt time.Time // zero while the token is valid
	// ExpiresAt is when the token stops working; zero: never (every
	// token from before expiry existed).
	ExpiresAt time.Time
	// Scopes limit what the token may do (auth.Scope names); empty
	// means all rights (every token from before scopes existed).
	Scopes []string
}

// Limits are the per-version resource settings. Zero values mean "the
// server's default".
type Limits struct {
	MemoryMiB   int    `json:"memory_mib,omitempty"`
	TimeoutMs   int    `json:"timeout_ms,omitempty"`
	Network     string `json:"network,omitempty"`
	MinScale    int    `json:"min,omitempty"`
	MaxScale    int    `json:"max,omitempty"`
	Concurrency int    `json:"concurrency,omitempty"`
	// CPUMilli is the CPU quota in thousandths of a CPU.
	CPUMilli int `json:"cpu_milli,omitempty"`
	// TargetPercent is the share of Concurrency the autoscaler aims for.
	TargetPercent int `json:"target_percent,omitempty"`
	// ScaleToZeroMs is how long without requests before the last
	// instance stops.
	ScaleToZeroMs int64 `json:"scale_to_zero_ms,omitempty"`
	// Isolation is "" (standard: bubblewrap) or "gvisor".
	Isolation string `json:"isolation,omitempty"`
	// Cron is the schedule the function runs on (its scheduled
	// handler), a cron expression; "" for none.
	Cron string `json:"cron,omitempty"`
	// Access is "" (public: anyone may call the function) or "private":
	// only a token of the owner's or an admin's, with scope invoke, may.
	Access string `json:"access,omitempty"`
	// AsyncRetries is how many times a failed asynchronous invocation
	// is tried again (0 to 2); unset: the server's default.
	AsyncRetries OptionalInt `json:"async_retries,omitzero"`
	// AsyncOnFailure names the function of the same owner that gets
	// the event of each failed asynchronous invocation; "" for none.
	AsyncOnFailure string `json:"async_on_failure,omitempty"`
}

// OptionalInt is an int that tells 0 from unset, for a setting whose 0
// is not its default. Unlike a pointer it keeps Limits comparable with
// ==. Its zero value is unset; in JSON it is a number, left out unset.
type OptionalInt struct {
	n   int
	set bool
}

// SomeInt is n, set.
func SomeInt(n int) OptionalInt { return OptionalInt{n: n, set: true} }

// Or is o's value, or def if o is unset.
func (o OptionalInt) Or(def int) int {
	if !o.set {
		return def
	}
	return o.n
}

// IsZero says whether o is unset (json's omitzero).
func (o OptionalInt) IsZero() bool { return !o.set }

// MarshalJSON writes o's value (null unset, though omitzero leaves it
// out).
func (o OptionalInt) MarshalJSON() ([]byte, error) {
	if !o.set {
		return []byte("null"), nil
	}
	return strconv.AppendInt(nil, int64(o.n), 10), nil
}

// UnmarshalJSON reads a number, or null for unset.
func (o *OptionalInt) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		*o = OptionalInt{}
		return nil
	}
	var n int
	if err := json.Unmarshal(b, &n); err != nil {
		return err
	}
	*o = SomeInt(n)
	return nil
}

// Config is everything about a version besides its code. It is stored as
// one JSON document so that new settings need no schema change.
type Config struct {
	Runtime string            `json:"runtime"`
	Env     map[string]string `json:"env,omitempty"`
	// Secrets are sealed (encrypted) values, decrypted only to hand them
	// to an instance.
	Secrets map[string]string `json:"secrets,omitempty"`
	Limits  Limits            `json:"limits"`
}

// Version is one immutable deploy of a function: its bundle (by digest, in
// the content-addressed blob store) and its config.
type Version struct {
	Owner     string
	Name      string
	Number    int64
	Digest    string // "sha256:<hex>" of the bundle
	Size      int64  // bundle size in bytes
	Config    Config
	CreatedAt time.Time
	CreatedBy string
}

// Function is a named function in an owner's namespace. ID is assigned at
// creation and never reused, so instances of a deleted function can never be
// mistaken for those of a new function with the same name.
type Function struct {
	ID            string
	Owner         string
	Name          string
	LiveVersion   int64
	CreatedAt     time.Time
	UpdatedAt     time.Time
	LastInvokedAt time.Time // zero if never invoked
	Live          Version   // the live version, filled by Get and List
	Routing       Routing
}

// Split sends a share of a function's traffic to one version.
type Split struct {
	Version int64 `json:"version"`
	Percent int   `json:"percent"`
}

// Routing says which versions serve a function besides the live one.
type Routing struct {
	// Traffic splits requests between versions (percents sum to 100);
	// empty means all go to the live version. Deploy and SetLive clear it.
	Traffic []Split `json:"traffic,omitempty"`
	// Tags name versions, which are then reachable at a fixed URL
	// (/fn/<owner>/<name>@<tag>/).
	Tags map[string]int64 `json:"tags,omitempty"`
}

// InUse says why version number of function fn ("owner/name") may not be
// deleted, live being its live version and r its routing: an ErrConflict
// naming what holds it and what to change first, or nil. Every
// DeleteVersion calls it in its transaction, so all refuse alike.
func InUse(fn string, number, live int64, r Routing) error {
	if number == live {
		return errdefs.New(errdefs.ErrConflict, "version %d of %s is live: roll back to another version, or deploy a new one, first", number, fn)
	}
	for _, sp := range r.Traffic {
		if sp.Version == number {
			return errdefs.New(errdefs.ErrConflict, "version %d of %s takes %d%% of its traffic split: change the traffic first", number, fn, sp.Percent)
		}
	}
	var tags []string
	for t, v := range r.Tags {
		if v == number {
			tags = append(tags, t)
		}
	}
	if len(tags) > 0 {
		slices.Sort(tags)
		return errdefs.New(errdefs.ErrConflict, "version %d of %s is named by tag %s: move or remove the tag first", number, fn, strings.Join(tags, ", "))
	}
	return nil
}

// Users stores accounts.
type Users interface {
	// CreateUser creates u and, in the same transaction, u's tokens:
	// all of them or, on any error, none (ErrAlreadyExists for a name or
	// a token id that is taken), so a user is never left without the
	// token it was made with.
	CreateUser(ctx context.Context, u User, tokens ...Token) error
	GetUser(ctx context.Context, name string) (User, error)
	ListUsers(ctx context.Context) ([]User, error)
	// DeleteUser deletes a user and their tokens. The last admin is not
	// deleted (ErrConflict): checked in the same transaction, so two
	// admins deleting each other at once cannot leave none.
	DeleteUser(ctx context.Context, name string) error
}

// Tokens stores API tokens.
type Tokens interface {
	CreateToken(ctx context.Context, t Token) error // ErrAlreadyExists on a duplicate ID
	GetToken(ctx context.Context, id string) (Token, error)
	ListTokens(ctx context.Context, user string) ([]Token, error)
	// RevokeToken revokes a token at at; revoking it again keeps the
	// first time, which is when it stopped working. A user's newest
	// MaxRevokedTokens revoked tokens are kept (to be listed); older
	// revoked ones are deleted.
	RevokeToken(ctx context.Context, id string, at time.Time) error
}

// MaxRevokedTokens is how many of a user's revoked tokens are kept: they
// are listed, and with no bound a loop of making and revoking tokens
// would grow the store for good.
const MaxRevokedTokens = 100

// MaxVersions is how many of a function's newest versions are kept; older
// ones go at the next deploy, but those a tag names.
const MaxVersions = 100

// Functions stores functions and their versions.
type Functions interface {
	// Deploy stores v as the next version of its function (creating the
	// function, with the given id, if it does not exist) and makes it live,
	// atomically, clearing any traffic split (tags stay), and deletes the
	// versions older than the newest MaxVersions that no tag names.
	// v.Number is ignored and assigned, one more than the highest the
	// function has had (deleted versions included); the stored version is
	// returned.
	Deploy(ctx context.Context, id string, v Version) (Version, error)
	GetFunction(ctx context.Context, owner, name string) (Function, error)
	// ListFunctions lists owner's functions, or everyone's if owner is "",
	// ordered by owner then name: the part of that list page selects.
	ListFunctions(ctx context.Context, owner string, page Page) ([]Function, error)
	// CountFunctions counts owner's functions.
	CountFunctions(ctx context.Context, owner string) (int, error)
	// DeleteFunction deletes the function and all its versions.
	DeleteFunction(ctx context.Context, owner, name string) error
	GetVersion(ctx context.Context, owner, name string, number int64) (Version, error)
	// ListVersions lists versions newest first.
	ListVersions(ctx context.Context, owner, name string) ([]Version, error)
	// SetLive makes an existing version live (a rollback) and clears the
	// traffic split.
	SetLive(ctx context.Context, owner, name string, number int64, at time.Time) error
	// DeleteVersion deletes one version of a function, that neither its
	// live pointer, its traffic split nor a tag names: ErrConflict, saying
	// which, if one does. The checks and the delete are one transaction,
	// so a rollback, split or tag racing it never comes to name a deleted
	// version. ErrNotFound for a function or version that does not exist.
	// Its number is not given again.
	DeleteVersion(ctx context.Context, owner, name string, number int64, at time.Time) error
	// SetRouting replaces a function's traffic split and tags. Every
	// version they name must exist (else ErrNotFound, changing nothing).
	SetRouting(ctx context.Context, owner, name string, r Routing, at time.Time) error
	// SetLastInvoked records when functions were last invoked, in one batch.
	SetLastInvoked(ctx context.Context, at map[FunctionKey]time.Time) error
	// Digests lists every bundle digest still referenced by some version, so
	// unreferenced blobs can be collected.
	Digests(ctx context.Context) (map[string]bool, error)
	// CountSecretVersions counts the versions holding sealed secrets, so
	// a server that finds its secret key missing knows whether one was
	// lost.
	CountSecretVersions(ctx context.Context) (int, error)
	// SecretKeyCheck is a value sealed with the secret key the stored
	// secrets are sealed with ("" if none was set), so that a server
	// started with another key (one of another server's, or damaged)
	// knows it before it seals anything with it.
	SecretKeyCheck(ctx context.Context) (string, error)
	// SetSecretKeyCheck replaces it.
	SetSecretKeyCheck(ctx context.Context, sealed string) error
}

// FunctionKey names a function.
type FunctionKey struct{ Owner, Name string }

// Page selects part of a list ordered by owner then name: the entries
// after After (the zero key: from the start), at most Limit (0: all).
// Paging by key rather than offset keeps each page as cheap as the first
// and skips nothing when functions come and go between pages.
type Page struct {
	After FunctionKey
	Limit int
}

// ScheduleMark is how far a function's schedule has run: the last time
// it was run for, or, until it first runs, when it was first seen. The
// scheduler reads the marks at its start to run once a time that came
// while the server was down.
type ScheduleMark struct {
	Cron string // the expression it is of: another one's is not its
	At   time.Time
}

// Schedules keeps the schedules' marks.
type Schedules interface {
	// MarkSchedules records marks, by function id, in one batch; marks
	// of functions that no longer exist are dropped. A function's mark
	// goes with it.
	MarkSchedules(ctx context.Context, marks map[string]ScheduleMark) error
	// ScheduleMarks lists every function's mark, by its id.
	ScheduleMarks(ctx context.Context) (map[string]ScheduleMark, error)
}

// Store is the whole metadata store.
type Store interface {
	Users
	Tokens
	Functions
	Schedules
	Close() error
}
