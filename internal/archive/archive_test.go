package archive

import (
	"archive/tar"
	"archive/zip"
	"bytes"
	"compress/flate"
	"compress/gzip"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spry-run/spry/internal/errdefs"
)

// entry describes one archive member for the builders below.
type entry struct {
	name string
	body string
	mode int64 // permission bits; 0 means 0644
	typ  byte  // tar type flag; 0 means a regular file (a dir if name ends in /)
	link string
}

func (e entry) tarType() byte {
	switch {
	case e.typ != 0:
		return e.typ
	case strings.HasSuffix(e.name, "/"):
		return tar.TypeDir
	}
	return tar.TypeReg
}

func makeTar(t testing.TB, entries ...entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		mode := e.mode
		if mode == 0 {
			mode = 0o644
		}
		hdr := &tar.Header{Name: e.name, Typeflag: e.tarType(), Mode: mode, Linkname: e.link, ModTime: time.Unix(0, 0)}
		if hdr.Typeflag == tar.TypeReg {
			hdr.Size = int64(len(e.body))
		}
		if hdr.Typeflag == tar.TypeXGlobalHeader {
			hdr = &tar.Header{Typeflag: tar.TypeXGlobalHeader, PAXRecords: map[string]string{"comment": e.body}}
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatalf("tar header %q: %v", e.name, err)
		}
		if hdr.Typeflag == tar.TypeXGlobalHeader {
			continue
		}
		if _, err := io.WriteString(tw, e.body); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func gz(t testing.TB, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if _, err := zw.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// zipEntry modes use fs.FileMode bits, so links and devices can be made.
type zipEntry struct {
	name string
	body string
	mode fs.FileMode
}

func makeZip(t testing.TB, entries ...zipEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for _, e := range entries {
		hdr := &zip.FileHeader{Name: e.name, Method: zip.Deflate}
		mode := e.mode
		if mode == 0 {
			mode = 0o644
		}
		hdr.SetMode(mode)
		w, err := zw.CreateHeader(hdr)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(w, e.body); err != nil {
			t.Fatal(err)
		}
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// listTree returns "path" for directories (with a trailing /) and
// "path=content mode" for files under dir.
func listTree(t testing.TB, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		rel = filepath.ToSlash(rel)
		fi, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			out = append(out, fmt.Sprintf("%s/ %o", rel, fi.Mode().Perm()))
		case fi.Mode().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			out = append(out, fmt.Sprintf("%s=%s %o", rel, b, fi.Mode().Perm()))
		default:
			out = append(out, fmt.Sprintf("%s ?%v", rel, fi.Mode()))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestExtract(t *testing.T) {
	want := []string{
		"a/ 755",
		"a/b/ 755",
		"a/b/c.ts=export const c = 1; 644",
		"empty/ 755",
		"index.ts=export default {} 644",
		"run.sh=#!/bin/sh 755",
		"ünï.js=x 644",
	}
	tarEntries := []entry{
		{name: "./"},
		{name: "./index.ts", body: "export default {}"},
		{name: "a/b/c.ts", body: "export const c = 1;"},
		{name: "a/"}, // a directory entry after its implicit creation
		{name: "empty/"},
		{name: "run.sh", body: "#!/bin/sh", mode: 0o700},
		{name: "ünï.js", body: "x"},
		{typ: tar.TypeXGlobalHeader, body: "commit id"},
	}
	zipEntries := []zipEntry{
		{name: "index.ts", body: "export default {}"},
		{name: "a/b/c.ts", body: "export const c = 1;"},
		{name: "empty/", mode: fs.ModeDir | 0o755},
		{name: "run.sh", body: "#!/bin/sh", mode: 0o775},
		{name: "ünï.js", body: "x"},
	}
	tarball := makeTar(t, tarEntries...)
	for _, tc := range []struct {
		name, format string
		data         []byte
	}{
		{"tar", FormatTar, tarball},
		{"tar with gzip magic", FormatTar, gz(t, tarball)},
		{"tar.gz", FormatTarGz, gz(t, tarball)},
		{"tgz", "tgz", gz(t, tarball)},
		{"auto tar", FormatAuto, tarball},
		{"auto tar.gz", FormatAuto, gz(t, tarball)},
		{"zip", FormatZip, makeZip(t, zipEntries...)},
		{"auto zip", FormatAuto, makeZip(t, zipEntries...)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dst := filepath.Join(t.TempDir(), "out")
			if err := Extract(bytes.NewReader(tc.data), tc.format, dst, Limits{}); err != nil {
				t.Fatal(err)
			}
			got := listTree(t, dst)
			if !slices.Equal(got, want) {
				t.Errorf("tree:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
		})
	}
}

func TestExtractRefusals(t *testing.T) {
	deep := strings.Repeat("d/", 33) + "f.ts"
	long := strings.Repeat("x", 256) + ".ts"
	tests := []struct {
		name    string
		tar     []entry    // built as a tar when set
		zip     []zipEntry // built as a zip when set
		raw     []byte
		format  string
		lim     Limits
		wantErr error
		wantMsg string
	}{
		{name: "tar absolute", tar: []entry{{name: "/etc/passwd", body: "x"}}, wantMsg: `entry "/etc/passwd": absolute paths are not allowed`},
		{name: "tar dotdot", tar: []entry{{name: "../x.ts", body: "x"}}, wantMsg: `entry "../x.ts": ".." path components`},
		{name: "tar inner dotdot", tar: []entry{{name: "a/../../x.ts", body: "x"}}, wantMsg: `".." path components`},
		{name: "tar dotdot that stays inside", tar: []entry{{name: "a/../x.ts", body: "x"}}, wantMsg: `".." path components`},
		{name: "tar dotdot dir", tar: []entry{{name: "a/../"}}, wantMsg: `".." path components`},
		{name: "tar symlink", tar: []entry{{name: "link", typ: tar.TypeSymlink, link: "/etc/passwd"}}, wantMsg: `entry "link": symbolic links are not allowed`},
		{name: "tar relative symlink", tar: []entry{{name: "a/link", typ: tar.TypeSymlink, link: "../b"}}, wantMsg: "symbolic links are not allowed"},
		{name: "tar hard link", tar: []entry{{name: "f", body: "x"}, {name: "h", typ: tar.TypeLink, link: "f"}}, wantMsg: `entry "h": hard links are not allowed`},
		{name: "tar char device", tar: []entry{{name: "null", typ: tar.TypeChar}}, wantMsg: `entry "null": device files are not allowed`},
		{name: "tar block device", tar: []entry{{name: "sda", typ: tar.TypeBlock}}, wantMsg: "device files are not allowed"},
		{name: "tar fifo", tar: []entry{{name: "pipe", typ: tar.TypeFifo}}, wantMsg: `entry "pipe": named pipes are not allowed`},
		{name: "tar unknown type", tar: []entry{{name: "x", typ: 'Z'}}, wantMsg: `entry "x": unsupported entry type 'Z'`},
		{name: "tar duplicate file", tar: []entry{{name: "a.ts", body: "1"}, {name: "./a.ts", body: "2"}}, wantMsg: `entry "./a.ts": duplicate path`},
		{name: "tar duplicate dir", tar: []entry{{name: "d/"}, {name: "d/"}}, wantMsg: `entry "d/": duplicate path`},
		{name: "tar dir over file", tar: []entry{{name: "d", body: "1"}, {name: "d/"}}, wantMsg: `"d" is already a file`},
		{name: "tar file over dir", tar: []entry{{name: "d/"}, {name: "d", body: "1"}}, wantMsg: `entry "d": duplicate path`},
		{name: "tar file over implicit dir", tar: []entry{{name: "d/x", body: "1"}, {name: "d", body: "1"}}, wantMsg: "duplicate path"},
		{name: "tar file under file", tar: []entry{{name: "d", body: "1"}, {name: "d/x", body: "1"}}, wantMsg: `entry "d/x": parent "d" is a file`},
		{name: "tar control character", tar: []entry{{name: "a\nb.ts", body: "1"}}, wantMsg: "control character"},
		{name: "tar invalid utf-8", tar: []entry{{name: "a\xffb.ts", body: "1"}}, wantMsg: `entry "a\xffb.ts": name is not valid UTF-8`},
		{name: "tar backslash", tar: []entry{{name: `..\..\x.ts`, body: "1"}}, wantMsg: "backslashes are not allowed"},
		{name: "tar too deep", tar: []entry{{name: deep, body: "1"}}, wantMsg: "deeper than 32 components"},
		{name: "tar custom depth", tar: []entry{{name: "a/b/c.ts", body: "1"}}, lim: Limits{MaxPathDepth: 2}, wantMsg: "deeper than 2 components"},
		{name: "tar long component", tar: []entry{{name: long, body: "1"}}, wantMsg: "longer than 255 bytes"},
		{name: "tar file only a dot", tar: []entry{{name: ".", body: "x", typ: tar.TypeReg}}, wantMsg: "a file needs a name"},
		{name: "tar too many files", tar: []entry{{name: "a", body: "1"}, {name: "b", body: "2"}, {name: "c", body: "3"}}, lim: Limits{MaxFiles: 2}, wantErr: errdefs.ErrTooLarge, wantMsg: "archive has more than 2 files and directories"},
		{name: "tar dirs count", tar: []entry{{name: "a/"}, {name: "b/"}, {name: "c/"}}, lim: Limits{MaxFiles: 2}, wantErr: errdefs.ErrTooLarge, wantMsg: "more than 2 files and directories"},
		// Each entry made up to MaxPathDepth-1 parents uncounted: 10,000
		// entries made 310,000 directories.
		{name: "tar implied dirs count", tar: []entry{{name: "a/b/c/d/f", body: "1"}, {name: "e/f/g/h/f", body: "2"}}, lim: Limits{MaxFiles: 5}, wantErr: errdefs.ErrTooLarge, wantMsg: "more than 5 files and directories"},
		{name: "tar file too large", tar: []entry{{name: "big", body: strings.Repeat("x", 101)}}, lim: Limits{MaxFileBytes: 100}, wantErr: errdefs.ErrTooLarge, wantMsg: `entry "big" is larger than 100 bytes`},
		{name: "tar total too large", tar: []entry{{name: "a", body: strings.Repeat("x", 60)}, {name: "b", body: strings.Repeat("x", 60)}}, lim: Limits{MaxTotalBytes: 100}, wantErr: errdefs.ErrTooLarge, wantMsg: "archive expands to more than 100 bytes"},
		{name: "tar garbage", raw: bytes.Repeat([]byte("garbage!"), 100), format: FormatTar, wantMsg: "not a valid tar file"},
		{name: "tar truncated", raw: makeTar(t, entry{name: "a", body: strings.Repeat("x", 2000)})[:1200], format: FormatTar, wantMsg: "corrupt data"},
		{name: "tar.gz not gzip", raw: makeTar(t, entry{name: "a", body: "x"}), format: FormatTarGz, wantMsg: "not a valid gzip file"},
		{name: "gzip corrupt", raw: append(gz(t, makeTar(t, entry{name: "a", body: strings.Repeat("x", 5000)}))[:40], make([]byte, 100)...), format: FormatTarGz},
		{name: "unknown format", raw: []byte("x"), format: "rar", wantErr: errdefs.ErrUnsupportedMedia, wantMsg: `unsupported archive format "rar"`},

		{name: "zip absolute", zip: []zipEntry{{name: "/etc/passwd", body: "x"}}, wantMsg: `entry "/etc/passwd": absolute paths are not allowed`},
		{name: "zip dotdot", zip: []zipEntry{{name: "../../x.ts", body: "x"}}, wantMsg: `".." path components`},
		{name: "zip backslash dotdot", zip: []zipEntry{{name: `..\x.ts`, body: "x"}}, wantMsg: "backslashes are not allowed"},
		{name: "zip symlink", zip: []zipEntry{{name: "link", body: "/etc/passwd", mode: fs.ModeSymlink | 0o777}}, wantMsg: `entry "link": symbolic links are not allowed`},
		{name: "zip device", zip: []zipEntry{{name: "dev", mode: fs.ModeDevice | fs.ModeCharDevice | 0o666}}, wantMsg: "device files are not allowed"},
		{name: "zip fifo", zip: []zipEntry{{name: "fifo", mode: fs.ModeNamedPipe | 0o666}}, wantMsg: "named pipes are not allowed"},
		{name: "zip socket", zip: []zipEntry{{name: "sock", mode: fs.ModeSocket | 0o666}}, wantMsg: "special files are not allowed"},
		{name: "zip NUL", zip: []zipEntry{{name: "a\x00.ts", body: "x"}}, wantMsg: `entry "a\x00.ts": name contains a NUL byte`},
		{name: "zip invalid utf-8", zip: []zipEntry{{name: "\xc3\x28.ts", body: "x"}}, wantMsg: "not valid UTF-8"},
		{name: "zip duplicate", zip: []zipEntry{{name: "a.ts", body: "1"}, {name: "a.ts", body: "2"}}, wantMsg: `entry "a.ts": duplicate path`},
		{name: "zip duplicate after cleaning", zip: []zipEntry{{name: "a/b.ts", body: "1"}, {name: "a//./b.ts", body: "2"}}, wantMsg: "duplicate path"},
		{name: "zip too many files", zip: []zipEntry{{name: "a"}, {name: "b"}, {name: "c"}}, lim: Limits{MaxFiles: 2}, wantErr: errdefs.ErrTooLarge, wantMsg: "archive has 3 entries; the limit is 2"},
		{name: "zip implied dirs count", zip: []zipEntry{{name: "a/b/c/d/f", body: "1"}, {name: "e/f/g/h/f", body: "2"}}, lim: Limits{MaxFiles: 5}, wantErr: errdefs.ErrTooLarge, wantMsg: "more than 5 files and directories"},
		{name: "zip file too large", zip: []zipEntry{{name: "big", body: strings.Repeat("x", 101)}}, lim: Limits{MaxFileBytes: 100}, wantErr: errdefs.ErrTooLarge, wantMsg: `entry "big" is larger than 100 bytes`},
		{name: "zip total too large", zip: []zipEntry{{name: "a", body: strings.Repeat("x", 60)}, {name: "b", body: strings.Repeat("x", 60)}}, lim: Limits{MaxTotalBytes: 100}, wantErr: errdefs.ErrTooLarge, wantMsg: "archive expands to more than 100 bytes"},
		{name: "zip garbage", raw: bytes.Repeat([]byte("garbage!"), 100), format: FormatZip, wantMsg: "not a valid zip file"},
		{name: "zip too large to spool", raw: bytes.Repeat([]byte("z"), 200<<10), format: FormatZip, lim: Limits{MaxFiles: 1, MaxTotalBytes: 1000}, wantErr: errdefs.ErrTooLarge, wantMsg: "archive is larger than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			data, format := tt.raw, tt.format
			switch {
			case tt.tar != nil:
				data, format = makeTar(t, tt.tar...), FormatTar
			case tt.zip != nil:
				data, format = makeZip(t, tt.zip...), FormatZip
			}
			parent := t.TempDir()
			err := Extract(bytes.NewReader(data), format, filepath.Join(parent, "out"), tt.lim)
			wantErr := tt.wantErr
			if wantErr == nil {
				wantErr = errdefs.ErrInvalidArgument
			}
			if !errors.Is(err, wantErr) {
				t.Fatalf("err = %v, want class %v", err, wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("err = %q, want it to contain %q", err, tt.wantMsg)
			}
			checkContained(t, parent)
		})
	}
}

// checkContained fails if anything but parent/out and what is beneath it
// exists in parent, or if a link or special file was made anywhere.
func checkContained(t testing.TB, parent string) {
	t.Helper()
	err := filepath.WalkDir(parent, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == parent {
			return err
		}
		rel, _ := filepath.Rel(parent, p)
		if rel != "out" && !strings.HasPrefix(rel, "out"+string(filepath.Separator)) {
			t.Errorf("%s was written outside the destination", rel)
		}
		if t := d.Type(); t != 0 && !t.IsDir() {
			return fmt.Errorf("%s is a %v", rel, t)
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
}

// deflatedZeros returns a raw deflate stream of mib MiB of zeros, built by
// repeating one flushed chunk, so a huge bomb costs no time to make.
func deflatedZeros(t testing.TB, mib int) []byte {
	t.Helper()
	var chunk bytes.Buffer
	fw, _ := flate.NewWriter(&chunk, flate.BestCompression)
	if _, err := fw.Write(make([]byte, 1<<20)); err != nil {
		t.Fatal(err)
	}
	if err := fw.Flush(); err != nil {
		t.Fatal(err)
	}
	var end bytes.Buffer
	fw, _ = flate.NewWriter(&end, flate.BestCompression)
	fw.Close() // an empty final block
	return append(bytes.Repeat(chunk.Bytes(), mib), end.Bytes()...)
}

// zipBomb returns a zip whose entries each inflate to mib MiB of zeros
// while their headers claim claimed bytes (with the right CRC when the
// claim is true).
func zipBomb(t testing.TB, entries, mib int, claimed uint64) []byte {
	t.Helper()
	data := deflatedZeros(t, mib)
	var crc uint32
	if claimed == uint64(mib)<<20 && mib <= 16 {
		crc = crc32.ChecksumIEEE(make([]byte, mib<<20))
	}
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for i := range entries {
		w, err := zw.CreateRaw(&zip.FileHeader{
			Name:               fmt.Sprintf("bomb%d.bin", i),
			Method:             zip.Deflate,
			CompressedSize64:   uint64(len(data)),
			UncompressedSize64: claimed,
			CRC32:              crc,
		})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write(data); err != nil {
			t.Fatal(err)
		}
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestExtractZipBomb(t *testing.T) {
	tests := []struct {
		name    string
		data    []byte
		lim     Limits
		wantMsg string
	}{
		// 1 GiB from about 1 MiB, its header lying: archive/zip stops at
		// the claimed size, a corrupt entry.
		{"one entry, lying header", zipBomb(t, 1, 1024, 1024), Limits{}, `entry "bomb0.bin": corrupt data`},
		// The honest header is refused before inflating anything.
		{"one entry, honest header", zipBomb(t, 1, 1024, 1<<30), Limits{}, `entry "bomb0.bin" is larger than 52428800 bytes`},
		// Each entry is under the file limit; together they are not.
		{"many entries", zipBomb(t, 20, 3, 3<<20), Limits{MaxFileBytes: 4 << 20, MaxTotalBytes: 16 << 20}, "archive expands to more than 16777216 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if len(tt.data) > 2<<20 {
				t.Fatalf("bomb is %d bytes; want a small one", len(tt.data))
			}
			parent := t.TempDir()
			dst := filepath.Join(parent, "out")
			start := time.Now()
			err := Extract(bytes.NewReader(tt.data), FormatZip, dst, tt.lim)
			if err == nil || errdefs.Code(err) == "internal" || !strings.Contains(err.Error(), tt.wantMsg) {
				t.Fatalf("err = %v, want %q", err, tt.wantMsg)
			}
			if d := time.Since(start); d > 20*time.Second {
				t.Errorf("took %v to refuse", d)
			}
			var total int64
			filepath.WalkDir(dst, func(p string, d fs.DirEntry, err error) error {
				if err == nil && d.Type().IsRegular() {
					fi, _ := d.Info()
					total += fi.Size()
				}
				return nil
			})
			lim := tt.lim.withDefaults()
			if total > lim.MaxTotalBytes {
				t.Errorf("wrote %d bytes; the limit is %d", total, lim.MaxTotalBytes)
			}
			checkContained(t, parent)
		})
	}
}

// TestExtractTarBomb: a gzip bomb in a tar is refused by its header, or
// by counting what the tar reader consumes (a long-name record here).
func TestExtractTarBomb(t *testing.T) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: "zeros.bin", Typeflag: tar.TypeReg, Size: 1 << 30, Mode: 0o644})
	tw.Flush()
	// gzip by hand: the header, then a deflate stream of the tar header
	// and 1 GiB of zeros; the trailer is never reached.
	var head bytes.Buffer
	fw, _ := flate.NewWriter(&head, flate.BestSpeed)
	fw.Write(buf.Bytes())
	fw.Flush()
	bomb := append([]byte{0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff}, head.Bytes()...)
	bomb = append(bomb, deflatedZeros(t, 1024)...)
	if len(bomb) > 2<<20 {
		t.Fatalf("bomb is %d bytes", len(bomb))
	}
	err := Extract(bytes.NewReader(bomb), FormatTarGz, filepath.Join(t.TempDir(), "out"), Limits{})
	if !errors.Is(err, errdefs.ErrTooLarge) || !strings.Contains(err.Error(), `entry "zeros.bin" is larger than 52428800 bytes`) {
		t.Fatalf("err = %v, want ErrTooLarge", err)
	}

	buf.Reset()
	tw = tar.NewWriter(&buf)
	long := strings.Repeat("n", 500<<10)
	if err := tw.WriteHeader(&tar.Header{Name: long, Typeflag: tar.TypeReg, Format: tar.FormatGNU}); err != nil {
		t.Fatal(err)
	}
	tw.Close()
	err = Extract(bytes.NewReader(gz(t, buf.Bytes())), FormatTar, filepath.Join(t.TempDir(), "out"), Limits{MaxFiles: 1, MaxTotalBytes: 1})
	if !errors.Is(err, errdefs.ErrTooLarge) || !strings.Contains(err.Error(), "archive expands to more than") {
		t.Fatalf("err = %v, want ErrTooLarge", err)
	}
}

func TestExtractDestination(t *testing.T) {
	data := makeTar(t, entry{name: "a", body: "x"})
	parent := t.TempDir()

	full := filepath.Join(parent, "full")
	os.Mkdir(full, 0o755)
	os.WriteFile(filepath.Join(full, "x"), nil, 0o644)
	if err := Extract(bytes.NewReader(data), FormatTar, full, Limits{}); err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Errorf("non-empty destination: err = %v", err)
	}

	link := filepath.Join(parent, "link")
	empty := filepath.Join(parent, "empty")
	os.Mkdir(empty, 0o755)
	os.Symlink(empty, link)
	if err := Extract(bytes.NewReader(data), FormatTar, link, Limits{}); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Errorf("symlink destination: err = %v", err)
	}

	// An existing empty directory is fine.
	if err := Extract(bytes.NewReader(data), FormatTar, empty, Limits{}); err != nil {
		t.Errorf("empty destination: %v", err)
	}
}

type failingReader struct {
	data []byte
	err  error
}

func (f *failingReader) Read(p []byte) (int, error) {
	if len(f.data) == 0 {
		return 0, f.err
	}
	n := copy(p, f.data)
	f.data = f.data[n:]
	return n, nil
}

// TestExtractUploadError: a failing upload is reported as such, wrapped,
// not as a corrupt archive.
func TestExtractUploadError(t *testing.T) {
	upload := errors.New("connection reset")
	data := makeTar(t, entry{name: "a", body: strings.Repeat("x", 5000)})
	for _, format := range []string{FormatTar, FormatZip} {
		err := Extract(&failingReader{data: data[:1500], err: upload}, format, filepath.Join(t.TempDir(), "out"), Limits{})
		if !errors.Is(err, upload) {
			t.Errorf("%s: err = %v, want the upload's error", format, err)
		}
	}
}

// TestExtractSpool: a zip larger than the in-memory spool goes through a
// temporary file.
func TestExtractSpool(t *testing.T) {
	big := make([]byte, memSpool+1000)
	for i := range big {
		big[i] = byte(i*7 + i/251)
	}
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	w, _ := zw.CreateHeader(&zip.FileHeader{Name: "big.bin", Method: zip.Store})
	w.Write(big)
	zw.Close()
	dst := filepath.Join(t.TempDir(), "out")
	// A plain io.Reader: no random access.
	if err := Extract(io.MultiReader(&buf), FormatZip, dst, Limits{}); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(dst, "big.bin"))
	if err != nil || !bytes.Equal(got, big) {
		t.Fatalf("content differs (err %v)", err)
	}
}

func TestPackRoundTrip(t *testing.T) {
	src := t.TempDir()
	files := map[string]string{
		"index.ts":                 "export default {}",
		"lib/util.ts":              "export const x = 1",
		"lib/deep/a/b.json":        `{"a":1}`,
		"run.sh":                   "#!/bin/sh\necho hi\n",
		"debug.log":                "ignored",
		"logs/keep.log":            "kept by negation",
		"dist/out.js":              "ignored dir",
		"node_modules/x/index.js":  "always ignored",
		".git/HEAD":                "always ignored",
		"sub/.gitignore":           "*.tmp\n",
		"sub/a.tmp":                "ignored by the nested file",
		"sub/a.ts":                 "kept",
		"ünïcödé/file name.ts":     "non-ASCII and spaces",
		strings.Repeat("n", 120):   "a long name",
		".gitignore":               "*.log\n!logs/keep.log\n/dist/\n",
		"pkg/node_modules/y/y.js":  "nested node_modules",
		"empty-dir/.gitkeep":       "",
		"lib/deep/a/../../also.ts": "also",
	}
	for name, body := range files {
		p := filepath.Join(src, filepath.FromSlash(name))
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	os.Chmod(filepath.Join(src, "run.sh"), 0o755)
	os.Mkdir(filepath.Join(src, "really-empty"), 0o700)

	ignore, err := LoadGitignore(src)
	if err != nil {
		t.Fatal(err)
	}
	var packed bytes.Buffer
	if err := Pack(src, &packed, ignore); err != nil {
		t.Fatal(err)
	}
	var again bytes.Buffer
	if err := Pack(src, &again, ignore); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(packed.Bytes(), again.Bytes()) {
		t.Error("packing twice gives different bytes")
	}

	dst := filepath.Join(t.TempDir(), "out")
	if err := Extract(bytes.NewReader(packed.Bytes()), FormatAuto, dst, Limits{}); err != nil {
		t.Fatal(err)
	}
	got := listTree(t, dst)
	want := []string{
		".gitignore=*.log\n!logs/keep.log\n/dist/\n 644",
		"empty-dir/ 755",
		"empty-dir/.gitkeep= 644",
		"index.ts=export default {} 644",
		"lib/ 755",
		"lib/also.ts=also 644",
		"lib/deep/ 755",
		"lib/deep/a/ 755",
		"lib/deep/a/b.json={\"a\":1} 644",
		"lib/util.ts=export const x = 1 644",
		"logs/ 755",
		"logs/keep.log=kept by negation 644",
		strings.Repeat("n", 120) + "=a long name 644",
		"pkg/ 755",
		"really-empty/ 755",
		"run.sh=#!/bin/sh\necho hi\n 755",
		"sub/ 755",
		"sub/.gitignore=*.tmp\n 644",
		"sub/a.ts=kept 644",
		"ünïcödé/ 755",
		"ünïcödé/file name.ts=non-ASCII and spaces 644",
	}
	if !slices.Equal(got, want) {
		t.Errorf("tree:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	// The extracted tree packs to the same bytes.
	var repacked bytes.Buffer
	if err := Pack(dst, &repacked, ignore); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(packed.Bytes(), repacked.Bytes()) {
		t.Error("the extracted tree packs to different bytes")
	}

	// Without an ignore function everything goes in.
	var all bytes.Buffer
	if err := Pack(src, &all, nil); err != nil {
		t.Fatal(err)
	}
	dst2 := filepath.Join(t.TempDir(), "all")
	if err := Extract(&all, FormatTarGz, dst2, Limits{}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dst2, "node_modules/x/index.js")); err != nil {
		t.Errorf("nil ignore: %v", err)
	}
}

func TestPackRefusesLinks(t *testing.T) {
	src := t.TempDir()
	os.WriteFile(filepath.Join(src, "a.ts"), []byte("x"), 0o644)
	os.Symlink("/etc/passwd", filepath.Join(src, "passwd"))
	err := Pack(src, io.Discard, nil)
	if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "passwd is a symbolic link") {
		t.Fatalf("err = %v", err)
	}
	// An ignored link is fine.
	if err := Pack(src, io.Discard, ParseGitignore([]byte("passwd\n"))); err != nil {
		t.Fatal(err)
	}
	// The directory itself may be reached through a link.
	link := filepath.Join(t.TempDir(), "link")
	os.Symlink(src, link)
	var buf bytes.Buffer
	if err := Pack(link, &buf, ParseGitignore([]byte("passwd\n"))); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), "out")
	if err := Extract(&buf, FormatTarGz, dst, Limits{}); err != nil {
		t.Fatal(err)
	}
	if got := listTree(t, dst); !slices.Equal(got, []string{"a.ts=x 644"}) {
		t.Errorf("packed through a link: %v", got)
	}
	if err := Pack(filepath.Join(src, "a.ts"), io.Discard, nil); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("packing a file: err = %v", err)
	}
}

