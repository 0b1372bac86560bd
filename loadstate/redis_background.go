package loadstate

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// maxBatch bounds the leases sent in one release or resync script.
const maxBatch = 256

// maxDead bounds the dead replica ids kept for sketch cleanup.
const maxDead = 1024

// bgTimeout bounds one background call. The client's own read timeout (the
// request-path timeout, with ClientOptions) still applies to each command.
func (s *RedisStore) bgTimeout() time.Duration { return 4 * s.opts.Timeout }

// run is the store's one background goroutine. Releases, lease re-adds,
// heartbeats and probes all run here, one after the other, so a release queued
// after a re-add is always sent after it.
func (s *RedisStore) run() {
	defer close(s.done)
	hb := s.opts.Heartbeat
	timer := time.NewTimer(hb)
	defer timer.Stop()
	next := time.Now().Add(hb)
	var probeDelay time.Duration // 0 while Redis is up
	for {
		select {
		case <-s.stop:
			return
		case <-s.wake:
		case <-timer.C:
		}
		if s.down.Load() {
			switch {
			case probeDelay == 0: // just tripped: first probe soon, in case it was a blip
				probeDelay = max(2*s.opts.Timeout, 20*time.Millisecond)
				next = time.Now().Add(probeDelay)
			case !time.Now().Before(next):
				s.expireLocal() // unrenewed leases must not hold local slots through an outage
				if s.recover() {
					probeDelay = 0
					next = time.Now().Add(hb)
				} else {
					probeDelay = min(2*probeDelay, hb)
					next = time.Now().Add(probeDelay)
				}
			}
		} else {
			probeDelay = 0
			// Each step trips the breaker on failure; the next loop probes.
			ok := s.flushReleases()
			if ok && s.needSync.Swap(false) {
				ok = s.syncLeases(false)
			}
			if ok && !time.Now().Before(next) {
				next = time.Now().Add(hb)
				if s.beat() {
					s.expireLocal()
					s.shareSketches()
				}
			}
		}
		timer.Reset(max(time.Until(next), 0))
	}
}

// recover probes Redis while the breaker is open. On an answer it sends the
// queued releases and re-adds every live lease of this replica (Redis may have
// expired them during the outage, or lost them), then closes the breaker.
// Counts stay share-limited for two more heartbeats, the time the other
// replicas need to notice Redis is back and re-add the leases they took
// locally.
func (s *RedisStore) recover() bool {
	if !s.beat() {
		return false
	}
	s.loadScripts()
	if !s.flushReleases() || !s.syncLeases(true) {
		return false
	}
	s.distrustUntil(s.opts.Now().Add(2 * s.opts.Heartbeat))
	s.down.Store(false)
	s.logRecovery("redis reachable again: leases resynchronised, sharing load through redis",
		zap.String("pool", s.opts.Pool))
	return true
}

// loadScripts loads the scripts into Redis (every master of a cluster), so
// that the request path does not pay a NOSCRIPT round trip after Redis
// restarted. Failures are ignored: Run falls back to EVAL.
func (s *RedisStore) loadScripts() {
	ctx, cancel := context.WithTimeout(context.Background(), s.bgTimeout())
	defer cancel()
	for _, sc := range []*redis.Script{acquireScript, releaseScript, renewScript, readdScript} {
		if sc.Load(ctx, s.client).Err() != nil {
			return
		}
	}
}

// beat runs the heartbeat script: it registers this replica, learns the live
// replicas and the epoch, reclaims expired leases and refreshes the counts of
// every known backend. It reports whether Redis answered.
func (s *RedisStore) beat() bool {
	states := s.knownStates()
	keys := make([]string, 4+len(states))
	keys[0], keys[1], keys[2], keys[3] = s.epochKey, s.keys.replicas(), s.keys.replicaInfo(), s.keys.backends()
	args := make([]any, 6+len(states))
	args[0], args[1], args[2], args[3], args[4], args[5] = s.opts.ReplicaID, s.info, s.leaseMs, *s.epoch.Load(), s.freshEpoch, s.channel
	for i, st := range states {
		keys[4+i] = st.key
		args[6+i] = st.name
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.bgTimeout())
	raw, err := heartbeatScript.Run(ctx, s.client, keys, args...).Slice()
	cancel()
	s.stats.heartbeats.Add(1)
	var reply heartbeatReply
	if err == nil {
		reply, err = parseHeartbeatReply(raw, len(states))
	}
	if err != nil {
		s.stats.errors.Add(1)
		s.trip("heartbeat", err)
		return false
	}
	now := s.opts.Now()
	s.learnEpoch(reply.epoch, now)

	s.mu.Lock()
	s.fleet.Store(s.fleetFromLocked(reply.live, now))
	trusted := s.trusted(now)
	for i, st := range states {
		st.fleet.Store(reply.counts[i])
		if trusted {
			st.othersAt.Store(max(reply.counts[i]-st.own.Load(), 0))
			st.contactAt.Store(now.UnixNano())
		}
	}
	if s.opts.Sketches != nil && len(s.dead) < maxDead {
		s.dead = append(s.dead, reply.dead...)
	}
	s.mu.Unlock()
	return true
}

