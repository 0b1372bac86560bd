package loadstate

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Errors of Admission.Admit that the caller answers as "full".
var (
	// ErrWaitTimeout: every backend that could serve the request stayed
	// busy for the whole wait allowed.
	ErrWaitTimeout = errors.New("no slot freed up within the wait allowed")
	// ErrShed: the request's priority class does not wait, and no backend had
	// room.
	ErrShed = errors.New("no slot free and the request's class does not wait")
)

// Clock is admission's time: now and timers, injectable so that tests drive
// waits and deadlines deterministically.
type Clock interface {
	Now() time.Time
	// NewTimer returns a timer that fires once after d.
	NewTimer(d time.Duration) Timer
}

// Timer is a Clock's one-shot timer.
type Timer interface {
	C() <-chan time.Time
	Stop() bool
}

// SystemClock is the wall clock.
type SystemClock struct{}

// Now implements Clock.
func (SystemClock) Now() time.Time { return time.Now() }

// NewTimer implements Clock.
func (SystemClock) NewTimer(d time.Duration) Timer { return sysTimer{time.NewTimer(d)} }

type sysTimer struct{ t *time.Timer }

func (t sysTimer) C() <-chan time.Time { return t.t.C }
func (t sysTimer) Stop() bool          { return t.t.Stop() }

// Plan is one ranking of a request by its caller (the router), the input of
// admission.
type Plan struct {
	// Try lists the backends (indexes) to ask the store for now, best first.
	Try []int
	// Wants are the backends a freed slot on which could serve the request:
	// what it waits for.
	Wants BackendSet
	// Patience, when positive, says Wants are better backends that are
	// full, worth waiting for this long rather than taking a slot on another
	// now (see Waiter.Plan's settled).
	Patience time.Duration
	// Scores, when set, is how well each backend (by index) suits the
	// request, for the optimal assignment of freed slots to waiting
	// requests (see WaitQueue's assign mode); nil means first come, first
	// served.
	Scores []float64
}

// Waiter is one request in admission: the router's callbacks that rank it
// and turn candidates into store slots.
type Waiter struct {
	// ID is the request's lease id.
	ID string
	// Class is its priority class, 0 the highest; Shed says its class never
	// waits (it gets ErrShed when no backend has room).
	Class int
	Shed  bool
	// Plan ranks the request. woken: a freed slot woke it, on a backend its
	// view of the counts may still show full, so Try should include the
	// wanted backends whatever the view says. settled: its patience for
	// better backends ran out: plan to take any backend with room.
	Plan func(woken, settled bool) (Plan, error)
	// Slots turns candidates into store slots, claiming what it must (a
	// half-open probe, say); index[k] is the backend of slots[k].
	Slots func(cands []int) (slots []Slot, index []int)
	// Settle is told which backend the store gave (-1 for none) after every
	// store call Slots prepared, so it can give back the claims it made.
	Settle func(backend int)
	// Want describes backends the request waits for (no claims), and
	// Index finds a backend's index by name: what a fleet-wide queue needs
	// (see FleetQueue). Without them the request queues locally.
	Want  func(backends []int) []Slot
	Index func(name string) int

	// Where the request waits, set by Admission while it does (see Ahead).
	adm    *Admission
	ticket *Ticket
	fleetW *fleetWait
	// arrived is when Admit began: its place in line, kept when it joins
	// a line again or moves between the fleet's and the local one.
	arrived time.Time
}

// Ahead is, while the request waits, how many of this replica's waiting
// requests that can use backend i are ahead of it in line (queued reports
// true); a re-ranking counts those, not itself or those behind it, in its
// predicted wait for a slot. Not waiting, it reports (0, false).
func (w *Waiter) Ahead(i int) (n int, share float64, queued bool) {
	switch {
	case w.ticket != nil:
		n, share = w.adm.Queue.AheadShare(w.ticket, i)
		return n, share, true
	case w.fleetW != nil:
		n, share = w.adm.fleet.ahead(w.fleetW, i)
		return n, share, true
	}
	return 0, 0, false
}

