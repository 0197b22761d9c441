package httpserve

import (
	"net/http"
	"net/http/httptest"
	"net/netip"
	"testing"
)

func TestProxiesClient(t *testing.T) {
	p := Proxies{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00::/8")}
	for _, tt := range []struct {
		peer string
		xff  []string
		want string
	}{
		{"203.0.113.1", []string{"1.2.3.4"}, "203.0.113.1"},                        // not a proxy: its word is not taken
		{"127.0.0.1", nil, "127.0.0.1"},                                            // a proxy that says nothing
		{"127.0.0.1", []string{"198.51.100.7"}, "198.51.100.7"},                    // one proxy
		{"127.0.0.1", []string{"6.6.6.6, 198.51.100.7"}, "198.51.100.7"},           // a client's made-up entry before the proxy's
		{"127.0.0.1", []string{"6.6.6.6, 198.51.100.7, 10.1.1.1"}, "198.51.100.7"}, // two proxies
		{"127.0.0.1", []string{"6.6.6.6", "198.51.100.7"}, "198.51.100.7"},         // fields in order
		{"127.0.0.1", []string{"10.0.0.2, 10.0.0.3"}, "10.0.0.2"},                  // only proxies: the first
		{"127.0.0.1", []string{"6.6.6.6, junk, 10.0.0.3"}, "10.0.0.3"},             // junk ends the walk
		{"::ffff:127.0.0.1", []string{"2001:db8::5"}, "2001:db8::5"},               // a mapped peer
		{"127.0.0.1", []string{" 198.51.100.7 "}, "198.51.100.7"},                  // spaces
		{"127.0.0.1", []string{"fe80::1%eth0"}, "fe80::1"},                         // no zone
	} {
		got := p.Client(netip.MustParseAddr(tt.peer), tt.xff)
		if got.String() != tt.want {
			t.Errorf("peer %s, X-Forwarded-For %q: %s, want %s", tt.peer, tt.xff, got, tt.want)
		}
	}
}

func FuzzProxiesClient(f *testing.F) {
	f.Add("127.0.0.1", "6.6.6.6, 198.51.100.7")
	f.Add("203.0.113.1", "1.2.3.4")
	p := Proxies{netip.MustParsePrefix("127.0.0.0/8")}
	f.Fuzz(func(t *testing.T, peer, xff string) {
		pa, err := netip.ParseAddr(peer)
		if err != nil {
			return
		}
		c := p.Client(pa, []string{xff})
		if !c.IsValid() {
			t.Fatalf("no client for %q %q", peer, xff)
		}
		if !p.Trusts(pa) && c != pa.Unmap() {
			t.Fatalf("an untrusted peer %s was taken at its word: %s", pa, c)
		}
	})
}

func TestRealClient(t *testing.T) {
	type seen struct{ remote, xff, proto, host string }
	var got seen
	h := RealClient(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = seen{r.RemoteAddr, r.Header.Get("X-Forwarded-For"), r.Header.Get("X-Forwarded-Proto"), r.Header.Get("X-Forwarded-Host")}
	}), Proxies{netip.MustParsePrefix("127.0.0.1/32")})
	for _, tt := range []struct {
		remote, xff, proto, host string
		want                     seen
	}{
		{"127.0.0.1:5000", "198.51.100.7", "https", "api.example.com", seen{"198.51.100.7:5000", "198.51.100.7", "https", "api.example.com"}},
		{"127.0.0.1:5000", "", "", "", seen{"127.0.0.1:5000", "", "", ""}},
		{"127.0.0.1:5000", "198.51.100.7", "javascript", "a b", seen{"198.51.100.7:5000", "198.51.100.7", "", ""}},
		{"192.0.2.1:5000", "198.51.100.7", "https", "api.example.com", seen{"192.0.2.1:5000", "", "", ""}},
		{"192.0.2.1:5000", "", "", "", seen{"192.0.2.1:5000", "", "", ""}},
	} {
		r := httptest.NewRequest("GET", "/", nil)
		r.RemoteAddr = tt.remote
		for k, v := range map[string]string{"X-Forwarded-For": tt.xff, "X-Forwarded-Proto": tt.proto, "X-Forwarded-Host": tt.host} {
			if v != "" {
				r.Header.Set(k, v)
			}
		}
		h.ServeHTTP(httptest.NewRecorder(), r)
		if got != tt.want {
			t.Errorf("%s with %q %q %q: %+v, want %+v", tt.remote, tt.xff, tt.proto, tt.host, got, tt.want)
		}
	}
}
