package local

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/spry-run/spry/internal/sandbox"
)

// BenchmarkSpawn measures starting a generic sandboxed runtime until it
// listens (what a cold start costs when the pool is empty), per network
// mode: the cost of each isolation level at start.
func BenchmarkSpawn(b *testing.B) {
	for _, network := range []string{"none", "egress"} {
		b.Run(network, func(b *testing.B) {
			e := newEnv(b, 0)
			for b.Loop() {
				p, err := e.b.spawn(context.Background(), poolKey{"deno", 128, network, ""}, activeShares, nil)
				if err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				e.b.kill(p, "stopped")
				<-p.exited
				b.StartTimer()
			}
		})
	}
}

// BenchmarkColdStartFromPool measures a cold start with a warm pool: take
// a pooled runtime, hand it a bundle, and get the first response.
// With SPRY_BENCH_BUDGETS set, the user's budgets are on, as spry serve
// sets them by default (a quarter of this host's pids and files).
func BenchmarkColdStartFromPool(b *testing.B) {
	e := newEnv(b, 1)
	if os.Getenv("SPRY_BENCH_BUDGETS") != "" {
		e.b.cfg.UserPids, e.b.cfg.UserFiles = sandbox.HostPids()/4, uint64(sandbox.HostFiles()/4)
	}
	spec := e.spec(b, `export default () => new Response("x")`)
	for b.Loop() {
		b.StopTimer()
		for e.b.PoolIdle()["deno"] < 1 {
			time.Sleep(time.Millisecond)
		}
		b.StartTimer()
		inst, err := e.b.Start(context.Background(), spec)
		if err != nil {
			b.Fatal(err)
		}
		if _, body := get(b, inst, "/"); body != "x" {
			b.Fatalf("body %q", body)
		}
		b.StopTimer()
		e.b.Stop(context.Background(), inst.ID)
		b.StartTimer()
	}
}
