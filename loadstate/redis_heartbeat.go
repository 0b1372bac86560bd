package loadstate

import (
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"sort"
	"time"

	"go.uber.org/zap"
)

// fleetView is the live replicas at the last heartbeat.
type fleetView struct {
	live []string // sorted ids, this replica included
	rank int      // this replica's index in live
}

// share is this replica's part of a backend's capacity in local mode:
// ⌊capacity ÷ live⌋, plus one for as many replicas as the remainder. Which
// replicas get the extra slot rotates with the backend (by a hash of its name
// that every replica computes alike), so that with many small backends the
// extras do not all land on the lowest rank. Over all ranks the shares add up to
// exactly capacity.
func (f *fleetView) share(backend string, capacity int) int {
	n := len(f.live)
	if n <= 1 || capacity <= 0 {
		return max(capacity, 0)
	}
	h := fnv.New32a()
	_, _ = h.Write([]byte(backend))
	base, rem := capacity/n, capacity%n
	if (f.rank+int(h.Sum32()%uint32(n)))%n < rem {
		return base + 1
	}
	return base
}

// LiveReplicas implements ReplicaRegistry: the replicas reported alive by a
// heartbeat within the last lease, this one included; local shares divide
// capacity by this number.
func (s *RedisStore) LiveReplicas() int { return len(s.fleet.Load().live) }

// Replicas implements ReplicaRegistry, reading the registry from Redis.
func (s *RedisStore) Replicas(ctx context.Context) ([]Replica, error) {
	cctx, cancel := context.WithTimeout(ctx, s.bgTimeout())
	defer cancel()
	pipe := s.client.Pipeline()
	beats := pipe.ZRangeWithScores(cctx, s.keys.replicas(), 0, -1)
	infos := pipe.HGetAll(cctx, s.keys.replicaInfo())
	if _, err := pipe.Exec(cctx); err != nil {
		return nil, fmt.Errorf("reading the replica registry: %w", err)
	}
	out := make([]Replica, 0, len(beats.Val()))
	for _, z := range beats.Val() {
		id, _ := z.Member.(string)
		r := Replica{ID: id, LastBeat: time.UnixMilli(int64(z.Score)), Self: id == s.opts.ReplicaID}
		r.Addr, r.Version = decodeReplicaInfo(infos.Val()[id])
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// maxDead bounds the dead replica ids kept for sketch cleanup.
const maxDead = 1024

// beat runs the heartbeat script: it registers this replica (with its sync
// mark), learns the live replicas and the epoch, reclaims expired leases and
// refreshes the counts of every known backend. It returns nil when Redis
// answered. It also checks that Redis still holds the leases this replica
// knows it put there, and decides when Redis's counts can be trusted again.
func (s *RedisStore) beat() error {
	states := s.knownStates()
	t := s.tun()
	epoch := *s.epoch.Load()
	// The sync mark: every live lease of this replica is in Redis under the
	// epoch it trusts, or it holds none ("*": in sync under any epoch, which
	// the script writes down as the current one).
	s.mu.Lock()
	mark := epoch
	switch {
	case s.needSync.Load():
		mark = ""
	case len(s.held) == 0:
		mark = "*"
	}
	s.mu.Unlock()
	nb := len(states)
	keys := make([]string, 6+2*nb)
	keys[0], keys[1], keys[2], keys[3], keys[4], keys[5] = s.epochKey, s.keys.replicas(), s.keys.replicaInfo(), s.keys.backends(), s.keys.replicaSync(), s.keys.tickets()
	args := make([]any, 9+2*nb)
	args[0], args[1], args[2], args[3], args[4], args[5] = s.opts.ReplicaID, s.info, t.leaseMs, mark, s.freshEpoch, s.channel
	assign, aging := s.queueMode()
	args[6+2*nb], args[7+2*nb], args[8+2*nb] = s.grantPrefix, assign, aging
	for i, st := range states {
		keys[6+i] = st.key
		keys[6+nb+i] = st.queueKey
		args[6+i] = st.name
		flag := "0" // whether to add up its tokens in flight
		if st.tokenLimited.Load() {
			flag = "1"
		}
		args[6+len(states)+i] = flag
	}
	confirmed := s.confirmedLeases(states)
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), s.bgTimeout())
	raw, err := heartbeatScript.Run(ctx, s.client, keys, args...).Slice()
	cancel()
	s.stats.heartbeats.Add(1)
	var reply heartbeatReply
	if err == nil {
		reply, err = parseHeartbeatReply(raw, len(states))
	}
	if err != nil {
		s.callFailed("heartbeat", start, err)
		return err
	}
	s.callSucceeded()
	now := s.opts.Now()
	s.learnEpoch(reply.epoch)
	if reply.epoch == epoch && s.leasesLost(states, confirmed, reply.counts, now) {
		s.replaceEpoch(epoch)
		return nil // counts are not worth recording: the next beat has them right
	}
	if s.resyncFrom.Swap(false) {
		s.syncFrom.Store(reply.now)
	}

	s.mu.Lock()
	fleet := s.fleetFromLocked(reply.live, now)
	s.fleet.Store(fleet)
	if s.untrusted.Load() && s.fleetInSync(fleet, reply) {
		s.untrusted.Store(false)
		defer s.resume() // after s.mu is released
	}
	trusted := s.trusted()
	if trusted {
		s.fleetQueued.Store(reply.queued)
	}
	for i, st := range states {
		st.fleet.Store(reply.counts[i])
		st.fleetTokens.Store(reply.sums[i])
		if trusted {
			st.othersAt.Store(max(reply.counts[i]-st.own.Load(), 0))
			st.contactAt.Store(now.UnixNano())
		}
	}
	if s.opts.Sketches != nil && len(s.dead) < maxDead {
		s.dead = append(s.dead, reply.dead...)
	}
	s.mu.Unlock()
	// Operators' overrides: a GET of their version, the hash when it moved.
	s.refreshOverrides(context.Background(), false)
	return nil
}

