package loadstate

import (
	"crypto/sha256"
	"encoding/hex"
)

// keyspace builds the Redis keys of one pool:
//
//	<prefix>:{<pool>}:<kind>[:<id>]
//
// Only the pool sits inside the {hash tag}, so every key of a pool lands in one
// Redis Cluster slot (the Lua scripts touch several of them atomically, which
// Cluster allows only within a slot) while different pools spread across the
// cluster.
//
// Every name that goes into a key passes through keyPart. Pool, prefix and
// backend names come from configuration and the caller validates them to
// [A-Za-z0-9._-]{1,64}, but the key builder does not rely on that: anything
// else is replaced by a hash, so no string can break out of its segment (a ':'
// or a '{' in a pool name would move keys to another slot or collide with
// another kind) or make keys unboundedly long. The number of keys is bounded by
// the configured backends (one lease set and two sketch hashes each) plus a
// fixed handful per pool; lease ids and replica ids are members and fields of
// those keys, never key names.
type keyspace struct {
	base string // "<prefix>:{<pool>}:"
}

func newKeyspace(prefix, pool string) keyspace {
	return keyspace{base: keyPart(prefix) + ":{" + keyPart(pool) + "}:"}
}

// lease is the sorted set of a backend's leases: member = lease member (lease
// id and attempt), score = expiry in Unix milliseconds of Redis's clock.
func (k keyspace) lease(backend string) string { return k.base + "lease:" + keyPart(backend) }

// epoch holds a random value set by whoever finds it missing; a change tells
// every replica that Redis lost its data.
func (k keyspace) epoch() string { return k.base + "epoch" }

// replicas is the sorted set of live replicas: member = replica id, score =
// last heartbeat in Unix milliseconds of Redis's clock.
func (k keyspace) replicas() string { return k.base + "replicas" }

// replicaInfo is the hash of replica id → its address and version.
func (k keyspace) replicaInfo() string { return k.base + "replica-info" }

// replicaSync is the hash of replica id → its sync mark: the epoch under which
// all its live leases are in Redis, or "" when some may not be.
func (k keyspace) replicaSync() string { return k.base + "replica-sync" }

// backends is the set of backend names any replica of the pool has used, so
// that Snapshot can report backends this replica never touched.
func (k keyspace) backends() string { return k.base + "backends" }

// sketch is the hash of replica id → that replica's encoded latency window for
// one backend's metric.
func (k keyspace) sketch(backend string, m Metric) string {
	return k.base + "sketch:" + keyPart(backend) + ":" + m.String()
}

// learned is the hash of replica id → that replica's encoded learned window
// (latency models, error rates, output lengths; see Learner).
func (k keyspace) learned() string { return k.base + "learned" }

// probes is the hash of backend → "<lease member>|<expiry ms>": the half-open
// probe a replica holds on that backend (one at a time, fleet-wide).
func (k keyspace) probes() string { return k.base + "probes" }

// tickets is the hash of the pool's waiting requests: ticket id (a lease id)
// → ticket (see queueLua).
func (k keyspace) tickets() string { return k.base + "tickets" }

// queue is the sorted set of the tickets waiting for a backend: member =
// ticket id, score = place in line (arrival in Redis ms plus the class's
// aging).
func (k keyspace) queue(backend string) string { return k.base + "queue:" + keyPart(backend) }

// grants is the prefix of the replicas' grant channels: a replica hears on
// grants+<its id> that a slot was handed to one of its waiting requests.
func (k keyspace) grants() string { return k.base + "granted:" }

// overrides is the hash of backend → the operators' runtime override of it,
// JSON (see Override); overridesVersion counts its changes, so a replica
// reads the hash only when it moved.
func (k keyspace) overrides() string        { return k.base + "overrides" }
func (k keyspace) overridesVersion() string { return k.base + "overrides-version" }

// released is the pub/sub channel on which freed slots are announced.
func (k keyspace) released() string { return k.base + "released" }

// maxKeyPart is the longest name used in a key as is.
const maxKeyPart = 64

// keyPart returns name unchanged when it is a plain configuration name
// ([A-Za-z0-9._-]{1,64}) and otherwise "~" and a hash of it. '~' is outside the
// plain alphabet, so a hashed name never equals a plain one.
func keyPart(name string) string {
	if plainName(name) {
		return name
	}
	sum := sha256.Sum256([]byte(name))
	return "~" + hex.EncodeToString(sum[:12])
}

func plainName(name string) bool {
	if len(name) == 0 || len(name) > maxKeyPart {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '.', c == '_', c == '-':
		default:
			return false
		}
	}
	return true
}
