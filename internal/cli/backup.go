package cli

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/spry-run/spry/internal/backup"
	"github.com/spry-run/spry/internal/client"
	"github.com/spry-run/spry/internal/errdefs"
)

func newBackupCmd(conn *connFlags) *cobra.Command {
	var noKey, logs bool
	cmd := &cobra.Command{
		Use:   "backup FILE",
		Short: "Save a backup of the server's data to FILE while it serves (admin only; - for stdout)",
		Long: "Save a backup of the server's data to FILE (a gzip tar; - writes it to stdout): users, tokens, functions and their versions, " +
			"their bundles, their kv entries and the key that opens their secrets, each database as one consistent snapshot, taken while the server serves. " +
			"The stream is checked whole as it arrives, and FILE appears only once it is (written as FILE.tmp, synced, then renamed). " +
			"FILE holds the secret key: keep it as you keep the server (it is made 0600), or leave the key out with --no-secret-key. " +
			"Put it into a new data directory with `spry restore FILE --data DIR`.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := conn.client()
			if err != nil {
				return err
			}
			// Interrupted, it removes FILE.tmp and leaves FILE as it was.
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			body, err := c.Backup(ctx, client.BackupOptions{NoSecretKey: noKey, Logs: logs})
			if err != nil {
				return err
			}
			defer body.Close()
			file, report := args[0], cmd.OutOrStdout()
			var m *backup.Manifest
			var size int64
			if file == "-" {
				report = cmd.ErrOrStderr()
				m, size, err = checkCopy(cmd.OutOrStdout(), body)
			} else {
				m, size, err = saveBackup(file, body)
			}
			if err != nil {
				if ctx.Err() != nil {
					return errdefs.New(errdefs.ErrTimeout, "backup interrupted; %s was not written", file)
				}
				return err
			}
			fmt.Fprintf(report, "saved a backup of %s to %s (%d bytes): %s\n", c.URL, file, size, describe(m))
			if !m.Has(backup.SecretKey) {
				fmt.Fprintf(report, "it holds no secret key: a server restored from it needs the old server's secret.key put in its data directory by hand, or starts with --new-secret-key and loses every secret\n")
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&noKey, "no-secret-key", false, "leave the secret key out (a restore then needs secret.key copied by hand, or loses secrets)")
	cmd.Flags().BoolVar(&logs, "logs", false, "include the functions' logs (logs.db)")
	return cmd
}

// saveBackup writes the backup stream to file: to file.tmp (0600),
// checked whole as it is written (backup.Read), synced, then renamed, so
// that file is a whole backup or not there. It returns the manifest and
// the bytes written.
func saveBackup(file string, body io.Reader) (_ *backup.Manifest, _ int64, err error) {
	tmp := file + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, 0, err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	// A file there before keeps its mode otherwise, and this one holds
	// the secret key.
	if err := f.Chmod(0o600); err != nil {
		return nil, 0, err
	}
	m, size, err := checkCopy(f, body)
	if err != nil {
		return nil, 0, err
	}
	if err := f.Sync(); err != nil {
		return nil, 0, err
	}
	if err := f.Close(); err != nil {
		return nil, 0, err
	}
	if err := os.Rename(tmp, file); err != nil {
		return nil, 0, err
	}
	// The rename is durable once the directory is.
	if d, err := os.Open(filepath.Dir(file)); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return m, size, nil
}

// checkCopy copies body to w, reading it through backup.Read as it goes:
// a stream cut short (the server failed, or the connection broke) is an
// error, not a backup.
func checkCopy(w io.Writer, body io.Reader) (*backup.Manifest, int64, error) {
	cw := &countWriter{w: w}
	tee := io.TeeReader(body, cw)
	m, err := backup.Read(tee, nil)
	if err == nil {
		// What the gzip reader left (nothing, from a spry server).
		_, err = io.Copy(io.Discard, tee)
	}
	if err != nil {
		if cw.err != nil {
			return nil, 0, cw.err
		}
		// The server's archive, not the user's input: not exit 2.
		return nil, 0, errors.New(strings.TrimPrefix(err.Error(), "backup: ") + "; no backup was saved")
	}
	return m, cw.n, nil
}

type countWriter struct {
	w   io.Writer
	n   int64
	err error
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	if err != nil && c.err == nil {
		c.err = err
	}
	return n, err
}

// describe lists what a backup holds, for people.
func describe(m *backup.Manifest) string {
	parts := []string{backup.StoreFile, backup.KVFile}
	if m.Has(backup.InvocationsFile) {
		parts = append(parts, backup.InvocationsFile)
	}
	parts = append(parts, fmt.Sprintf("%d bundles", m.Bundles()))
	for _, name := range []string{backup.SecretKey, backup.LogsFile} {
		if m.Has(name) {
			parts = append(parts, name)
		}
	}
	return strings.Join(parts, ", ")
}

func newRestoreCmd() *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:   "restore FILE --data DIR",
		Short: "Put a backup into a new data directory, for spry serve --data DIR (no server runs meanwhile)",
		Long: "Put the backup in FILE (from `spry backup`; - reads stdin) into the data directory DIR, which must be new or empty " +
			"(one that holds a server's data, or that a server runs on, is refused). The backup is checked whole, and each database " +
			"opened, before anything is moved into DIR: a restore that fails leaves no data there. Then `spry serve --data DIR` serves " +
			"what the backup holds. The restored server makes its own admin.token if no admin has a token but the one an earlier " +
			"admin.token held; other tokens work as they did.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if dir == "" {
				return errdefs.Invalid("--data DIR is required: the data directory to restore into")
			}
			var in io.Reader = cmd.InOrStdin()
			if args[0] != "-" {
				f, err := os.Open(args[0])
				if err != nil {
					return errdefs.Invalid("%v", err)
				}
				defer f.Close()
				in = f
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			m, err := backup.Restore(ctx, in, dir)
			if err != nil {
				if ctx.Err() != nil {
					return errdefs.New(errdefs.ErrTimeout, "restore interrupted; %s holds no data", dir)
				}
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "restored the backup of %s (spry %s) into %s: %s\n", m.CreatedAt.UTC().Format(timeLayout)+" UTC", m.Spry, dir, describe(m))
			if !m.Has(backup.SecretKey) {
				fmt.Fprintf(out, "the backup holds no secret key: copy the old server's secret.key into %s before starting it, or start it with --new-secret-key (secrets set before will not open; set them again)\n", dir)
			}
			fmt.Fprintf(out, "start it with: spry serve --data %s\n", dir)
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "data", "", "the data directory to restore into (new or empty)")
	return cmd
}
