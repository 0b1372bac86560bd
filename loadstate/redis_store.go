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
// Breaker. Redis calls on the request path are bounded by Timeout, but one
// slow reply is not an outage: the breaker opens (and requests are decided from
// local state at once, without waiting on Redis, according to OnDown; Mode
// reports it, and it is logged once) only on evidence that Redis is gone:
//   - a broken connection: refused, reset, EOF, broken pipe, unreachable
//     network or host, a name that does not resolve, or Redis answering that
//     it cannot serve (LOADING, MASTERDOWN, CLUSTERDOWN, READONLY); or
//   - breakerRounds (3) failed rounds in a row, any call of the store counted,
//     with no success in between. A failure counts as a new round only when
//     its call began after the previous counted failure was seen, so a
//     single stall that times out many concurrent calls is one round, and it
//     takes about three timeouts of silence to open the breaker.
//
// A call that failed because its caller's context ended is not counted.
//
// In doubt. An acquire whose call timed out may have run on Redis. It is
// retried with the same lease member, so that a retry that finds the first
// attempt's lease returns it instead of taking a second slot, for as long as
// the caller's context allows (the handler gives it the request's wait budget
// as a deadline; without a deadline, at most breakerRounds attempts). Only
// when that budget runs out (an error wrapping the context's) or the breaker
// opens (a local decision) does it give up, and then the member is removed
// from every candidate in the background, wherever it may have been added.
//
// Recovery. A background probe resynchronises when Redis answers: queued
// releases are sent, this replica's live leases re-added (Redis may have
// expired or lost them), and only then does it register again. Counts stay
// share-limited (each replica admits at most its share, and the Redis count
// must have room too) until every replica in this replica's fleet view has
// reported, in a heartbeat after the recovery, that all its leases are in
// Redis under the current epoch; a replica that never does leaves the view a
// lease after contact came back. A replica keeps, in its fleet view, every
// replica it saw alive within a lease of *contact*: time spent unable to read
// the registry is not evidence that the others died, so shares do not grow
// after a long outage.
//
// Data loss. The epoch key holds a value created anew (random per store plus
// Redis TIME) whenever it is missing, so a Redis that restarted empty or whose
// pool keys were deleted is noticed by every replica, the one that recreated
// it included. A replica whose heartbeat finds fewer leases on a backend than
// it knows it holds there (lease keys evicted or deleted while the epoch key
// survived) replaces the epoch, so that every replica treats it as a data
// loss: leases re-added, counts share-limited as after a recovery.
//
// Local mode keeps the fleet within capacity, except for bounds it cannot
// close without the shared state it lost (measured by tests):
//   - requests that outlive a lease during the outage on a replica that held
//     more than its share: others stop counting them once their leases would
//     have expired (overshoot ≤ Σ max(0, held − share));
//   - on the way into local mode, slots other replicas took through Redis
//     after this replica's last reply from it are unknown to it, so it may
//     admit up to its share on top of them. The replica that heard from Redis
//     last missed nothing, so the overshoot is at most the sum of the other
//     replicas' shares: capacity − the last one's share, and in practice the
//     few slots taken in the last round trip before the outage.
//
// A replica cut off from a Redis that the others still reach admits its share
// on top of them, and a replica that starts while Redis is down knows no other
// replica and takes the whole capacity as its share.
type RedisStore struct {
	client   redis.UniversalClient
	opts     RedisOptions // Lease, Heartbeat, Timeout and OnDown: see tun
	tuning   atomic.Pointer[tunables]
	keys     keyspace
	epochKey string
	channel  string
	chanArg  any // channel, boxed once for script arguments
	freshArg any // freshEpoch, boxed once
	info     string
	// grantPrefix is the prefix of the replicas' grant channels; grantChan
	// this replica's own.
	grantPrefix, grantChan string

	// Read lock-free on the request path.
	backends  atomic.Pointer[map[string]*backendState]
	fleet     atomic.Pointer[fleetView]
	down      atomic.Bool  // breaker open: Redis is not used on the request path
	untrusted atomic.Bool  // Redis counts not trusted yet: admissions stay share-limited
	syncFrom  atomic.Int64 // Redis ms: trust needs every replica's clean beat at or after it
	// resyncFrom asks the next heartbeat to set syncFrom to its Redis time.
	resyncFrom atomic.Bool
	epoch      atomic.Pointer[string] // the epoch whose counts this replica trusts
	attempts   atomic.Uint64          // numbers each acquire's lease member
	needSync   atomic.Bool            // some live lease is not known to be in Redis
	// fleetQueued is the length of the pool's fleet-wide queue at the last
	// heartbeat that could trust Redis (FleetWaiting).
	fleetQueued atomic.Int64
	closed      atomic.Bool
	noticeAt    atomic.Int64 // when the last outage warning was logged
	announced   atomic.Bool  // the current outage was warned about
	brk         breaker

	freshEpoch string // prefix of the epoch this replica creates when Redis has none
	bmu        sync.Mutex

	mu    sync.Mutex // guards held, queue, dead, seen, contactSince and backendState.reserved; never held across I/O
	held  map[string]*heldLease
	queue []pendingRelease
	dead  []string             // replicas found dead whose sketch fields are still to be dropped
	seen  map[string]time.Time // replica id → when a heartbeat last reported it alive
	// contactSince is when this replica last regained contact with Redis (or
	// Redis lost its data): a replica missing from the registry is forgotten
	// only a lease after both this and its last sighting.
	contactSince time.Time

	watchers watchers
	stats    redisCounters

	healthQueue []HealthEvent // news for the next release batch; under mu
	healthSink  healthSinkPtr

	// waiting holds this replica's requests in the fleet-wide queue, by
	// ticket (lease) id; under mu.
	waiting map[string]*waitingTicket
	// How this replica serves the queue (SetQueueMode).
	queueAssign atomic.Pointer[string]
	queueAging  atomic.Int64
	outage      atomic.Pointer[chan struct{}] // see Interrupted
	recovered   atomic.Pointer[chan struct{}] // see Resumed

	// What rewake saw last.
	lastMode atomic.Pointer[string]
	lastLive atomic.Int64

	// overrides are operators' runtime changes as last read from Redis
	// (redis_overrides.go); overridesAt is the version read with them.
	overrides     overrideCache
	overridesAt   atomic.Int64
	overridesRead atomic.Bool

	wake       chan struct{}
	stop       chan struct{}
	done       chan struct{}
	pubsub     *redis.PubSub
	listenDone chan struct{}
	closeOnce  sync.Once
}

