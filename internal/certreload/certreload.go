// Package certreload serves a TLS certificate and key read from files,
// read again when they are renewed: on Reload (spry serve calls it on
// SIGHUP), and when either file's modification time has changed, which
// GetCertificate checks at most once every CheckEvery. A renewal that
// does not load (a key written after its certificate, a typo) keeps the
// pair in use and is logged, so a bad renewal never takes HTTPS down.
package certreload

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"
)

// CheckEvery is how often, at most, GetCertificate looks at the files'
// modification times: a stat per handshake would cost for nothing.
const CheckEvery = 10 * time.Second

// Pair is a certificate and its key, from two files.
type Pair struct {
	certFile, keyFile string
	now               func() time.Time
	log               *slog.Logger

	mu      sync.Mutex
	cert    *tls.Certificate
	certMod time.Time // the files' modification times at the last load
	keyMod  time.Time // (or the last failed one: it is not tried again)
	checked time.Time // when they were last looked at
}

// Load reads the pair; an error names the file at fault. now is the
// clock of the modification-time checks (nil: time.Now); log gets the
// renewals and their failures (nil: none).
func Load(certFile, keyFile string, now func() time.Time, log *slog.Logger) (*Pair, error) {
	if now == nil {
		now = time.Now
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p := &Pair{certFile: certFile, keyFile: keyFile, now: now, log: log}
	certMod, keyMod := p.modTimes()
	cert, err := p.read()
	if err != nil {
		return nil, err
	}
	p.cert, p.certMod, p.keyMod, p.checked = cert, certMod, keyMod, now()
	return p, nil
}

// read loads the pair from its files.
func (p *Pair) read() (*tls.Certificate, error) {
	certPEM, err := os.ReadFile(p.certFile)
	if err != nil {
		return nil, fmt.Errorf("TLS certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(p.keyFile)
	if err != nil {
		return nil, fmt.Errorf("TLS key: %w", err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		// The parser's words name neither file.
		return nil, fmt.Errorf("TLS certificate %s with key %s: %w", p.certFile, p.keyFile, err)
	}
	return &cert, nil
}

// modTimes are the files' modification times (zero for one that cannot
// be read: a change too, once it can).
func (p *Pair) modTimes() (cert, key time.Time) {
	if fi, err := os.Stat(p.certFile); err == nil {
		cert = fi.ModTime()
	}
	if fi, err := os.Stat(p.keyFile); err == nil {
		key = fi.ModTime()
	}
	return cert, key
}

// Certificate is the pair in use.
func (p *Pair) Certificate() *tls.Certificate {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cert
}

// GetCertificate is tls.Config's: the pair in use, loaded again first if
// a file changed since the last check, CheckEvery or more ago.
func (p *Pair) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if now := p.now(); now.Sub(p.checked) >= CheckEvery || now.Before(p.checked) {
		p.checked = now
		if certMod, keyMod := p.modTimes(); !certMod.Equal(p.certMod) || !keyMod.Equal(p.keyMod) {
			p.reloadLocked(certMod, keyMod, "changed")
		}
	}
	return p.cert, nil
}

// Reload loads the pair again, whether or not the files changed; a pair
// that does not load is logged and the one in use kept. It reports the
// error, if any.
func (p *Pair) Reload() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	certMod, keyMod := p.modTimes()
	p.checked = p.now()
	return p.reloadLocked(certMod, keyMod, "asked")
}

func (p *Pair) reloadLocked(certMod, keyMod time.Time, why string) error {
	// Remembered even if the load fails: the same files are not tried
	// again at every check, and the next write to either is a change.
	p.certMod, p.keyMod = certMod, keyMod
	cert, err := p.read()
	if err != nil {
		p.log.Warn("TLS certificate not renewed; still serving the previous one", "why", why, "err", err)
		return err
	}
	p.cert = cert
	p.log.Info("TLS certificate loaded", "why", why, "cert", p.certFile, "serial", cert.Leaf.SerialNumber.String(), "expires", cert.Leaf.NotAfter)
	return nil
}