func FuzzExtractTar(f *testing.F) {
	valid := makeTar(f,
		entry{name: "index.ts", body: "export default {}"},
		entry{name: "a/"},
		entry{name: "a/b.ts", body: "x", mode: 0o755},
	)
	f.Add(valid)
	f.Add(gz(f, valid))
	f.Add(makeTar(f, entry{name: "../x", body: "x"}))
	f.Add(makeTar(f, entry{name: "/abs", body: "x"}))
	f.Add(makeTar(f, entry{name: "l", typ: tar.TypeSymlink, link: "/tmp"}, entry{name: "l/x", body: "x"}))
	f.Add(makeTar(f, entry{name: "h", typ: tar.TypeLink, link: "../../etc/passwd"}))
	f.Add(makeTar(f, entry{name: "a", body: "1"}, entry{name: "a", body: "2"}))
	f.Add(makeTar(f, entry{name: "a", body: "1"}, entry{name: "a/b", body: "2"}))
	f.Add(makeTar(f, entry{name: strings.Repeat("a/", 40) + "x", body: "1"}))
	f.Add(makeTar(f, entry{name: "fifo", typ: tar.TypeFifo}))
	f.Add(gz(f, makeTar(f, entry{name: "big", body: strings.Repeat("0", 20<<10)})))
	f.Add([]byte{})
	f.Add([]byte{0x1f, 0x8b})
	base := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		fuzzExtract(t, base, data, FormatTar)
	})
}