// Admission admits requests to backend slots: it asks the store for a slot
// on the request's best candidates, and when none has room parks the request
// in the wait queue until a freed slot it can use wakes it (never a timer
// tick: a release or its own deadline), bounded by the queue's size and the
// request's wait budget. Waiters are served by priority class, then (within
// a class) first come, first served among those a freed slot can serve, or
// by the optimal assignment (see WaitQueue); newcomers never take a free slot
// a waiter is owed (see owed).
type Admission struct {
	AdmissionOptions
	// parked, when set (tests), is called each time a waiter is about to
	// block until a wake, its patience or its deadline.
	parked func()
	// looking serialises the requests that look for room on their own
	// while others wait (newcomers, waiters not woken for a slot): the
	// check of what the waiters are owed and the acquire are one step, so
	// that two of them never both take the one free slot left over.
	looking sync.Mutex
	// lookBlocked, when set (tests), is called when a request is about to
	// wait for another's look.
	lookBlocked func()
	// fleet is this replica's requests in a fleet-wide queue.
	fleet fleetWaiters
}

// Waiting is how many of this replica's requests wait, in the local queue
// or the fleet-wide one.
func (a *Admission) Waiting() int { return a.Queue.Len() + int(a.fleet.n.Load()) }

// WaitingFor is how many of this replica's waiting requests can use backend
// i, in either queue.
func (a *Admission) WaitingFor(i int) int { return a.Queue.Waiting(i) + a.fleet.waitingFor(i) }

// ShareOf is how many of this replica's waiting requests can be expected to
// take backend i's slots (see WaitQueue.Share), in either queue.
func (a *Admission) ShareOf(i int) float64 { return a.Queue.Share(i) + a.fleet.shareOf(i) }

// OldestWait is how long the longest-waiting of this replica's requests has
// waited by now, in either queue (0 when none waits).
func (a *Admission) OldestWait(now time.Time) time.Duration {
	return max(a.Queue.OldestWait(now), a.fleet.oldest(now))
}

// ClassWait is one priority class's waiting requests on this replica.
type ClassWait struct {
	Depth  int
	Oldest time.Duration
}

// ByClass is how many of this replica's requests wait in each of classes
// priority classes (index 0 the highest), and the oldest wait of each.
func (a *Admission) ByClass(classes int, now time.Time) []ClassWait {
	out := make([]ClassWait, max(classes, 1))
	add := func(class int, arrived time.Time) {
		c := &out[min(max(class, 0), len(out)-1)]
		c.Depth++
		c.Oldest = max(c.Oldest, now.Sub(arrived))
	}
	a.Queue.each(add)
	a.fleet.each(add)
	return out
}

// fleetWaiters tracks a replica's requests in a fleet-wide queue: their
// number and, per backend, how many can use it (atomics read on every
// request's ranking), and when each arrived and its class (under mu, for
// operators).
type fleetWaiters struct {
	n  atomic.Int64
	mu sync.Mutex
	// places reserved by requests whose round trip to join the queue is
	// under way (under mu): max_queue counts them, so a burst of arrivals
	// cannot all pass the check before any of them is counted.
	reserved int
	set      map[*fleetWait]struct{}
	per      []atomic.Int64 // waiters per backend; written under mu
	share    []atomic.Int64 // their share of it, in shareUnits; written under mu
}

type fleetWait struct {
	arrived time.Time
	class   int
	wants   []int
}

func (f *fleetWaiters) enter(arrived time.Time, class int, wants BackendSet) *fleetWait {
	fw := &fleetWait{arrived: arrived, class: class}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.set[fw] = struct{}{}
	f.n.Add(1)
	f.setWantsLocked(fw, wants)
	return fw
}

