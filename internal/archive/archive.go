// Package archive unpacks uploaded code archives safely and packs a project
// directory for upload.
//
// Extract treats every archive as hostile: it writes only regular files and
// directories, only beneath the destination, never through a symbolic link,
// and counts the bytes it actually decompresses, so neither crafted names
// nor a zip or gzip bomb can write outside the destination or fill the disk.
package archive

import (
	"archive/tar"
	"archive/zip"
	"bufio"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"syscall"
	"unicode"
	"unicode/utf8"

	"github.com/spry-run/spry/internal/errdefs"
)

// Default limits, used where a Limits field is 0 (or less).
const (
	DefaultMaxFiles      = 10000
	DefaultMaxTotalBytes = 200 << 20
	DefaultMaxFileBytes  = 50 << 20
	DefaultMaxPathDepth  = 32
)

// Formats Extract understands.
const (
	FormatTar   = "tar"    // also accepts a gzip-compressed tar
	FormatTarGz = "tar.gz" // "tgz" is accepted as a synonym
	FormatZip   = "zip"
	FormatAuto  = "" // sniff zip and gzip magic numbers, else tar
)

// maxComponent is the longest name component Linux file systems accept.
const maxComponent = 255

// maxPathLen bounds a whole entry name (PATH_MAX).
const maxPathLen = 4096

// entryOverhead is what one entry may add to an archive besides its data:
// headers, long-name records and padding. It bounds how much a tar stream
// may decompress to, and how large a zip may be spooled.
const entryOverhead = 8 << 10

// memSpool is how much of a zip upload is held in memory before it is
// spooled to a temporary file.
const memSpool = 4 << 20

// Limits bound what one archive may unpack to. The zero value means the
// defaults.
type Limits struct {
	MaxFiles      int   // files and directories created, implied parents included; default 10000
	MaxTotalBytes int64 // decompressed bytes of all files; default 200 MiB
	MaxFileBytes  int64 // decompressed bytes of one file; default 50 MiB
	MaxPathDepth  int   // components of one path; default 32
	// SpoolDir is where a zip archive past 4 MiB is spooled; empty means
	// os.TempDir().
	SpoolDir string
}

func (l Limits) withDefaults() Limits {
	if l.MaxFiles <= 0 {
		l.MaxFiles = DefaultMaxFiles
	}
	if l.MaxTotalBytes <= 0 {
		l.MaxTotalBytes = DefaultMaxTotalBytes
	}
	if l.MaxFileBytes <= 0 {
		l.MaxFileBytes = DefaultMaxFileBytes
	}
	if l.MaxPathDepth <= 0 {
		l.MaxPathDepth = DefaultMaxPathDepth
	}
	return l
}

// Extract unpacks the archive read from r into dst, which must not exist
// (its parent must) or be an empty directory. format is FormatTar,
// FormatTarGz, FormatZip or FormatAuto.
//
// Only regular files and directories are written: files with mode 0644
// (0755 when the archive marks them executable), directories with 0755.
// Extract refuses, naming the entry: absolute paths, ".." components,
// backslashes, names that are not valid UTF-8 or hold control characters
// (NUL included), paths deeper than lim.MaxPathDepth, links of any kind,
// devices, FIFOs and other special entries, and a path given twice (or a
// file where a directory is needed). Those are errdefs.ErrInvalidArgument,
// as is a corrupt archive; too many entries or bytes are
// errdefs.ErrTooLarge. Sizes are counted as data is decompressed, never
// taken from headers.
//
// An error reading r itself is returned wrapped (with %w), keeping its
// class. On any error dst may hold part of the archive: the caller removes
// it.
func Extract(r io.Reader, format string, dst string, lim Limits) error {
	lim = lim.withDefaults()
	src := &SourceReader{R: r}
	format = strings.ToLower(format)
	switch format {
	case FormatTar, FormatTarGz, "tgz", FormatZip, FormatAuto:
	default:
		return errdefs.New(errdefs.ErrUnsupportedMedia, "unsupported archive format %q; use tar, tar.gz or zip", format)
	}
	if err := prepareDir(dst); err != nil {
		return err
	}
	root, err := os.OpenRoot(dst)
	if err != nil {
		return fmt.Errorf("archive: %w", err)
	}
	defer root.Close()
	x := &extractor{root: root, lim: lim, kinds: make(map[string]kind)}

	br := bufio.NewReaderSize(src, 512)
	magic, _ := br.Peek(4)
	if format == FormatAuto {
		switch {
		case bytes.HasPrefix(magic, []byte("PK\x03\x04")), bytes.HasPrefix(magic, []byte("PK\x05\x06")):
			format = FormatZip
		case bytes.HasPrefix(magic, []byte{0x1f, 0x8b}):
			format = FormatTarGz
		default:
			format = FormatTar
		}
	}
	switch format {
	case FormatZip:
		err = x.zip(br)
	default:
		var tr io.Reader = br
		if format != FormatTar || bytes.HasPrefix(magic, []byte{0x1f, 0x8b}) {
			zr, gzErr := gzip.NewReader(br)
			if gzErr != nil {
				err = errdefs.Invalid("archive is not a valid gzip file: %v", gzErr)
				break
			}
			defer zr.Close()
			tr = zr
		}
		err = x.tar(tr)
	}
	if err != nil && src.Err != nil {
		// The upload failed, not the archive.
		return fmt.Errorf("archive: read upload: %w", src.Err)
	}
	return err
}

