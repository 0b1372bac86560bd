package loadstate

import (
	"context"
	"fmt"
	"strconv"
	"time"
)

// Acquire implements Store. While Redis is usable it is one round trip bounded
// by the configured timeout; otherwise it decides from local state at once (see
// OnDown) and never returns a Redis error: a gateway keeps serving through an
// outage. A call that failed without opening the breaker leaves the request in
// doubt (the script may have run): it is retried with the same lease member
// until it succeeds, the breaker opens (then decided locally) or ctx ends;
// give ctx the request's wait budget as its deadline. Without a deadline, at
// most breakerRounds attempts are made before deciding locally. It returns an
// error only when ctx ends (wrapping ctx.Err()) or the store is closed.
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
		if c.TokenCapacity > 0 && !states[i].tokenLimited.Load() {
			states[i].tokenLimited.Store(true)
		}
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
	chosen, _, err := s.acquireRedis(ctx, id, states, candidates, nil, now, false)
	return chosen, err
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

// queueCall is what the acquire script needs beyond plain candidates to put
// a request in the fleet-wide queue: which backends to try (rank[i] > 0, in
// rank order; the others are only wanted), which it wants (scores[i] != ""),
// and its ticket.
type queueCall struct {
	rank   []int
	scores []string
	ticket *QueueTicket
}

