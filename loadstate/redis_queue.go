package loadstate

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// QueueTicket describes a request that is to wait in a fleet-wide queue.
type QueueTicket struct {
	// Wants are the backends it can use (capacity and token capacity as the
	// router sees them).
	Wants []Slot
	// Scores[k] is how well Wants[k] suits the request (assign mode); nil
	// means all alike.
	Scores []float64
	// Class is its priority class (0 the highest); Aging what one class is
	// worth in waiting time (see WaitQueue).
	Class int
	Aging time.Duration
	// Assign selects the optimal assignment of freed slots.
	Assign bool
	// TTL is how long the ticket may wait: a ticket whose waiter gave up
	// without leaving (it died) lapses after it.
	TTL time.Duration
	// Waited is how long the request has waited already: its place in line
	// is that much before now, so a request that joins again (its patience
	// for better backends ran out, or it moves from a replica's local line)
	// keeps its place instead of going to the back.
	Waited time.Duration
}

// FleetQueue is a Store whose wait queue is shared by every replica of the
// pool: a waiting request is a ticket in the store, a release hands the freed
// slot to the best ticket for it atomically, and only the replica holding
// that ticket is told. Waiting costs no store call beyond the one that
// joined the queue.
type FleetQueue interface {
	Store
	// Queueing reports whether the fleet-wide queue is usable now (while
	// the store is down, replicas queue locally).
	Queueing() bool
	// AcquireOrQueue asks for a slot on try (in order) like Acquire; when
	// none has room and t is not nil, the request joins the queue for
	// t.Wants in the same round trip. It returns the backend name it holds
	// a slot on (possibly granted at once), or "" and whether it now waits;
	// then Granted(id) tells when a slot is handed to it.
	AcquireOrQueue(ctx context.Context, id string, try []Slot, t *QueueTicket) (backend string, queued bool, err error)
	// Granted returns the channel on which a waiting request learns the
	// backend it was handed a slot on (nil when id is not waiting).
	Granted(id string) <-chan string
	// LeaveQueue takes a waiting request out of the queue. When it was
	// handed a slot meanwhile it returns that backend: the request holds it.
	LeaveQueue(ctx context.Context, id string) (string, error)
	// Interrupted closes when the fleet-wide queue becomes unusable (the
	// store lost its backing service): waiters carry on in local queues.
	Interrupted() <-chan struct{}
	// Resumed closes when it is usable again: local waiters join it.
	Resumed() <-chan struct{}
}

// FleetWaiting returns how many requests of every replica wait in the pool's
// fleet-wide queue, as of the last heartbeat (so up to one heartbeat old),
// and whether that count stands: false while the fleet-wide queue is not in
// use (Redis down or not trusted yet), when each replica's own line is all
// there is.
func (s *RedisStore) FleetWaiting() (int, bool) {
	if !s.Queueing() {
		return 0, false
	}
	return int(s.fleetQueued.Load()), true
}

// waitingTicket is one of this replica's requests in the fleet-wide queue.
type waitingTicket struct {
	member string
	cost   int64
	wants  []*backendState
	ch     chan string // receives the backend granted, once
}

