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

// RealClient sets each request's RemoteAddr to its client's address, as
// p tells it (Client), for what h does by address (the API's limit on
// failed authentications, say): behind a trusted proxy every request
// would otherwise come from the proxy. The port is the peer's.
func RealClient(h http.Handler, p Proxies) http.Handler {
	if len(p) == 0 {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
			if c := p.Client(ap.Addr(), r.Header.Values("X-Forwarded-For")); c != ap.Addr().Unmap() {
				r2 := *r
				r2.RemoteAddr = netip.AddrPortFrom(c, ap.Port()).String()
				r = &r2
			}
		}
		h.ServeHTTP(w, r)
	})
}
