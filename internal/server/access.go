package server

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/spry-run/spry/internal/logstore"
	"github.com/spry-run/spry/internal/router"
)

// accessPerSecond is how many ordinary requests per function and second get
// an access line of their own.
const accessPerSecond = 100

// accessSampler decides which invocations get an access line. Every error
// and every cold start does, and other requests up to a rate per function;
// the rest of each second is counted and told in one summary line. At
// thousands of requests a second a line each would cost a fifth of the
// router's CPU, and would push the function's own output out of its
// 10,000-entry log within a second. /metrics counts every request.
type accessSampler struct {
	perSecond int
	now       func() time.Time
	logs      *logstore.Store

	mu  sync.Mutex
	fns map[accessKey]*accessWindow
	// wake tells run that a function's window is new: run ticks while
	// it keeps any, and sleeps otherwise.
	wake chan struct{}
}

// accessKey names a function by its ID too: a function made again under
// a deleted one's name gets its own window.
type accessKey struct{ owner, name, id string }

// accessWindow is one function's current second.
type accessWindow struct {
	sec     int64
	n       int   // lines logged in sec
	skipped int   // requests not logged in sec
	version int64 // of the last skipped request
}

func newAccessSampler(logs *logstore.Store, perSecond int, now func() time.Time) *accessSampler {
	return &accessSampler{perSecond: perSecond, now: now, logs: logs, fns: map[accessKey]*accessWindow{}, wake: make(chan struct{}, 1)}
}

// admit says whether a's line is logged. It returns the summary of the
// function's previous second, if that second skipped requests.
func (s *accessSampler) admit(a *router.Access) (bool, *logstore.Entry) {
	sec := s.now().Unix()
	k := accessKey{a.Spec.Owner, a.Spec.Name, a.Spec.FunctionID}
	s.mu.Lock()
	defer s.mu.Unlock()
	w := s.fns[k]
	if w == nil {
		w = &accessWindow{sec: sec}
		s.fns[k] = w
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
	var summary *logstore.Entry
	if w.sec != sec {
		summary = s.roll(k, w, sec)
	}
	if a.Status >= 400 || a.Cold || w.n < s.perSecond {
		w.n++
		return true, summary
	}
	w.skipped++
	w.version = a.Spec.Version
	return false, summary
}

// roll starts second sec in w and returns the summary line of the second
// it ends, or nil if that skipped none.
func (s *accessSampler) roll(k accessKey, w *accessWindow, sec int64) *logstore.Entry {
	old := *w
	*w = accessWindow{sec: sec}
	if old.skipped == 0 {
		return nil
	}
	return &logstore.Entry{
		Time:  time.Unix(old.sec+1, 0),
		Owner: k.owner, Function: k.name, FunctionID: k.id, Version: old.version, Stream: logstore.StreamAccess,
		Line: fmt.Sprintf("... and %d more %s in the second from %s UTC, not logged one by one (over %d a second; every error and cold start is logged)",
			old.skipped, plural(old.skipped, "request", "requests"), time.Unix(old.sec, 0).UTC().Format(time.TimeOnly), s.perSecond),
	}
}

// sweep writes the summaries of seconds that are over (all of them, at
// shutdown) and forgets functions idle for a minute. It says whether it
// keeps any function's window. run calls it every second while it does.
func (s *accessSampler) sweep(all bool) bool {
	sec := s.now().Unix()
	var out []*logstore.Entry
	s.mu.Lock()
	for k, w := range s.fns {
		if w.sec == sec && !all {
			continue
		}
		// Keep the window's own second, so an idle function stays idle.
		if e := s.roll(k, w, w.sec); e != nil {
			out = append(out, e)
		}
		if sec-w.sec > 60 {
			delete(s.fns, k)
		}
	}
	kept := len(s.fns) > 0
	s.mu.Unlock()
	for _, e := range out {
		s.logs.Append(*e)
	}
	return kept
}

// run sweeps every second while the sampler keeps a window, and sleeps
// while it keeps none, so an idle server is not woken for it.
func (s *accessSampler) run(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	ticking := true
	for {
		select {
		case <-ctx.Done():
			s.sweep(true)
			return
		case <-s.wake:
			// A ticker already running is left alone: new windows
			// coming often must not keep putting its tick off.
			if !ticking {
				t.Reset(time.Second)
				ticking = true
			}
		case <-t.C:
			if !s.sweep(false) {
				t.Stop()
				ticking = false
			}
		}
	}
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
