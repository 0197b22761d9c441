package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	neturl "net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spry-run/spry/internal/client"
	"github.com/spry-run/spry/internal/errdefs"
)

// connFlags resolves where the server is and which token to use: flags,
// then SPRY_URL/SPRY_TOKEN, then the file `spry login` writes, whose token
// goes only to the server saved with it.
type connFlags struct {
	env   Env
	url   string
	token string
	ca    string // --ca-cert
	// tokenFrom is where resolve found the token (--token, SPRY_TOKEN or
	// the config file's name), for a refusal of it to say which it was.
	tokenFrom string
}

// fileConfig is the login config file.
type fileConfig struct {
	URL   string `json:"url"`
	Token string `json:"token"`
	// CACert is the certificate file of a CA the server's is signed by,
	// trusted besides the system's (--ca-cert at login).
	CACert string `json:"ca_cert,omitempty"`
}

func configPath(environ []string) (string, error) {
	if p := lookupEnv(environ, "SPRY_CONFIG"); p != "" {
		return p, nil
	}
	dir := lookupEnv(environ, "XDG_CONFIG_HOME")
	if dir == "" {
		home := lookupEnv(environ, "HOME")
		if home == "" {
			return "", errors.New("cannot find a config directory: set HOME or SPRY_CONFIG")
		}
		dir = filepath.Join(home, ".config")
	}
	return filepath.Join(dir, "spry", "config.json"), nil
}

// readFileConfig reads the login config file; a missing one is no
// config, and one that does not parse is reported (bad) so that a
// command left without a token can say why.
func readFileConfig(environ []string) (fc fileConfig, bad error) {
	p, err := configPath(environ)
	if err != nil {
		return fc, nil
	}
	data, err := os.ReadFile(p)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fc, nil
		}
		return fc, fmt.Errorf("cannot read the config file %s: %w", p, err)
	}
	if err := json.Unmarshal(data, &fc); err != nil {
		return fileConfig{}, fmt.Errorf("the config file %s is not valid JSON (%v); run `spry login` again", p, err)
	}
	return fc, nil
}

func writeFileConfig(environ []string, fc fileConfig) (string, error) {
	p, err := configPath(environ)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return "", err
	}
	data, _ := json.MarshalIndent(fc, "", "  ")
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return "", err
	}
	// The mode is only applied to a new file: one already there with a
	// looser mode must not get the token as it is.
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return "", err
	}
	_, err = f.Write(append(data, '\n'))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return p, err
}

const defaultURL = "http://127.0.0.1:8080"

// resolve returns the server URL and token to use. bad says why the
// config file could not be read (it matters only to a command left
// without a token); err is a server URL that is not one.
func (c *connFlags) resolve() (url, token string, bad, err error) {
	fc, bad := readFileConfig(c.env.Environ)
	url, from := defaultURL, ""
	switch {
	case c.url != "":
		url, from = c.url, "--url"
	case lookupEnv(c.env.Environ, "SPRY_URL") != "":
		url, from = lookupEnv(c.env.Environ, "SPRY_URL"), "SPRY_URL"
	case fc.URL != "":
		url = fc.URL
		from, _ = configPath(c.env.Environ)
		from = "the URL in " + from
	}
	if err := checkURL(url); err != nil {
		shown := url
		if u, perr := neturl.Parse(url); perr == nil && u.User != nil {
			shown = u.Redacted()
		}
		return "", "", bad, errdefs.Invalid("%s %q is not a server URL (%v): want http://HOST[:PORT] or https://HOST[:PORT], with a path if a proxy serves the API under one", from, shown, err)
	}
	// The saved token is the saved server's: sent to another one (named by
	// --url or SPRY_URL), it would give that server the key to this one.
	if strings.TrimRight(url, "/") != strings.TrimRight(first(fc.URL, defaultURL), "/") {
		if fc.Token != "" {
			// Said if no other token is given: the user who ran `spry
			// login` thinks they have one.
			p, _ := configPath(c.env.Environ)
			bad = fmt.Errorf("the token in %s is for %s, not %s (%s); pass --token, or run `spry login` for this server", p, fc.URL, url, from)
		}
		fc.Token = ""
	}
	switch p, _ := configPath(c.env.Environ); {
	case c.token != "":
		token, c.tokenFrom = c.token, "--token"
	case lookupEnv(c.env.Environ, "SPRY_TOKEN") != "":
		token, c.tokenFrom = lookupEnv(c.env.Environ, "SPRY_TOKEN"), "SPRY_TOKEN"
	case fc.Token != "":
		token, c.tokenFrom = fc.Token, p
	}
	// A token read from a file ($(cat token) keeps a \r) or pasted may
	// come with white space around it, which no token holds; inside it,
	// Go refused the header as if the server could not be reached.
	token = strings.TrimSpace(token)
	if strings.ContainsFunc(token, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		return "", "", bad, errdefs.New(errdefs.ErrUnauthenticated, "the token from %s is not a Spry token: it holds a space or a control character", c.tokenFrom)
	}
	return url, token, bad, nil
}

