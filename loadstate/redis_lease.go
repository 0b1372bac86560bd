package loadstate

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"time"
)

// Release implements Store. The lease is given back locally at once and
// removed from Redis by the background releaser, in batches, retried until
// the lease would have expired anyway. Replicas waiting for the slot are told
// once Redis has the release.
func (s *RedisStore) Release(_ context.Context, id, backend string) error {
	now := s.opts.Now()
	s.mu.Lock()
	h := s.held[id]
	if h == nil || h.backend.name != backend {
		s.mu.Unlock()
		return nil
	}
	delete(s.held, id)
	st := h.backend
	st.dropLocked(h)
	down := s.down.Load()
	if h.inRedis {
		s.queue = append(s.queue, pendingRelease{backend: st, member: h.member, until: now.Add(h.lease), notified: down})
	}
	s.mu.Unlock()
	if h.inRedis && !down {
		s.signal()
		return nil
	}
	// The slot is free in local state now; nobody else needs telling.
	s.tell(backend)
	return nil
}

func decrementFloor(v *atomic.Int64) {
	for {
		cur := v.Load()
		if cur <= 0 || v.CompareAndSwap(cur, cur-1) {
			return
		}
	}
}

// Renew implements Store: the lease is extended to a full lease from now,
// locally and in Redis; its length is the one it was taken with, or the
// store's current lease when that is longer (after Tune). A lease Redis no longer has (it expired during a stall,
// or Redis lost it), or that was taken while Redis was unusable, is re-added by
// the background resync rather than here, so a renewal that races with the
// release of the same lease (a renewal timer firing as the request ends) can
// never bring it back. While Redis is unusable the lease is extended locally
// only. An error wraps ErrUnavailable and is informational: the lease stays
// held.
func (s *RedisStore) Renew(ctx context.Context, id, backend string) error {
	now := s.opts.Now()
	s.mu.Lock()
	h := s.held[id]
	if h == nil || h.backend.name != backend {
		s.mu.Unlock()
		return nil
	}
	t := s.tun()
	lease := max(h.lease, t.Lease)
	h.expires = now.Add(lease)
	if !h.inRedis || s.down.Load() || s.closed.Load() {
		s.mu.Unlock()
		return nil
	}
	key, member := h.backend.key, h.member
	s.mu.Unlock()

	start := time.Now()
	cctx, cancel := context.WithTimeout(ctx, t.Timeout)
	extended, err := renewScript.Run(cctx, s.client, []string{key}, lease.Milliseconds(), member).Int64()
	cancel()
	s.stats.renewals.Add(1)
	if err != nil {
		if !callerEnded(ctx) {
			s.callFailed("renew", start, err)
		} else {
			s.stats.errors.Add(1)
		}
		return fmt.Errorf("renewing lease on %s: %w: %w", backend, ErrUnavailable, err)
	}
	s.callSucceeded()
	if extended == 1 {
		s.mu.Lock()
		if s.held[id] == h && h.inRedis {
			h.lease, h.confirmed = lease, now
		}
		s.mu.Unlock()
	} else {
		s.mu.Lock()
		if s.held[id] == h { // still in flight: the fleet must count it again
			h.inRedis = false
			s.needSync.Store(true)
		}
		s.mu.Unlock()
		s.signal()
	}
	return nil
}

// maxBatch bounds the leases sent in one release or resync script.
const maxBatch = 256

// flushReleases sends the queued releases in batches. On failure the batch is
// put back (to be retried until the leases would have expired anyway), local
// watchers are told (the slots are free in local state), and the breaker
// counts the failure.
func (s *RedisStore) flushReleases() bool {
	batch := make([]pendingRelease, 0, 16)
	for {
		now := s.opts.Now()
		batch = batch[:0]
		s.mu.Lock()
		taken := 0
		for _, r := range s.queue {
			if len(batch) == maxBatch {
				break
			}
			taken++
			if now.Before(r.until) {
				batch = append(batch, r)
			}
		}
		s.queue = append(s.queue[:0], s.queue[taken:]...)
		events := s.healthQueue
		s.healthQueue = nil
		s.mu.Unlock()
		if len(batch) == 0 && len(events) == 0 {
			return true
		}

		n := len(batch)
		keys := make([]string, 2+2*n)
		args := make([]any, 7+2*n)
		keys[0], keys[1] = s.keys.probes(), s.keys.tickets()
		assign, aging := s.queueMode()
		args[0], args[1], args[2], args[3], args[4], args[5], args[6] = s.chanArg, s.opts.ReplicaID, encodeHealthEvents(events),
			s.grantPrefix, s.tun().leaseMs, assign, aging
		for i, r := range batch {
			keys[2+i] = r.backend.key
			keys[2+n+i] = r.backend.queueKey
			args[7+i] = r.member
			args[7+n+i] = r.backend.nameArg
		}
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), s.bgTimeout())
		res, err := releaseScript.Run(ctx, s.client, keys, args...).Int64Slice()
		cancel()
		s.stats.releases.Add(1)
		if err == nil && len(res) != 2 {
			err = fmt.Errorf("release script: reply of %d values", len(res))
		}
		if err != nil {
			s.mu.Lock()
			s.queue = append(batch, s.queue...)
			for i := range batch {
				s.queue[i].notified = true
			}
			// Health news is current or worthless: not kept for later.
			s.mu.Unlock()
			s.notifyReleased(batch)
			s.callFailed("release", start, err)
			return false
		}
		s.callSucceeded()
		s.stats.releasedLeases.Add(uint64(res[0]))
		s.stats.publishes.Add(uint64(res[1]))
		s.notifyReleased(batch)
		batch = make([]pendingRelease, 0, 16) // the failed path may keep the old one queued
	}
}

