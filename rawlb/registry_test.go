package rawlb

import (
	"fmt"
	"sync"
	"testing"

	"github.com/rawlb/rawlb/config"
)

// TestConcurrentRebuildsKeepTheLatestState: health transitions of one
// service's backends arrive on separate checking goroutines, each
// rebuilding the scheduler. A rebuild that read the backends before
// another's transition must not be the one published last: seen in make
// test, where three backends came up within a millisecond and one of them
// never took a flow.
func TestConcurrentRebuildsKeepTheLatestState(t *testing.T) {
	const n = 8
	h := newHarness(t, func(c *config.Config) {
		c.Services[0].Backends = nil
		for i := range n {
			c.Services[0].Backends = append(c.Services[0].Backends,
				config.Backend{Name: fmt.Sprintf("b%d", i), Address: fmt.Sprintf("198.18.0.%d:8090", 11+i), Weight: 1})
		}
	})
	svc := h.b.dp.reg.Load().list[0]
	backends := *svc.backends.Load()
	for round := range 300 {
		for _, be := range backends {
			be.healthy.Store(false)
		}
		if err := svc.rebuild(); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		for _, be := range backends {
			wg.Go(func() {
				be.healthy.Store(true)
				if err := svc.rebuild(); err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
		if got := svc.sched.Load().s.Len(); got != n {
			t.Fatalf("round %d: every backend is up, but the scheduler has %d of %d", round, got, n)
		}
	}
}
