package caddymodule

import (
	"fmt"
	"sort"
	"sync"

	"github.com/caddyserver/caddy/v2"

	"github.com/modelrouter/modelrouter/loadstate"
)

// stores holds the load stores and latency sketches by pool. They live at
// package level so that in-flight counts survive a config reload: the old
// handler's requests release into the same store the new handler acquires from.
var stores = caddy.NewUsagePool()

type pooledStore struct {
	pool     string
	store    loadstate.Store
	redis    *loadstate.RedisStore // the same store when it is the Redis one, for Tune
	sketches *loadstate.Sketches
	learner  *loadstate.Learner
	close    func() error

	mu       sync.Mutex
	backends map[string]bool // every backend a router of this store was configured with, for metrics
}

func (p *pooledStore) addBackends(names []string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.backends == nil {
		p.backends = make(map[string]bool)
	}
	for _, n := range names {
		p.backends[n] = true
	}
}

func (p *pooledStore) backendNames() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]string, 0, len(p.backends))
	for n := range p.backends {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

func (p *pooledStore) Destruct() error {
	if p.close != nil {
		return p.close()
	}
	return nil
}

func (h *Handler) provisionStore(ctx caddy.Context) error {
	if h.Redis != nil {
		return h.provisionRedisStore(ctx)
	}
	h.storeKey = "memory:" + h.Pool
	v, _, err := stores.LoadOrNew(h.storeKey, func() (caddy.Destructor, error) {
		return &pooledStore{pool: h.Pool, store: loadstate.NewMemoryStore(), sketches: loadstate.NewSketches(0, 0, nil),
			learner: loadstate.NewLearner(0, 0, nil)}, nil
	})
	if err != nil {
		return fmt.Errorf("setting up load store for pool %s: %w", h.Pool, err)
	}
	ps := v.(*pooledStore)
	h.store, h.sketches, h.learner = ps.store, ps.sketches, ps.learner
	ps.addBackends(h.backendNames())
	return nil
}

func (h *Handler) releaseStore() {
	if h.storeKey != "" {
		_, _ = stores.Delete(h.storeKey)
	}
}

func (h *Handler) backendNames() []string {
	out := make([]string, len(h.Backends))
	for i, b := range h.Backends {
		out[i] = b.Name
	}
	return out
}
