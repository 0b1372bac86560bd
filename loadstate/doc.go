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
// RedisStore keeps leases in Redis sorted sets so that every replica of a pool
// shares them: acquire is one Lua round trip, releases are batched in the
// background and announced over pub/sub, and a heartbeat keeps the replica
// registry, reclaims expired leases and exchanges latency sketches. When Redis
// is slow or down a breaker switches the replica to local decisions
// (fail_local: its share of each backend; fail_closed; fail_open) until Redis
// answers again and the live leases are re-added.
//
// WaitQueue parks requests that found every candidate full and wakes them, oldest
// first, when a slot they can use is released.
package loadstate
