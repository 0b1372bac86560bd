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
	// DefaultProbeInterval spaces the probes sent to a cooling-down backend
	// when no other backend can take the request (capped at the cooldown).
	DefaultProbeInterval = time.Second

	// DefaultRateLimitBackoff is how long a backend that answered 429 without
	// a usable Retry-After is skipped; MinRateLimitBackoff and
	// MaxRateLimitBackoff bound the Retry-After a backend may ask for, so that
	// a hostile or broken upstream cannot take itself out for hours.
	DefaultRateLimitBackoff = 5 * time.Second
	MinRateLimitBackoff     = time.Second
	MaxRateLimitBackoff     = time.Minute
)

// Availability is what passive health says about sending a request to a
// backend now.
type Availability uint8

const (
	// Available: healthy; send requests freely.
	Available Availability = iota
	// ProbeAvailable: the breaker is half-open (the cooldown ended, or it is
	// cooling down and a probe is due): one request may go as a probe, after
	// claiming it with TryProbe.
	ProbeAvailable
	// Unavailable: cooling down, rate-limited, or half-open with its probe
	// already in flight.
	Unavailable
)

// HealthState is one backend's passive-health state, for operators.
type HealthState uint8

const (
	StateHealthy HealthState = iota
	StateCoolingDown
	StateHalfOpen
	StateRateLimited
)

var healthStateNames = [...]string{"ok", "cooling_down", "half_open", "rate_limited"}

// String returns "ok", "cooling_down", "half_open" or "rate_limited".
func (s HealthState) String() string {
	if int(s) < len(healthStateNames) {
		return healthStateNames[s]
	}
	return "unknown"
}

// Health is passive health checking: a circuit breaker per backend fed by the
// outcome of every attempt (see Outcome).
//
//   - Closed: failures (OutcomeFailed, OutcomeBroken) are counted; a success
//     resets the count. At maxFails consecutive failures the breaker opens.
//   - Open (cooling down) for the cooldown: the backend gets no requests while
//     any other candidate can take them. When none can, one probe request at a
//     time may go through, at most one per probe interval, rather than
//     refusing everything: a blip must not turn into a cooldown-long outage.
//   - Half-open once the cooldown ended: one probe request at a time. A
//     success closes the breaker; a failure opens it again for a cooldown.
//   - Rate-limited (an upstream 429) for the backend's Retry-After, bounded
//     by [MinRateLimitBackoff, MaxRateLimitBackoff] (DefaultRateLimitBackoff
//     when it sent none): skipped, not probed; the backend said when to come
//     back.
//
// Client-side outcomes (OutcomeClientGone, OutcomeClientError) are no evidence
// either way: they only end a probe. Failures of requests sent before the
// breaker opened do not extend the cooldown.
//
// Time is passed in, never read, so tests drive it directly. Health is keyed by
// backend name (from configuration, so the map stays bounded) and safe for
// concurrent use; the common case of a healthy fleet is answered lock-free.
type Health struct {
	maxFails      int
	cooldown      time.Duration
	probeInterval time.Duration

	mu    sync.Mutex
	state map[string]*healthState

	// tracked is how many backends have a state; 0 means every backend is
	// healthy, answered without the lock on every request.
	tracked atomic.Int64
}

// healthState is one backend's breaker. A backend with no entry is healthy.
type healthState struct {
	fails        int       // consecutive failures, capped at maxFails
	openUntil    time.Time // end of the current or last cooldown
	nextProbe    time.Time // earliest start of the next probe while open
	limitedUntil time.Time // rate-limited until
	probing      bool      // a probe is in flight
}

func (st *healthState) open(maxFails int) bool { return st.fails >= maxFails }

// NewHealth returns a Health that opens a backend's breaker for cooldown after
// maxFails consecutive failures. maxFails <= 0 means DefaultMaxFails (3);
// cooldown <= 0 means DefaultCooldown (10s).
func NewHealth(maxFails int, cooldown time.Duration) *Health {
	if maxFails <= 0 {
		maxFails = DefaultMaxFails
	}
	if cooldown <= 0 {
		cooldown = DefaultCooldown
	}
	return &Health{maxFails: maxFails, cooldown: cooldown, probeInterval: min(DefaultProbeInterval, cooldown),
		state: make(map[string]*healthState)}
}

