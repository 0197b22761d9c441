package local

import (
	"context"
	"sync"
	"testing"
)

// TestRapidStartStop starts and stops egress instances from several
// goroutines at once, with the pool refilling meanwhile: network namespaces
// come and go concurrently, which once made sandbox setup fail now and then.
func TestRapidStartStop(t *testing.T) {
	e := newEnv(t, 2)
	spec := e.spec(t, `export default () => new Response("x")`)
	var wg sync.WaitGroup
	for w := 0; w < 3; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 15; i++ {
				inst, err := e.b.Start(context.Background(), spec)
				if err != nil {
					t.Error(err)
					continue
				}
				if err := e.b.Stop(context.Background(), inst.ID); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
}