// noteTicket registers a request about to join the queue, before the script
// runs, so that a grant arriving right after it finds it.
func (s *RedisStore) noteTicket(id, member string, cost int64, states []*backendState, scores []string) {
	var wants []*backendState
	for i, st := range states {
		if scores[i] != "" {
			wants = append(wants, st)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if tk := s.waiting[id]; tk != nil {
		tk.member, tk.cost, tk.wants = member, cost, wants
		return
	}
	s.waiting[id] = &waitingTicket{member: member, cost: cost, wants: wants, ch: make(chan string, 1)}
}

// dropTicketLocked forgets a request that did not join the queue. The
// caller holds s.mu.
func (s *RedisStore) dropTicketLocked(id string) { delete(s.waiting, id) }

func (s *RedisStore) forgetTicket(id string) {
	s.mu.Lock()
	delete(s.waiting, id)
	s.mu.Unlock()
}

// SetQueueMode sets how freed slots are handed to waiting tickets when this
// replica's releases and heartbeats serve the queue: by the optimal
// assignment (assign) or first in line, and, for the assignment, the
// waiting time one point of score is worth (QueueOptions.AssignAging; 0:
// DefaultAssignAging). The routers of a pool should agree.
func (s *RedisStore) SetQueueMode(assign bool, aging time.Duration) {
	if aging <= 0 {
		aging = DefaultAssignAging
	}
	flag := "0"
	if assign {
		flag = "1"
	}
	s.queueAssign.Store(&flag)
	s.queueAging.Store(max(aging, time.Millisecond).Milliseconds())
}

// queueMode is SetQueueMode's settings as script arguments.
func (s *RedisStore) queueMode() (assign string, agingMs int64) {
	if p := s.queueAssign.Load(); p != nil {
		assign = *p
	} else {
		assign = "0"
	}
	agingMs = s.queueAging.Load()
	if agingMs <= 0 {
		agingMs = DefaultAssignAging.Milliseconds()
	}
	return assign, agingMs
}

// Interrupted implements FleetQueue: the channel closes when the store stops
// using the fleet-wide queue (the breaker opens, or Redis's counts stop being
// trusted); requests waiting in it then wait locally instead.
func (s *RedisStore) Interrupted() <-chan struct{} {
	for {
		if p := s.outage.Load(); p != nil {
			if !s.Queueing() { // stopped after this channel was made: closing it now
				s.interrupt()
				continue
			}
			return *p
		}
		ch := make(chan struct{})
		if !s.Queueing() {
			close(ch)
			return ch
		}
		if s.outage.CompareAndSwap(nil, &ch) {
			if !s.Queueing() { // stopped meanwhile
				s.interrupt()
			}
			return ch
		}
	}
}

// Resumed implements FleetQueue: the channel closes when the store can use
// the fleet-wide queue again (see Queueing).
func (s *RedisStore) Resumed() <-chan struct{} {
	for {
		if p := s.recovered.Load(); p != nil {
			if s.Queueing() { // usable again after this channel was made
				s.resume()
				continue
			}
			return *p
		}
		ch := make(chan struct{})
		if s.Queueing() {
			close(ch)
			return ch
		}
		if s.recovered.CompareAndSwap(nil, &ch) {
			if s.Queueing() {
				s.resume()
			}
			return ch
		}
	}
}

// resume closes the current Resumed channel.
func (s *RedisStore) resume() {
	if p := s.recovered.Swap(nil); p != nil {
		close(*p)
	}
}

// interrupt closes the current Interrupted channel; the next call makes a
// new one.
func (s *RedisStore) interrupt() {
	if p := s.outage.Swap(nil); p != nil {
		close(*p) // Swap hands each channel to one closer only
	}
}

// Queueing implements FleetQueue: the fleet-wide queue is used while Redis
// answers and its counts are trusted. While they are not (after an outage or
// a data loss, until every replica has reported its leases back), admissions
// are limited to this replica's share, which a ticket in Redis cannot honour,
// so requests wait locally.
func (s *RedisStore) Queueing() bool {
	return !s.down.Load() && !s.closed.Load() && (s.trusted() || s.tun().OnDown == FailOpen)
}

// AcquireOrQueue implements FleetQueue.
func (s *RedisStore) AcquireOrQueue(ctx context.Context, id string, try []Slot, t *QueueTicket) (string, bool, error) {
	if err := ctx.Err(); err != nil {
		return "", false, err
	}
	if s.closed.Load() {
		return "", false, errStoreClosed
	}
	// Every backend of the call: the ones to try, in order, then the ones
	// only wanted.
	all := append([]Slot(nil), try...)
	q := &queueCall{ticket: t}
	for i := range try {
		q.rank = append(q.rank, i+1)
		q.scores = append(q.scores, "")
	}
	if t != nil {
		for k, w := range t.Wants {
			score := "0"
			if k < len(t.Scores) {
				score = strconv.FormatFloat(t.Scores[k], 'g', 6, 64)
			}
			at := -1
			for i, c := range all {
				if c.Backend == w.Backend {
					at = i
				}
			}
			if at < 0 {
				all = append(all, Slot{Backend: w.Backend, Capacity: w.Capacity, Tokens: w.Tokens, TokenCapacity: w.TokenCapacity})
				q.rank = append(q.rank, 0)
				q.scores = append(q.scores, score)
			} else {
				q.scores[at] = score
			}
		}
	}
	states := make([]*backendState, len(all))
	for i, c := range all {
		states[i] = s.state(c.Backend)
		if c.TokenCapacity > 0 && !states[i].tokenLimited.Load() {
			states[i].tokenLimited.Store(true)
		}
	}
	now := s.opts.Now()
	s.mu.Lock()
	h := s.held[id]
	s.mu.Unlock()
	if h != nil {
		return h.backend.name, false, nil
	}
	if s.down.Load() {
		if i := s.acquireLocal(id, states[:len(try)], try, now); i >= 0 {
			return try[i].Backend, false, nil
		}
		return "", false, nil
	}
	i, queued, err := s.acquireRedis(ctx, id, states, all, q, now, false)
	if err != nil || i < 0 {
		return "", queued, err
	}
	return all[i].Backend, false, nil
}

// Granted implements FleetQueue.
func (s *RedisStore) Granted(id string) <-chan string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if tk := s.waiting[id]; tk != nil {
		return tk.ch
	}
	return nil
}

// grantedLocked makes a slot handed to a waiting request this replica's
// lease, and tells the waiter. The caller holds s.mu.
func (s *RedisStore) grantedLocked(id string, tk *waitingTicket, st *backendState) {
	now := s.opts.Now()
	t := s.tun()
	s.held[id] = &heldLease{backend: st, member: tk.member, tokens: tk.cost, lease: t.Lease,
		expires: now.Add(t.Lease), inRedis: true, confirmed: now}
	// The slot changed hands (a release gave it to this request): the
	// fleet's count did not change.
	st.own.Add(1)
	st.ownTokens.Add(tk.cost)
	delete(s.waiting, id)
	select {
	case tk.ch <- st.name:
	default:
	}
}

// granted handles a grant announced on this replica's channel:
// "<ticket id>\0<backend>\0<lease member>". A grant for a request that is no
// longer waiting (it gave up as the slot was handed over) is given back.
func (s *RedisStore) granted(payload string) {
	parts := strings.SplitN(payload, "\x00", 3)
	if len(parts) != 3 || !plainName(parts[1]) {
		return
	}
	id, backend, member := parts[0], parts[1], parts[2]
	s.stats.grantsReceived.Add(1)
	st := s.state(backend)
	s.mu.Lock()
	defer s.mu.Unlock()
	if tk := s.waiting[id]; tk != nil {
		for _, w := range tk.wants {
			if w == st {
				s.grantedLocked(id, tk, st)
				return
			}
		}
		return
	}
	// Not waiting any more: either LeaveQueue already took the grant (the
	// lease is held), or the request is gone and the slot must come back.
	if h := s.held[id]; h != nil && h.backend == st {
		return
	}
	s.queue = append(s.queue, pendingRelease{backend: st, member: member, until: s.opts.Now().Add(s.tun().Lease)})
	s.signal()
}

// cancelScript takes a ticket out of the queue, or tells the backend it was
// granted a slot on.
//
//	KEYS[1]    the pool's tickets
//	KEYS[1+i]  lease set of the i-th backend the ticket wanted
//	ARGV[1]    ticket id
//	ARGV[2]    its lease member
//	ARGV[2+i]  the i-th backend's name
//
// When the ticket is still waiting it is removed (its queue entries go when
// they reach a head) and "" is returned. Otherwise, when a lease with the
// member exists on a wanted backend, that backend's name is returned.
var cancelScript = redis.NewScript(`
if redis.call('HDEL', KEYS[1], ARGV[1]) == 1 then
  return ''
end
for i = 2, #KEYS do
  if redis.call('ZSCORE', KEYS[i], ARGV[2]) then
    return ARGV[1 + i]
  end
end
return ''
`)

// LeaveQueue implements FleetQueue.
func (s *RedisStore) LeaveQueue(ctx context.Context, id string) (string, error) {
	s.mu.Lock()
	if h := s.held[id]; h != nil {
		s.mu.Unlock()
		return h.backend.name, nil // the grant arrived first
	}
	tk := s.waiting[id]
	s.mu.Unlock()
	if tk == nil {
		return "", nil
	}
	keys := []string{s.keys.tickets()}
	args := []any{id, tk.member}
	for _, w := range tk.wants {
		keys = append(keys, w.key)
		args = append(args, w.nameArg)
	}
	start := time.Now()
	cctx, cancel := context.WithTimeout(ctx, s.tun().Timeout)
	res, err := cancelScript.Run(cctx, s.client, keys, args...).Text()
	cancel()
	s.stats.queueCalls.Add(1)
	if err != nil {
		if !callerEnded(ctx) {
			s.callFailed("leave queue", start, err)
		}
		s.forgetTicket(id) // it lapses in Redis; a late grant is given back
		return "", fmt.Errorf("leaving the queue: %w: %w", ErrUnavailable, err)
	}
	s.callSucceeded()
	s.mu.Lock()
	defer s.mu.Unlock()
	if h := s.held[id]; h != nil {
		return h.backend.name, nil // the grant arrived meanwhile
	}
	if res != "" && plainName(res) {
		if tk := s.waiting[id]; tk != nil {
			s.grantedLocked(id, tk, s.state(res))
			return res, nil
		}
	}
	delete(s.waiting, id)
	return "", nil
}

// Interface guards
var _ FleetQueue = (*RedisStore)(nil)
