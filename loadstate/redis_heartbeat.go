package loadstate

import (
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"sort"
	"time"
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
	cctx, cancel := context.WithTimeout(ctx, 4*s.opts.Timeout)
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
