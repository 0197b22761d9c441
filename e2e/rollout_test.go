package e2e

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// Changes under live traffic: steady concurrent keep-alive traffic is
// driven at functions while they are deployed, rolled back, split,
// tagged, reconfigured, deleted, scaled to zero or crash, and every
// single answer is checked.

// shot is one request of the traffic and what it got.
type shot struct {
	start, end time.Time
	status     int
	code       string // the platform's Spry-Error, if any
	body       string
	err        error
}

func (h shot) String() string {
	if h.err != nil {
		return fmt.Sprintf("[%s +%v] error %v", h.start.Format("15:04:05.000"), h.end.Sub(h.start).Round(time.Millisecond), h.err)
	}
	return fmt.Sprintf("[%s +%v] %d %s %.200q", h.start.Format("15:04:05.000"), h.end.Sub(h.start).Round(time.Millisecond), h.status, h.code, h.body)
}

// traffic is conns clients, each sending one request after the other on
// its own kept-alive connection, until end.
type traffic struct {
	stop  chan struct{}
	wg    sync.WaitGroup
	tr    *http.Transport
	mu    sync.Mutex
	shots []shot
}

// drive starts traffic at path on s. pause, if set, is how long each
// client waits between its requests.
func (s *server) drive(t *testing.T, conns int, path string, header map[string]string, pause func() time.Duration) *traffic {
	t.Helper()
	tr := &traffic{stop: make(chan struct{}), tr: &http.Transport{MaxIdleConnsPerHost: conns, MaxConnsPerHost: conns, DisableCompression: true}}
	client := &http.Client{Transport: tr.tr, Timeout: 15 * time.Second}
	for i := 0; i < conns; i++ {
		tr.wg.Add(1)
		go func() {
			defer tr.wg.Done()
			for {
				select {
				case <-tr.stop:
					return
				default:
				}
				tr.add(shoot(client, s.url+path, header))
				if pause != nil {
					select {
					case <-tr.stop:
						return
					case <-time.After(pause()):
					}
				}
			}
		}()
	}
	t.Cleanup(func() { tr.end() })
	return tr
}

func shoot(client *http.Client, url string, header map[string]string) shot {
	h := shot{start: time.Now()}
	req, _ := http.NewRequest("GET", url, nil)
	for k, v := range header {
		req.Header.Set(k, v)
	}
	res, err := client.Do(req)
	if err == nil {
		var b []byte
		b, err = io.ReadAll(res.Body)
		res.Body.Close()
		h.status, h.code, h.body = res.StatusCode, res.Header.Get("Spry-Error"), string(b)
	}
	h.err, h.end = err, time.Now()
	return h
}

func (tr *traffic) add(h shot) {
	tr.mu.Lock()
	tr.shots = append(tr.shots, h)
	tr.mu.Unlock()
}

// end stops the traffic and returns every request it sent.
func (tr *traffic) end() []shot {
	select {
	case <-tr.stop:
	default:
		close(tr.stop)
	}
	tr.wg.Wait()
	tr.tr.CloseIdleConnections()
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return slices.Clone(tr.shots)
}

// change is one change made through the API while traffic runs, and the
// answers a request may get once it has returned.
type change struct {
	what       string
	sent, done time.Time
	allowed    []string
}

// changes records a sequence of changes, starting from the answers
// allowed before the first.
type changes struct {
	t    *testing.T
	list []change
}

func newChanges(t *testing.T, allowed ...string) *changes {
	return &changes{t: t, list: []change{{what: "start", allowed: allowed}}}
}

// do makes one change with the API (method, path, JSON body) and records
// what is allowed once it has returned.
func (c *changes) do(s *server, what, method, path, body string, allowed ...string) {
	c.t.Helper()
	ch := change{what: what, sent: time.Now(), allowed: allowed}
	var rd io.Reader
	hdr := map[string]string{}
	if body != "" {
		rd = strings.NewReader(body)
		hdr["Content-Type"] = "application/json"
		if strings.HasPrefix(body, "export") {
			hdr["Content-Type"] = "application/typescript"
		}
	}
	r := s.do(method, path, s.token, rd, hdr)
	ch.done = time.Now()
	if r.status/100 != 2 {
		c.t.Fatalf("%s: %s %s: %d %s", what, method, path, r.status, r.body)
	}
	c.list = append(c.list, ch)
}