// SourceReader remembers the first error of the reader under it, so
// that a failed read (an upload cut off, a backup stream that broke) is
// not reported as a damaged archive.
type SourceReader struct {
	R   io.Reader
	Err error
}

func (s *SourceReader) Read(p []byte) (int, error) {
	n, err := s.R.Read(p)
	if err != nil && err != io.EOF && s.Err == nil {
		s.Err = err
	}
	return n, err
}

// prepareDir makes sure dst is a fresh, empty, real directory.
func prepareDir(dst string) error {
	fi, err := os.Lstat(dst)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if err := os.Mkdir(dst, 0o755); err != nil {
			return fmt.Errorf("archive: %w", err)
		}
		return nil
	case err != nil:
		return fmt.Errorf("archive: %w", err)
	case !fi.IsDir():
		return fmt.Errorf("archive: destination %s is not a directory", dst)
	}
	d, err := os.Open(dst)
	if err != nil {
		return fmt.Errorf("archive: %w", err)
	}
	defer d.Close()
	if names, _ := d.Readdirnames(1); len(names) > 0 {
		return fmt.Errorf("archive: destination %s is not empty", dst)
	}
	return nil
}

type kind uint8

const (
	implicitDir kind = iota + 1 // created as the parent of an entry
	explicitDir                 // named by a directory entry
	regularFile
)

type extractor struct {
	root    *os.Root
	lim     Limits
	kinds   map[string]kind // every path created, by cleaned name
	entries int
	total   int64
}

// tar extracts a tar stream, counting every decompressed byte (entry data
// the tar reader skips included) against the limits.
func (x *extractor) tar(r io.Reader) error {
	max := x.lim.MaxTotalBytes + int64(x.lim.MaxFiles+16)*entryOverhead
	cr := &countingReader{r: r, left: max}
	tr := tar.NewReader(cr)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil && !errors.Is(err, tar.ErrInsecurePath) {
			// ErrInsecurePath (with GODEBUG=tarinsecurepath=0) comes with a
			// valid header; the checks below refuse the entry themselves.
			if cr.exceeded {
				return errdefs.New(errdefs.ErrTooLarge, "archive expands to more than %d bytes", max)
			}
			return errdefs.Invalid("archive is not a valid tar file: %v", err)
		}
		if hdr.Typeflag == tar.TypeXGlobalHeader {
			continue // e.g. the commit id git archive records
		}
		var err2 error
		switch hdr.Typeflag {
		case tar.TypeReg:
			err2 = x.file(hdr.Name, hdr.Mode&0o111 != 0, hdr.Size, func() (io.Reader, error) { return tr, nil })
		case tar.TypeDir:
			err2 = x.dir(hdr.Name)
		case tar.TypeSymlink:
			err2 = x.refuse(hdr.Name, "symbolic links are not allowed")
		case tar.TypeLink:
			err2 = x.refuse(hdr.Name, "hard links are not allowed")
		case tar.TypeChar, tar.TypeBlock:
			err2 = x.refuse(hdr.Name, "device files are not allowed")
		case tar.TypeFifo:
			err2 = x.refuse(hdr.Name, "named pipes are not allowed")
		default:
			err2 = x.refuse(hdr.Name, fmt.Sprintf("unsupported entry type %q", hdr.Typeflag))
		}
		if err2 != nil {
			if cr.exceeded {
				return errdefs.New(errdefs.ErrTooLarge, "archive expands to more than %d bytes", max)
			}
			return err2
		}
	}
}

