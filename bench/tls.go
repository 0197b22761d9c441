package main

import (
	"crypto/tls"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spry-run/spry/internal/certreload/certtest"
)

// benchTLS is scenario 9's certificate: a private CA's, for 127.0.0.1,
// served by both spry serve and nginx, and a client config that trusts
// the CA (wrk does not verify certificates).
type benchTLS struct {
	certFile, keyFile string
	client            *tls.Config
}

// makeTLS makes a CA and a server certificate it signs, and writes the
// certificate and its key (mode 0600) to dir.
func makeTLS(dir string) (*benchTLS, error) {
	ca, err := certtest.New()
	if err != nil {
		return nil, err
	}
	certPEM, keyPEM, err := ca.ServerPEM(2)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	t := &benchTLS{certFile: filepath.Join(dir, "cert.pem"), keyFile: filepath.Join(dir, "key.pem"), client: ca.Client()}
	if err := os.WriteFile(t.certFile, certPEM, 0o600); err != nil {
		return nil, fmt.Errorf("write certificate: %w", err)
	}
	if err := os.WriteFile(t.keyFile, keyPEM, 0o600); err != nil {
		return nil, fmt.Errorf("write key: %w", err)
	}
	return t, nil
}