// check says which requests got an answer not allowed: a request
// started after a change returned may get what that change allows, or
// what a later change allows if that change was sent before the request
// ended.
func (c *changes) check(shots []shot) []string {
	var bad []string
	for _, h := range shots {
		base := 0
		for i, ch := range c.list {
			if i > 0 && !ch.done.After(h.start) {
				base = i
			}
		}
		ok := h.err == nil && h.status == 200 && slices.Contains(c.list[base].allowed, h.body)
		for _, ch := range c.list[base+1:] {
			if ok || h.err != nil || h.status != 200 {
				break
			}
			ok = ch.sent.Before(h.end) && slices.Contains(ch.allowed, h.body)
		}
		if !ok {
			bad = append(bad, fmt.Sprintf("%v (after %q, which allows %q)", h, c.list[base].what, c.list[base].allowed))
		}
	}
	return bad
}

// report fails t with the first of bad, or logs how many requests were
// sent.
func report(t *testing.T, what string, shots []shot, bad []string) {
	t.Helper()
	if len(bad) > 0 {
		t.Errorf("%s: %d of %d requests wrong; the first:\n%s", what, len(bad), len(shots), strings.Join(bad[:min(len(bad), 10)], "\n"))
		return
	}
	t.Logf("%s: %d requests, all as expected", what, len(shots))
}

// rollCode answers with its version, env FOO and secret S.
func rollCode(n int) string {
	return fmt.Sprintf(`export default { async fetch(req, ctx) {
		await new Promise((r) => setTimeout(r, 5)); // code %d
		return new Response(ctx.version + " " + (ctx.env.FOO ?? "-") + " " + (ctx.env.S ?? "-"));
	} }`, n)
}

// TestRolloutUnderLoad: deploys (several in a row), a rollback, traffic
// splits, tag moves, env and secret changes under steady traffic lose no
// request, and once a change has returned no new request is answered by
// a version it replaced. On the event loops (a public function), on the
// goroutine-per-connection path (a private one), and with no event loops.
func TestRolloutUnderLoad(t *testing.T) {
	for _, tc := range []struct {
		name    string
		flags   []string
		private bool
	}{
		{name: "lane"},
		{name: "private", private: true},
		{name: "no-lane", flags: []string{"--router-loops", "0"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := startServer(t, tc.flags...)
			query := ""
			var auth map[string]string
			if tc.private {
				query = "access=private"
				auth = map[string]string{"Authorization": "Bearer " + s.token}
			}
			s.deployCode(t, "roll", []byte(rollCode(1)), query)
			api := "/api/v1/functions/roll"
			c := newChanges(t, "1 - -")
			// The tag's own traffic is checked apart.
			c.do(s, "tag canary 1", "PUT", api+"/tags/canary", `{"version":1}`, "1 - -")
			tagged := newChanges(t, "1 - -")
			if r := s.do("GET", "/fn/admin/roll/", s.token, nil, nil); r.status != 200 {
				t.Fatalf("warm-up: %d %s", r.status, r.body)
			}
			main := s.drive(t, 24, "/fn/admin/roll/", auth, nil)
			tag := s.drive(t, 4, "/fn/admin/roll@canary/", auth, nil)
			pause := func() { time.Sleep(250 * time.Millisecond) }
			pause()
			// Deploys in a row, with no pause between them.
			for n := 2; n <= 4; n++ {
				c.do(s, fmt.Sprintf("deploy %d", n), "PUT", api+"?"+query, rollCode(n), fmt.Sprintf("%d - -", n))
			}
			pause()
			c.do(s, "rollback", "POST", api+"/rollback", "", "3 - -")
			pause()
			c.do(s, "split 3/4", "PUT", api+"/traffic", `{"3":50,"4":50}`, "3 - -", "4 - -")
			pause()
			c.do(s, "4 at 100", "PUT", api+"/traffic", `{"4":100}`, "4 - -")
			pause()
			c.do(s, "env set", "PATCH", api, `{"env":{"FOO":"a"}}`, "5 a -")
			pause()
			c.do(s, "env unset", "PATCH", api, `{"unset_env":["FOO"]}`, "6 - -")
			pause()
			c.do(s, "secret set", "PATCH", api, `{"secrets":{"S":"x"}}`, "7 - x")
			pause()
			tagged.do(s, "tag canary 7", "PUT", api+"/tags/canary", `{"version":7}`, "7 - x")
			pause()
			tagged.do(s, "tag canary 3", "PUT", api+"/tags/canary", `{"version":3}`, "3 - -")
			pause()
			shots := main.end()
			report(t, "live", shots, c.check(shots))
			tshots := tag.end()
			report(t, "@canary", tshots, tagged.check(tshots))
		})
	}
}

var _ = bytes.NewReader
var _ = rand.IntN
