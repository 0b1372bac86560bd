package loadstate

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// MemoryStore keeps in-flight load in this process only. It serves a single
// gateway replica: the counts are exact, acquire never blocks on I/O, and every
// lease dies with the process, so leases need no expiry.
type MemoryStore struct {
	mu       sync.Mutex
	backends atomic.Pointer[map[string]*memoryBackend] // copy on write: Inflight reads it without the lock
	leases   map[string]memoryLease                    // lease id → what it holds

	watchers watchers
	// overrides are operators' runtime changes (see OverrideStore).
	overrides memoryOverrides
}

type memoryBackend struct {
	// Written under MemoryStore.mu, read lock-free by Inflight and Tokens.
	inflight, tokens atomic.Int64
}

// memoryLease is what one lease holds: a slot on backend and its tokens.
type memoryLease struct {
	backend string
	tokens  int64
}

// NewMemoryStore returns an empty in-memory store.
func NewMemoryStore() *MemoryStore {
	m := &MemoryStore{leases: make(map[string]memoryLease)}
	m.backends.Store(&map[string]*memoryBackend{})
	return m
}

// backend returns a backend's counter, adding it (under m.mu) on first use.
func (m *MemoryStore) backend(name string) *memoryBackend {
	cur := *m.backends.Load()
	if b := cur[name]; b != nil {
		return b
	}
	next := make(map[string]*memoryBackend, len(cur)+1)
	for k, v := range cur {
		next[k] = v
	}
	b := new(memoryBackend)
	next[name] = b
	m.backends.Store(&next)
	return b
}

// Acquire implements Store.
func (m *MemoryStore) Acquire(ctx context.Context, id string, candidates []Slot) (int, error) {
	if err := ctx.Err(); err != nil {
		return -1, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if held, ok := m.leases[id]; ok {
		for i, c := range candidates {
			if c.Backend == held.backend {
				return i, nil
			}
		}
		// Held on a backend that is no longer a candidate: keep the lease where
		// it is rather than take a second slot under the same id.
		return -1, nil
	}
	for i, c := range candidates {
		b := m.backend(c.Backend)
		cost := int64(max(c.Tokens, 0))
		if b.inflight.Load() < int64(c.Capacity) && fitsTokens(b.tokens.Load(), cost, int64(c.TokenCapacity)) {
			b.inflight.Add(1)
			b.tokens.Add(cost)
			m.leases[id] = memoryLease{backend: c.Backend, tokens: cost}
			return i, nil
		}
	}
	return -1, nil
}

// Release implements Store.
func (m *MemoryStore) Release(_ context.Context, id, backend string) error {
	m.mu.Lock()
	held, ok := m.leases[id]
	if !ok || held.backend != backend {
		m.mu.Unlock()
		return nil
	}
	delete(m.leases, id)
	b := m.backend(backend)
	b.inflight.Add(-1)
	b.tokens.Add(-held.tokens)
	m.mu.Unlock()
	m.watchers.notify(backend)
	return nil
}

// Renew implements Store; in-memory leases do not expire.
func (m *MemoryStore) Renew(context.Context, string, string) error { return nil }

// Inflight implements Store.
func (m *MemoryStore) Inflight(backend string) int {
	b := (*m.backends.Load())[backend]
	if b == nil {
		return 0
	}
	return int(b.inflight.Load())
}

// Tokens implements Store: the token costs in flight on backend.
func (m *MemoryStore) Tokens(backend string) int {
	b := (*m.backends.Load())[backend]
	if b == nil {
		return 0
	}
	return int(b.tokens.Load())
}

// Snapshot implements Store.
func (m *MemoryStore) Snapshot(context.Context) (map[string]int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	cur := *m.backends.Load()
	out := make(map[string]int, len(cur))
	for name, b := range cur {
		if n := b.inflight.Load(); n != 0 {
			out[name] = int(n)
		}
	}
	return out, nil
}

// Watch implements Store.
func (m *MemoryStore) Watch(fn func(backend string)) (stop func()) { return m.watchers.add(fn) }

// LeaseTTL implements Store: in-memory leases never expire.
func (m *MemoryStore) LeaseTTL() time.Duration { return 0 }

// watchers is a copy-on-write list of release callbacks, so that notifying
// takes no lock on the release path.
type watchers struct {
	mu   sync.Mutex
	next int
	list atomic.Pointer[[]watcher]
}

type watcher struct {
	id int
	fn func(string)
}

func (w *watchers) add(fn func(string)) func() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.next++
	id := w.next
	var cur []watcher
	if p := w.list.Load(); p != nil {
		cur = *p
	}
	next := append(append([]watcher(nil), cur...), watcher{id: id, fn: fn})
	w.list.Store(&next)
	var once sync.Once
	return func() {
		once.Do(func() {
			w.mu.Lock()
			defer w.mu.Unlock()
			cur := *w.list.Load()
			next := make([]watcher, 0, len(cur))
			for _, x := range cur {
				if x.id != id {
					next = append(next, x)
				}
			}
			w.list.Store(&next)
		})
	}
}

func (w *watchers) notify(backend string) {
	p := w.list.Load()
	if p == nil {
		return
	}
	for _, x := range *p {
		x.fn(backend)
	}
}

// Interface guards
var _ Store = (*MemoryStore)(nil)