// acquireRedis takes a slot through the acquire script; again is set on the
// one retry after the script reported a new epoch. With q, candidates are
// every backend of the call (tried or wanted) and a request that finds no
// room joins the queue (queued reports it).
func (s *RedisStore) acquireRedis(ctx context.Context, id string, states []*backendState, candidates []Slot, q *queueCall, now time.Time, again bool) (int, bool, error) {
	t := s.tun()
	n := len(candidates)
	// Until Redis's counts can be trusted again, a candidate is offered to the
	// script only if this replica is also within its local share, and the slot
	// is reserved locally until the reply so that concurrent acquires cannot
	// overshoot the share together.
	shareLimited := t.OnDown != FailOpen && !s.trusted()
	cost := requestTokens(candidates)
	var reserved []bool
	if shareLimited {
		reserved = make([]bool, n)
		s.mu.Lock()
		for i, st := range states {
			if s.localAllowsLocked(st, candidates[i], now) {
				st.reserved++
				st.reservedTokens += cost
				reserved[i] = true
			}
		}
		s.mu.Unlock()
	}
	// One member for every attempt of this call: a retry finds what an
	// attempt whose reply was lost took. It is unique to this call, so the
	// cleanup after giving up can never remove another acquisition.
	member := s.leaseMember(id, cost)
	if q != nil && q.ticket != nil {
		s.noteTicket(id, member, cost, states, q.scores)
	}
	trustedEpoch := *s.epoch.Load()
	keys := make([]string, 3+2*n)
	args := make([]any, 12+6*n)
	keys[0], keys[1], keys[2] = s.epochKey, s.keys.probes(), s.keys.tickets()
	args[0], args[1], args[2], args[3], args[4], args[5] = member, t.leaseMs, trustedEpoch, s.freshArg, s.chanArg, s.grantPrefix
	args[6], args[7], args[8], args[9], args[10], args[11] = "", s.opts.ReplicaID, int64(0), int64(0), "0", int64(1)
	if q != nil && q.ticket != nil {
		tk := q.ticket
		aging := max(tk.Aging, time.Millisecond).Milliseconds()
		args[6] = id
		args[8] = int64(tk.Class)*aging - tk.Waited.Milliseconds()
		args[11] = aging
		args[9] = max(tk.TTL, t.Lease).Milliseconds()
		if tk.Assign {
			args[10] = "1"
		}
	}
	for i, c := range candidates {
		keys[3+i] = states[i].key
		keys[3+n+i] = states[i].queueKey
		capacity := c.Capacity
		if shareLimited && !reserved[i] {
			capacity = 0
		}
		args[12+i] = capacity
		args[12+n+i] = states[i].nameArg
		args[12+2*n+i] = max(c.TokenCapacity, 0)
		probe := "0"
		if c.Probe {
			probe = "1"
		}
		args[12+3*n+i] = probe
		rank, score := i+1, ""
		if q != nil {
			rank, score = q.rank[i], q.scores[i]
		}
		args[12+4*n+i] = rank
		args[12+5*n+i] = score
	}

	var reply acquireReply
	var err error
	var sent time.Time // local time the successful attempt was sent
	inDoubt, budgetOver := false, false
	_, hasDeadline := ctx.Deadline()
	for attempt := 1; ; attempt++ {
		sent = s.opts.Now()
		start := time.Now()
		cctx, cancel := context.WithTimeout(ctx, t.Timeout)
		var raw []any
		raw, err = acquireScript.Run(cctx, s.client, keys, args...).Slice()
		cancel()
		s.stats.hotPathCalls.Add(1)
		if err == nil {
			if reply, err = parseAcquireReply(raw, n); err == nil {
				s.callSucceeded()
				break
			}
		}
		inDoubt = true
		// An attempt cut short by the caller's budget says nothing about
		// Redis. (The deadline can pass, ending the attempt, a moment
		// before ctx's own timer marks it done.)
		if callerEnded(ctx) {
			s.stats.errors.Add(1)
			budgetOver = true
			break
		}
		s.callFailed("acquire", start, err)
		if s.down.Load() || s.closed.Load() || (!hasDeadline && attempt >= breakerRounds) {
			break
		}
		s.stats.inDoubtRetries.Add(1)
		if waited := time.Since(start); waited < t.Timeout/2 {
			// Failed fast (not a timeout): do not spin on it.
			if !sleepCtx(ctx, t.Timeout/2-waited) {
				budgetOver = true
				break
			}
		}
	}
	if err == nil && reply.chosen != -2 && trustedEpoch == "" {
		s.learnEpoch(reply.epoch) // first contact happened on the request path
	}

	s.mu.Lock()
	for i, r := range reserved {
		if r {
			states[i].reserved--
			states[i].reservedTokens -= cost
		}
	}
	if err != nil || (reply.chosen == -2 && inDoubt) {
		// An attempt may have run before its reply was lost: remove the
		// member wherever it could have been added.
		for _, st := range states {
			s.queue = append(s.queue, pendingRelease{backend: st, member: member, until: now.Add(t.Lease), notified: true})
		}
	}
	if err != nil || reply.chosen == -2 || reply.chosen >= 0 || !reply.queued {
		s.dropTicketLocked(id) // not waiting in the queue (a ticket that made it in stays until cancelled)
	}
	if err != nil {
		s.mu.Unlock()
		s.signal()
		if q != nil && q.ticket != nil {
			s.forgetTicket(id)
		}
		if budgetOver || ctx.Err() != nil {
			cause := ctx.Err()
			if cause == nil { // the deadline passed; its timer has yet to mark ctx
				cause = context.DeadlineExceeded
			}
			return -1, false, fmt.Errorf("acquiring a slot: %w", cause)
		}
		if s.closed.Load() {
			return -1, false, errStoreClosed
		}
		return s.acquireTriedLocal(id, states, candidates, q, now), false, nil
	}
	if reply.chosen == -2 {
		s.mu.Unlock()
		s.signal()
		s.epochChanged(reply.epoch)
		if !again {
			// Redis answers: ask it again under the new epoch, now
			// share-limited, rather than trust local counts that may have
			// been read from Redis after the loss.
			return s.acquireRedis(ctx, id, states, candidates, q, now, true)
		}
		return s.acquireTriedLocal(id, states, candidates, q, now), false, nil
	}

	now = s.opts.Now() // the counts are as of the script's run, after the round trip
	chosen := int(reply.chosen)
	if prev := s.held[id]; prev != nil {
		// A concurrent Acquire with the same id got there first: give back
		// whatever this one took and report that slot.
		if chosen >= 0 {
			s.queue = append(s.queue, pendingRelease{backend: states[chosen], member: member, until: now.Add(t.Lease)})
		}
		s.mu.Unlock()
		s.signal()
		return indexOf(states, prev.backend), false, nil
	}
	if chosen >= 0 {
		st := states[chosen]
		s.held[id] = &heldLease{backend: st, member: member, tokens: cost, lease: t.Lease, expires: now.Add(t.Lease), inRedis: true, confirmed: sent}
		st.own.Add(1)
		st.ownTokens.Add(cost)
	}
	trusted := s.trusted()
	for i, st := range states {
		st.fleet.Store(reply.counts[i])
		st.fleetTokens.Store(reply.sums[i])
		if trusted {
			st.othersAt.Store(max(reply.counts[i]-st.own.Load(), 0))
			st.contactAt.Store(now.UnixNano())
		}
	}
	s.mu.Unlock()
	return chosen, reply.queued && chosen < 0, nil
}

// acquireTriedLocal decides locally among the backends of a call that are to
// be tried, in rank order (all of them without q), and returns the chosen
// one's index in the call.
func (s *RedisStore) acquireTriedLocal(id string, states []*backendState, candidates []Slot, q *queueCall, now time.Time) int {
	if q == nil {
		return s.acquireLocal(id, states, candidates, now)
	}
	var idx []int
	for r := 1; r <= len(candidates); r++ {
		for i, rank := range q.rank {
			if rank == r {
				idx = append(idx, i)
			}
		}
	}
	st, slots := make([]*backendState, len(idx)), make([]Slot, len(idx))
	for k, i := range idx {
		st[k], slots[k] = states[i], candidates[i]
	}
	if k := s.acquireLocal(id, st, slots, now); k >= 0 {
		return idx[k]
	}
	return -1
}

