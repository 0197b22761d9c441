// Package backup copies a server's data directory while it serves, and
// puts such a copy into a new data directory while no server runs.
//
// A backup is a gzip-compressed tar: manifest.json first (the format, the
// spry that made it, when, and every file that follows with its size),
// then spry.db, kv.db and invocations.db as SQLite snapshots (VACUUM
// INTO, each a consistent database as of its start, spry.db's taken
// first), the
// bundles spry.db's snapshot names, and secret.key and logs.db as asked.
// What a server makes for itself is left out: admin.token, the npm
// cache, the lock, and the run directory.
package backup

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"path"
	"strings"
	"time"

	"github.com/spry-run/spry/internal/errdefs"
)

// FormatVersion is the archive layout this spry writes. It changes only
// when an older spry could not restore what a newer one writes (a new
// required file, a new meaning of one): 2 added invocations.db, which
// a spry of format 1 refuses as a name no backup holds. This spry reads
// both; a backup of format 1 restores without invocations.
const FormatVersion = 2

// The names in an archive, which are those in a data directory.
const (
	ManifestName = "manifest.json"
	StoreFile    = "spry.db"
	KVFile       = "kv.db"
	// InvocationsFile holds the asynchronous invocations (from format 2).
	InvocationsFile = "invocations.db"
	LogsFile        = "logs.db"
	SecretKey       = "secret.key"
	BlobsDir        = "blobs"
)

// blobPrefix is where a bundle's file is, by its digest's hex, in the
// archive and in the data directory (blob.Store's layout).
const blobPrefix = BlobsDir + "/sha256/"

// maxManifest bounds manifest.json: a line of about 100 bytes per file,
// so hundreds of thousands of bundles.
const maxManifest = 64 << 20

// Manifest describes a backup; it is the archive's first entry.
type Manifest struct {
	Format    int       `json:"format"`
	Spry      string    `json:"spry_version"`
	CreatedAt time.Time `json:"created_at"`
	// Files are the entries after the manifest, in their order.
	Files []File `json:"files"`
}

// File is one file of a backup.
type File struct {
	Name string `json:"name"`
	Size int64  `json:"size"`
}

// Has says whether the backup holds the file name.
func (m *Manifest) Has(name string) bool {
	for _, f := range m.Files {
		if f.Name == name {
			return true
		}
	}
	return false
}

// Bundles counts the bundles (function versions' code) in the backup.
func (m *Manifest) Bundles() int {
	n := 0
	for _, f := range m.Files {
		if strings.HasPrefix(f.Name, blobPrefix) {
			n++
		}
	}
	return n
}

// blobName is a bundle's name in the archive, for its digest.
func blobName(digest string) (string, error) {
	hexPart, ok := strings.CutPrefix(digest, "sha256:")
	if !ok || !validHex(hexPart) {
		return "", fmt.Errorf("bad digest %q", digest)
	}
	return blobPrefix + hexPart, nil
}

func validHex(s string) bool {
	if len(s) != 64 || strings.ToLower(s) != s {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil
}

// checkName says whether name is one a backup holds: the databases, the
// key, or a bundle under its digest. Nothing else is ever written, so
// no name can reach outside the data directory.
func checkName(name string) error {
	switch name {
	case StoreFile, KVFile, InvocationsFile, LogsFile, SecretKey:
		return nil
	}
	if h, ok := strings.CutPrefix(name, blobPrefix); ok && validHex(h) {
		return nil
	}
	return errdefs.Invalid("backup: the manifest names %q, which no backup holds", name)
}

// parseManifest decodes and checks a manifest: its format is this
// spry's, its names are a backup's, each once, and the databases every
// backup has are there.
func parseManifest(data []byte) (*Manifest, error) {
	var m Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, errdefs.Invalid("backup: %s is not valid JSON: %v", ManifestName, err)
	}
	switch {
	case m.Format > FormatVersion:
		return nil, errdefs.Invalid("backup: format %d, made by a newer spry (%s); this one reads format %d: restore with that version or later", m.Format, m.Spry, FormatVersion)
	case m.Format < 1:
		return nil, errdefs.Invalid("backup: format %d is not one this spry reads (formats 1 to %d)", m.Format, FormatVersion)
	}
	seen := map[string]bool{}
	for _, f := range m.Files {
		if err := checkName(f.Name); err != nil {
			return nil, err
		}
		if seen[f.Name] {
			return nil, errdefs.Invalid("backup: the manifest names %s twice", f.Name)
		}
		if f.Size < 0 {
			return nil, errdefs.Invalid("backup: the manifest gives %s a negative size", f.Name)
		}
		seen[f.Name] = true
	}
	need := []string{StoreFile, KVFile}
	if m.Format >= 2 {
		need = append(need, InvocationsFile)
	}
	for _, need := range need {
		if !seen[need] {
			return nil, errdefs.Invalid("backup: the manifest does not name %s, which every backup holds", need)
		}
	}
	return &m, nil
}

// isBlob says whether an archive name is a bundle's.
func isBlob(name string) bool { return path.Dir(name)+"/" == blobPrefix }