// checkURL checks that raw is an http(s) URL of a host that the API's
// paths can be appended to. Without this, "127.0.0.1:8080" (no scheme)
// failed as Go's parse error or as a server that cannot be reached, and a
// query or fragment swallowed the paths appended after it.
func checkURL(raw string) error {
	u, err := neturl.Parse(raw)
	switch {
	case !strings.Contains(raw, "://"):
		return errors.New("no http:// or https://") // whatever Parse made of it
	case err != nil:
		return errors.Unwrap(err) // the url.Error repeats raw
	case u.Scheme != "http" && u.Scheme != "https":
		return errors.New("no http:// or https://")
	case u.Host == "":
		return errors.New("no host")
	case u.User != nil:
		// Never sent (the token is), and a password would be printed
		// with the URL in every message that names the server.
		return errors.New("a user name or password, which Spry does not use: the token goes in --token or SPRY_TOKEN")
	case u.RawQuery != "" || u.ForceQuery:
		return errors.New("a query")
	case u.Fragment != "":
		return errors.New("a fragment")
	case strings.HasSuffix(strings.TrimRight(u.Path, "/"), "/api/v1"):
		// The API's base URL, as docs/api.md names it: every command
		// answered "no API endpoint at /api/v1/api/v1/...".
		return errors.New("it ends in /api/v1, which spry adds itself: give the server's URL without it")
	}
	return nil
}

func (c *connFlags) client() (*client.Client, error) {
	url, token, bad, err := c.resolve()
	if err != nil {
		return nil, err
	}
	if token == "" && bad != nil {
		return nil, errdefs.New(errdefs.ErrUnauthenticated, "no API token: %v", bad)
	}
	if token == "" {
		return nil, errdefs.New(errdefs.ErrUnauthenticated, "no API token: set SPRY_TOKEN, pass --token, or run `spry login`")
	}
	return c.newClient(url, token)
}

// caCert is the file of the CA certificate to trust besides the
// system's for the server at url, and where it was named: --ca-cert,
// else SPRY_CA_CERT, else the login config's if url is the server saved
// with it. "" is none.
func (c *connFlags) caCert(url string) (file, from string) {
	switch {
	case c.ca != "":
		return c.ca, "--ca-cert"
	case lookupEnv(c.env.Environ, "SPRY_CA_CERT") != "":
		return lookupEnv(c.env.Environ, "SPRY_CA_CERT"), "SPRY_CA_CERT"
	}
	fc, _ := readFileConfig(c.env.Environ)
	if fc.CACert == "" || strings.TrimRight(url, "/") != strings.TrimRight(first(fc.URL, defaultURL), "/") {
		return "", ""
	}
	p, _ := configPath(c.env.Environ)
	return fc.CACert, "the CA certificate in " + p
}

// newClient is a client of the server at url, trusting the CA that
// caCert names, that says on stderr when it waits for a busy server to
// send a request again.
func (c *connFlags) newClient(url, token string) (*client.Client, error) {
	cl := client.New(url, token)
	if file, from := c.caCert(url); file != "" {
		pem, err := os.ReadFile(file)
		if err == nil {
			err = cl.TrustCA(pem)
		}
		if err != nil {
			return nil, errdefs.Invalid("%s %s: %v", from, file, err)
		}
	}
	cl.Sleep = c.env.Sleep
	cl.Busy = func(wait time.Duration, why error) {
		fmt.Fprintf(c.env.Stderr, "server busy, retrying in %s (%v)\n", wait, why)
	}
	return cl, nil
}

func first(vals ...string) string {
	for _, v := range vals {
		if v != "" {
			return v
		}
	}
	return ""
}
