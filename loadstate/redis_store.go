package loadstate

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Modes reported by RedisStore.Mode, for metrics and alerts.
const (
	// ModeRedis: counts come from Redis and are exact fleet-wide.
	ModeRedis = "redis"
	// ModeLocal: Redis is down (fail_local), or answered again only moments
	// ago or came back without its data and is not trusted yet (fail_local and
	// fail_closed): this replica admits at most its share of each backend.
	ModeLocal = "local"
	// ModeClosed: Redis is down and on_redis_down is fail_closed: nothing is
	// admitted.
	ModeClosed = "closed"
	// ModeOpen: Redis is down and on_redis_down is fail_open: this replica
	// admits up to each backend's full capacity by itself.
	ModeOpen = "open"
)

// errStoreClosed is returned by calls on a closed RedisStore.
var errStoreClosed = fmt.Errorf("redis load store closed: %w", ErrUnavailable)

// RedisStore shares in-flight load between the gateway replicas of a pool
// through Redis (standalone, Sentinel or Cluster).
//
// Each slot is a lease: a member of the backend's sorted set whose score is its
// expiry by Redis's clock. Acquire is one round trip (a Lua script that takes
// the first candidate with room and returns every candidate's count); Release
// is queued and sent in batches by a background goroutine, which also
// heartbeats, reclaims expired leases and shares latency sketches. A process
// should hold one store per pool: each store registers as one replica, and
// local shares divide capacity by the number of replicas.
//
// When Redis is slow or down, the first failed call trips a breaker and is
// logged once; from then on requests are decided from local state at once,
// without waiting on Redis, according to OnDown, and Mode reports it. A
// background probe resynchronises when Redis answers: queued releases are sent,
// this replica's live leases re-added (Redis may have expired or lost them),
// and counts stay share-limited for two heartbeats while the other replicas do
// the same. When Redis comes back without its data (its epoch key changed),
// counts stay share-limited for a whole lease instead.
//
// Local mode keeps the fleet within capacity, except for two bounds it cannot
// close without the shared state it lost (both measured by tests):
//   - requests that outlive a lease during the outage on a replica that held
//     more than its share: others stop counting them once their leases would
//     have expired (overshoot ≤ Σ max(0, held − share));
//   - slots other replicas took through Redis after this replica's last reply
//     from it (at most a heartbeat earlier) are unknown to it (overshoot ≤ its
//     share).
//
// A replica cut off from a Redis that the others still reach admits its share
// on top of them, and a replica that starts while Redis is down knows no other
// replica and takes the whole capacity as its share.
type RedisStore struct {
	client   redis.UniversalClient
	opts     RedisOptions
	keys     keyspace
	epochKey string
	channel  string
	leaseMs  any // the lease in ms, boxed once for script arguments
	chanArg  any // channel, boxed once
	freshArg any // freshEpoch, boxed once
	info     string

	// Read lock-free on the request path.
	backends  atomic.Pointer[map[string]*backendState]
	fleet     atomic.Pointer[fleetView]
	down      atomic.Bool            // breaker open: Redis is not used on the request path
	trustAt   atomic.Int64           // local Unix ns before which Redis counts are not trusted
	epoch     atomic.Pointer[string] // the epoch whose counts this replica trusts
	attempts  atomic.Uint64          // numbers each acquire attempt's lease member
	needSync  atomic.Bool            // some live lease is not known to be in Redis
	closed    atomic.Bool
	noticeAt  atomic.Int64 // when the last outage warning was logged
	announced atomic.Bool  // the current outage was warned about

	freshEpoch string // what this replica sets when Redis has no epoch
	bmu        sync.Mutex

	mu    sync.Mutex // guards held, queue, dead and backendState.reserved; never held across I/O
	held  map[string]*heldLease
	queue []pendingRelease
	dead  []string             // replicas found dead whose sketch fields are still to be dropped
	seen  map[string]time.Time // replica id → when a heartbeat last reported it alive

	watchers watchers
	stats    redisCounters

	wake       chan struct{}
	stop       chan struct{}
	done       chan struct{}
	pubsub     *redis.PubSub
	listenDone chan struct{}
	closeOnce  sync.Once
}

// backendState is what one replica knows about one backend.
type backendState struct {
	name    string
	key     string // its lease set
	nameArg any    // name, boxed once for script arguments

	fleet     atomic.Int64 // fleet-wide count at the last reply, adjusted by own changes since
	own       atomic.Int64 // this replica's live leases; written under RedisStore.mu
	othersAt  atomic.Int64 // other replicas' leases at the last trusted contact
	contactAt atomic.Int64 // local Unix ns of that contact
	reserved  int          // acquires in flight that passed the local share check; under mu
}

