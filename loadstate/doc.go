// Package loadstate keeps the live in-flight load of every backend and the
// latency sketches that feed the router's decisions.
//
// A Store hands out slots: Acquire takes a slot on the first of a ranked list of
// candidates that has room, atomically, and records it as a lease named by a
// gateway-generated id; Release gives exactly that lease back. Leases (not bare
// counters) make acquire idempotent, release exact and crash cleanup automatic.
// The in-memory store serves a single gateway replica; the Redis store shares the
// same numbers across every replica of a pool.
//
// WaitQueue parks requests that found every candidate full and wakes them, oldest
// first, when a slot they can use is released.
package loadstate