// fleetInSync reports whether Redis's counts are complete: this replica has no
// lease missing from Redis, and every other replica in its fleet view said so
// too, under the current epoch, in a heartbeat at or after syncFrom (this
// replica's return from an outage: an older mark predates the others' own
// outage). The caller holds s.mu.
func (s *RedisStore) fleetInSync(fleet *fleetView, reply heartbeatReply) bool {
	epoch := *s.epoch.Load()
	if s.down.Load() || s.needSync.Load() || epoch != reply.epoch {
		return false
	}
	from := s.syncFrom.Load()
	for _, id := range fleet.live {
		if id == s.opts.ReplicaID {
			continue
		}
		r, ok := reply.live[id]
		if !ok || r.mark != epoch || r.beat < from {
			return false
		}
	}
	return true
}

// confirmedLeases counts, per known backend, this replica's leases that Redis
// was confirmed to hold, each with the local time until which it must hold it
// at least; the heartbeat that follows checks the counts against them.
func (s *RedisStore) confirmedLeases(states []*backendState) [][]time.Time {
	out := make([][]time.Time, len(states))
	index := make(map[*backendState]int, len(states))
	for i, st := range states {
		index[st] = i
	}
	s.mu.Lock()
	for _, h := range s.held {
		if i, ok := index[h.backend]; ok && h.inRedis && !h.confirmed.IsZero() {
			out[i] = append(out[i], h.confirmed.Add(h.lease))
		}
	}
	s.mu.Unlock()
	return out
}

// lossMargin is how long before its computed expiry a confirmed lease stops
// counting in the loss check, on top of two timeouts (at most a quarter of a
// lease): room for clock-rate
// differences between this host and Redis, and for a renewal and a re-add of
// the same lease answering in the other order than Redis ran them.
const lossMargin = 100 * time.Millisecond

// leasesLost reports whether some backend's count in Redis is below the number
// of this replica's leases that Redis must still hold (lease keys evicted or
// deleted while the epoch key survived). Only releases sent by this replica's
// background loop, which runs the heartbeat too, remove its leases, so none
// of the counted ones can have left Redis in between.
func (s *RedisStore) leasesLost(states []*backendState, confirmed [][]time.Time, counts []int64, now time.Time) bool {
	lost := false
	t := s.tun()
	margin := lossMargin + min(2*t.Timeout, t.Lease/4)
	for i := range states {
		var must int64
		for _, until := range confirmed[i] {
			if now.Add(margin).Before(until) {
				must++
			}
		}
		if counts[i] < must {
			lost = true
			if ce := s.opts.Logger.Check(zap.WarnLevel, "redis lost leases this replica holds: treating it as a data loss"); ce != nil {
				ce.Write(zap.String("pool", s.opts.Pool), zap.String("backend", states[i].name),
					zap.Int64("in_redis", counts[i]), zap.Int64("held", must))
			}
		}
	}
	if lost {
		s.stats.lostLeases.Add(1)
	}
	return lost
}

// replaceEpoch gives the pool a new epoch after this replica found leases
// missing, so that every replica, this one included, handles it as a data
// loss. Failing that, the next heartbeat finds the loss again.
func (s *RedisStore) replaceEpoch(trusted string) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), s.bgTimeout())
	epoch, err := replaceEpochScript.Run(ctx, s.client, []string{s.epochKey}, trusted, s.freshEpoch).Text()
	cancel()
	if err != nil {
		s.callFailed("replace epoch", start, err)
		return
	}
	s.callSucceeded()
	s.learnEpoch(epoch)
}

