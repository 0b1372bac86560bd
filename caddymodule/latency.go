package caddymodule

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/modelrouter/modelrouter/loadstate"
)

// latencyRefresh is how stale the p95s used for ranking may be. Merging the
// sketches is far costlier than ranking, so it is done at most this often, by
// whichever request finds the cache stale, instead of once per request.
const latencyRefresh = 250 * time.Millisecond

type backendLatency struct {
	e2e, ttft time.Duration
}

// latencyCache holds every backend's recent p95s for the scorers.
type latencyCache struct {
	mu      sync.Mutex
	at      atomic.Int64 // unix nanos of the last refresh
	current atomic.Pointer[[]backendLatency]
}

func (c *latencyCache) get(h *Handler, t time.Time) []backendLatency {
	if cur := c.current.Load(); cur != nil && t.UnixNano()-c.at.Load() < int64(latencyRefresh) {
		return *cur
	}
	if !c.mu.TryLock() {
		if cur := c.current.Load(); cur != nil {
			return *cur // someone else is refreshing; slightly stale is fine
		}
		c.mu.Lock()
	}
	defer c.mu.Unlock()
	fresh := make([]backendLatency, len(h.backends))
	for i := range h.backends {
		name := h.backends[i].Name
		fresh[i] = backendLatency{
			e2e:  h.sketches.Quantile(name, loadstate.EndToEnd, 0.95),
			ttft: h.sketches.Quantile(name, loadstate.TTFT, 0.95),
		}
	}
	c.current.Store(&fresh)
	c.at.Store(t.UnixNano())
	return fresh
}
