package loadstate

import (
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

func (s *RedisStore) trusted(now time.Time) bool { return now.UnixNano() >= s.trustAt.Load() }

// distrustUntil keeps Redis's counts untrusted at least until t.
func (s *RedisStore) distrustUntil(t time.Time) {
	for {
		cur := s.trustAt.Load()
		if t.UnixNano() <= cur || s.trustAt.CompareAndSwap(cur, t.UnixNano()) {
			return
		}
	}
}

// trip opens the breaker after a failed call: requests are decided locally and
// the background loop probes Redis until it answers.
func (s *RedisStore) trip(op string, err error) {
	if s.closed.Load() || !s.down.CompareAndSwap(false, true) {
		return
	}
	s.stats.trips.Add(1)
	s.warnOutage("redis unavailable: admitting requests from local state until it answers again",
		zap.String("op", op), zap.String("mode", s.Mode()), zap.String("pool", s.opts.Pool), zap.Error(err))
	s.signal()
}

// epochChanged handles a Redis that lost its data: every live lease of this
// replica is re-added at once, and Redis's counts are not trusted for one
// lease, the time by which every other live replica has re-added its own and
// dead replicas' leases would have expired.
func (s *RedisStore) epochChanged(epoch string, now time.Time) {
	old := s.epoch.Swap(&epoch)
	if *old == epoch {
		return
	}
	s.distrustUntil(now.Add(s.opts.Lease))
	if *old == "" {
		return // first contact: nothing was trusted before
	}
	s.stats.dataLosses.Add(1)
	s.mu.Lock()
	for _, h := range s.held {
		h.inRedis = false
	}
	s.mu.Unlock()
	s.needSync.Store(true)
	s.signal()
	if ce := s.opts.Logger.Check(zapcore.WarnLevel, "redis lost its data: re-adding this replica's leases, admitting by local share for one lease"); ce != nil {
		ce.Write(zap.String("pool", s.opts.Pool), zap.Duration("lease", s.opts.Lease))
	}
}

// noticeEvery limits outage logging: a flapping Redis warns once per period.
const noticeEvery = time.Minute

// warnOutage logs the start of an outage as a warning, at most once per
// noticeEvery (at debug level otherwise), and remembers whether it did so that
// the recovery is logged alike.
func (s *RedisStore) warnOutage(msg string, fields ...zap.Field) {
	now := time.Now().UnixNano()
	last := s.noticeAt.Load()
	level := zapcore.DebugLevel
	if (last == 0 || now-last >= int64(noticeEvery)) && s.noticeAt.CompareAndSwap(last, now) {
		level = zapcore.WarnLevel
		s.announced.Store(true)
	}
	if ce := s.opts.Logger.Check(level, msg); ce != nil {
		ce.Write(fields...)
	}
}

// logRecovery logs the end of an outage, at info level if its start was
// warned about.
func (s *RedisStore) logRecovery(msg string, fields ...zap.Field) {
	level := zapcore.DebugLevel
	if s.announced.Swap(false) {
		level = zapcore.InfoLevel
	}
	if ce := s.opts.Logger.Check(level, msg); ce != nil {
		ce.Write(fields...)
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
