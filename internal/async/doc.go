// Package async runs functions' asynchronous invocations: an event
// (a path, a body and its content type) is stored, answered at once,
// and sent to the function later as a POST, through the same path a
// request takes, with retries on failure (Policy). Invocations live in
// one SQLite file of the data directory (Store), so those queued or
// waiting for a retry survive a restart; one that was running when the
// server stopped runs again (at least once, not exactly once: functions
// tell a repeat by the invocation's id). A Worker runs them, a bounded
// number at once, each owner's share bounded too, so that one user's
// flood does not starve the others.
package async