// othersHeld is what other replicas held at the last trusted contact, counted
// until their leases would have expired.
func (b *backendState) othersHeld(now time.Time, lease time.Duration) int64 {
	if now.UnixNano() < b.contactAt.Load()+int64(lease) {
		return b.othersAt.Load()
	}
	return 0
}

// heldLease is a slot this replica holds.
type heldLease struct {
	backend *backendState
	member  string    // the lease's member in the sorted set: lease id and attempt number
	expires time.Time // local clock; dropped after this unless renewed
	inRedis bool      // may be in Redis: releasing it must remove it there
}

// pendingRelease is a lease member to remove from Redis.
type pendingRelease struct {
	backend  *backendState
	member   string
	until    time.Time // after this the lease has expired in Redis anyway
	notified bool      // watchers were already told
}

// redisCounters are the store's counters; see RedisStats.
type redisCounters struct {
	hotPathCalls, localDecisions, releases, releasedLeases, renewals, resyncs,
	resyncedLeases, heartbeats, sketchSyncs, snapshots, publishes, wakeups,
	errors, trips, dataLosses, expiredLeases atomic.Uint64
}

// RedisStats counts what a RedisStore did. Request-path calls, background
// calls and pub/sub are counted apart, so the cost per request can be told
// from the fixed cost per replica.
type RedisStats struct {
	Mode string // ModeRedis, ModeLocal, ModeClosed or ModeOpen

	// Request path.
	HotPathCalls   uint64 // acquire scripts sent: one round trip each
	LocalDecisions uint64 // acquires decided from local state, without a round trip
	Renewals       uint64 // renew scripts sent by Renew (long streams)
	Snapshots      uint64 // Snapshot calls that reached Redis

	// Background.
	Releases       uint64 // release scripts sent; each carries a batch of leases
	ReleasedLeases uint64 // leases those scripts removed
	Resyncs        uint64 // scripts that re-added live leases after an outage
	ResyncedLeases uint64 // leases re-added that Redis no longer had
	Heartbeats     uint64 // heartbeat scripts sent, probes while Redis is down included
	SketchSyncs    uint64 // latency sketch exchanges (one pipeline each)

	// Pub/sub.
	Publishes uint64 // PUBLISH run by the release script (freed slots announced)
	Wakeups   uint64 // announcements received from other replicas

	Errors        uint64 // failed Redis calls
	Trips         uint64 // switches from Redis to local state
	DataLosses    uint64 // times Redis was found to have lost its data
	ExpiredLeases uint64 // leases dropped because neither released nor renewed in time
}

// NewRedisStore returns a store that shares load through client. Use a client
// built by ClientOptions (or NewRedisClient), so that one call really costs at
// most opts.Timeout. The store does not close the client.
//
// It contacts Redis once, bounded by opts.Timeout, to register and learn the
// fleet; when Redis is unreachable it starts in local mode rather than failing,
// so that a gateway can start during a Redis outage.
func NewRedisStore(client redis.UniversalClient, opts RedisOptions) (*RedisStore, error) {
	if client == nil {
		return nil, errors.New("redis load store: nil client")
	}
	if err := opts.setDefaults(); err != nil {
		return nil, fmt.Errorf("redis load store: %w", err)
	}
	if !plainName(opts.ReplicaID) {
		return nil, fmt.Errorf("redis load store: replica id %q must match [A-Za-z0-9._-]{1,64}", opts.ReplicaID)
	}
	info, err := encodeReplicaInfo(opts.ReplicaAddr, opts.Version)
	if err != nil {
		return nil, err
	}
	s := &RedisStore{
		client:     client,
		opts:       opts,
		keys:       newKeyspace(opts.KeyPrefix, opts.Pool),
		leaseMs:    opts.Lease.Milliseconds(),
		info:       info,
		freshEpoch: randomHex(16),
		held:       make(map[string]*heldLease),
		wake:       make(chan struct{}, 1),
		stop:       make(chan struct{}),
		done:       make(chan struct{}),
		listenDone: make(chan struct{}),
	}
	s.epochKey = s.keys.epoch()
	s.channel = s.keys.released()
	s.chanArg, s.freshArg = s.channel, s.freshEpoch
	empty := ""
	s.epoch.Store(&empty)
	s.backends.Store(&map[string]*backendState{})
	s.fleet.Store(&fleetView{live: []string{opts.ReplicaID}})

	ctx, cancel := context.WithTimeout(context.Background(), opts.Timeout)
	s.pubsub = client.Subscribe(ctx, s.channel) // go-redis resubscribes by itself after reconnecting
	cancel()
	if s.beat() {
		s.loadScripts()
	} else {
		s.down.Store(true) // beat already logged the warning
	}
	go s.listen()
	go s.run()
	return s, nil
}

