package loadstate

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
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

// Acquire implements Store. While Redis is usable it is one round trip bounded
// by the configured timeout; otherwise it decides from local state at once (see
// OnDown) and never returns a Redis error: a gateway keeps serving through an
// outage. It returns an error only for a cancelled ctx or a closed store.
func (s *RedisStore) Acquire(ctx context.Context, id string, candidates []Slot) (int, error) {
	if err := ctx.Err(); err != nil {
		return -1, err
	}
	if s.closed.Load() {
		return -1, errStoreClosed
	}
	if len(candidates) == 0 {
		return -1, nil
	}
	states := make([]*backendState, len(candidates))
	for i, c := range candidates {
		states[i] = s.state(c.Backend)
	}
	now := s.opts.Now()
	s.mu.Lock()
	h := s.held[id]
	s.mu.Unlock()
	if h != nil {
		return indexOf(states, h.backend), nil
	}
	if s.down.Load() {
		return s.acquireLocal(id, states, candidates, now), nil
	}
	return s.acquireRedis(ctx, id, states, candidates, now)
}

func indexOf(states []*backendState, st *backendState) int {
	for i, x := range states {
		if x == st {
			return i
		}
	}
	// Held on a backend that is no longer a candidate: keep it there rather
	// than take a second slot under the same id.
	return -1
}

func (s *RedisStore) acquireRedis(ctx context.Context, id string, states []*backendState, candidates []Slot, now time.Time) (int, error) {
	n := len(candidates)
	// Until Redis's counts can be trusted again, a candidate is offered to the
	// script only if this replica is also within its local share, and the slot
	// is reserved locally until the reply so that concurrent acquires cannot
	// overshoot the share together.
	shareLimited := s.opts.OnDown != FailOpen && !s.trusted(now)
	var reserved []bool
	if shareLimited {
		reserved = make([]bool, n)
		s.mu.Lock()
		for i, st := range states {
			if s.localAllowsLocked(st, candidates[i].Capacity, now) {
				st.reserved++
				reserved[i] = true
			}
		}
		s.mu.Unlock()
	}
	member := id + ":" + strconv.FormatUint(s.attempts.Add(1), 36)
	trustedEpoch := *s.epoch.Load()
	keys := make([]string, 1+n)
	args := make([]any, 5+2*n)
	keys[0] = s.epochKey
	args[0], args[1], args[2], args[3], args[4] = member, s.leaseMs, trustedEpoch, s.freshArg, s.chanArg
	for i, c := range candidates {
		keys[1+i] = states[i].key
		capacity := c.Capacity
		if shareLimited && !reserved[i] {
			capacity = 0
		}
		args[5+i] = capacity
		args[5+n+i] = states[i].nameArg
	}

	cctx, cancel := context.WithTimeout(ctx, s.opts.Timeout)
	raw, err := acquireScript.Run(cctx, s.client, keys, args...).Slice()
	cancel()
	s.stats.hotPathCalls.Add(1)
	var reply acquireReply
	if err == nil {
		reply, err = parseAcquireReply(raw, n)
	}
	if err == nil && reply.chosen != -2 && trustedEpoch == "" {
		s.learnEpoch(reply.epoch, now) // first contact happened on the request path
	}

	s.mu.Lock()
	for i, r := range reserved {
		if r {
			states[i].reserved--
		}
	}
	if err != nil {
		// The script may have run before the timeout hit: remove the member
		// wherever it could have been added. It is unique to this attempt, so
		// the cleanup can never remove a later acquisition.
		for _, st := range states {
			s.queue = append(s.queue, pendingRelease{backend: st, member: member, until: now.Add(s.opts.Lease), notified: true})
		}
		s.mu.Unlock()
		s.stats.errors.Add(1)
		s.signal()
		if ctx.Err() != nil {
			return -1, fmt.Errorf("acquiring a slot: %w", ctx.Err())
		}
		s.trip("acquire", err)
		return s.acquireLocal(id, states, candidates, now), nil
	}
	if reply.chosen == -2 {
		s.mu.Unlock()
		s.epochChanged(reply.epoch, now)
		return s.acquireLocal(id, states, candidates, now), nil
	}

	now = s.opts.Now() // the counts are as of the script's run, after the round trip
	chosen := int(reply.chosen)
	if prev := s.held[id]; prev != nil {
		// A concurrent Acquire with the same id got there first: give back
		// whatever this one took and report that slot.
		if chosen >= 0 {
			s.queue = append(s.queue, pendingRelease{backend: states[chosen], member: member, until: now.Add(s.opts.Lease)})
		}
		s.mu.Unlock()
		s.signal()
		return indexOf(states, prev.backend), nil
	}
	if chosen >= 0 {
		st := states[chosen]
		s.held[id] = &heldLease{backend: st, member: member, expires: now.Add(s.opts.Lease), inRedis: true}
		st.own.Add(1)
	}
	trusted := s.trusted(now)
	for i, st := range states {
		st.fleet.Store(reply.counts[i])
		if trusted {
			st.othersAt.Store(max(reply.counts[i]-st.own.Load(), 0))
			st.contactAt.Store(now.UnixNano())
		}
	}
	s.mu.Unlock()
	return chosen, nil
}

