// Package logstore keeps the log lines of functions: what their instances
// write to stdout and stderr, the platform's own messages about them
// (crashes, out-of-memory kills, timeouts) and one access line per
// invocation. It serves them, newest first or followed live, to
// `spry logs NAME [--follow] [--since 10m] [--version N]`.
//
// The lines live in their own SQLite database file, apart from the metadata
// database, so that however much functions print, log writes never contend
// with metadata writes. The store is bounded: each function keeps at most
// Options.MaxEntriesPerFunction lines, none older than Options.MaxAge, and
// no line longer than MaxLineBytes.
//
// The database as a whole stays within Options.MaxBytes of pages, fairly
// between owners (users). The store keeps, in the database and in the
// transaction of each change, an estimate of the bytes each owner's lines
// hold. Past MaxBytes, lines go down to nine tenths of it from the owners
// holding the most: each loses its oldest lines, of whichever function,
// until it holds no more than a common level, the highest that frees
// enough. Owners under the level lose nothing, and the level is never
// below an equal share of what stays, so an owner holding less than that
// keeps every line however much another one prints; two that both hold
// more are cut to the same. A pass may delete somewhat more than the
// excess: a page is freed only once mostly empty, and pages the deleted
// lines shared with other owners' stay in use. While the database's disk
// has less than Options.KeepFree free, the file stops growing: lines go
// as past MaxBytes, the file less a tenth taken for the bound, so new
// lines reuse the oldest lines' pages rather than take the disk's last
// space, which the metadata and bundles need (once it holds 16 MiB).
//
// Append is called on a function's output path and never blocks: lines go to
// a bounded in-memory queue that a single writer goroutine drains, writing
// one transaction per flush. When the queue is full, or past half full and
// a function already fills its share of it, lines are dropped and counted,
// and the writer later stores a "system" line saying how many of a
// function's lines were lost.
//
// Entries carry their function's ID as well as its name: names are reused,
// and a function made again under a deleted one's name must not see the
// lines the old one's requests still write.
package logstore
