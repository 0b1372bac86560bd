package loadstate

import (
	"context"
	"errors"
	"time"
)

// Slot names one candidate backend for Acquire and its capacity as currently
// configured. Capacity travels with every call so a config reload that changes
// max_inflight takes effect at once, on every replica.
type Slot struct {
	Backend  string // backend name, from configuration
	Capacity int    // max_inflight
	// Tokens is the request's token cost (prompt estimate + output tokens);
	// TokenCapacity, when positive, bounds the sum of the costs in flight
	// on the backend (max_tokens_inflight). A request whose cost alone is
	// over TokenCapacity is admitted only while no tokens are in flight.
	Tokens, TokenCapacity int
	// Probe: the candidate may only be taken as its half-open breaker's
	// probe. A shared store lets one request at a time, fleet-wide, be a
	// backend's probe (engine.Health does it for one replica).
	Probe bool
}

// fitsTokens reports whether a request of cost tokens fits next to inUse
// tokens under capacity (see Slot).
func fitsTokens(inUse, cost, capacity int64) bool {
	return capacity <= 0 || inUse <= 0 || inUse+cost <= capacity
}

// Store is where in-flight load lives. Implementations must be safe for
// concurrent use.
type Store interface {
	// Acquire takes a slot on the first candidate, in order, that has room and
	// records it under lease id. It returns the index of that candidate, or -1
	// when none has room. Calling it again with an id that already holds a slot
	// returns that slot's index and takes nothing more (idempotent under retries).
	Acquire(ctx context.Context, id string, candidates []Slot) (int, error)

	// Release gives the lease back. Releasing a lease that is not held (already
	// released, expired, never taken) is not an error and changes nothing.
	// Release must not block on I/O, whatever ctx allows: it runs on every
	// request's way out. Stores that share state may apply it asynchronously: the slot is free in
	// this replica's counts at once and for Acquire shortly after; Watch
	// callbacks fire once it is.
	Release(ctx context.Context, id, backend string) error

	// Renew extends a lease that is still in use (long streams) so that it is not
	// reclaimed as abandoned.
	Renew(ctx context.Context, id, backend string) error

	// Inflight returns this replica's current view of a backend's fleet-wide
	// in-flight count without blocking on I/O. Stores that share state refresh
	// the view from every Acquire reply.
	Inflight(backend string) int

	// Tokens returns this replica's view of the token costs in flight on a
	// backend (see Slot), without blocking on I/O.
	Tokens(backend string) int

	// Snapshot returns the authoritative in-flight count of every backend that
	// has any.
	Snapshot(ctx context.Context) (map[string]int, error)

	// Watch calls fn with a backend's name whenever a slot on it is released, by
	// this replica or (for shared stores) another. fn must not block. The
	// returned function stops the calls.
	Watch(fn func(backend string)) (stop func())

	// LeaseTTL is how long a lease lives without renewal; 0 means leases never
	// expire (the in-memory store, whose leases die with the process).
	LeaseTTL() time.Duration
}

// ErrUnavailable wraps errors of a store that cannot reach its backing service.
var ErrUnavailable = errors.New("load store unavailable")