type acquireReply struct {
	chosen int64
	epoch  string
	counts []int64
}

func parseAcquireReply(raw []any, n int) (acquireReply, error) {
	var r acquireReply
	if len(raw) < 2 {
		return r, fmt.Errorf("acquire script: short reply of %d values", len(raw))
	}
	chosen, ok1 := raw[0].(int64)
	epoch, ok2 := raw[1].(string)
	if !ok1 || !ok2 {
		return r, fmt.Errorf("acquire script: unexpected reply types %T, %T", raw[0], raw[1])
	}
	r.chosen, r.epoch = chosen, epoch
	if chosen == -2 {
		return r, nil
	}
	if len(raw) != 2+n || chosen < -1 || chosen >= int64(n) {
		return r, fmt.Errorf("acquire script: reply of %d values for %d candidates, chosen %d", len(raw), n, chosen)
	}
	r.counts = make([]int64, n)
	for i := range n {
		c, ok := raw[2+i].(int64)
		if !ok {
			return r, fmt.Errorf("acquire script: count of type %T", raw[2+i])
		}
		r.counts[i] = c
	}
	return r, nil
}

// localAllowsLocked reports whether this replica may admit one more request on
// a backend from local state alone. fail_open: up to the full capacity.
// Otherwise: within this replica's share, and, until their leases would have
// expired, counting what the other replicas held at the last trusted contact
// (they may still hold it; a replica that was at its cap when Redis went away
// keeps its requests until they end). The caller holds s.mu.
func (s *RedisStore) localAllowsLocked(st *backendState, capacity int, now time.Time) bool {
	own := st.own.Load() + int64(st.reserved)
	if s.opts.OnDown == FailOpen {
		return own < int64(capacity)
	}
	if own >= int64(s.fleet.Load().share(st.name, capacity)) {
		return false
	}
	return own+st.othersHeld(now, s.opts.Lease) < int64(capacity)
}

