package caddymodule

import (
	"sort"
	"sync"

	"github.com/caddyserver/caddy/v2"
)

// poolOps is a pool's operations state: the decisions log, the alert rules'
// evaluator and its webhook, and the history the dashboard draws. It lives
// at package level by store key (like the store itself) so that it survives
// config reloads, and so that the admin API, which cannot hold a handler,
// finds the pool's router: handler is the one provisioned last.
type poolOps struct {
	key, pool string

	// mu guards routers: the handlers attached to the pool, oldest first.
	// The last one is the pool's router; a handler of a reload that failed
	// detaches and leaves the running one in place.
	mu      sync.Mutex
	routers []*Handler

	decisions       decisionRing
	capacityRejects secondCounts

	alerts  *alertEvaluator
	history *history

	stopOnce sync.Once
	stop     chan struct{}
	done     chan struct{}
}

// opsPools holds every pool's poolOps by store key.
var opsPools = caddy.NewUsagePool()

// provisionOps attaches the handler to its pool's operations state, creating
// it (and starting its evaluator) for the pool's first router.
func (h *Handler) provisionOps() {
	v, _, _ := opsPools.LoadOrNew(h.storeKey, func() (caddy.Destructor, error) {
		ops := &poolOps{key: h.storeKey, pool: h.Pool, stop: make(chan struct{}), done: make(chan struct{})}
		ops.history = newHistory(historyPoints)
		ops.alerts = newAlertEvaluator(ops, h.logger.Named("alerts"))
		go ops.run()
		return ops, nil
	})
	h.ops = v.(*poolOps)
	h.ops.mu.Lock()
	h.ops.routers = append(h.ops.routers, h)
	h.ops.mu.Unlock()
}

// releaseOps detaches the handler; the pool's evaluator stops with its last
// router.
func (h *Handler) releaseOps() {
	if h.ops == nil {
		return
	}
	h.ops.mu.Lock()
	for i, r := range h.ops.routers {
		if r == h {
			h.ops.routers = append(h.ops.routers[:i], h.ops.routers[i+1:]...)
			break
		}
	}
	h.ops.mu.Unlock()
	_, _ = opsPools.Delete(h.storeKey)
}

// Destruct stops the evaluator and the webhook sender.
func (p *poolOps) Destruct() error {
	p.stopOnce.Do(func() { close(p.stop) })
	<-p.done
	return nil
}

// router returns the pool's current handler, or nil between configs.
func (p *poolOps) router() *Handler {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.routers) == 0 {
		return nil
	}
	return p.routers[len(p.routers)-1]
}

// poolsByName returns the pools that have a router, sorted by pool name then
// store key (two stores may serve pools of one name with different Redis key
// prefixes).
func poolsByName() []*poolOps {
	var out []*poolOps
	opsPools.Range(func(_, v any) bool {
		if p, ok := v.(*poolOps); ok && p.router() != nil {
			out = append(out, p)
		}
		return true
	})
	sort.Slice(out, func(i, j int) bool {
		if out[i].pool != out[j].pool {
			return out[i].pool < out[j].pool
		}
		return out[i].key < out[j].key
	})
	return out
}
