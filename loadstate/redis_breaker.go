package loadstate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// breakerRounds is how many failed rounds in a row, without a broken
// connection, open the breaker (see RedisStore).
const breakerRounds = 3

// breaker counts failed rounds of Redis calls since the last success.
type breaker struct {
	failing     atomic.Bool // a failure was counted since the last success: successes then take the lock
	mu          sync.Mutex
	rounds      int   // failed rounds in a row
	lastFailure int64 // time.Now in ns when the last counted failure was seen
}

// callSucceeded records that Redis answered a call.
func (s *RedisStore) callSucceeded() {
	b := &s.brk
	if !b.failing.Load() {
		return
	}
	b.mu.Lock()
	b.rounds = 0
	b.failing.Store(false)
	b.mu.Unlock()
}

// callFailed records a failed Redis call that began at start, and opens the
// breaker on evidence of an outage: a broken connection at once, otherwise the
// breakerRounds-th failed round in a row. A failure is a new round only if its
// call began after the previous counted failure was seen: calls that overlapped
// one slow moment of Redis are one round. Callers do not report failures
// caused by their own context.
func (s *RedisStore) callFailed(op string, start time.Time, err error) {
	s.stats.errors.Add(1)
	if s.closed.Load() || s.down.Load() {
		return
	}
	if outageEvidence(err) {
		s.trip(op, err)
		return
	}
	b := &s.brk
	b.mu.Lock()
	if b.rounds > 0 && start.UnixNano() < b.lastFailure {
		b.mu.Unlock()
		return
	}
	b.lastFailure = time.Now().UnixNano()
	b.rounds++
	b.failing.Store(true)
	n := b.rounds
	b.mu.Unlock()
	if n >= breakerRounds {
		s.trip(op, fmt.Errorf("%d failed rounds in a row, the last: %w", n, err))
	}
}

// outageEvidence reports whether err shows that Redis is gone, rather than
// slow: a connection refused, reset or cut (EOF), an unreachable network or
// host, a name that does not resolve, or Redis saying it cannot serve now.
// Timeouts are not evidence by themselves.
func outageEvidence(err error) bool {
	for _, target := range []error{io.EOF, io.ErrUnexpectedEOF, syscall.ECONNREFUSED, syscall.ECONNRESET,
		syscall.ECONNABORTED, syscall.EPIPE, syscall.ENETUNREACH, syscall.EHOSTUNREACH} {
		if errors.Is(err, target) {
			return true
		}
	}
	var dns *net.DNSError
	if errors.As(err, &dns) && !dns.IsTimeout {
		return true
	}
	var rerr redis.Error
	if errors.As(err, &rerr) {
		msg := rerr.Error()
		for _, prefix := range []string{"LOADING ", "MASTERDOWN ", "CLUSTERDOWN ", "READONLY "} {
			if strings.HasPrefix(msg, prefix) {
				return true
			}
		}
	}
	return false
}

// trip opens the breaker: requests are decided locally and the background loop
// probes Redis until it answers.
func (s *RedisStore) trip(op string, err error) {
	if s.closed.Load() || !s.down.CompareAndSwap(false, true) {
		return
	}
	b := &s.brk
	b.mu.Lock()
	b.rounds = 0
	b.failing.Store(false)
	b.mu.Unlock()
	s.stats.trips.Add(1)
	s.interrupt()
	s.warnOutage("redis unavailable: admitting requests from local state until it answers again",
		zap.String("op", op), zap.String("mode", s.Mode()), zap.String("pool", s.opts.Pool), zap.Error(err))
	s.signal()
}

// recover probes Redis while the breaker is open. On an answer it sends the
// queued releases and re-adds every live lease of this replica (Redis may have
// expired them during the outage, or lost them), and only then registers with
// a heartbeat, so that a heartbeat of this replica after the outage tells the
// others that its leases are back. Then it closes the breaker; counts stay
// share-limited until the others' heartbeats say the same (see beat).
func (s *RedisStore) recover() bool {
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), s.bgTimeout())
	err := s.client.Ping(ctx).Err()
	cancel()
	s.stats.heartbeats.Add(1)
	if err != nil {
		s.callFailed("probe", start, err)
		return false
	}
	s.loadScripts()
	s.needSync.Store(false) // every live lease is re-added below
	if !s.flushReleases() || !s.syncLeases(true) {
		s.needSync.Store(true)
		return false
	}
	s.mu.Lock()
	s.contactSince = s.opts.Now()
	s.mu.Unlock()
	s.distrust()
	s.resyncFrom.Store(true) // the next heartbeat's Redis time: the others must beat after it
	if s.beat() != nil {
		return false
	}
	s.down.Store(false)
	if s.Queueing() { // fail-open; otherwise once the counts are trusted again
		s.resume()
	}
	s.logRecovery("redis reachable again: leases resynchronised, sharing load through redis",
		zap.String("pool", s.opts.Pool))
	return true
}

// trusted reports whether Redis's counts can be taken as the fleet's.
func (s *RedisStore) trusted() bool { return !s.untrusted.Load() }

// distrust marks Redis's counts untrusted; requests waiting in the
// fleet-wide queue move to the local one (see Queueing).
func (s *RedisStore) distrust() {
	s.untrusted.Store(true)
	s.interrupt()
}

// learnEpoch records the epoch Redis reported; a different one than the one
// this replica trusts means Redis lost its data.
func (s *RedisStore) learnEpoch(epoch string) {
	if *s.epoch.Load() != epoch {
		s.epochChanged(epoch)
	}
}

// epochChanged handles a new epoch. The first one is only recorded. A later
// one means Redis lost (some of) its data: every live lease of this replica is
// re-added, and Redis's counts are not trusted until every replica in the
// fleet view has reported its leases back under the new epoch (or left the
// view, a lease later).
func (s *RedisStore) epochChanged(epoch string) {
	old := s.epoch.Swap(&epoch)
	if *old == epoch {
		return
	}
	s.distrust()
	if *old == "" {
		return // first contact: nothing was trusted before
	}
	s.stats.dataLosses.Add(1)
	s.mu.Lock()
	for _, h := range s.held {
		h.inRedis = false
		h.confirmed = time.Time{}
	}
	s.contactSince = s.opts.Now() // the registry was lost too: give every replica a lease to beat again
	s.needSync.Store(true)        // under the lock: see beat's sync mark
	s.mu.Unlock()
	s.signal()
	if ce := s.opts.Logger.Check(zapcore.WarnLevel, "redis lost its data: re-adding this replica's leases, admitting by local share until every replica has"); ce != nil {
		ce.Write(zap.String("pool", s.opts.Pool))
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
