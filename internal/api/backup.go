package api

import (
	"context"
	"io"
	"net/http"

	"github.com/spry-run/spry/internal/backup"
	"github.com/spry-run/spry/internal/errdefs"
)

// Backups writes a backup of the server's data (backup.Source).
type Backups interface {
	Write(ctx context.Context, w io.Writer, o backup.Options) error
}

// backup streams a backup of the server's data (GET /api/v1/backup), for
// an admin: it holds every user's token hashes and, unless
// secret_key=false, the key that opens every secret. One runs at a time:
// each takes a copy of the databases on the server's disk.
func (a *API) backup(w http.ResponseWriter, r *http.Request) error {
	if !principal(r).Admin {
		return errdefs.New(errdefs.ErrPermissionDenied, "only an admin may make backups")
	}
	if a.cfg.Backups == nil {
		return errdefs.New(errdefs.ErrUnavailable, "this server makes no backups")
	}
	q := r.URL.Query()
	logs, err := queryBool(q, "logs", false)
	if err != nil {
		return err
	}
	key, err := queryBool(q, "secret_key", true)
	if err != nil {
		return err
	}
	select {
	case a.backups <- struct{}{}:
		defer func() { <-a.backups }()
	default:
		return errdefs.New(errdefs.ErrConflict, "a backup is under way; make this one once it has ended")
	}
	start := a.cfg.Now()
	out := &backupWriter{w: w, name: "spry-backup-" + start.UTC().Format("20060102T150405Z") + ".tar.gz"}
	err = a.cfg.Backups.Write(r.Context(), out, backup.Options{SecretKey: key, Logs: logs})
	switch {
	case err == nil:
		a.log.Info("backup sent", "duration", a.cfg.Now().Sub(start))
		return nil
	case !out.started:
		return err // nothing sent: answered as an error
	case r.Context().Err() != nil:
		a.log.Info("backup ended: the client went away", "duration", a.cfg.Now().Sub(start))
	default:
		// Part of the archive is out and no error can follow it: the
		// stream ends cut short, which its reader sees (no gzip trailer,
		// files missing), and this says why.
		a.log.Error("backup failed while it was sent; the client got part of it", "err", err)
	}
	return nil
}

// backupWriter sends the response's head at the backup's first write:
// until then, an error can still be answered as one.
type backupWriter struct {
	w       http.ResponseWriter
	name    string
	started bool
}

func (b *backupWriter) Write(p []byte) (int, error) {
	if !b.started {
		b.started = true
		h := b.w.Header()
		h.Set("Content-Type", "application/gzip")
		h.Set("Content-Disposition", `attachment; filename="`+b.name+`"`)
		// It holds the secret key: no cache keeps a copy.
		h.Set("Cache-Control", "no-store")
		h.Set("X-Content-Type-Options", "nosniff")
		b.w.WriteHeader(http.StatusOK)
	}
	return b.w.Write(p)
}