func FuzzExtractZip(f *testing.F) {
	f.Add(makeZip(f, zipEntry{name: "index.ts", body: "export default {}"}, zipEntry{name: "a/", mode: fs.ModeDir | 0o755}, zipEntry{name: "a/b.ts", body: "x"}))
	f.Add(makeZip(f, zipEntry{name: "../x", body: "x"}))
	f.Add(makeZip(f, zipEntry{name: "/abs", body: "x"}))
	f.Add(makeZip(f, zipEntry{name: "l", body: "/tmp", mode: fs.ModeSymlink | 0o777}, zipEntry{name: "l/x", body: "x"}))
	f.Add(makeZip(f, zipEntry{name: "a", body: "1"}, zipEntry{name: "a", body: "2"}))
	f.Add(makeZip(f, zipEntry{name: "a", body: "1"}, zipEntry{name: "a/b", body: "2"}))
	f.Add(makeZip(f, zipEntry{name: "a\x00b", body: "1"}))
	f.Add(makeZip(f, zipEntry{name: "big", body: strings.Repeat("0", 20<<10)}))
	f.Add(zipBomb(f, 2, 1, 10))
	f.Add([]byte("PK\x05\x06" + strings.Repeat("\x00", 18)))
	f.Add([]byte{})
	base := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		fuzzExtract(t, base, data, FormatZip)
	})
}

