package cli

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spry-run/spry/internal/api"
)

// A deploy the server refuses as busy (429: the user has the most
// deploys in progress; 503: the most wait server-wide), which it does
// before reading the body, is sent again after the Retry-After the
// server gave, saying so on stderr; it used to fail at once (exit 6).
// The real API is driven into each refusal by deploys held open.
func TestDeployWaitsForABusyServer(t *testing.T) {
	for _, tt := range []struct {
		name               string
		maxDeploys, queued int // the server's slots; deploys to have waiting
		status             int
	}{
		// The user's deploys fill their share of the queue before the
		// server's fills.
		{"429", 2, api.MaxDeploysQueuedPerUser - 2, http.StatusTooManyRequests},
		{"503", 1, 1, http.StatusServiceUnavailable},
	} {
		t.Run(tt.name, func(t *testing.T) {
			url, admin := apiServerConfig(t, nil, api.Config{MaxCodeBytes: 1 << 20, MaxDeploys: tt.maxDeploys, MaxDeploysWaiting: tt.queued})
			// The transport sends a body only once the server has asked
			// for it (100 Continue), which the API does once the deploy
			// is admitted: a write to the body returns then.
			hc := &http.Client{Transport: &http.Transport{ExpectContinueTimeout: time.Minute}}
			deploy := func(name string, body io.Reader, expect bool) chan int {
				done := make(chan int, 1)
				req, _ := http.NewRequest("PUT", url+"/api/v1/functions/"+name, body)
				req.Header.Set("Authorization", "Bearer "+admin)
				req.Header.Set("Content-Type", "application/json")
				if expect {
					req.Header.Set("Expect", "100-continue")
				}
				go func() {
					res, err := hc.Do(req)
					if err != nil {
						done <- 0
						return
					}
					res.Body.Close()
					done <- res.StatusCode
				}()
				return done
			}
			// Deploys admitted, their bodies held.
			var held []*io.PipeWriter
			var ends []chan int
			for i := range tt.maxDeploys {
				pr, pw := io.Pipe()
				t.Cleanup(func() { pw.CloseWithError(io.ErrUnexpectedEOF) })
				ends = append(ends, deploy("held"+string(rune('a'+i)), pr, true))
				if _, err := pw.Write([]byte("{")); err != nil {
					t.Fatal(err)
				}
				held = append(held, pw)
			}
			// One more than can wait: all but one wait (their empty
			// bodies are refused once admitted), the last is refused.
			answers := make(chan int, tt.queued+1)
			for i := range tt.queued + 1 {
				done := deploy("wait"+string(rune('a'+i)), http.NoBody, false)
				go func() { answers <- <-done }()
			}
			if s := <-answers; s != tt.status {
				t.Fatalf("a deploy answered %d before the server was full; want %d", s, tt.status)
			}

			file := helloFile(t, "hello.ts")
			var waits []time.Duration
			var out, errb bytes.Buffer
			code := Main(context.Background(), Env{
				Args:    []string{"deploy", file, "--url", url, "--token", admin},
				Environ: []string{"SPRY_CONFIG=" + filepath.Join(t.TempDir(), "config.json"), "HOME=" + t.TempDir()},
				Stdin:   strings.NewReader(""),
				Stdout:  &out,
				Stderr:  &errb,
				Sleep: func(ctx context.Context, d time.Duration) error {
					waits = append(waits, d)
					// Meanwhile the deploys in progress end.
					for _, pw := range held {
						go func() {
							_, _ = io.WriteString(pw, `"code":"export default { fetch() { return new Response('hi') } }"}`)
							pw.Close()
						}()
					}
					held = nil
					for _, done := range ends {
						if s := <-done; s != http.StatusCreated {
							t.Errorf("a held deploy answered %d, want 201", s)
						}
					}
					ends = nil
					for range tt.queued {
						// The waiting ones, admitted, then refused for
						// their empty bodies.
						if s := <-answers; s != http.StatusBadRequest {
							t.Errorf("a waiting deploy answered %d, want 400", s)
						}
					}
					return nil
				},
			})
			if code != 0 || !strings.HasPrefix(out.String(), "deployed admin/hello version 1\n") {
				t.Errorf("spry deploy: exit %d, stdout %q, stderr %q; want it deployed", code, out.String(), errb.String())
			}
			if len(waits) != 1 || waits[0] != 5*time.Second {
				t.Errorf("waited %v, want once, the server's Retry-After (5s)", waits)
			}
			if !strings.HasPrefix(errb.String(), "server busy, retrying in 5s (") || strings.Count(errb.String(), "\n") != 1 {
				t.Errorf("stderr %q, want one line saying it waits", errb.String())
			}
		})
	}
}
