package build

import (
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"path"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/evanw/esbuild/pkg/api"

	"github.com/spry-run/spry/internal/errdefs"
)

// Remote module limits.
const (
	DefaultFetchTimeout  = 30 * time.Second // one module, when DirOptions.FetchTimeout is 0
	DefaultMaxFetchBytes = 10 << 20         // one module, when DirOptions.MaxFetchBytes is 0
	maxRemoteModules     = 1000
	maxRemoteTotal       = 100 << 20
	maxRedirects         = 10
)

// remoteModule is a fetched module.
type remoteModule struct {
	code   string
	final  string // URL after redirects: relative imports resolve against it
	loader api.Loader
}

// fetcher downloads remote modules once per build: every pass of a
// BundleDir reuses what an earlier one fetched.
type fetcher struct {
	client  *http.Client
	timeout time.Duration
	max     int64
	agent   string

	mu    sync.Mutex
	cache map[string]*fetchResult
	total int64
}

type fetchResult struct {
	done chan struct{}
	mod  remoteModule
	err  error
}

// fetch returns the module at u, downloading it on first use.
func (f *fetcher) fetch(ctx context.Context, u string) (remoteModule, error) {
	f.mu.Lock()
	if f.cache == nil {
		f.cache = map[string]*fetchResult{}
	}
	r, ok := f.cache[u]
	if !ok {
		if len(f.cache) >= maxRemoteModules {
			f.mu.Unlock()
			return remoteModule{}, errdefs.New(errdefs.ErrTooLarge, "more than %d remote modules", maxRemoteModules)
		}
		r = &fetchResult{done: make(chan struct{})}
		f.cache[u] = r
	}
	f.mu.Unlock()
	if !ok {
		r.mod, r.err = f.get(ctx, u)
		if r.err != nil && ctx.Err() != nil {
			// Don't cache a cancellation.
			f.mu.Lock()
			delete(f.cache, u)
			f.mu.Unlock()
		}
		close(r.done)
	}
	select {
	case <-r.done:
		return r.mod, r.err
	case <-ctx.Done():
		return remoteModule{}, ctx.Err()
	}
}

func (f *fetcher) get(ctx context.Context, u string) (remoteModule, error) {
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return remoteModule{}, errdefs.Invalid("%s: %v", u, err)
	}
	req.Header.Set("Accept", "application/typescript, text/typescript, application/javascript, text/javascript, application/json;q=0.9, */*;q=0.8")
	req.Header.Set("User-Agent", f.agent)
	resp, err := f.client.Do(req)
	if err != nil {
		if ctx.Err() == context.DeadlineExceeded {
			return remoteModule{}, errdefs.New(errdefs.ErrTimeout, "fetch %s: no answer within %v", u, f.timeout)
		}
		return remoteModule{}, errdefs.Invalid("fetch %s: %v", u, cleanFetchError(err))
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return remoteModule{}, errdefs.Invalid("fetch %s: %s", u, resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, f.max+1))
	if err != nil {
		if ctx.Err() == context.DeadlineExceeded {
			return remoteModule{}, errdefs.New(errdefs.ErrTimeout, "fetch %s: not received within %v", u, f.timeout)
		}
		return remoteModule{}, errdefs.Invalid("fetch %s: %v", u, cleanFetchError(err))
	}
	if int64(len(body)) > f.max {
		return remoteModule{}, errdefs.New(errdefs.ErrTooLarge, "%s is larger than %d bytes", u, f.max)
	}
	f.mu.Lock()
	f.total += int64(len(body))
	total := f.total
	f.mu.Unlock()
	if total > maxRemoteTotal {
		return remoteModule{}, errdefs.New(errdefs.ErrTooLarge, "remote modules total more than %d bytes", maxRemoteTotal)
	}
	final := u
	if resp.Request != nil && resp.Request.URL != nil {
		final = resp.Request.URL.String()
	}
	return remoteModule{code: string(body), final: final, loader: remoteLoader(final, resp.Header.Get("Content-Type"))}, nil
}