// fuzzLimits keep each fuzz run small.
var fuzzLimits = Limits{MaxFiles: 64, MaxTotalBytes: 64 << 10, MaxFileBytes: 16 << 10, MaxPathDepth: 8}

// fuzzExtract extracts data into a fresh directory under base, and checks
// that nothing was written outside it and errors have a user-facing class.
func fuzzExtract(t *testing.T, base string, data []byte, format string) {
	parent, err := os.MkdirTemp(base, "run")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(parent)
	err = Extract(bytes.NewReader(data), format, filepath.Join(parent, "out"), fuzzLimits)
	if err != nil && !errors.Is(err, errdefs.ErrInvalidArgument) && !errors.Is(err, errdefs.ErrTooLarge) {
		t.Fatalf("error without a user-facing class: %v", err)
	}
	checkContained(t, parent)
	var total int64
	filepath.WalkDir(parent, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			fi, _ := d.Info()
			total += fi.Size()
		}
		return nil
	})
	if total > fuzzLimits.MaxTotalBytes {
		t.Fatalf("wrote %d bytes; the limit is %d", total, fuzzLimits.MaxTotalBytes)
	}
}

// TestExtractCountsPathsOnce: MaxFiles bounds the paths made, implied
// parents included, and a directory entry after its children (as some
// zip tools write them) is not counted twice.
func TestExtractCountsPathsOnce(t *testing.T) {
	for _, tc := range []struct {
		name string
		data []byte
	}{
		{"tar", makeTar(t, entry{name: "a/b/f", body: "1"}, entry{name: "a/"}, entry{name: "a/b/"}, entry{name: "./"})},
		{"zip", makeZip(t, zipEntry{name: "a/b/f", body: "1"}, zipEntry{name: "a/", mode: fs.ModeDir | 0o755}, zipEntry{name: "a/b/", mode: fs.ModeDir | 0o755})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dst := filepath.Join(t.TempDir(), "out")
			if err := Extract(bytes.NewReader(tc.data), FormatAuto, dst, Limits{MaxFiles: 3}); err != nil {
				t.Fatalf("3 paths with MaxFiles 3: %v", err)
			}
			if got := listTree(t, dst); len(got) != 3 {
				t.Errorf("tree = %q, want 3 paths", got)
			}
			err := Extract(bytes.NewReader(tc.data), FormatAuto, filepath.Join(t.TempDir(), "out"), Limits{MaxFiles: 2})
			if !errors.Is(err, errdefs.ErrTooLarge) {
				t.Errorf("3 paths with MaxFiles 2: err = %v, want ErrTooLarge", err)
			}
		})
	}
}