// tunables are the settings Tune may change, read once per operation.
type tunables struct {
	RedisTunables
	leaseMs any // Lease in ms, boxed once for script arguments
}

func (s *RedisStore) tun() *tunables { return s.tuning.Load() }

// Tune changes the lease, heartbeat, timeout and on-down mode of a running
// store, keeping every lease it holds. Safe for concurrent use; zero fields
// take their defaults. It returns an error, and changes nothing, when the
// values are invalid (a heartbeat not shorter than the lease, a non-positive
// timeout, an unknown mode).
func (s *RedisStore) Tune(t RedisTunables) error {
	t.setDefaults()
	if err := t.validate(); err != nil {
		return fmt.Errorf("tuning the redis load store: %w", err)
	}
	s.tuning.Store(&tunables{RedisTunables: t, leaseMs: t.Lease.Milliseconds()})
	s.signal() // the background loop picks up a new heartbeat at once
	return nil
}

// backendState is what one replica knows about one backend.
type backendState struct {
	name     string
	key      string // its lease set
	queueKey string // its queue of tickets
	nameArg  any    // name, boxed once for script arguments

	fleet     atomic.Int64 // fleet-wide count at the last reply, adjusted by own changes since
	own       atomic.Int64 // this replica's live leases; written under RedisStore.mu
	othersAt  atomic.Int64 // other replicas' leases at the last trusted contact
	contactAt atomic.Int64 // local Unix ns of that contact
	reserved  int          // acquires in flight that passed the local share check; under mu

	// Tokens in flight (token capacities): fleet-wide at the last acquire
	// reply, adjusted by own changes since; this replica's own; and those
	// reserved by acquires in flight (under mu).
	fleetTokens, ownTokens atomic.Int64
	reservedTokens         int64
	tokenLimited           atomic.Bool // an acquire gave it a token capacity: heartbeats add up its tokens

	// lastView is Inflight as of the last rewake: a drop is news for the
	// waiters (see rewake), unless told says a notice went out since.
	lastView atomic.Int64
	told     atomic.Bool
}