// acquireLocal decides from local state, without I/O: while Redis is down, and
// for the one request whose round trip just failed.
func (s *RedisStore) acquireLocal(id string, states []*backendState, candidates []Slot, now time.Time) int {
	s.stats.localDecisions.Add(1)
	if s.opts.OnDown == FailClosed {
		return -1
	}
	s.mu.Lock()
	if h := s.held[id]; h != nil {
		s.mu.Unlock()
		return indexOf(states, h.backend)
	}
	for i, st := range states {
		if s.localAllowsLocked(st, candidates[i].Capacity, now) {
			member := id + ":" + strconv.FormatUint(s.attempts.Add(1), 36)
			s.held[id] = &heldLease{backend: st, member: member, expires: now.Add(s.opts.Lease)}
			st.own.Add(1)
			st.fleet.Add(1)
			s.mu.Unlock()
			// Not in Redis yet: the background loop adds it as soon as Redis
			// is usable, so that the fleet counts it.
			s.needSync.Store(true)
			s.signal()
			return i
		}
	}
	s.mu.Unlock()
	return -1
}

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
	st.own.Add(-1)
	decrementFloor(&st.fleet)
	down := s.down.Load()
	if h.inRedis {
		s.queue = append(s.queue, pendingRelease{backend: st, member: h.member, until: now.Add(s.opts.Lease), notified: down})
	}
	s.mu.Unlock()
	if h.inRedis && !down {
		s.signal()
		return nil
	}
	// The slot is free in local state now; nobody else needs telling.
	s.watchers.notify(backend)
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
// locally and in Redis. A lease Redis no longer has (it expired during a stall,
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
	h.expires = now.Add(s.opts.Lease)
	if !h.inRedis || s.down.Load() || s.closed.Load() {
		s.mu.Unlock()
		return nil
	}
	key, member := h.backend.key, h.member
	s.mu.Unlock()

	cctx, cancel := context.WithTimeout(ctx, s.opts.Timeout)
	extended, err := renewScript.Run(cctx, s.client, []string{key}, s.leaseMs, member).Int64()
	cancel()
	s.stats.renewals.Add(1)
	if err != nil {
		s.stats.errors.Add(1)
		if ctx.Err() == nil {
			s.trip("renew", err)
		}
		return fmt.Errorf("renewing lease on %s: %w: %w", backend, ErrUnavailable, err)
	}
	if extended == 0 {
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

// Inflight implements Store, without I/O: the fleet-wide count at the last
// reply from Redis (adjusted by this replica's own acquires and releases since),
// or while Redis is down this replica's own count plus what the others held at
// the last contact.
func (s *RedisStore) Inflight(backend string) int {
	st := (*s.backends.Load())[backend]
	if st == nil {
		return 0
	}
	now := s.opts.Now()
	local := st.own.Load() + st.othersHeld(now, s.opts.Lease)
	if s.down.Load() {
		return int(local)
	}
	if !s.trusted(now) {
		return int(max(local, st.fleet.Load()))
	}
	return int(st.fleet.Load())
}

// Snapshot implements Store: live lease counts from Redis, of every backend
// any replica of the pool has used. While Redis is unusable it returns the
// local estimate with an error wrapping ErrUnavailable.
func (s *RedisStore) Snapshot(ctx context.Context) (map[string]int, error) {
	if s.down.Load() || s.closed.Load() {
		return s.localSnapshot(), fmt.Errorf("reading in-flight counts: %w", ErrUnavailable)
	}
	cctx, cancel := context.WithTimeout(ctx, 4*s.opts.Timeout)
	defer cancel()
	counts, err := s.readCounts(cctx)
	if err != nil {
		s.stats.errors.Add(1)
		if ctx.Err() == nil {
			s.trip("snapshot", err)
		}
		return s.localSnapshot(), fmt.Errorf("reading in-flight counts: %w: %w", ErrUnavailable, err)
	}
	s.stats.snapshots.Add(1)
	return counts, nil
}

func (s *RedisStore) readCounts(ctx context.Context) (map[string]int, error) {
	names, err := s.client.SMembers(ctx, s.keys.backends()).Result()
	if err != nil {
		return nil, err
	}
	seen := make(map[string]bool, len(names))
	for _, n := range names {
		seen[n] = true
	}
	for name := range *s.backends.Load() {
		seen[name] = true
	}
	names = names[:0]
	for n := range seen {
		names = append(names, n)
	}
	sort.Strings(names)
	out := make(map[string]int, len(names))
	if len(names) == 0 {
		return out, nil
	}
	keys := make([]string, len(names))
	for i, n := range names {
		keys[i] = s.keys.lease(n)
	}
	counts, err := countScript.Run(ctx, s.client, keys).Int64Slice()
	if err != nil {
		return nil, err
	}
	for i, n := range names {
		if i < len(counts) && counts[i] > 0 {
			out[n] = int(counts[i])
		}
	}
	return out, nil
}

func (s *RedisStore) localSnapshot() map[string]int {
	out := make(map[string]int)
	for name := range *s.backends.Load() {
		if n := s.Inflight(name); n > 0 {
			out[name] = n
		}
	}
	return out
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

// Interface guards
var (
	_ Store           = (*RedisStore)(nil)
	_ ReplicaRegistry = (*RedisStore)(nil)
	_ io.Closer       = (*RedisStore)(nil)
)