// countingReader stops a stream after left bytes.
type countingReader struct {
	r        io.Reader
	left     int64
	exceeded bool
}

var errStreamTooLarge = errors.New("archive stream too large")

func (c *countingReader) Read(p []byte) (int, error) {
	if c.left <= 0 {
		c.exceeded = true
		return 0, errStreamTooLarge
	}
	if int64(len(p)) > c.left {
		p = p[:c.left]
	}
	n, err := c.r.Read(p)
	c.left -= int64(n)
	return n, err
}

// zip extracts a zip archive. zip needs random access, so r is used as is
// when it has it, else spooled (to memory, then a temporary file) up to a
// bound derived from the limits.
func (x *extractor) zip(r io.Reader) error {
	lim := x.lim
	max := lim.MaxTotalBytes + int64(lim.MaxFiles+16)*entryOverhead
	ra, size, cleanup, err := spool(r, max, lim.SpoolDir)
	if err != nil {
		return err
	}
	defer cleanup()
	zr, err := zip.NewReader(ra, size)
	if err != nil && !errors.Is(err, zip.ErrInsecurePath) {
		return errdefs.Invalid("archive is not a valid zip file: %v", err)
	}
	if len(zr.File) > lim.MaxFiles {
		return errdefs.New(errdefs.ErrTooLarge, "archive has %d entries; the limit is %d", len(zr.File), lim.MaxFiles)
	}
	for _, f := range zr.File {
		mode := f.Mode()
		isDir := strings.HasSuffix(f.Name, "/") || mode.IsDir()
		switch {
		case mode&fs.ModeSymlink != 0:
			err = x.refuse(f.Name, "symbolic links are not allowed")
		case mode&fs.ModeDevice != 0:
			err = x.refuse(f.Name, "device files are not allowed")
		case mode&fs.ModeNamedPipe != 0:
			err = x.refuse(f.Name, "named pipes are not allowed")
		case mode&(fs.ModeSocket|fs.ModeIrregular) != 0:
			err = x.refuse(f.Name, "special files are not allowed")
		case isDir:
			err = x.dir(f.Name)
		default:
			// The header's size is only trusted to refuse early; the copy
			// counts the bytes it actually gets.
			if f.UncompressedSize64 > uint64(lim.MaxFileBytes) {
				return errdefs.New(errdefs.ErrTooLarge, "entry %s is larger than %d bytes", quote(f.Name), lim.MaxFileBytes)
			}
			err = x.file(f.Name, mode&0o111 != 0, int64(f.UncompressedSize64), func() (io.Reader, error) {
				rc, err := f.Open()
				if err != nil {
					return nil, errdefs.Invalid("entry %s: %v", quote(f.Name), err)
				}
				return rc, nil
			})
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// spool returns random access to r's content, refusing more than max bytes.
func spool(r io.Reader, max int64, dir string) (io.ReaderAt, int64, func(), error) {
	nop := func() {}
	tooLarge := errdefs.New(errdefs.ErrTooLarge, "archive is larger than %d bytes", max)
	var buf bytes.Buffer
	n, err := io.Copy(&buf, io.LimitReader(r, min(memSpool, max+1)))
	if err != nil {
		return nil, 0, nop, errdefs.Invalid("read archive: %v", err)
	}
	if n > max {
		return nil, 0, nop, tooLarge
	}
	if n < memSpool {
		return bytes.NewReader(buf.Bytes()), n, nop, nil
	}
	f, err := os.CreateTemp(dir, "spry-archive-*.zip")
	if err != nil {
		return nil, 0, nop, fmt.Errorf("archive: spool: %w", err)
	}
	cleanup := func() {
		f.Close()
		os.Remove(f.Name())
	}
	if _, err := f.Write(buf.Bytes()); err != nil {
		cleanup()
		return nil, 0, nop, fmt.Errorf("archive: spool: %w", err)
	}
	m, err := io.Copy(f, io.LimitReader(r, max+1-n))
	if err != nil {
		cleanup()
		var pe *fs.PathError
		if errors.As(err, &pe) {
			return nil, 0, nop, fmt.Errorf("archive: spool: %w", err)
		}
		return nil, 0, nop, errdefs.Invalid("read archive: %v", err)
	}
	if n+m > max {
		cleanup()
		return nil, 0, nop, tooLarge
	}
	return f, n + m, cleanup, nil
}

// refuse returns the error for an entry of a kind that is never extracted,
// after checking its name (a bad name is the more useful message).
func (x *extractor) refuse(name, why string) error {
	if _, err := x.clean(name); err != nil {
		return err
	}
	return errdefs.Invalid("entry %s: %s", quote(name), why)
}

// count adds one path created against MaxFiles. Parent directories an
// entry only implies count too: else each entry could make MaxPathDepth
// of them, dozens of times the limit.
func (x *extractor) count() error {
	x.entries++
	if x.entries > x.lim.MaxFiles {
		return errdefs.New(errdefs.ErrTooLarge, "archive has more than %d files and directories", x.lim.MaxFiles)
	}
	return nil
}

// dir creates the directory entry name.
func (x *extractor) dir(name string) error {
	p, err := x.clean(name)
	if err != nil {
		return err
	}
	if p == "" {
		return nil // "./": the destination itself
	}
	switch x.kinds[p] {
	case explicitDir:
		return errdefs.Invalid("entry %s: duplicate path", quote(name))
	case regularFile:
		return errdefs.Invalid("entry %s: %q is already a file", quote(name), p)
	case implicitDir:
		x.kinds[p] = explicitDir // counted when it was made
		return nil
	}
	if err := x.count(); err != nil {
		return err
	}
	if err := x.parents(name, p); err != nil {
		return err
	}
	if err := x.mkdir(p); err != nil {
		return err
	}
	x.kinds[p] = explicitDir
	return nil
}

// parents creates the missing parent directories of p.
func (x *extractor) parents(name, p string) error {
	for i := 0; i < len(p); i++ {
		if p[i] != '/' {
			continue
		}
		parent := p[:i]
		switch x.kinds[parent] {
		case regularFile:
			return errdefs.Invalid("entry %s: parent %q is a file", quote(name), parent)
		case 0:
			if err := x.count(); err != nil {
				return err
			}
			if err := x.mkdir(parent); err != nil {
				return err
			}
			x.kinds[parent] = implicitDir
		}
	}
	return nil
}

func (x *extractor) mkdir(p string) error {
	if err := x.root.Mkdir(p, 0o755); err != nil {
		return fmt.Errorf("archive: %w", err)
	}
	d, err := x.root.OpenFile(p, os.O_RDONLY|syscall.O_DIRECTORY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return fmt.Errorf("archive: %w", err)
	}
	defer d.Close()
	if err := d.Chmod(0o755); err != nil { // whatever the umask
		return fmt.Errorf("archive: %w", err)
	}
	return nil
}

// file creates the regular file name with the content open returns. size
// is the header's claim, only used to refuse early.
func (x *extractor) file(name string, exec bool, size int64, open func() (io.Reader, error)) error {
	p, err := x.clean(name)
	if err != nil {
		return err
	}
	if p == "" {
		return errdefs.Invalid("entry %s: a file needs a name", quote(name))
	}
	if err := x.count(); err != nil {
		return err
	}
	if x.kinds[p] != 0 {
		return errdefs.Invalid("entry %s: duplicate path", quote(name))
	}
	if size > x.lim.MaxFileBytes {
		return errdefs.New(errdefs.ErrTooLarge, "entry %s is larger than %d bytes", quote(name), x.lim.MaxFileBytes)
	}
	if err := x.parents(name, p); err != nil {
		return err
	}
	perm := os.FileMode(0o644)
	if exec {
		perm = 0o755
	}
	// O_EXCL|O_NOFOLLOW: never reuse or follow what is already there; the
	// Root keeps every parent inside the destination.
	f, err := x.root.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, perm)
	if err != nil {
		return fmt.Errorf("archive: %w", err)
	}
	x.kinds[p] = regularFile
	defer f.Close()
	if err := f.Chmod(perm); err != nil {
		return fmt.Errorf("archive: %w", err)
	}
	r, err := open()
	if err != nil {
		return err
	}
	if c, ok := r.(io.Closer); ok {
		defer c.Close()
	}
	return x.copy(name, f, r)
}

// copy writes r to f, counting bytes against both size limits as they are
// decompressed: a bomb stops at the limit, whatever its headers claim.
func (x *extractor) copy(name string, f *os.File, r io.Reader) error {
	var n int64
	buf := make([]byte, 32<<10)
	for {
		m, err := r.Read(buf)
		if m > 0 {
			n += int64(m)
			x.total += int64(m)
			if n > x.lim.MaxFileBytes {
				return errdefs.New(errdefs.ErrTooLarge, "entry %s is larger than %d bytes", quote(name), x.lim.MaxFileBytes)
			}
			if x.total > x.lim.MaxTotalBytes {
				return errdefs.New(errdefs.ErrTooLarge, "archive expands to more than %d bytes", x.lim.MaxTotalBytes)
			}
			if _, werr := f.Write(buf[:m]); werr != nil {
				return fmt.Errorf("archive: write %s: %w", quote(name), werr)
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			if errors.Is(err, errStreamTooLarge) {
				return err // the caller reports the stream limit
			}
			return errdefs.Invalid("entry %s: corrupt data: %v", quote(name), err)
		}
	}
}

// clean validates an entry name and returns it relative to the
// destination, without "." components or trailing slash ("" for the
// destination itself).
func (x *extractor) clean(name string) (string, error) {
	return cleanName(name, x.lim.MaxPathDepth)
}

// CleanName checks an entry name by Extract's rules (relative, no ".."
// components or backslashes, valid UTF-8 without control characters, at
// most DefaultMaxPathDepth components) and returns it without "."
// components or trailing slash, for a reader of archives of its own
// (a backup's) that refuses what Extract refuses, in the same words.
func CleanName(name string) (string, error) {
	return cleanName(name, DefaultMaxPathDepth)
}

func cleanName(name string, maxDepth int) (string, error) {
	switch {
	case name == "":
		return "", errdefs.Invalid("entry with an empty name")
	case len(name) > maxPathLen:
		return "", errdefs.Invalid("entry %s: name is longer than %d bytes", quote(name), maxPathLen)
	case strings.IndexByte(name, 0) >= 0:
		return "", errdefs.Invalid("entry %s: name contains a NUL byte", quote(name))
	case !utf8.ValidString(name):
		return "", errdefs.Invalid("entry %s: name is not valid UTF-8", quote(name))
	case strings.ContainsFunc(name, unicode.IsControl):
		return "", errdefs.Invalid("entry %s: name contains a control character", quote(name))
	case strings.HasPrefix(name, "/"):
		return "", errdefs.Invalid("entry %s: absolute paths are not allowed", quote(name))
	case strings.Contains(name, `\`):
		return "", errdefs.Invalid("entry %s: backslashes are not allowed in names; use /", quote(name))
	}
	var parts []string
	for _, c := range strings.Split(name, "/") {
		switch {
		case c == "" || c == ".":
			continue
		case c == "..":
			return "", errdefs.Invalid("entry %s: \"..\" path components are not allowed", quote(name))
		case len(c) > maxComponent:
			return "", errdefs.Invalid("entry %s: a path component is longer than %d bytes", quote(name), maxComponent)
		}
		parts = append(parts, c)
	}
	if len(parts) > maxDepth {
		return "", errdefs.Invalid("entry %s: path is deeper than %d components", quote(name), maxDepth)
	}
	return strings.Join(parts, "/"), nil
}

// quote quotes an entry name for a message, cut to a readable length.
func quote(name string) string {
	const max = 120
	if len(name) > max {
		cut := max
		for cut > 0 && !utf8.RuneStart(name[cut]) {
			cut--
		}
		return fmt.Sprintf("%q...", name[:cut])
	}
	return fmt.Sprintf("%q", name)
}