// fleetFromLocked records the live replicas Redis reported and returns the
// fleet to compute local shares from: every replica seen alive within the last
// lease. A replica is not forgotten the moment it is missing from one reply:
// after Redis loses its data the registry is empty until each replica beats
// again, and shrinking the fleet then would hand every replica a larger share.
// Counting a departed replica for one more lease only makes shares smaller.
// The caller holds s.mu.
func (s *RedisStore) fleetFromLocked(reported []string, now time.Time) *fleetView {
	if s.seen == nil {
		s.seen = make(map[string]time.Time)
	}
	for _, id := range reported {
		s.seen[id] = now
	}
	s.seen[s.opts.ReplicaID] = now
	live := make([]string, 0, len(s.seen))
	for id, at := range s.seen {
		if now.Sub(at) > s.opts.Lease {
			delete(s.seen, id)
			continue
		}
		live = append(live, id)
	}
	sort.Strings(live)
	return &fleetView{live: live, rank: sort.SearchStrings(live, s.opts.ReplicaID)}
}

type heartbeatReply struct {
	epoch  string
	live   []string
	counts []int64
	dead   []string
}

func parseHeartbeatReply(raw []any, n int) (heartbeatReply, error) {
	var r heartbeatReply
	if len(raw) != 5 {
		return r, fmt.Errorf("heartbeat script: reply of %d values", len(raw))
	}
	var ok bool
	if r.epoch, ok = raw[0].(string); !ok {
		return r, fmt.Errorf("heartbeat script: epoch of type %T", raw[0])
	}
	live, _ := raw[2].([]any)
	counts, _ := raw[3].([]any)
	dead, _ := raw[4].([]any)
	if len(counts) != n {
		return r, fmt.Errorf("heartbeat script: %d counts for %d backends", len(counts), n)
	}
	for _, v := range live {
		if id, ok := v.(string); ok {
			r.live = append(r.live, id)
		}
	}
	r.counts = make([]int64, n)
	for i, v := range counts {
		if r.counts[i], ok = v.(int64); !ok {
			return r, fmt.Errorf("heartbeat script: count of type %T", v)
		}
	}
	for _, v := range dead {
		if id, ok := v.(string); ok {
			r.dead = append(r.dead, id)
		}
	}
	return r, nil
}

// learnEpoch records the epoch Redis reported: the first one is simply trusted,
// a different one means Redis lost its data.
func (s *RedisStore) learnEpoch(epoch string, now time.Time) {
	for {
		cur := s.epoch.Load()
		switch {
		case *cur == epoch:
			return
		case *cur == "":
			if s.epoch.CompareAndSwap(cur, &epoch) {
				return
			}
		default:
			s.epochChanged(epoch, now)
			return
		}
	}
}

// flushReleases sends the queued releases in batches. On failure the batch is
// put back (to be retried until the leases would have expired anyway), local
// watchers are told (the slots are free in local state), and the breaker trips.
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
		s.mu.Unlock()
		if len(batch) == 0 {
			return true
		}

		n := len(batch)
		keys := make([]string, n)
		args := make([]any, 2+2*n)
		args[0], args[1] = s.chanArg, s.opts.ReplicaID
		for i, r := range batch {
			keys[i] = r.backend.key
			args[2+i] = r.member
			args[2+n+i] = r.backend.nameArg
		}
		ctx, cancel := context.WithTimeout(context.Background(), s.bgTimeout())
		res, err := releaseScript.Run(ctx, s.client, keys, args...).Int64Slice()
		cancel()
		s.stats.releases.Add(1)
		if err == nil && len(res) != 2 {
			err = fmt.Errorf("release script: reply of %d values", len(res))
		}
		if err != nil {
			s.stats.errors.Add(1)
			s.mu.Lock()
			s.queue = append(batch, s.queue...)
			for i := range batch {
				s.queue[i].notified = true
			}
			s.mu.Unlock()
			s.notifyReleased(batch)
			s.trip("release", err)
			return false
		}
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
		s.watchers.notify(r.backend.name)
	}
}

