package loadstate

import (
	"context"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// sketchTTL is how long a pool's sketch hashes outlive the last replica that
// wrote them.
func (s *RedisStore) sketchTTL() time.Duration { return max(10*s.tun().Lease, time.Minute) }

// shareSketches publishes this replica's latency windows and learned
// windows (see Learner) and merges the other live replicas' into its own:
// one pipeline per heartbeat, one hash per backend and metric for the
// sketches and one for the learner (field = replica id).
func (s *RedisStore) shareSketches() {
	sk, lr := s.opts.Sketches, s.opts.Learner
	if sk == nil && lr == nil {
		return
	}
	names := map[string]bool{}
	for name := range *s.backends.Load() {
		names[name] = true
	}
	if sk != nil {
		for _, name := range sk.Backends() {
			names[name] = true
		}
	} else {
		names = nil
	}
	if len(names) == 0 && lr == nil {
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
	var learned *redis.MapStringStringCmd
	if lr != nil {
		key := s.keys.learned()
		if data := lr.EncodeWindow(); data != nil {
			pipe.HSet(ctx, key, s.opts.ReplicaID, data)
			pipe.PExpire(ctx, key, s.sketchTTL())
		} else {
			pipe.HDel(ctx, key, s.opts.ReplicaID)
		}
		if len(dead) > 0 {
			pipe.HDel(ctx, key, dead...)
		}
		learned = pipe.HGetAll(ctx, key)
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
	if learned != nil {
		for replica, data := range learned.Val() {
			if replica == s.opts.ReplicaID || !live[replica] {
				continue
			}
			_ = lr.MergeRemote(replica, []byte(data))
		}
	}
}