// dropLocked takes a lease of this replica out of the backend's counts (its
// release or expiry). The caller holds RedisStore.mu.
func (b *backendState) dropLocked(h *heldLease) {
	b.own.Add(-1)
	decrementFloor(&b.fleet)
	b.ownTokens.Add(-h.tokens)
	if h.tokens > 0 {
		for {
			cur := b.fleetTokens.Load()
			if b.fleetTokens.CompareAndSwap(cur, max(cur-h.tokens, 0)) {
				break
			}
		}
	}
}

// rewake tells the watchers of every backend whose in-flight count, as this
// replica sees it, dropped since the last look: slots freed without a release
// notice reaching this replica (another replica's releases learned from a
// heartbeat, the end of other replicas' last-seen leases while Redis is down,
// expired leases), and all of them when the fleet or the mode changed (the
// local shares moved). Waiters are woken only by such news and by their
// deadlines, never by a timer tick of their own. It runs on the background
// goroutine, after every heartbeat, probe and release batch.
func (s *RedisStore) rewake() {
	mode, live := s.Mode(), int64(s.LiveReplicas())
	prevMode := s.lastMode.Swap(&mode)
	changed := prevMode == nil || *prevMode != mode
	if prev := s.lastLive.Swap(live); prev != live {
		changed = true
	}
	for _, st := range s.knownStates() {
		n := int64(s.Inflight(st.name))
		prev := st.lastView.Swap(n)
		if st.told.Swap(false) {
			continue // a release notice went out since the last look
		}
		if n < prev || changed {
			s.watchers.notify(st.name)
		}
	}
}

// tell calls the watchers of backend (a slot freed on it).
func (s *RedisStore) tell(backend string) {
	if st := (*s.backends.Load())[backend]; st != nil {
		st.told.Store(true)
	}
	s.watchers.notify(backend)
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
	member  string        // the lease's member in the sorted set: see leaseMember
	tokens  int64         // its token cost (0 when no token capacity applies)
	lease   time.Duration // its length: the store's lease when taken, or a longer one since
	expires time.Time     // local clock; dropped after this unless renewed
	inRedis bool          // may be in Redis: releasing it must remove it there
	// confirmed is the local time at which the last call that put the lease
	// in Redis with a full length (acquire, renew, re-add) was sent, once it
	// answered; zero when unknown. Redis holds the lease at least until
	// confirmed + lease, which is what the heartbeat's loss check relies on.
	confirmed time.Time
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
	errors, trips, dataLosses, lostLeases, expiredLeases, inDoubtRetries, healthReceived,
	grantsReceived, queueCalls atomic.Uint64
}

// RedisStats counts what a RedisStore did. Request-path calls, background
// calls and pub/sub are counted apart, so the cost per request can be told
// from the fixed cost per replica.
type RedisStats struct {
	Mode string // ModeRedis, ModeLocal, ModeClosed or ModeOpen

	// Request path.
	HotPathCalls   uint64 // acquire scripts sent: one round trip each, retries included
	InDoubtRetries uint64 // acquires retried with the same member after a failed call
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
	Publishes      uint64 // PUBLISH run by the release script (freed slots and health news announced)
	Wakeups        uint64 // announcements received from other replicas
	HealthReceived uint64 // passive-health news received from other replicas
	GrantsReceived uint64 // slots handed to this replica's waiting requests by a release anywhere
	QueueCalls     uint64 // round trips to leave the fleet-wide queue (gave up waiting) or free an orphan grant

	Errors        uint64 // failed Redis calls
	Trips         uint64 // switches from Redis to local state
	DataLosses    uint64 // times Redis was found to have lost its data (a new epoch)
	LostLeases    uint64 // heartbeats that found fewer leases than this replica knows it holds
	ExpiredLeases uint64 // leases dropped because neither released nor renewed in time
}

