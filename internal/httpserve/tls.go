package httpserve

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"
)

// TLSConfig is the listener's TLS settings: TLS 1.2 or later, Go's
// default cipher suites, and HTTP/1.1 alone, which is all fasthttp
// speaks; the certificate is cert's.
func TLSConfig(cert func(*tls.ClientHelloInfo) (*tls.Certificate, error)) *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS12, NextProtos: []string{"http/1.1"}, GetCertificate: cert}
}

// TLSListener is Listener over TLS: its connections are *TLSConn, whose
// handshake fasthttp runs (within its read timeout) and for which
// ctx.IsTLS is true. A client that speaks plain HTTP to it is answered
// 400, in a line saying to use https, and the connection closed.
func TLSListener(ln net.Listener, cfg *tls.Config, after time.Duration, log *slog.Logger) net.Listener {
	return &tlsListener{Listener(tls.NewListener(ln, cfg), after, log)}
}

type tlsListener struct{ net.Listener }

func (l *tlsListener) Accept() (net.Conn, error) {
	nc, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	c := nc.(*Conn)
	return &TLSConn{Conn: c, tls: c.Conn.(*tls.Conn)}, nil
}

// TLSConn is a Conn over TLS. fasthttp tells TLS connections by their
// Handshake and ConnectionState methods, which a plain Conn must not
// have; everything else sees the Conn (ConnOf).
type TLSConn struct {
	*Conn
	tls   *tls.Conn
	plain bool // the client spoke plain HTTP, and was answered
}

// Handshake runs the TLS handshake (fasthttp calls it before reading
// the first request).
func (c *TLSConn) Handshake() error {
	err := c.tls.Handshake()
	var re tls.RecordHeaderError
	if errors.As(err, &re) && re.Conn != nil && plainHTTP(re.RecordHeader[:]) {
		// As net/http does: a plain request would otherwise get its
		// connection closed and no word why.
		_ = re.Conn.SetWriteDeadline(time.Now().Add(time.Second))
		_, _ = re.Conn.Write([]byte("HTTP/1.0 400 Bad Request\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n" +
			`{"error":{"code":"invalid_argument","message":"this server speaks HTTPS: send the request to an https:// URL"}}` + "\n"))
		c.plain = true
	}
	if err != nil {
		return fmt.Errorf("%s %w", handshakeFailed, err)
	}
	return nil
}

// handshakeFailed begins the error of a failed handshake, which the
// server's logger keeps to debug: it is the client's doing (a scanner,
// plain HTTP, a client that does not trust the certificate), told on
// its side.
const handshakeFailed = "TLS handshake failed:"

// ConnectionState is the TLS connection's state.
func (c *TLSConn) ConnectionState() tls.ConnectionState { return c.tls.ConnectionState() }

// Close closes the connection lingering, as Conn.Close does; one that
// spoke plain HTTP lingers on the raw socket, since no TLS was set up.
func (c *TLSConn) Close() error {
	if !c.plain {
		return c.Conn.Close()
	}
	raw := c.Detach().(*tls.Conn).NetConn()
	if hc, ok := raw.(interface{ CloseWrite() error }); ok && hc.CloseWrite() == nil {
		go linger(raw)
		return nil
	}
	return raw.Close()
}

// plainHTTP says whether a record header that is not TLS's begins a
// plain HTTP request.
func plainHTTP(hdr []byte) bool {
	for _, m := range []string{"GET /", "HEAD ", "POST ", "PUT /", "OPTIO", "DELET", "PATCH", "CONNE", "TRACE"} {
		if string(hdr) == m {
			return true
		}
	}
	return false
}

// ConnOf is the Conn that nc is, or that carries it over TLS.
func ConnOf(nc net.Conn) (*Conn, bool) {
	if c, ok := nc.(*Conn); ok {
		return c, true
	}
	if c, ok := nc.(*TLSConn); ok {
		return c.Conn, true
	}
	return nil, false
}
