package backend

import "testing"

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
