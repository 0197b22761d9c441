package certreload_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spry-run/spry/internal/certreload"
	"github.com/spry-run/spry/internal/certreload/certtest"
)

// clock is a time the test moves.
type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

// touch gives both files modification time at, as a renewal's write
// would (set by hand: a file system's own granularity may be coarse).
func touch(t *testing.T, at time.Time, files ...string) {
	t.Helper()
	for _, f := range files {
		if err := os.Chtimes(f, at, at); err != nil {
			t.Fatal(err)
		}
	}
}

func serial(t *testing.T, p *certreload.Pair) int64 {
	t.Helper()
	c, err := p.GetCertificate(nil)
	if err != nil {
		t.Fatal(err)
	}
	return c.Leaf.SerialNumber.Int64()
}

func TestRenewal(t *testing.T) {
	ca := certtest.NewCA(t)
	other := certtest.NewCA(t)
	garbage := func(t *testing.T, cert, key string) {
		if err := os.WriteFile(cert, []byte("not PEM"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// A renewal that writes the certificate but not yet its key.
	halfWritten := func(t *testing.T, cert, key string) {
		c, _ := other.Server(t, 99)
		if err := os.WriteFile(cert, c, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	renew := func(t *testing.T, cert, key string) { ca.WriteServer(t, 2, cert, key) }
	for _, tc := range []struct {
		name   string
		write  func(t *testing.T, cert, key string)
		sighup bool  // Reload, rather than the modification-time check
		want   int64 // the serial served after
	}{
		{"changed files are loaded", renew, false, 2},
		{"SIGHUP loads", renew, true, 2},
		{"a pair that does not parse keeps the old", garbage, false, 1},
		{"a certificate without its key keeps the old", halfWritten, false, 1},
		{"SIGHUP with a bad pair keeps the old", garbage, true, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			cert, key := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
			ca.WriteServer(t, 1, cert, key)
			t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
			touch(t, t0, cert, key)
			clk := &clock{t0}
			p, err := certreload.Load(cert, key, clk.now, nil)
			if err != nil {
				t.Fatal(err)
			}
			if got := serial(t, p); got != 1 {
				t.Fatalf("serial %d at start, want 1", got)
			}
			tc.write(t, cert, key)
			touch(t, t0.Add(time.Minute), cert, key)
			if tc.sighup {
				if err := p.Reload(); (err != nil) != (tc.want == 1) {
					t.Fatalf("Reload: %v", err)
				}
			} else {
				// Not looked at again within CheckEvery of the last look.
				clk.t = t0.Add(certreload.CheckEvery - time.Second)
				if got := serial(t, p); got != 1 {
					t.Fatalf("serial %d before the check was due, want 1", got)
				}
				clk.t = t0.Add(certreload.CheckEvery)
			}
			if got := serial(t, p); got != tc.want {
				t.Fatalf("serial %d, want %d", got, tc.want)
			}
			if tc.want == 1 {
				// Fixed later: the next write is a change again.
				renew(t, cert, key)
				touch(t, t0.Add(2*time.Minute), cert, key)
				clk.t = clk.t.Add(certreload.CheckEvery)
				if got := serial(t, p); got != 2 {
					t.Fatalf("serial %d after a good renewal followed the bad one, want 2", got)
				}
			}
		})
	}
}

func TestLoadNamesTheFile(t *testing.T) {
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	certtest.NewCA(t).WriteServer(t, 1, cert, key)
	other := filepath.Join(dir, "other-key.pem")
	_, k := certtest.NewCA(t).Server(t, 1)
	if err := os.WriteFile(other, k, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ cert, key, want string }{
		{filepath.Join(dir, "missing.pem"), key, "missing.pem"},
		{cert, filepath.Join(dir, "nokey.pem"), "nokey.pem"},
		{key, key, "key.pem"},
		{cert, other, "other-key.pem"},
	} {
		_, err := certreload.Load(tc.cert, tc.key, nil, nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Load(%s, %s): %v, want an error naming %s", tc.cert, tc.key, err, tc.want)
		}
	}
}