// fleetFromLocked records the live replicas Redis reported and returns the
// fleet to compute local shares from: every replica seen alive within the last
// lease of contact. A replica is not forgotten the moment it is missing from
// one reply: after Redis loses its data the registry is empty until each
// replica beats again, and after an outage the registry is stale until each
// replica has regained contact; shrinking the fleet then would hand every
// replica a larger share. So a replica missing from the registry is dropped
// only a lease after both its last sighting and contactSince. Counting a
// departed replica for one more lease only makes shares smaller. The caller
// holds s.mu.
func (s *RedisStore) fleetFromLocked(reported map[string]replicaBeat, now time.Time) *fleetView {
	if s.seen == nil {
		s.seen = make(map[string]time.Time)
	}
	for id := range reported {
		s.seen[id] = now
	}
	s.seen[s.opts.ReplicaID] = now
	lease := s.tun().Lease
	live := make([]string, 0, len(s.seen))
	for id, at := range s.seen {
		if at.Before(s.contactSince) {
			at = s.contactSince
		}
		if now.Sub(at) > lease {
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
	now    int64 // Redis time, ms
	live   map[string]replicaBeat
	counts []int64
	sums   []int64 // tokens in flight, of the token-limited backends
	dead   []string
	queued int64 // tickets in the pool's fleet-wide queue
}

// replicaBeat is a live replica's last heartbeat in the registry.
type replicaBeat struct {
	beat int64  // Redis time, ms
	mark string // sync mark
}

func parseHeartbeatReply(raw []any, n int) (heartbeatReply, error) {
	var r heartbeatReply
	if len(raw) != 7 {
		return r, fmt.Errorf("heartbeat script: reply of %d values", len(raw))
	}
	var ok bool
	if r.epoch, ok = raw[0].(string); !ok {
		return r, fmt.Errorf("heartbeat script: epoch of type %T", raw[0])
	}
	if r.now, ok = raw[1].(int64); !ok {
		return r, fmt.Errorf("heartbeat script: time of type %T", raw[1])
	}
	live, _ := raw[2].([]any)
	counts, _ := raw[3].([]any)
	dead, _ := raw[4].([]any)
	sums, _ := raw[5].([]any)
	if len(counts) != n || len(sums) != n || len(live)%3 != 0 {
		return r, fmt.Errorf("heartbeat script: %d counts for %d backends, %d registry values", len(counts), n, len(live))
	}
	r.live = make(map[string]replicaBeat, len(live)/3)
	for i := 0; i < len(live); i += 3 {
		id, ok1 := live[i].(string)
		beat, ok2 := live[i+1].(int64)
		mark, ok3 := live[i+2].(string)
		if !ok1 || !ok2 || !ok3 {
			return r, fmt.Errorf("heartbeat script: registry entry of types %T, %T, %T", live[i], live[i+1], live[i+2])
		}
		r.live[id] = replicaBeat{beat: beat, mark: mark}
	}
	r.counts = make([]int64, n)
	for i, v := range counts {
		if r.counts[i], ok = v.(int64); !ok {
			return r, fmt.Errorf("heartbeat script: count of type %T", v)
		}
	}
	r.sums = make([]int64, n)
	for i, v := range sums {
		if r.sums[i], ok = v.(int64); !ok {
			return r, fmt.Errorf("heartbeat script: token sum of type %T", v)
		}
	}
	for _, v := range dead {
		if id, ok := v.(string); ok {
			r.dead = append(r.dead, id)
		}
	}
	if r.queued, ok = raw[6].(int64); !ok {
		return r, fmt.Errorf("heartbeat script: queue length of type %T", raw[6])
	}
	return r, nil
}

// deregister removes this replica from the registry, its sketches and its
// learned window.
func (s *RedisStore) deregister() {
	ctx, cancel := context.WithTimeout(context.Background(), s.bgTimeout())
	defer cancel()
	pipe := s.client.Pipeline()
	pipe.ZRem(ctx, s.keys.replicas(), s.opts.ReplicaID)
	pipe.HDel(ctx, s.keys.replicaInfo(), s.opts.ReplicaID)
	pipe.HDel(ctx, s.keys.replicaSync(), s.opts.ReplicaID)
	if sk := s.opts.Sketches; sk != nil {
		for _, name := range sk.Backends() {
			for m := Metric(0); m < metricCount; m++ {
				pipe.HDel(ctx, s.keys.sketch(name, m), s.opts.ReplicaID)
			}
		}
	}
	if s.opts.Learner != nil {
		pipe.HDel(ctx, s.keys.learned(), s.opts.ReplicaID)
	}
	_, _ = pipe.Exec(ctx)
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