func defaultReplicaID() string {
	host, _ := os.Hostname()
	var b strings.Builder
	for _, c := range host {
		if c < 128 && plainName(string(c)) {
			b.WriteRune(c)
		}
		if b.Len() >= 32 {
			break
		}
	}
	if b.Len() == 0 {
		b.WriteString("replica")
	}
	return fmt.Sprintf("%s-%d-%s", b.String(), os.Getpid(), randomHex(3))
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// state returns the bookkeeping of a backend, creating it on first use. The
// map is copied on write: backends are few and fixed by configuration, and the
// request path then reads it without a lock.
func (s *RedisStore) state(name string) *backendState {
	if st := (*s.backends.Load())[name]; st != nil {
		return st
	}
	s.bmu.Lock()
	defer s.bmu.Unlock()
	cur := *s.backends.Load()
	if st := cur[name]; st != nil {
		return st
	}
	next := make(map[string]*backendState, len(cur)+1)
	for k, v := range cur {
		next[k] = v
	}
	st := &backendState{name: name, key: s.keys.lease(name), nameArg: name}
	next[name] = st
	s.backends.Store(&next)
	return st
}

// knownStates returns every backend this replica has seen, sorted by name.
func (s *RedisStore) knownStates() []*backendState {
	m := *s.backends.Load()
	out := make([]*backendState, 0, len(m))
	for _, st := range m {
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}

func (s *RedisStore) signal() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Watch implements Store: fn is called when a slot is released on this
// replica, when another replica announces a release, and when the heartbeat
// reclaims expired leases.
func (s *RedisStore) Watch(fn func(backend string)) (stop func()) { return s.watchers.add(fn) }

// LeaseTTL implements Store.
func (s *RedisStore) LeaseTTL() time.Duration { return s.opts.Lease }

// Mode returns how the store admits requests right now: ModeRedis, or while
// Redis is down (or not trusted after losing its data) ModeLocal, ModeClosed or
// ModeOpen according to OnDown.
func (s *RedisStore) Mode() string {
	if s.down.Load() {
		switch s.opts.OnDown {
		case FailClosed:
			return ModeClosed
		case FailOpen:
			return ModeOpen
		}
		return ModeLocal
	}
	if s.opts.OnDown != FailOpen && !s.trusted(s.opts.Now()) {
		return ModeLocal
	}
	return ModeRedis
}

// Stats returns the store's counters.
func (s *RedisStore) Stats() RedisStats {
	c := &s.stats
	return RedisStats{
		Mode:           s.Mode(),
		HotPathCalls:   c.hotPathCalls.Load(),
		LocalDecisions: c.localDecisions.Load(),
		Renewals:       c.renewals.Load(),
		Snapshots:      c.snapshots.Load(),
		Releases:       c.releases.Load(),
		ReleasedLeases: c.releasedLeases.Load(),
		Resyncs:        c.resyncs.Load(),
		ResyncedLeases: c.resyncedLeases.Load(),
		Heartbeats:     c.heartbeats.Load(),
		SketchSyncs:    c.sketchSyncs.Load(),
		Publishes:      c.publishes.Load(),
		Wakeups:        c.wakeups.Load(),
		Errors:         c.errors.Load(),
		Trips:          c.trips.Load(),
		DataLosses:     c.dataLosses.Load(),
		ExpiredLeases:  c.expiredLeases.Load(),
	}
}

// ReplicaID returns this replica's id.
func (s *RedisStore) ReplicaID() string { return s.opts.ReplicaID }

// Close stops the background work, releases this replica's leases and removes
// it from the registry, as far as Redis allows within a few timeouts. It does
// not close the client.
func (s *RedisStore) Close() error {
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		close(s.stop)
		<-s.done
		now := s.opts.Now()
		s.mu.Lock()
		for id, h := range s.held {
			delete(s.held, id)
			h.backend.own.Add(-1)
			if h.inRedis {
				s.queue = append(s.queue, pendingRelease{backend: h.backend, member: h.member, until: now.Add(s.opts.Lease), notified: true})
			}
		}
		s.mu.Unlock()
		if !s.down.Load() {
			s.flushReleases()
			s.deregister()
		}
		_ = s.pubsub.Close()
		<-s.listenDone
	})
	return nil
}

// abandon stops the store as if its process died: no release, no
// deregistration. Its leases and registry entry stay until they expire.
func (s *RedisStore) abandon() {
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		close(s.stop)
		<-s.done
		_ = s.pubsub.Close()
		<-s.listenDone
	})
}

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

// Interface guards
var (
	_ Store           = (*RedisStore)(nil)
	_ ReplicaRegistry = (*RedisStore)(nil)
	_ io.Closer       = (*RedisStore)(nil)
)