// Check says whether backend may get a request at now. alone reports that no
// other candidate can take the request: a cooling-down backend is then
// offered for a probe once its probe interval has passed. When the answer is
// not Available, retryAt is the earliest time the backend may be usable again
// (the next probe, or the end of a rate limit).
func (h *Health) Check(backend string, now time.Time, alone bool) (a Availability, retryAt time.Time) {
	if h.tracked.Load() == 0 {
		return Available, time.Time{}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	st := h.state[backend]
	if st == nil {
		return Available, time.Time{}
	}
	return h.checkLocked(st, now, alone)
}

func (h *Health) checkLocked(st *healthState, now time.Time, alone bool) (Availability, time.Time) {
	if now.Before(st.limitedUntil) {
		return Unavailable, st.limitedUntil
	}
	if !st.open(h.maxFails) {
		return Available, time.Time{}
	}
	if st.probing {
		// The probe's verdict is due within a request's time; come back soon.
		return Unavailable, now.Add(h.probeInterval)
	}
	if !now.Before(st.openUntil) || (alone && !now.Before(st.nextProbe)) {
		return ProbeAvailable, time.Time{}
	}
	next := st.nextProbe
	if !alone || next.After(st.openUntil) {
		next = st.openUntil
	}
	return Unavailable, next
}

// TryProbe claims the probe of a backend whose Check said ProbeAvailable (with
// the same alone). It reports false when another request claimed it first or
// the backend is no longer probe-able. A claimed probe ends with Record(...,
// probe=true) or EndProbe.
func (h *Health) TryProbe(backend string, now time.Time, alone bool) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	st := h.state[backend]
	if st == nil {
		return false
	}
	if a, _ := h.checkLocked(st, now, alone); a != ProbeAvailable {
		return false
	}
	st.probing = true
	return true
}

// EndProbe gives a claimed probe back without a verdict (the request never
// reached the backend, or its outcome says nothing about it).
func (h *Health) EndProbe(backend string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if st := h.state[backend]; st != nil {
		st.probing = false
	}
}

// Record feeds the outcome of one attempt on backend, ended at now. probe
// says whether the attempt was the backend's claimed probe (it is ended).
// retryAfter is the backend's Retry-After for OutcomeRateLimited (0 when it
// sent none). It reports whether the outcome was news to the breaker (it
// counted against the backend, or cleared state it had): what other
// replicas sharing the backend need to hear.
func (h *Health) Record(backend string, o Outcome, now time.Time, probe bool, retryAfter time.Duration) bool {
	if o == OutcomeSuccess && !probe && h.tracked.Load() == 0 {
		return false // the common case: healthy stays healthy, no lock
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	st := h.state[backend]
	if st == nil {
		if o == OutcomeSuccess || !o.AgainstBackend() {
			return false
		}
		st = new(healthState)
		h.state[backend] = st
		h.tracked.Store(int64(len(h.state)))
	}
	if probe {
		st.probing = false
	}
	switch o {
	case OutcomeSuccess:
		// Proof the backend answers: close the breaker. A rate limit stands:
		// this request may have been sent before the backend asked for a pause.
		st.fails = 0
		st.openUntil, st.nextProbe = time.Time{}, time.Time{}
	case OutcomeRateLimited:
		d := retryAfter
		if d <= 0 {
			d = DefaultRateLimitBackoff
		}
		d = min(max(d, MinRateLimitBackoff), MaxRateLimitBackoff)
		if until := now.Add(d); until.After(st.limitedUntil) {
			st.limitedUntil = until
		}
	case OutcomeFailed, OutcomeBroken:
		if st.open(h.maxFails) && now.Before(st.openUntil) && !probe {
			break // sent before the breaker opened: already accounted for
		}
		st.fails = min(st.fails+1, h.maxFails)
		if st.open(h.maxFails) {
			st.openUntil = now.Add(h.cooldown)
			st.nextProbe = now.Add(h.probeInterval)
		}
	}
	if st.fails == 0 && !st.probing && !now.Before(st.limitedUntil) {
		delete(h.state, backend)
		h.tracked.Store(int64(len(h.state)))
	}
	return o.AgainstBackend() || o == OutcomeSuccess
}

// State reports backend's state at now and, for cooling_down and
// rate_limited, until when.
func (h *Health) State(backend string, now time.Time) (HealthState, time.Time) {
	if h.tracked.Load() == 0 {
		return StateHealthy, time.Time{}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	st := h.state[backend]
	switch {
	case st == nil:
		return StateHealthy, time.Time{}
	case now.Before(st.limitedUntil):
		return StateRateLimited, st.limitedUntil
	case !st.open(h.maxFails):
		return StateHealthy, time.Time{}
	case now.Before(st.openUntil):
		return StateCoolingDown, st.openUntil
	}
	return StateHalfOpen, time.Time{}
}

// CoolingDown reports whether backend is put aside at now for requests that
// have somewhere else to go: cooling down, rate-limited, or half-open with its
// probe in flight.
func (h *Health) CoolingDown(backend string, now time.Time) bool {
	a, _ := h.Check(backend, now, false)
	return a == Unavailable
}
