package caddymodule

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/modelrouter/modelrouter/engine"
	"github.com/modelrouter/modelrouter/loadstate"
)

// learnedRefresh is how stale the learned view used for ranking may be.
// Merging sketches and fitting latency models is far costlier than ranking,
// so it is done at most this often, by whichever request finds the view
// stale, instead of once per request.
const learnedRefresh = 250 * time.Millisecond

// backendLearned is what was learned about one backend.
type backendLearned struct {
	e2e, ttft time.Duration          // recent p95s (the latency strategy, SLOs)
	perf      map[string]engine.Perf // by upstream model name
	feedback  float64                // adaptive feedback factor, see engine.FeedbackFactor
}

// learnedView is the router's snapshot of what it learned.
type learnedView struct {
	backends []backendLearned
	outputs  map[string]int // public model name → mean output tokens
}

// learnedCache holds the latest learnedView.
type learnedCache struct {
	mu      sync.Mutex
	at      atomic.Int64 // unix nanos of the last refresh
	current atomic.Pointer[learnedView]
}

func (c *learnedCache) get(h *Handler, t time.Time) *learnedView {
	if cur := c.current.Load(); cur != nil && t.UnixNano()-c.at.Load() < int64(learnedRefresh) {
		return cur
	}
	if !c.mu.TryLock() {
		if cur := c.current.Load(); cur != nil {
			return cur // someone else is refreshing; slightly stale is fine
		}
		c.mu.Lock()
	}
	defer c.mu.Unlock()
	fresh := &learnedView{backends: make([]backendLearned, len(h.backends)), outputs: make(map[string]int, len(h.models)+1)}
	for i := range h.backends {
		name := h.backends[i].Name
		bl := &fresh.backends[i]
		bl.e2e = h.sketches.Quantile(name, loadstate.EndToEnd, 0.95)
		bl.ttft = h.sketches.Quantile(name, loadstate.TTFT, 0.95)
		bl.perf = make(map[string]engine.Perf, len(h.upstreams[i]))
		var attempts, errors int
		for k, up := range h.upstreams[i] {
			lb := h.learner.Backend(name, up)
			bl.perf[up] = lb.Perf
			if k == 0 {
				attempts, errors = lb.Attempts, lb.Errors
			}
		}
		bc := &h.Backends[i]
		sloLatency, sloTTFT := h.SLOLatency, h.SLOTTFT
		if bc.SLOLatency > 0 {
			sloLatency = bc.SLOLatency
		}
		if bc.SLOTTFT > 0 {
			sloTTFT = bc.SLOTTFT
		}
		bl.feedback = max(engine.FeedbackFactor(errors, attempts, bl.e2e, time.Duration(sloLatency))*
			engine.SLOFactor(bl.ttft, time.Duration(sloTTFT)), engine.MinFeedback)
	}
	for _, m := range h.models {
		fresh.outputs[m] = h.learner.MeanOutput(m)
	}
	fresh.outputs[engine.AutoModel] = h.learner.MeanOutput(engine.AutoModel)
	c.current.Store(fresh)
	c.at.Store(t.UnixNano())
	return fresh
}
