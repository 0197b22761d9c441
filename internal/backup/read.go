package backup

import (
	"archive/tar"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"strings"

	"github.com/spry-run/spry/internal/archive"
	"github.com/spry-run/spry/internal/errdefs"
)

// Read reads a backup from r to its end and checks it whole: the
// manifest first, of this spry's format; then each file it names, once,
// at its size, as a regular file under a name a backup holds (no links,
// no absolute paths, no ".."; archive's rules and then some); each
// bundle's content matches its digest; nothing is missing; the gzip
// checksum holds. file, if set, is given each file's content to read
// (what it leaves unread is read for the checks). A backup cut short (a
// stream that broke off) is an error. Errors about the archive are
// errdefs.ErrInvalidArgument; an error reading r is returned wrapped.
func Read(r io.Reader, file func(f File, content io.Reader) error) (*Manifest, error) {
	src := &archive.SourceReader{R: r}
	m, err := read(src, file)
	if err != nil && src.Err != nil {
		return nil, fmt.Errorf("backup: read: %w", src.Err)
	}
	return m, err
}

func read(r io.Reader, file func(f File, content io.Reader) error) (*Manifest, error) {
	zr, err := gzip.NewReader(r)
	if err != nil {
		return nil, errdefs.Invalid("backup: not a gzip file: %v", err)
	}
	defer zr.Close()
	tr := tar.NewReader(zr)
	next := func() (*tar.Header, error) {
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil, err
		}
		if err != nil && !errors.Is(err, tar.ErrInsecurePath) {
			return nil, cutShort("not a valid tar file", err)
		}
		// A bad name is the more useful message; then the type.
		if _, err := archive.CleanName(hdr.Name); err != nil {
			return nil, fmt.Errorf("backup: %w", err)
		}
		if hdr.Typeflag != tar.TypeReg {
			return nil, errdefs.Invalid("backup: entry %q is not a regular file (type %q): a backup holds files only", hdr.Name, hdr.Typeflag)
		}
		return hdr, nil
	}

	hdr, err := next()
	if err == io.EOF {
		return nil, errdefs.Invalid("backup: the archive is empty")
	}
	if err != nil {
		return nil, err
	}
	if hdr.Name != ManifestName {
		return nil, errdefs.Invalid("backup: the first entry is %q, not %s: not a spry backup", hdr.Name, ManifestName)
	}
	if hdr.Size > maxManifest {
		return nil, errdefs.Invalid("backup: %s is larger than %d bytes", ManifestName, maxManifest)
	}
	data, err := io.ReadAll(tr)
	if err != nil {
		return nil, cutShort("read "+ManifestName, err)
	}
	m, err := parseManifest(data)
	if err != nil {
		return nil, err
	}
	want := make(map[string]int64, len(m.Files))
	for _, f := range m.Files {
		want[f.Name] = f.Size
	}
	for {
		hdr, err := next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		size, ok := want[hdr.Name]
		if !ok {
			if m.Has(hdr.Name) || hdr.Name == ManifestName {
				return nil, errdefs.Invalid("backup: entry %q comes twice", hdr.Name)
			}
			return nil, errdefs.Invalid("backup: entry %q is not in the manifest", hdr.Name)
		}
		delete(want, hdr.Name)
		if hdr.Size != size {
			return nil, errdefs.Invalid("backup: entry %q is %d bytes; the manifest says %d", hdr.Name, hdr.Size, size)
		}
		if err := readFile(File{Name: hdr.Name, Size: size}, tr, file); err != nil {
			return nil, err
		}
	}
	if len(want) > 0 {
		var missing []string
		for _, f := range m.Files {
			if _, ok := want[f.Name]; ok {
				missing = append(missing, f.Name)
			}
		}
		return nil, errdefs.Invalid("backup: incomplete: %s missing (a backup cut short?)", strings.Join(missing[:min(len(missing), 3)], ", "))
	}
	// The rest of the stream (the tar's padding) to the end, which checks
	// the gzip trailer.
	if _, err := io.Copy(io.Discard, zr); err != nil {
		return nil, cutShort("the end of the archive", err)
	}
	return m, nil
}

// readFile gives one entry's content to file and reads what it leaves,
// checking a bundle's content against its name.
func readFile(f File, content io.Reader, file func(File, io.Reader) error) error {
	var h hash.Hash
	if isBlob(f.Name) {
		h = sha256.New()
		content = io.TeeReader(content, h)
	}
	cr := &countReader{r: content}
	if file != nil {
		if err := file(f, cr); err != nil {
			return err
		}
	}
	if _, err := io.Copy(io.Discard, cr); err != nil {
		return cutShort(f.Name, err)
	}
	if cr.n != f.Size {
		return errdefs.Invalid("backup: entry %q: %d bytes, want %d", f.Name, cr.n, f.Size)
	}
	if h != nil && f.Name[len(blobPrefix):] != hex.EncodeToString(h.Sum(nil)) {
		return errdefs.Invalid("backup: bundle %q does not match its digest: the backup is damaged", f.Name)
	}
	return nil
}

// cutShort is the error for a stream that did not parse: most often one
// that ended early, which a backup that failed on the server, or a copy
// cut off, is.
func cutShort(what string, err error) error {
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		return errdefs.Invalid("backup: %s: the archive ends early: a backup cut short (the server's log says why if it failed there)", what)
	}
	return errdefs.Invalid("backup: %s: %v", what, err)
}

type countReader struct {
	r io.Reader
	n int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}
