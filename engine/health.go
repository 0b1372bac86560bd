package engine

import (
	"sync"
	"sync/atomic"
	"time"
)

// Default passive-health settings, used by NewHealth for values <= 0.
const (
	DefaultMaxFails = 3
	DefaultCooldown = 10 * time.Second
)

// Health is passive health checking: it counts consecutive failed requests per
// backend and puts a backend aside (cools it down) when the count reaches
// maxFails. The caller feeds the result into Load.CoolingDown, which
// CooldownFilter reads.
//
// It is a circuit breaker with a half-open state: when the cooldown ends the
// backend is tried again, but its failure count stays at maxFails, so a single
// further failure cools it down again; a single success closes the breaker and
// resets the count. Time is passed in, never read, so tests drive it directly.
//
// Health is keyed by backend name (from configuration, so the map stays
// bounded), mutex-protected and safe for concurrent use.
type Health struct {
	maxFails int
	cooldown time.Duration

	mu    sync.Mutex
	state map[string]healthState

	// Lock-free fast paths for the common case of a healthy fleet, read on
	// every request: how many backends have any failure recorded, and the
	// latest end of any cooldown (unix nanos).
	tracked     atomic.Int64
	latestUntil atomic.Int64
}

// healthState is one backend's breaker. A backend with no entry is healthy.
type healthState struct {
	fails int       // consecutive failures, capped at maxFails
	until time.Time // end of the current or last cooldown
}

// NewHealth returns a Health that cools a backend down for cooldown after
// maxFails consecutive failures. maxFails <= 0 means DefaultMaxFails (3);
// cooldown <= 0 means DefaultCooldown (10s).
func NewHealth(maxFails int, cooldown time.Duration) *Health {
	if maxFails <= 0 {
		maxFails = DefaultMaxFails
	}
	if cooldown <= 0 {
		cooldown = DefaultCooldown
	}
	return &Health{maxFails: maxFails, cooldown: cooldown, state: make(map[string]healthState)}
}

// Fail records a failed request on backend at now. At maxFails consecutive
// failures (or at the first failure after a cooldown: half-open) the backend
// cools down until now+cooldown. Failures reported while it is already cooling
// down come from requests sent before, so they do not extend the cooldown.
func (h *Health) Fail(backend string, now time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	st := h.state[backend]
	if now.Before(st.until) {
		return
	}
	if st.fails < h.maxFails {
		st.fails++
	}
	if st.fails >= h.maxFails {
		st.until = now.Add(h.cooldown)
		if u := st.until.UnixNano(); u > h.latestUntil.Load() {
			h.latestUntil.Store(u)
		}
	}
	h.state[backend] = st
	h.tracked.Store(int64(len(h.state)))
}

// Succeed records a successful request on backend: it resets the failure count
// and closes the breaker. A success proves the backend answers, so it also ends
// a cooldown early.
func (h *Health) Succeed(backend string) {
	if h.tracked.Load() == 0 {
		return
	}
	h.mu.Lock()
	delete(h.state, backend)
	h.tracked.Store(int64(len(h.state)))
	h.mu.Unlock()
}

// CoolingDown reports whether backend is put aside at now.
func (h *Health) CoolingDown(backend string, now time.Time) bool {
	if now.UnixNano() >= h.latestUntil.Load() {
		return false // no cooldown reaches this far
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	st, ok := h.state[backend]
	return ok && now.Before(st.until)
}