// cleanFetchError drops the "Get "url": " prefix the URL is already named by.
func cleanFetchError(err error) error {
	if errors.Is(err, errNotPublic) {
		// Not the address: a host's name is the deployer's, what it
		// resolves to on this server's network is not theirs to learn.
		return errNotPublic
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// remoteLoader picks a loader from the URL's extension, else from the
// media type, else JavaScript, as Deno does.
func remoteLoader(u, contentType string) api.Loader {
	if p, err := url.Parse(u); err == nil {
		if l, ok := dirLoaders[strings.ToLower(path.Ext(p.Path))]; ok {
			return l
		}
	}
	mt, _, _ := mime.ParseMediaType(contentType)
	switch {
	case strings.Contains(mt, "tsx"):
		return api.LoaderTSX
	case strings.Contains(mt, "jsx"):
		return api.LoaderJSX
	case strings.Contains(mt, "typescript"):
		return api.LoaderTS
	case strings.HasSuffix(mt, "json"):
		return api.LoaderJSON
	}
	return api.LoaderJS
}

// remoteURL validates a remote import: http or https, a host, no
// credentials. The fragment is dropped.
func remoteURL(u *url.URL) (string, error) {
	if u.Scheme != "http" && u.Scheme != "https" {
		return "", fmt.Errorf("only http: and https: imports can be fetched, not %s", quoteName(u.String()))
	}
	if u.Host == "" {
		return "", fmt.Errorf("%s has no host", quoteName(u.String()))
	}
	if u.User != nil {
		return "", fmt.Errorf("%s must not hold credentials", quoteName(u.Redacted()))
	}
	u.Fragment, u.RawFragment = "", ""
	return u.String(), nil
}

// defaultClient fetches remote modules from public addresses only: a
// deploy must not be able to make the server fetch (and bundle, for the
// user to read) what its own network serves, like cloud metadata or
// internal services. The check is made on the address actually dialled,
// so DNS can't get around it, and again for every redirect.
var defaultClient = sync.OnceValue(func() *http.Client {
	dialer := &net.Dialer{Timeout: 10 * time.Second, Control: publicOnly}
	return &http.Client{
		Transport: &http.Transport{
			DialContext:            dialer.DialContext,
			TLSHandshakeTimeout:    10 * time.Second,
			ResponseHeaderTimeout:  30 * time.Second,
			MaxResponseHeaderBytes: 64 << 10,
			ForceAttemptHTTP2:      true,
			MaxIdleConnsPerHost:    4,
			IdleConnTimeout:        30 * time.Second,
		},
		CheckRedirect: checkRedirect,
	}
})

func checkRedirect(req *http.Request, via []*http.Request) error {
	if len(via) >= maxRedirects {
		return fmt.Errorf("more than %d redirects", maxRedirects)
	}
	if req.URL.Scheme != "http" && req.URL.Scheme != "https" {
		return fmt.Errorf("redirect to a %s: URL", req.URL.Scheme)
	}
	return nil
}

// nonPublic lists ranges that are not on the public internet beyond what
// netip.Addr's methods cover.
var nonPublic = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),
	netip.MustParsePrefix("100.64.0.0/10"),  // carrier-grade NAT
	netip.MustParsePrefix("192.0.0.0/24"),   // IETF protocol assignments
	netip.MustParsePrefix("198.18.0.0/15"),  // benchmarking
	netip.MustParsePrefix("240.0.0.0/4"),    // reserved
	netip.MustParsePrefix("64:ff9b::/96"),   // NAT64: an IPv4 address behind
	netip.MustParsePrefix("64:ff9b:1::/48"), // local-use NAT64
	netip.MustParsePrefix("2001:db8::/32"),  // documentation
	// Tunnels that carry an IPv4 address inside (a host with such a
	// tunnel would reach it): 6to4 and Teredo.
	netip.MustParsePrefix("2002::/16"),
	netip.MustParsePrefix("2001::/32"),
}

var errNotPublic = errors.New("the host is not on a public address")

// publicOnly is a net.Dialer Control refusing non-public addresses.
func publicOnly(network, address string, _ syscall.RawConn) error {
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return err
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return err
	}
	ip = ip.Unmap()
	bad := !ip.IsGlobalUnicast() || ip.IsPrivate() || ip.IsLoopback() || ip.IsLinkLocalUnicast() || ip.IsUnspecified()
	for _, p := range nonPublic {
		bad = bad || p.Contains(ip)
	}
	if bad {
		return errNotPublic
	}
	return nil
}