// setWants records which backends the waiter can use now.
func (f *fleetWaiters) setWants(fw *fleetWait, wants BackendSet) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.setWantsLocked(fw, wants)
}

func (f *fleetWaiters) setWantsLocked(fw *fleetWait, wants BackendSet) {
	f.uncountLocked(fw)
	fw.wants = fw.wants[:0]
	for i := range f.per {
		if wants.Has(i) {
			fw.wants = append(fw.wants, i)
		}
	}
	for _, i := range fw.wants {
		f.per[i].Add(1)
		f.share[i].Add(fw.share())
	}
}

// share is what fw counts on each backend it wants (see WaitQueue.Share).
func (fw *fleetWait) share() int64 { return shareAmong(len(fw.wants)) }

func (f *fleetWaiters) uncountLocked(fw *fleetWait) {
	for _, i := range fw.wants {
		f.per[i].Add(-1)
		f.share[i].Add(-fw.share())
	}
}

// reserve takes a place in line for a request about to ask Redis for a slot
// or a place, if this replica's waiters (local, in the fleet's line and
// reserved) are fewer than max; unreserve gives it back once the answer is
// known (enter then counts the request if it queued).
func (f *fleetWaiters) reserve(local, max int) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if local+int(f.n.Load())+f.reserved >= max {
		return false
	}
	f.reserved++
	return true
}

func (f *fleetWaiters) unreserve() {
	f.mu.Lock()
	f.reserved--
	f.mu.Unlock()
}

func (f *fleetWaiters) leave(fw *fleetWait) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.uncountLocked(fw)
	delete(f.set, fw)
	f.n.Add(-1)
}

func (f *fleetWaiters) waitingFor(i int) int {
	if i < 0 || i >= len(f.per) {
		return 0
	}
	return int(f.per[i].Load())
}

func (f *fleetWaiters) shareOf(i int) float64 {
	if i < 0 || i >= len(f.share) {
		return 0
	}
	return float64(f.share[i].Load()) / shareUnit
}

// ahead counts the waiters that can use backend i and arrived before fw,
// of its class or a higher one, and their share of i (see WaitQueue.Share).
func (f *fleetWaiters) ahead(fw *fleetWait, i int) (n int, share float64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var units int64
	for o := range f.set {
		if o != fw && o.class <= fw.class && o.arrived.Before(fw.arrived) && slices.Contains(o.wants, i) {
			n++
			units += o.share()
		}
	}
	return n, float64(units) / shareUnit
}

func (f *fleetWaiters) oldest(now time.Time) time.Duration {
	var d time.Duration
	f.each(func(_ int, arrived time.Time) { d = max(d, now.Sub(arrived)) })
	return d
}