// syncLeases (re-)adds this replica's live leases to Redis: all of them after
// an outage, otherwise those taken while Redis was unusable. It needs no
// capacity check: these requests are in flight whatever Redis says.
func (s *RedisStore) syncLeases(all bool) bool {
	now := s.opts.Now()
	var batch []pendingRelease
	s.mu.Lock()
	for _, h := range s.held {
		if (all || !h.inRedis) && now.Before(h.expires) {
			h.inRedis = true // a release from now on must remove it from Redis
			batch = append(batch, pendingRelease{backend: h.backend, member: h.member})
		}
	}
	s.mu.Unlock()
	for len(batch) > 0 {
		chunk := batch[:min(len(batch), maxBatch)]
		batch = batch[len(chunk):]
		keys := make([]string, len(chunk))
		args := make([]any, 1+len(chunk))
		args[0] = s.leaseMs
		for i, r := range chunk {
			keys[i] = r.backend.key
			args[1+i] = r.member
		}
		ctx, cancel := context.WithTimeout(context.Background(), s.bgTimeout())
		added, err := readdScript.Run(ctx, s.client, keys, args...).Int64()
		cancel()
		s.stats.resyncs.Add(1)
		if err != nil {
			s.stats.errors.Add(1)
			s.needSync.Store(true)
			s.trip("resync", err)
			return false
		}
		s.stats.resyncedLeases.Add(uint64(added))
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
			h.backend.own.Add(-1)
			decrementFloor(&h.backend.fleet)
			expired = append(expired, pendingRelease{backend: h.backend, member: h.member})
			if h.inRedis {
				s.queue = append(s.queue, pendingRelease{backend: h.backend, member: h.member, until: now.Add(s.opts.Lease), notified: true})
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

// sketchTTL is how long a pool's sketch hashes outlive the last replica that
// wrote them.
func (s *RedisStore) sketchTTL() time.Duration { return max(10*s.opts.Lease, time.Minute) }

// shareSketches publishes this replica's latency windows and merges the other
// live replicas' into its own Sketches: one pipeline per heartbeat, one hash per
// backend and metric (field = replica id).
func (s *RedisStore) shareSketches() {
	sk := s.opts.Sketches
	if sk == nil {
		return
	}
	names := map[string]bool{}
	for name := range *s.backends.Load() {
		names[name] = true
	}
	for _, name := range sk.Backends() {
		names[name] = true
	}
	if len(names) == 0 {
		return
	}
	live := map[string]bool{}
	for _, id := range s.fleet.Load().live {
		live[id] = true
	}
	s.mu.Lock()
	dead := s.dead
	s.dead = nil
	s.mu.Unlock()

	type read struct {
		backend string
		metric  Metric
		cmd     *redis.MapStringStringCmd
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.bgTimeout())
	defer cancel()
	pipe := s.client.Pipeline()
	reads := make([]read, 0, 2*len(names))
	for name := range names {
		for m := Metric(0); m < metricCount; m++ {
			key := s.keys.sketch(name, m)
			if data := sk.EncodeWindow(name, m); data != nil {
				pipe.HSet(ctx, key, s.opts.ReplicaID, data)
				pipe.PExpire(ctx, key, s.sketchTTL())
			} else {
				pipe.HDel(ctx, key, s.opts.ReplicaID) // stale windows must not be merged as fresh
			}
			if len(dead) > 0 {
				pipe.HDel(ctx, key, dead...)
			}
			reads = append(reads, read{name, m, pipe.HGetAll(ctx, key)})
		}
	}
	_, err := pipe.Exec(ctx)
	s.stats.sketchSyncs.Add(1)
	if err != nil {
		// Not worth tripping the breaker over: the next heartbeat will if
		// Redis is really gone.
		s.stats.errors.Add(1)
		s.mu.Lock()
		if len(s.dead) < maxDead {
			s.dead = append(s.dead, dead...)
		}
		s.mu.Unlock()
		if ce := s.opts.Logger.Check(zap.DebugLevel, "sharing latency sketches failed"); ce != nil {
			ce.Write(zap.Error(err))
		}
		return
	}
	for _, r := range reads {
		for replica, data := range r.cmd.Val() {
			if replica == s.opts.ReplicaID || !live[replica] {
				continue
			}
			_ = sk.MergeRemote(replica, r.backend, r.metric, []byte(data))
		}
	}
}

// deregister removes this replica from the registry and its sketches.
func (s *RedisStore) deregister() {
	ctx, cancel := context.WithTimeout(context.Background(), s.bgTimeout())
	defer cancel()
	pipe := s.client.Pipeline()
	pipe.ZRem(ctx, s.keys.replicas(), s.opts.ReplicaID)
	pipe.HDel(ctx, s.keys.replicaInfo(), s.opts.ReplicaID)
	if sk := s.opts.Sketches; sk != nil {
		for _, name := range sk.Backends() {
			for m := Metric(0); m < metricCount; m++ {
				pipe.HDel(ctx, s.keys.sketch(name, m), s.opts.ReplicaID)
			}
		}
	}
	_, _ = pipe.Exec(ctx)
}

// listen turns release announcements of other replicas into Watch calls. Its
// own announcements are skipped: local watchers were told when the release
// script returned.
func (s *RedisStore) listen() {
	defer close(s.listenDone)
	for msg := range s.pubsub.Channel() {
		backend, origin, _ := strings.Cut(msg.Payload, "\x00")
		if origin == s.opts.ReplicaID {
			continue
		}
		s.stats.wakeups.Add(1)
		s.watchers.notify(backend)
	}
}

type replicaInfo struct {
	Addr    string `json:"addr,omitempty"`
	Version string `json:"version,omitempty"`
}

func encodeReplicaInfo(addr, version string) (string, error) {
	b, err := json.Marshal(replicaInfo{Addr: addr, Version: version})
	if err != nil {
		return "", fmt.Errorf("encoding replica info: %w", err)
	}
	return string(b), nil
}

func decodeReplicaInfo(s string) (addr, version string) {
	var ri replicaInfo
	_ = json.Unmarshal([]byte(s), &ri)
	return ri.Addr, ri.Version
}
