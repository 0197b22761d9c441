package backend

import (
	"context"
	"errors"
	"fmt"
	"testing"
)

func TestDiagnose(t *testing.T) {
	oom := Exit{Reason: ExitOOM, Detail: "out of memory"}
	tests := []struct {
		name     string
		probe    func() (Exit, bool)
		finish   *Exit
		want     Exit
		wantKnow bool
	}{
		{name: "running, no probe"},
		{name: "running, probe knows nothing", probe: func() (Exit, bool) { return Exit{}, false }},
		{name: "killed, not yet reaped", probe: func() (Exit, bool) { return oom, true }, want: oom, wantKnow: true},
		{name: "reaped", probe: func() (Exit, bool) { return Exit{}, false }, finish: &Exit{Reason: ExitCrashed}, want: Exit{Reason: ExitCrashed}, wantKnow: true},
		{name: "the reaper's word wins", probe: func() (Exit, bool) { return oom, true }, finish: &Exit{Reason: ExitStopped}, want: Exit{Reason: ExitStopped}, wantKnow: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			inst := NewInstance("i", &Spec{}, "unix", "/x")
			if tt.probe != nil {
				inst.SetDiagnose(tt.probe)
			}
			if tt.finish != nil {
				inst.Finish(*tt.finish)
			}
			got, ok := inst.Diagnose()
			if got != tt.want || ok != tt.wantKnow {
				t.Fatalf("Diagnose() = %+v, %v; want %+v, %v", got, ok, tt.want, tt.wantKnow)
			}
		})
	}
}

// WaitLoaded returns when the load has ended: nil if the function loaded,
// else, once the instance has ended, its exit's detail; an instance whose
// backend never said it was loading has loaded.
func TestWaitLoaded(t *testing.T) {
	crash := Exit{Reason: ExitCrashed, Detail: "the function failed to load: boom"}
	tests := []struct {
		name   string
		setup  func(i *Instance)
		later  func(i *Instance) // runs while WaitLoaded waits
		want   string            // "" for nil
		cancel bool
	}{
		{name: "never loading", setup: func(i *Instance) {}},
		{name: "loaded before", setup: func(i *Instance) { i.SetLoading(true); i.Loaded(nil) }},
		{name: "loads while waited for", setup: func(i *Instance) { i.SetLoading(true) }, later: func(i *Instance) { i.Loaded(nil) }},
		{name: "loaded, then ended", setup: func(i *Instance) { i.SetLoading(true); i.Loaded(nil); i.Finish(crash) }},
		{name: "fails: the exit says why", setup: func(i *Instance) { i.SetLoading(true) },
			later: func(i *Instance) { i.Loaded(errors.New("boom")); i.Finish(crash) }, want: crash.Detail},
		{name: "fails, not yet ended, ctx ends", setup: func(i *Instance) { i.SetLoading(true); i.Loaded(errors.New("boom")) }, cancel: true, want: "boom"},
		{name: "ends while loading", setup: func(i *Instance) { i.SetLoading(true) },
			later: func(i *Instance) { i.Finish(Exit{Reason: ExitOOM, Detail: "out of memory"}) }, want: "out of memory"},
		{name: "still loading, ctx ends", setup: func(i *Instance) { i.SetLoading(true) }, cancel: true, want: context.Canceled.Error()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			inst := NewInstance("i", &Spec{}, "unix", "/x")
			tt.setup(inst)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if tt.cancel {
				cancel()
			}
			if tt.later != nil {
				go tt.later(inst)
			}
			err := inst.WaitLoaded(ctx)
			if got := fmt.Sprint(err); tt.want == "" && err != nil || tt.want != "" && got != tt.want {
				t.Fatalf("WaitLoaded() = %v, want %q", err, tt.want)
			}
			if inst.Loading() && err == nil {
				t.Fatal("loaded, yet still Loading")
			}
		})
	}
}