func (f *fleetWaiters) each(fn func(class int, arrived time.Time)) {
	if f.n.Load() == 0 {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for fw := range f.set {
		fn(fw.class, fw.arrived)
	}
}

// AdmissionOptions build an Admission.
type AdmissionOptions struct {
	Store Store
	Queue *WaitQueue
	// Backends is how many backends there are (indexes 0..Backends-1);
	// Free says how many slots the store's view shows free on backend i.
	Backends int
	Free     func(i int) int
	// Clock is admission's time; nil means the wall clock.
	Clock Clock
	// Entered and Left, when set, are told when a request joins the wait
	// queue and when it leaves it, after waiting waited (metrics).
	Entered func()
	Left    func(waited time.Duration)
}

// NewAdmission returns an admission with the given options.
func NewAdmission(o AdmissionOptions) *Admission {
	if o.Clock == nil {
		o.Clock = SystemClock{}
	}
	a := &Admission{AdmissionOptions: o}
	a.fleet.set = make(map[*fleetWait]struct{})
	a.fleet.per = make([]atomic.Int64, o.Backends)
	a.fleet.share = make([]atomic.Int64, o.Backends)
	return a
}

// Admit takes a slot for w, waiting at most maxWait (and never past ctx). It
// returns the backend the slot is on and how long the request waited in the
// queue. Errors: ErrQueueFull, ErrWaitTimeout, ErrShed, ctx's error when the
// client left, and whatever w.Plan or the store returned.
func (a *Admission) Admit(ctx context.Context, w *Waiter, maxWait time.Duration) (backend int, waited time.Duration, err error) {
	// The store's calls may take up to the wait budget (a shared store
	// retries an acquire in doubt within it rather than guess).
	budget, cancel := context.WithTimeout(ctx, maxWait)
	defer cancel()
	w.arrived = a.Clock.Now() // its place in line, in whichever line it waits
	plan, err := w.Plan(false, false)
	if err != nil {
		return -1, 0, err
	}
	fq, _ := a.Store.(FleetQueue)
	if w.Want == nil || w.Index == nil {
		fq = nil
	}
	// A waiter moves between the fleet-wide queue and the local one as the
	// store loses and regains its backing service, keeping its budget.
	for {
		var b int
		var more time.Duration
		if fq != nil && fq.Queueing() {
			b, more, err = a.admitFleet(ctx, budget, fq, w, plan, maxWait)
			if !errors.Is(err, errFleetInterrupted) {
				return b, waited + more, err
			}
		} else {
			b, more, err = a.admitLocal(ctx, budget, fq, w, plan, maxWait)
			if !errors.Is(err, errLocalInterrupted) {
				return b, waited + more, err
			}
		}
		waited += more
		if maxWait -= more; maxWait <= 0 {
			return -1, waited, ErrWaitTimeout
		}
		if plan, err = w.Plan(false, false); err != nil {
			return -1, waited, err
		}
	}
}

// patienceRenewals is how many times a request whose patience for better
// backends ran out may keep waiting for them, when ranking it again still
// predicts that waiting pays (the predicted wait was too short); then it
// settles for any backend. max_wait bounds it all.
const patienceRenewals = 2

// The waiter's queue changed under it.
var (
	// errFleetInterrupted: the fleet-wide queue became unusable.
	errFleetInterrupted = errors.New("the fleet-wide queue became unusable")
	// errLocalInterrupted: the fleet-wide queue is usable again.
	errLocalInterrupted = errors.New("the fleet-wide queue is usable again")
)

// admitLocal is Admit through this replica's own queue. With fq, it gives
// up (errLocalInterrupted) when fq's queue becomes usable again, so that the
// waiter joins the fleet's line rather than wait for local wakes that the
// fleet's releases no longer send.
func (a *Admission) admitLocal(ctx, budget context.Context, fq FleetQueue, w *Waiter, plan Plan, maxWait time.Duration) (backend int, waited time.Duration, err error) {
	if plan.Patience > 0 && (w.Shed || a.Queue.Full()) {
		// It cannot wait for the backends its plan holds out for: any
		// backend with room is better than none.
		if plan, err = w.Plan(false, true); err != nil {
			return -1, 0, err
		}
	}
	// Newcomers leave to the requests already waiting the free slots those
	// can use (see owed).
	newcomer := func(i int) bool { return a.owed(i, a.Queue.Waiting(i)) }
	if len(plan.Try) > 0 {
		if b, err := a.try(budget, w, plan.Try, newcomer); b >= 0 || err != nil {
			return b, 0, err
		}
	}
	if w.Shed {
		return -1, 0, ErrShed
	}
	var resumed <-chan struct{}
	if fq != nil {
		resumed = fq.Resumed()
	}

	start := a.Clock.Now()
	ticket, err := a.Queue.EnterClass(plan.Wants, w.Class, w.arrived)
	if err != nil {
		if errors.Is(err, ErrQueueFull) && plan.Patience > 0 {
			// The line filled up since the look above: settle for any
			// backend with room rather than refuse the request.
			settledPlan, perr := w.Plan(false, true)
			if perr != nil {
				return -1, 0, perr
			}
			if b, err := a.try(budget, w, settledPlan.Try, newcomer); b >= 0 || err != nil {
				return b, 0, err
			}
		}
		return -1, 0, err
	}
	if a.Entered != nil {
		a.Entered()
	}
	a.Queue.SetScores(ticket, plan.Scores)
	w.adm, w.ticket = a, ticket
	defer func() {
		w.ticket = nil
		a.Queue.Leave(ticket)
		waited = a.Clock.Now().Sub(start)
		if a.Left != nil {
			a.Left(waited)
		}
		if backend >= 0 {
			// Room this waiter did not take (two slots freed, one wake)
			// must not sit idle behind it until the next release.
			a.wakeForRoom()
		}
	}()
	deadline := a.Clock.NewTimer(maxWait)
	defer deadline.Stop()
	var patienceC <-chan time.Time
	var pt Timer
	defer func() {
		if pt != nil {
			pt.Stop()
		}
	}()
	if plan.Patience > 0 {
		pt = a.Clock.NewTimer(plan.Patience)
		patienceC = pt.C()
	}
	renewals, renew := 0, false
	// A waiter that looks for room on its own (on joining, after settling)
	// leaves backends that a waiter ahead of it wants to that waiter. A
	// waiter woken by a release does not: the queue picked it for that
	// slot, and a waiter ahead with a wake of its own has a slot of its own.
	claimedAhead := func(i int) bool { return a.owed(i, a.Queue.Ahead(ticket, i)) }
	skip, woken, settled := claimedAhead, false, plan.Patience == 0
	// Joined the queue before this first look: a slot freed from now on
	// wakes it, so none is missed between the look and the wait.
	first := true
	for {
		if !first || plan.Patience > 0 {
			if plan, err = w.Plan(woken, settled); err != nil {
				return -1, 0, err
			}
		}
		first = false
		if renew {
			// Patience ran out but the better backends are still
			// predicted to pay: wait for them once more.
			renew = false
			if plan.Patience > 0 {
				pt.Stop()
				pt = a.Clock.NewTimer(plan.Patience)
				patienceC = pt.C()
			}
		}
		if !plan.Wants.Equal(ticket.wants) {
			a.Queue.SetWants(ticket, plan.Wants)
		}
		a.Queue.SetScores(ticket, plan.Scores)
		if plan.Patience == 0 {
			settled = true
		}
		b, err := a.try(budget, w, plan.Try, skip)
		a.Queue.Consumed(ticket)
		if b >= 0 || err != nil {
			return b, 0, err
		}
		if a.parked != nil {
			a.parked()
		}
		select {
		case <-ticket.C():
			skip, woken = nil, true
		case <-patienceC:
			// Waiting for a better backend took longer than predicted:
			// rank again, and settle for any backend unless waiting is
			// still predicted to pay (at most patienceRenewals times).
			patienceC = nil
			if renewals < patienceRenewals {
				renewals++
				renew = true
			} else {
				settled = true
			}
			skip, woken = claimedAhead, false
		case <-resumed:
			return -1, 0, errLocalInterrupted
		case <-deadline.C():
			return -1, 0, ErrWaitTimeout
		case <-ctx.Done():
			return -1, 0, ctx.Err()
		}
	}
}

// admitFleet is Admit through a fleet-wide queue: one round trip asks for a
// slot or joins the queue; a release anywhere in the fleet hands the request
// its slot and tells this replica, so waiting costs nothing more (leaving
// early costs one call).
func (a *Admission) admitFleet(ctx, budget context.Context, fq FleetQueue, w *Waiter, plan Plan, maxWait time.Duration) (backend int, waited time.Duration, err error) {
	start := a.Clock.Now()
	deadline := a.Clock.NewTimer(maxWait)
	defer deadline.Stop()
	var patienceC <-chan time.Time
	var pt Timer
	defer func() {
		if pt != nil {
			pt.Stop()
		}
	}()
	if plan.Patience > 0 {
		pt = a.Clock.NewTimer(plan.Patience)
		patienceC = pt.C()
	}
	renewals := 0
	var queued *fleetWait
	defer func() {
		w.fleetW = nil
		if queued != nil {
			a.fleet.leave(queued)
			waited = a.Clock.Now().Sub(start)
			if a.Left != nil {
				a.Left(waited)
			}
		}
	}()
	for {
		// Not settled, Try is empty when the backends waited for are full as
		// far as this replica knows, or holds the ones with room it holds
		// out for (see Plan.Patience).
		try := plan.Try
		var ticket *QueueTicket
		reserved := false
		if !w.Shed && (queued != nil || a.fleet.reserve(a.Queue.Len(), a.Queue.max)) {
			reserved = queued == nil
			ticket = a.ticket(w, plan, maxWait)
			if ticket != nil {
				ticket.Waited = a.Clock.Now().Sub(w.arrived)
			}
		}
		if ticket == nil && plan.Patience > 0 {
			// It cannot wait (its class does not, or the line is full) for
			// the backends its plan holds out for: ask for any with room.
			if plan, err = w.Plan(false, true); err != nil {
				if reserved {
					a.fleet.unreserve()
				}
				return -1, 0, err
			}
			try = plan.Try
		}
		slots, _ := w.Slots(try)
		name, inQueue, err := fq.AcquireOrQueue(budget, w.ID, slots, ticket)
		if inQueue && queued == nil {
			queued = a.fleet.enter(w.arrived, w.Class, plan.Wants)
			w.adm, w.fleetW = a, queued
			if a.Entered != nil {
				a.Entered()
			}
		} else if queued != nil {
			a.fleet.setWants(queued, plan.Wants)
		}
		if reserved {
			a.fleet.unreserve() // counted by enter now, if it queued
		}
		chosen := -1
		if name != "" {
			chosen = w.Index(name)
		}
		w.Settle(chosen)
		if err != nil {
			return -1, 0, err
		}
		if chosen >= 0 {
			return chosen, 0, nil
		}
		if !inQueue {
			switch {
			case w.Shed:
				return -1, 0, ErrShed
			case ticket == nil:
				return -1, 0, ErrQueueFull
			case !fq.Queueing():
				return -1, 0, errFleetInterrupted // decided locally: Redis is down
			}
			return -1, 0, ErrWaitTimeout // nothing to wait for
		}
	wait:
		if a.parked != nil {
			a.parked()
		}
		select {
		case name := <-fq.Granted(w.ID):
			return w.Index(name), 0, nil
		case <-fq.Interrupted():
			// Redis went away: the ticket lapses there; a slot handed to it
			// if Redis answers again is given back. Queue locally.
			if name, _ := fq.LeaveQueue(budget, w.ID); name != "" {
				return w.Index(name), 0, nil
			}
			return -1, a.Clock.Now().Sub(start), errFleetInterrupted
		case <-patienceC:
			patienceC = nil
			if renewals < patienceRenewals {
				// Still predicted to pay? Then keep the place in line.
				renewals++
				again, err := w.Plan(false, false)
				if err != nil {
					return -1, 0, err
				}
				if again.Patience > 0 {
					pt.Stop()
					pt = a.Clock.NewTimer(again.Patience)
					patienceC = pt.C()
					goto wait // in line as it was: no call to Redis
				}
			}
			// Waiting for a better backend no longer pays: leave the
			// queue and ask again for any backend (a grant that arrived
			// meanwhile is taken).
			// A failed leave (one slow or lost reply) is not the request's
			// failure: the ticket lapses in Redis, a slot handed to it late
			// is given back, and asking again goes through the store's own
			// handling of a slow or absent Redis.
			if name, _ := fq.LeaveQueue(budget, w.ID); name != "" {
				return w.Index(name), 0, nil
			}
			if plan, err = w.Plan(false, true); err != nil {
				return -1, 0, err
			}
		case <-deadline.C():
			if name, err := fq.LeaveQueue(context.WithoutCancel(ctx), w.ID); name != "" && err == nil {
				return w.Index(name), 0, nil // handed a slot as time ran out: take it
			}
			return -1, 0, ErrWaitTimeout
		case <-ctx.Done():
			if name, _ := fq.LeaveQueue(context.WithoutCancel(ctx), w.ID); name != "" {
				_ = a.Store.Release(context.WithoutCancel(ctx), w.ID, name)
			}
			return -1, 0, ctx.Err()
		}
	}
}

// ticket describes the request's wait for a fleet-wide queue.
func (a *Admission) ticket(w *Waiter, plan Plan, maxWait time.Duration) *QueueTicket {
	var wants []int
	for i := range a.Backends {
		if plan.Wants.Has(i) {
			wants = append(wants, i)
		}
	}
	if len(wants) == 0 {
		return nil
	}
	t := &QueueTicket{Wants: w.Want(wants), Class: w.Class, Aging: a.Queue.aging, Assign: a.Queue.assign,
		TTL: maxWait + time.Second}
	if a.Queue.assign && plan.Scores != nil {
		for _, i := range wants {
			score := 0.0
			if i < len(plan.Scores) {
				score = plan.Scores[i]
			}
			t.Scores = append(t.Scores, score)
		}
	}
	return t
}

// TryNow asks the store for a slot for w on the candidates (backend indexes,
// best first), without waiting: a retry on another backend, say. It returns
// the backend, or -1 when none had room.
func (a *Admission) TryNow(ctx context.Context, w *Waiter, cands []int) (int, error) {
	return a.try(ctx, w, cands, nil)
}

// owed reports whether the slots the store's view shows free on backend i
// are owed to the waiting requests (waiting of them can use it; ahead of the
// asker in line): a request that looks for room on its own leaves them
// alone. Without a view of free slots (Free nil), any waiter is owed.
func (a *Admission) owed(i, waiting int) bool {
	if waiting <= 0 {
		return false
	}
	if a.Free == nil {
		return true
	}
	return waiting >= a.Free(i)
}

// try asks the store for a slot on the candidates, skipping those skip says.
// With skip, the check and the acquire are one step among the requests that
// look with a skip (see looking).
func (a *Admission) try(ctx context.Context, w *Waiter, cands []int, skip func(int) bool) (int, error) {
	if skip != nil && a.Queue.Len() == 0 {
		skip = nil // nobody waits in the local line: nothing is owed (see owed)
	}
	if skip != nil {
		if !a.looking.TryLock() {
			if a.lookBlocked != nil {
				a.lookBlocked()
			}
			a.looking.Lock()
		}
		defer a.looking.Unlock()
		kept := cands[:0:0]
		for _, c := range cands {
			if !skip(c) {
				kept = append(kept, c)
			}
		}
		cands = kept
	}
	if len(cands) == 0 {
		return -1, nil
	}
	slots, index := w.Slots(cands)
	if len(slots) == 0 {
		w.Settle(-1)
		return -1, nil
	}
	i, err := a.Store.Acquire(ctx, w.ID, slots)
	chosen := -1
	if err == nil && i >= 0 {
		chosen = index[i]
	}
	w.Settle(chosen)
	if err != nil {
		// The acquire may have run before the error: give back whatever
		// the id holds, wherever it could be.
		for _, s := range slots {
			_ = a.Store.Release(context.WithoutCancel(ctx), w.ID, s.Backend)
		}
		return -1, err
	}
	return chosen, nil
}

// wakeForRoom wakes, for every backend the store's view shows with room, the
// waiter next in line for it that has no wake pending.
func (a *Admission) wakeForRoom() {
	a.Queue.wakeForRoom(a.Free, a.Backends)
}