// callerEnded reports whether ctx is done or its deadline has passed: an
// I/O deadline taken from ctx can fire a moment before ctx's own timer marks
// it done, and a call that failed so says nothing about Redis.
func callerEnded(ctx context.Context) bool {
	if ctx.Err() != nil {
		return true
	}
	deadline, ok := ctx.Deadline()
	return ok && !time.Now().Before(deadline)
}

// sleepCtx waits d, or until ctx ends (then it reports false).
func sleepCtx(ctx context.Context, d time.Duration) bool {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-ctx.Done():
		return false
	}
}

type acquireReply struct {
	chosen int64
	epoch  string
	counts []int64
	sums   []int64 // tokens in flight
	queued bool    // the ticket waits in the fleet-wide queue
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
	if len(raw) != 3+2*n || chosen < -1 || chosen >= int64(n) {
		return r, fmt.Errorf("acquire script: reply of %d values for %d candidates, chosen %d", len(raw), n, chosen)
	}
	q, _ := raw[2+2*n].(int64)
	r.queued = q == 1
	r.counts, r.sums = make([]int64, n), make([]int64, n)
	for i := range 2 * n {
		c, ok := raw[2+i].(int64)
		if !ok {
			return r, fmt.Errorf("acquire script: count of type %T", raw[2+i])
		}
		if i < n {
			r.counts[i] = c
		} else {
			r.sums[i-n] = c
		}
	}
	return r, nil
}

// localAllowsLocked reports whether this replica may admit one more request on
// a backend from local state alone. fail_open: up to the full capacity.
// Otherwise: within this replica's share, and, until their leases would have
// expired, counting what the other replicas held at the last trusted contact
// (they may still hold it; a replica that was at its cap when Redis went away
// keeps its requests until they end). A token capacity is shared alike:
// this replica's tokens stay within the same share of it. The caller holds
// s.mu.
func (s *RedisStore) localAllowsLocked(st *backendState, c Slot, now time.Time) bool {
	own := st.own.Load() + int64(st.reserved)
	ownTokens := st.ownTokens.Load() + st.reservedTokens
	cost := int64(max(c.Tokens, 0))
	t := s.tun()
	if t.OnDown == FailOpen {
		return own < int64(c.Capacity) && fitsTokens(ownTokens, cost, int64(c.TokenCapacity))
	}
	share := s.fleet.Load().share(st.name, c.Capacity)
	if own >= int64(share) {
		return false
	}
	if c.TokenCapacity > 0 && c.Capacity > 0 && !fitsTokens(ownTokens, cost, int64(c.TokenCapacity)*int64(share)/int64(c.Capacity)) {
		return false
	}
	return own+st.othersHeld(now, t.Lease) < int64(c.Capacity)
}

// requestTokens is the token cost of the request the candidates are for.
func requestTokens(candidates []Slot) int64 {
	for _, c := range candidates {
		if c.TokenCapacity > 0 {
			return int64(max(c.Tokens, 0))
		}
	}
	return 0
}

// leaseMember is the member of a new lease in its backend's sorted set: the
// lease id and an attempt number, unique to this acquire, and, when the
// request counts against token capacities, "#" and its token cost, so that
// Redis can add up a backend's tokens in flight from its live leases alone
// (they leave with the leases, expired or released).
func (s *RedisStore) leaseMember(id string, tokens int64) string {
	m := id + ":" + strconv.FormatUint(s.attempts.Add(1), 36)
	if tokens > 0 {
		m += "#" + strconv.FormatInt(tokens, 10)
	}
	return m
}

// acquireLocal decides from local state, without I/O: while Redis is down, and
// for the one request whose round trip just failed.
func (s *RedisStore) acquireLocal(id string, states []*backendState, candidates []Slot, now time.Time) int {
	s.stats.localDecisions.Add(1)
	t := s.tun()
	if t.OnDown == FailClosed {
		return -1
	}
	s.mu.Lock()
	if h := s.held[id]; h != nil {
		s.mu.Unlock()
		return indexOf(states, h.backend)
	}
	cost := requestTokens(candidates)
	for i, st := range states {
		if s.localAllowsLocked(st, candidates[i], now) {
			member := s.leaseMember(id, cost)
			s.held[id] = &heldLease{backend: st, member: member, tokens: cost, lease: t.Lease, expires: now.Add(t.Lease)}
			st.own.Add(1)
			st.fleet.Add(1)
			st.ownTokens.Add(cost)
			st.fleetTokens.Add(cost)
			// Not in Redis yet: the background loop adds it as soon as Redis
			// is usable, so that the fleet counts it. Set under the lock, so
			// that a heartbeat never reports this replica in sync without it.
			s.needSync.Store(true)
			s.mu.Unlock()
			s.signal()
			return i
		}
	}
	s.mu.Unlock()
	return -1
}
