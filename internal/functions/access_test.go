package functions

import (
	"testing"

	"github.com/spry-run/spry/internal/store"
)

// Access is a setting like the others: set at deploy or by a change,
// which makes a new version. A version made private stays private, and
// while the live version is private so is every version of the function,
// by number or tag: making a function private leaves no older, public
// version open. A rollback to a public version makes it public again.
func TestAccess(t *testing.T) {
	ctx := t.Context()
	st, blobs := stores(t)
	s := New(st, blobs, retirer{}, box(t), noLogs{}, Config{DefaultRuntime: "deno", Runtimes: []string{"deno"}, MaxCodeBytes: 1 << 20, Bounds: Bounds{MaxMemoryMiB: 1024}})
	code := []byte("export default { fetch() { return new Response('hi') } }")
	fn, err := s.Deploy(ctx, DeployRequest{Owner: "alice", Name: "f", Code: code, By: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	if Access(fn.Live.Config.Limits) != AccessPublic {
		t.Fatalf("a new function is %s, want public", Access(fn.Live.Config.Limits))
	}
	if _, err := s.SetTag(ctx, "alice", "f", "old", 1); err != nil {
		t.Fatal(err)
	}
	fn, err = s.Reconfigure(ctx, "alice", "f", "alice", Change{Settings: map[string]string{SettingAccess: AccessPrivate}})
	if err != nil {
		t.Fatal(err)
	}
	if fn.LiveVersion != 2 || fn.Live.Config.Limits.Access != AccessPrivate {
		t.Fatalf("after the change: version %d, access %q; want version 2, private", fn.LiveVersion, fn.Live.Config.Limits.Access)
	}
	// Another setting keeps it private.
	if fn, err = s.Reconfigure(ctx, "alice", "f", "alice", Change{Settings: map[string]string{SettingMemory: "256Mi"}}); err != nil || fn.Live.Config.Limits.Access != AccessPrivate {
		t.Fatalf("another change: %v, access %q", err, fn.Live.Config.Limits.Access)
	}
	private := func(tag string) bool {
		t.Helper()
		sp, err := s.Resolve(ctx, "alice", "f", tag)
		if err != nil {
			t.Fatal(err)
		}
		if c := s.Cached("alice", "f", tag); c != nil && c.Private != sp.Private {
			t.Fatalf("Cached(%q).Private = %v, Resolve's %v", tag, c.Private, sp.Private)
		}
		return sp.Private
	}
	for _, tag := range []string{"", "1", "2", "3", "old"} {
		if !private(tag) {
			t.Errorf("@%s is public while the live version is private", tag)
		}
	}
	if _, err := s.Rollback(ctx, "alice", "f", 1); err != nil {
		t.Fatal(err)
	}
	for tag, want := range map[string]bool{"": false, "1": false, "old": false, "2": true, "3": true} {
		if got := private(tag); got != want {
			t.Errorf("after the rollback to 1, @%s private %v, want %v", tag, got, want)
		}
	}
	// Deployed private; redeployed without the setting, still private.
	if _, err := s.Deploy(ctx, DeployRequest{Owner: "alice", Name: "g", Code: code, By: "alice", Settings: map[string]string{SettingAccess: AccessPrivate}}); err != nil {
		t.Fatal(err)
	}
	g, err := s.Deploy(ctx, DeployRequest{Owner: "alice", Name: "g", Code: code, By: "alice"})
	if err != nil || g.Live.Config.Limits != (store.Limits{Access: AccessPrivate}) {
		t.Fatalf("redeployed: %v, limits %+v", err, g.Live.Config.Limits)
	}
}