// notifyReleased tells local watchers once per backend of a released batch.
func (s *RedisStore) notifyReleased(batch []pendingRelease) {
	var seen [8]*backendState
	told := seen[:0]
next:
	for _, r := range batch {
		if r.notified {
			continue
		}
		for _, b := range told {
			if b == r.backend {
				continue next
			}
		}
		told = append(told, r.backend)
		s.tell(r.backend.name)
	}
}

// syncLeases (re-)adds this replica's live leases to Redis: all of them after
// an outage, otherwise those taken while Redis was unusable or found missing.
// It needs no capacity check: these requests are in flight whatever Redis
// says.
func (s *RedisStore) syncLeases(all bool) bool {
	now := s.opts.Now()
	type readd struct {
		h     *heldLease
		key   string
		lease time.Duration
	}
	var batch []readd
	s.mu.Lock()
	for _, h := range s.held {
		if (all || !h.inRedis) && now.Before(h.expires) {
			h.inRedis = true // a release from now on must remove it from Redis
			batch = append(batch, readd{h, h.backend.key, h.lease})
		}
	}
	// The members are read under the lock; they never change afterwards.
	members := make([]string, len(batch))
	for i, r := range batch {
		members[i] = r.h.member
	}
	s.mu.Unlock()
	for len(batch) > 0 {
		n := min(len(batch), maxBatch)
		chunk := batch[:n]
		keys := make([]string, n)
		args := make([]any, 2*n)
		for i, r := range chunk {
			keys[i] = r.key
			args[2*i], args[2*i+1] = members[i], r.lease.Milliseconds()
		}
		sent := s.opts.Now()
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), s.bgTimeout())
		added, err := readdScript.Run(ctx, s.client, keys, args...).Int64()
		cancel()
		s.stats.resyncs.Add(1)
		if err != nil {
			s.needSync.Store(true)
			s.callFailed("resync", start, err)
			return false
		}
		s.callSucceeded()
		s.mu.Lock()
		for _, r := range chunk {
			if r.h.inRedis && r.lease >= r.h.lease {
				r.h.lease, r.h.confirmed = r.lease, sent
			}
		}
		s.mu.Unlock()
		s.stats.resyncedLeases.Add(uint64(added))
		batch, members = batch[n:], members[n:]
	}
	return true
}

// expireLocal drops leases that were neither released nor renewed within a
// lease: Redis has expired them too, and local counts must not leak.
func (s *RedisStore) expireLocal() {
	now := s.opts.Now()
	var expired []pendingRelease
	s.mu.Lock()
	for id, h := range s.held {
		if now.After(h.expires) {
			delete(s.held, id)
			h.backend.dropLocked(h)
			expired = append(expired, pendingRelease{backend: h.backend, member: h.member})
			if h.inRedis {
				s.queue = append(s.queue, pendingRelease{backend: h.backend, member: h.member, until: now.Add(h.lease), notified: true})
			}
		}
	}
	s.mu.Unlock()
	if len(expired) > 0 {
		s.stats.expiredLeases.Add(uint64(len(expired)))
		s.notifyReleased(expired)
		s.signal()
	}
}

// listen turns release announcements of other replicas into Watch calls. Its
// own announcements are skipped: local watchers were told when the release
// script returned.
func (s *RedisStore) listen() {
	defer close(s.listenDone)
	for msg := range s.pubsub.Channel() {
		if msg.Channel == s.grantChan {
			s.granted(msg.Payload)
			continue
		}
		if rest, ok := strings.CutPrefix(msg.Payload, "\x01"); ok {
			origin, events, _ := strings.Cut(rest, "\x00")
			if origin != s.opts.ReplicaID {
				s.deliverHealth(events)
			}
			continue
		}
		backend, origin, _ := strings.Cut(msg.Payload, "\x00")
		if origin == s.opts.ReplicaID {
			continue
		}
		s.stats.wakeups.Add(1)
		s.tell(backend)
	}
}
