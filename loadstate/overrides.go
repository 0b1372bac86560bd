package loadstate

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"sync"
	"sync/atomic"
	"time"
)

// Override is an operator's runtime change to one backend, shared by every
// replica of a pool (through Redis when the pool has it) and kept across
// config reloads, keyed by backend name. Its zero value is "no override".
// The store keeps what it is given: the caller (the admin API) validates
// values like configuration before writing them.
type Override struct {
	// Drained: the backend gets no new requests; those in flight finish.
	Drained bool `json:"drained,omitempty"`
	// Weight replaces the configured weight when positive.
	Weight float64 `json:"weight,omitempty"`
	// Capabilities replace the configured scores of the capabilities they
	// name (lower-case names); the others keep their configured scores.
	Capabilities map[string]float64 `json:"capabilities,omitempty"`
	// MaxInflight replaces the configured max_inflight when positive.
	MaxInflight int `json:"max_inflight,omitempty"`
	// UpdatedAt is when the override last changed (the writer's clock).
	UpdatedAt time.Time `json:"updated_at,omitzero"`
}

// IsZero reports whether o changes nothing (UpdatedAt aside).
func (o Override) IsZero() bool {
	return !o.Drained && o.Weight == 0 && len(o.Capabilities) == 0 && o.MaxInflight == 0
}

// clone returns a copy that shares no map with o.
func (o Override) clone() Override {
	if o.Capabilities != nil {
		o.Capabilities = maps.Clone(o.Capabilities)
	}
	return o
}

// OverrideStore is implemented by stores that keep operators' runtime
// overrides: the in-memory store for one replica, the Redis store for the
// whole pool.
type OverrideStore interface {
	// Overrides returns the overrides this replica knows, by backend name,
	// without I/O. The map must not be modified. With Redis it is what the
	// last heartbeat read (or this replica's own last write), so another
	// replica's change shows within about a heartbeat.
	Overrides() map[string]Override
	// OverridesVersion changes whenever Overrides does; it is cheap enough
	// for the request path (one atomic load).
	OverridesVersion() uint64
	// UpdateOverride replaces a backend's override with fn's result,
	// atomically with respect to other updates of the same backend on any
	// replica: fn may run more than once when another update raced it, and
	// must not have side effects. A zero result removes the override. It
	// returns the override stored, or fn's error (nothing is written then).
	UpdateOverride(ctx context.Context, backend string, fn func(Override) (Override, error)) (Override, error)
}

// overrideCache is the copy-on-write set of overrides a store serves to
// Overrides, and its version.
type overrideCache struct {
	current atomic.Pointer[map[string]Override]
	version atomic.Uint64
}

func (c *overrideCache) get() map[string]Override {
	if p := c.current.Load(); p != nil {
		return *p
	}
	return nil
}

// set replaces the overrides when they differ from the current ones.
func (c *overrideCache) set(next map[string]Override) {
	if overridesEqual(c.get(), next) {
		return
	}
	c.current.Store(&next)
	c.version.Add(1)
}

func overridesEqual(a, b map[string]Override) bool {
	if len(a) != len(b) {
		return false
	}
	for k, x := range a {
		y, ok := b[k]
		if !ok || x.Drained != y.Drained || x.Weight != y.Weight || x.MaxInflight != y.MaxInflight ||
			!x.UpdatedAt.Equal(y.UpdatedAt) || !maps.Equal(x.Capabilities, y.Capabilities) {
			return false
		}
	}
	return true
}

// memoryOverrides implements the override part of MemoryStore.
type memoryOverrides struct {
	mu    sync.Mutex
	cache overrideCache
}

// Overrides implements OverrideStore.
func (m *MemoryStore) Overrides() map[string]Override { return m.overrides.cache.get() }

// OverridesVersion implements OverrideStore.
func (m *MemoryStore) OverridesVersion() uint64 { return m.overrides.cache.version.Load() }

// UpdateOverride implements OverrideStore.
func (m *MemoryStore) UpdateOverride(_ context.Context, backend string, fn func(Override) (Override, error)) (Override, error) {
	o := &m.overrides
	o.mu.Lock()
	defer o.mu.Unlock()
	cur := o.cache.get()
	next, err := fn(cur[backend].clone())
	if err != nil {
		return Override{}, err
	}
	all := maps.Clone(cur)
	if all == nil {
		all = map[string]Override{}
	}
	if next.IsZero() {
		delete(all, backend)
		next = Override{}
	} else {
		all[backend] = next.clone()
	}
	o.cache.set(all)
	return next, nil
}

// encodeOverride is an override's form in Redis: JSON.
func encodeOverride(o Override) (string, error) {
	b, err := json.Marshal(o)
	if err != nil {
		return "", fmt.Errorf("encoding override: %w", err)
	}
	return string(b), nil
}

// decodeOverride reads an override written by encodeOverride; a value that
// does not decode (written by hand, or by a future version) is an error.
func decodeOverride(s string) (Override, error) {
	var o Override
	if err := json.Unmarshal([]byte(s), &o); err != nil {
		return Override{}, fmt.Errorf("decoding override: %w", err)
	}
	return o, nil
}

// Interface guards
var _ OverrideStore = (*MemoryStore)(nil)
