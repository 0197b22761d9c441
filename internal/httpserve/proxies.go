package httpserve

import (
	"net/http"
	"net/netip"
	"strings"
)

// Proxies are the peers trusted to say who their client is: a TLS
// proxy in front of Spry, say. Anyone else's X-Forwarded-* headers are
// not believed.
type Proxies []netip.Prefix

// Trusts says whether the peer at ip is one of p.
func (p Proxies) Trusts(ip netip.Addr) bool {
	ip = ip.Unmap()
	for _, q := range p {
		if q.Contains(ip) {
			return true
		}
	}
	return false
}

// Client is the address of the client behind peer: peer itself, unless
// p trusts it, and then the last address in X-Forwarded-For (the fields
// xff, in order) that p does not trust, as each proxy appends the one it
// had the request from. A field that does not parse ends the walk there:
// what comes before it cannot be told apart from what a client made up.
func (p Proxies) Client(peer netip.Addr, xff []string) netip.Addr {
	client := peer.Unmap()
	if !p.Trusts(client) {
		return client
	}
	for i := len(xff) - 1; i >= 0; i-- {
		list := xff[i]
		for list != "" {
			var a string
			if j := strings.LastIndexByte(list, ','); j >= 0 {
				a, list = list[j+1:], list[:j]
			} else {
				a, list = list, ""
			}
			ip, err := netip.ParseAddr(strings.TrimSpace(a))
			if err != nil {
				return client
			}
			client = ip.Unmap().WithZone("")
			if !p.Trusts(client) {
				return client
			}
		}
	}
	return client
}

// ForwardedProto says whether p, a trusted proxy's X-Forwarded-Proto,
// is one to pass on: http or https.
func ForwardedProto(p []byte) bool { return string(p) == "http" || string(p) == "https" }

// RealClient makes what h is told of a request's client true (for the
// API: its limit on failed authentications, the URLs it returns): the
// RemoteAddr of a request from a peer p trusts becomes the client's
// address as p tells it (Client), the port the peer's, and its
// X-Forwarded-Proto and -Host stay when well formed; any other
// request's X-Forwarded-For, -Proto and -Host are dropped, as the
// router drops them for functions.
func RealClient(h http.Handler, p Proxies) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ap, err := netip.ParseAddrPort(r.RemoteAddr)
		trusted := err == nil && p.Trusts(ap.Addr())
		hf, hp, hh := r.Header.Values("X-Forwarded-For"), r.Header.Values("X-Forwarded-Proto"), r.Header.Values("X-Forwarded-Host")
		if !trusted {
			if len(hf)+len(hp)+len(hh) > 0 {
				r = r.Clone(r.Context())
				r.Header.Del("X-Forwarded-For")
				r.Header.Del("X-Forwarded-Proto")
				r.Header.Del("X-Forwarded-Host")
			}
			h.ServeHTTP(w, r)
			return
		}
		r = r.Clone(r.Context())
		r.RemoteAddr = netip.AddrPortFrom(p.Client(ap.Addr(), hf), ap.Port()).String()
		if len(hp) != 1 || !ForwardedProto([]byte(hp[0])) {
			r.Header.Del("X-Forwarded-Proto")
		}
		if len(hh) != 1 || !ValidHost([]byte(hh[0])) {
			r.Header.Del("X-Forwarded-Host")
		}
		h.ServeHTTP(w, r)
	})
}