// NewRedisStore returns a store that shares load through client. Use a client
// built by ClientOptions (or NewRedisClient): the store bounds each call by
// opts.Timeout through its context, and such a client adds no retries or
// waits of its own. The store does not close the client.
//
// It contacts Redis once, bounded by opts.Timeout, to register and learn the
// fleet; when Redis is unreachable it starts in local mode rather than failing,
// so that a gateway can start during a Redis outage. Until the heartbeats show
// every live replica's leases in Redis, it admits by local share.
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
		client:       client,
		opts:         opts,
		keys:         newKeyspace(opts.KeyPrefix, opts.Pool),
		info:         info,
		freshEpoch:   randomHex(8),
		held:         make(map[string]*heldLease),
		contactSince: opts.Now(),
		wake:         make(chan struct{}, 1),
		stop:         make(chan struct{}),
		done:         make(chan struct{}),
		listenDone:   make(chan struct{}),
	}
	t := opts.tunables()
	s.tuning.Store(&tunables{RedisTunables: t, leaseMs: t.Lease.Milliseconds()})
	s.epochKey = s.keys.epoch()
	s.channel = s.keys.released()
	s.chanArg, s.freshArg = s.channel, s.freshEpoch
	s.grantPrefix = s.keys.grants()
	s.grantChan = s.grantPrefix + opts.ReplicaID
	s.waiting = make(map[string]*waitingTicket)
	empty := ""
	s.epoch.Store(&empty)
	s.untrusted.Store(true)
	s.backends.Store(&map[string]*backendState{})
	s.fleet.Store(&fleetView{live: []string{opts.ReplicaID}})

	ctx, cancel := context.WithTimeout(context.Background(), t.Timeout)
	s.pubsub = client.Subscribe(ctx, s.channel, s.grantChan) // go-redis resubscribes by itself after reconnecting
	cancel()
	if err := s.beat(); err != nil {
		s.trip("start", err) // start in local mode; the background loop probes
	} else {
		s.loadScripts()
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
	st := &backendState{name: name, key: s.keys.lease(name), queueKey: s.keys.queue(name), nameArg: name}
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

// LeaseTTL implements Store: the lease given to slots taken from now on.
func (s *RedisStore) LeaseTTL() time.Duration { return s.tun().Lease }

// Mode returns how the store admits requests right now: ModeRedis, or while
// Redis is down ModeLocal, ModeClosed or ModeOpen according to OnDown, or
// ModeLocal while Redis answers but its counts are not trusted yet (after a
// recovery or a data loss, until every replica's leases are back in it).
func (s *RedisStore) Mode() string {
	onDown := s.tun().OnDown
	if s.down.Load() {
		switch onDown {
		case FailClosed:
			return ModeClosed
		case FailOpen:
			return ModeOpen
		}
		return ModeLocal
	}
	if onDown != FailOpen && !s.trusted() {
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
		InDoubtRetries: c.inDoubtRetries.Load(),
		HealthReceived: c.healthReceived.Load(),
		GrantsReceived: c.grantsReceived.Load(),
		QueueCalls:     c.queueCalls.Load(),
		LostLeases:     c.lostLeases.Load(),
	}
}

// Held returns how many slots this replica holds now (requests in flight
// that acquired through this store and have not released).
func (s *RedisStore) Held() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.held)
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
			h.backend.ownTokens.Add(-h.tokens)
			if h.inRedis {
				s.queue = append(s.queue, pendingRelease{backend: h.backend, member: h.member, until: now.Add(h.lease), notified: true})
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

// bgTimeout bounds one background call.
func (s *RedisStore) bgTimeout() time.Duration { return 4 * s.tun().Timeout }

// run is the store's one background goroutine. Releases, lease re-adds,
// heartbeats and probes all run here, one after the other, so a release queued
// after a re-add is always sent after it.
func (s *RedisStore) run() {
	defer close(s.done)
	hb := s.tun().Heartbeat
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
		t := s.tun()
		if t.Heartbeat != hb { // tuned: the new period from now on
			hb = t.Heartbeat
			next = minTime(next, time.Now().Add(hb))
		}
		if s.down.Load() {
			switch {
			case probeDelay == 0: // just tripped: first probe soon, in case it was a blip
				probeDelay = max(2*t.Timeout, 20*time.Millisecond)
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
			// A failed step is counted by the breaker; the next wake-up or
			// heartbeat tries again, or probes once the breaker is open.
			ok := s.flushReleases()
			if ok && s.needSync.Swap(false) {
				ok = s.syncLeases(false)
			}
			if ok && !time.Now().Before(next) {
				next = time.Now().Add(hb)
				if s.beat() == nil {
					s.expireLocal()
					s.shareSketches()
				}
			}
		}
		s.rewake()
		timer.Reset(max(time.Until(next), 0))
	}
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// Interface guards
var (
	_ Store           = (*RedisStore)(nil)
	_ ReplicaRegistry = (*RedisStore)(nil)
	_ io.Closer       = (*RedisStore)(nil)
)
