package loadstate

import (
	"errors"
	"math/bits"
	"sync"
	"sync/atomic"
	"time"

	"github.com/modelrouter/modelrouter/engine"
)

// ErrQueueFull is returned by WaitQueue.Enter when max_queue requests already wait.
var ErrQueueFull = errors.New("wait queue is full")

// BackendSet is a set of backend indexes (positions in the router's configured
// backend list), used to say which backends a waiting request could use.
type BackendSet []uint64

// NewBackendSet returns an empty set for n backends.
func NewBackendSet(n int) BackendSet { return make(BackendSet, (n+63)/64) }

// Add puts backend i in the set.
func (s BackendSet) Add(i int) { s[i/64] |= 1 << (uint(i) % 64) }

// Has reports whether backend i is in the set.
func (s BackendSet) Has(i int) bool {
	return i >= 0 && i/64 < len(s) && s[i/64]&(1<<(uint(i)%64)) != 0
}

// Equal reports whether the two sets hold the same backends.
func (s BackendSet) Equal(o BackendSet) bool {
	for i := range max(len(s), len(o)) {
		var a, b uint64
		if i < len(s) {
			a = s[i]
		}
		if i < len(o) {
			b = o[i]
		}
		if a != b {
			return false
		}
	}
	return true
}

// Overlaps reports whether the two sets share a backend.
func (s BackendSet) Overlaps(o BackendSet) bool {
	for i := range min(len(s), len(o)) {
		if s[i]&o[i] != 0 {
			return true
		}
	}
	return false
}

// WaitQueue parks requests that found every candidate full. When a slot frees
// on a backend, Notify wakes the waiter next in line that can use that
// backend.
//
// The line is ordered by priority class, then arrival: a waiter's place is
// its arrival time plus Aging for each class below the highest (class 0), so
// higher classes are served first, and a lower class waits at most Aging per
// class more than a higher one that arrived at the same time (the aging
// bound: nothing starves). Within a class it is first come, first served.
//
// In assign mode (the optimal strategy) a freed slot goes instead to the
// waiter that gains most from it: the best waiting ticket by score for that
// backend (Ticket scores from the router) less one point per Aging it is
// behind the first in line; several slots freed at once are assigned to
// waiters together by maximum total value (engine.Assigner, the Hungarian
// algorithm). A waiter Aging behind another thus trades a whole point of
// score, which keeps any one from waiting much longer than its turn.
//
// A woken waiter retries its acquire; if it loses the slot (another replica
// took it) it keeps its place in line.
type WaitQueue struct {
	mu         sync.Mutex
	head, tail *Ticket
	n, max     int
	waiting    atomic.Int64 // n, readable without the lock: releases check it on every request
	// per[i] counts the waiters that want backend i, and their share of it
	// (see Share), readable without the lock (predictions read it on every
	// request); grown under mu.
	per atomic.Pointer[[]backendWaiters]

	aging    time.Duration
	ageScale time.Duration // assign mode: the age term's scale (AssignAging)
	assign   bool
	assigner engine.Assigner
	now      func() time.Time

	// Batching (assign mode with a window): slots freed and not yet
	// assigned, and whether the window's timer runs; under mu.
	window    time.Duration
	afterFunc func(time.Duration, func())
	batch     []int
	batching  bool
}

// DefaultAging is how much earlier arrival one priority class is worth.
const DefaultAging = 5 * time.Second

// DefaultAssignAging is the age term's scale in assign mode: a waiter half
// a second further back in line needs one more point of score (the whole
// range of a capability) to win a slot over the one ahead, so a
// better-suited request overtakes by at most half a second times its score
// advantage. Measured on bench/quality -workload mixed (capabilities 0.5 to
// 0.95, service about 0.76 s, 100% load), total capability score and p99
// against first come, first served were: 5 s +16% and 1.11×, 1 s +12% and
// 1.005×, 0.5 s +9% and 0.98×: 0.5 s is the largest tried that costs no
// tail latency there.
const DefaultAssignAging = 500 * time.Millisecond

// QueueOptions tune NewWaitQueueWith.
type QueueOptions struct {
	// Max is how many requests may wait at once.
	Max int
	// Aging is the waiting time one priority class is worth (the aging
	// bound); 0 means DefaultAging.
	Aging time.Duration
	// Assign selects assign mode (see WaitQueue).
	Assign bool
	// AssignAging is, in assign mode, the waiting time one point of score
	// is worth: a slot goes to the waiter with the highest score less its
	// distance behind the first in line in AssignAging units; 0 means
	// DefaultAssignAging.
	AssignAging time.Duration
	// Now is the clock for ages; time.Now when nil.
	Now func() time.Time
	// BatchWindow, in assign mode, holds slots freed while requests wait
	// for up to this long, so that slots freed and requests arriving
	// meanwhile are assigned together (one Hungarian assignment) rather
	// than each slot to the best waiter at the moment it frees. Default 0:
	// every freed slot is assigned at once, with no added delay.
	BatchWindow time.Duration
	// AfterFunc runs f after d (time.AfterFunc when nil; tests use a fake).
	AfterFunc func(d time.Duration, f func())
}

// Ticket is one waiting request's place in a WaitQueue.
type Ticket struct {
	wants   BackendSet
	class   int
	key     int64 // its place in line: arrival (unix ns) + class × aging
	scores  []float64
	wake    chan struct{}
	woken   int // backend index of a wake not yet consumed; -1 when none
	prev    *Ticket
	next    *Ticket
	queued  bool
	arrived time.Time
}

// NewWaitQueue returns a first-come-first-served queue that holds at most
// max waiters.
func NewWaitQueue(max int) *WaitQueue { return NewWaitQueueWith(QueueOptions{Max: max}) }

// NewWaitQueueWith returns a queue with the given options.
func NewWaitQueueWith(o QueueOptions) *WaitQueue {
	if o.Aging <= 0 {
		o.Aging = DefaultAging
	}
	if o.AssignAging <= 0 {
		o.AssignAging = DefaultAssignAging
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.AfterFunc == nil {
		o.AfterFunc = func(d time.Duration, f func()) { time.AfterFunc(d, f) }
	}
	q := &WaitQueue{max: o.Max, aging: o.Aging, ageScale: o.AssignAging, assign: o.Assign, now: o.Now}
	if o.Assign && o.BatchWindow > 0 {
		q.window, q.afterFunc = o.BatchWindow, o.AfterFunc
	}
	return q
}

// Enter puts a waiter of the highest class at the back of the line. wants
// says which backends it can use. It fails with ErrQueueFull when the line is
// full.
func (q *WaitQueue) Enter(wants BackendSet) (*Ticket, error) {
	return q.EnterClass(wants, 0, q.now())
}

// EnterClass puts a waiter of priority class (0 the highest) that arrived at
// arrived in line. It fails with ErrQueueFull when the line is full.
func (q *WaitQueue) EnterClass(wants BackendSet, class int, arrived time.Time) (*Ticket, error) {
	t := &Ticket{wants: wants, class: max(class, 0), wake: make(chan struct{}, 1), woken: -1, arrived: arrived}
	t.key = arrived.UnixNano() + int64(t.class)*int64(q.aging)
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.n >= q.max {
		return nil, ErrQueueFull
	}
	t.queued = true
	q.countLocked(wants, 1)
	// Insert by key, after every waiter with the same or an earlier one:
	// the usual arrival goes at the tail.
	after := q.tail
	for after != nil && after.key > t.key {
		after = after.prev
	}
	t.prev = after
	if after != nil {
		t.next = after.next
		after.next = t
	} else {
		t.next = q.head
		q.head = t
	}
	if t.next != nil {
		t.next.prev = t
	} else {
		q.tail = t
	}
	q.n++
	q.waiting.Store(int64(q.n))
	return t, nil
}

// SetScores sets how well each backend (by index) suits the waiter, for
// assign mode.
func (q *WaitQueue) SetScores(t *Ticket, scores []float64) {
	if !q.assign {
		return
	}
	q.mu.Lock()
	t.scores = append(t.scores[:0], scores...)
	q.mu.Unlock()
}

// backendWaiters counts the waiters that want one backend: how many, and
// their share of it in shareUnits (see WaitQueue.Share).
type backendWaiters struct {
	n     atomic.Int32
	share atomic.Int64
}

// shareUnit is one whole waiter in a backend's share count.
const shareUnit = 1 << 20

// shareOf is what a waiter that can use the backends of wants counts on each
// of them: one whole waiter split evenly, in shareUnits (see shareAmong).
func shareOf(wants BackendSet) int64 {
	k := 0
	for _, word := range wants {
		k += bits.OnesCount64(word)
	}
	return shareAmong(k)
}

// shareAmong is one waiter's share of each of the k backends it can use, in
// shareUnits.
func shareAmong(k int) int64 { return shareUnit / int64(max(k, 1)) }

// countLocked adds d waiters to the count of every backend in wants.
func (q *WaitQueue) countLocked(wants BackendSet, d int32) {
	p := q.per.Load()
	if p == nil || len(*p) < 64*len(wants) {
		grown := make([]backendWaiters, 64*len(wants))
		if p != nil {
			for i := range *p {
				grown[i].n.Store((*p)[i].n.Load())
				grown[i].share.Store((*p)[i].share.Load())
			}
		}
		q.per.Store(&grown)
		p = &grown
	}
	share := int64(d) * shareOf(wants)
	for w, word := range wants {
		for word != 0 {
			b := bits.TrailingZeros64(word)
			word &^= 1 << b
			(*p)[64*w+b].n.Add(d)
			(*p)[64*w+b].share.Add(share)
		}
	}
}

// Waiting returns how many waiters want backend i.
func (q *WaitQueue) Waiting(i int) int {
	p := q.per.Load()
	if p == nil || i < 0 || i >= len(*p) {
		return 0
	}
	return int((*p)[i].n.Load())
}

// Share is how many of the waiting requests can be expected to take backend
// i's slots: each waiter that can use k backends counts 1/k on each of them
// (it takes whichever of them frees first; an even split is the estimate
// that needs nothing but the queue). Waiting(i) bounds it.
func (q *WaitQueue) Share(i int) float64 {
	p := q.per.Load()
	if p == nil || i < 0 || i >= len(*p) {
		return 0
	}
	return float64((*p)[i].share.Load()) / shareUnit
}

// SetWants changes which backends a waiter can use (it keeps its place in
// line): a waiter that waited for a better backend may settle for any.
func (q *WaitQueue) SetWants(t *Ticket, wants BackendSet) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if t.queued {
		q.countLocked(t.wants, -1)
		q.countLocked(wants, 1)
	}
	t.wants = wants
}

// C is signalled when a slot the waiter can use may have freed up.
func (t *Ticket) C() <-chan struct{} { return t.wake }

// Consumed tells the queue the waiter acted on its wake-up (acquired or lost
// the race); it stays in line.
func (q *WaitQueue) Consumed(t *Ticket) {
	q.mu.Lock()
	t.woken = -1
	q.mu.Unlock()
}

// Leave takes the waiter out of line. A wake-up it received but did not act on
// is passed to the next waiter that can use that backend, so no freed slot is
// left idle because its waiter gave up.
func (q *WaitQueue) Leave(t *Ticket) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if !t.queued {
		return
	}
	t.queued = false
	if t.prev != nil {
		t.prev.next = t.next
	} else {
		q.head = t.next
	}
	if t.next != nil {
		t.next.prev = t.prev
	} else {
		q.tail = t.prev
	}
	t.prev, t.next = nil, nil
	q.n--
	q.waiting.Store(int64(q.n))
	q.countLocked(t.wants, -1)
	if t.woken >= 0 {
		q.notifyLocked(t.woken)
	}
}

// Notify wakes the oldest waiter that can use backend i and has no wake-up
// pending. It reports whether it woke one.
func (q *WaitQueue) Notify(i int) bool {
	if q.waiting.Load() == 0 {
		return false // the usual case: nobody waits, no lock taken
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.window > 0 {
		q.batchLocked(i)
		return true
	}
	return q.notifyLocked(i)
}

// batchLocked holds freed slots for the batch window; the first starts it.
func (q *WaitQueue) batchLocked(backends ...int) {
	q.batch = append(q.batch, backends...)
	if !q.batching {
		q.batching = true
		q.afterFunc(q.window, q.flushBatch)
	}
}

// flushBatch assigns the slots freed during the batch window to the
// requests waiting now, together.
func (q *WaitQueue) flushBatch() {
	q.mu.Lock()
	defer q.mu.Unlock()
	batch := q.batch
	q.batch, q.batching = nil, false
	if q.n > 0 {
		q.notifyManyLocked(batch)
	}
}

func (q *WaitQueue) notifyLocked(i int) bool {
	var pick *Ticket
	if q.assign {
		pick = q.bestForLocked(i)
	} else {
		for t := q.head; t != nil; t = t.next {
			if t.woken < 0 && t.wants.Has(i) {
				pick = t
				break
			}
		}
	}
	if pick == nil {
		return false
	}
	pick.wakeFor(i)
	return true
}

func (t *Ticket) wakeFor(i int) {
	t.woken = i
	select {
	case t.wake <- struct{}{}:
	default:
	}
}

// value is what giving a slot on backend i to t is worth in assign mode: its
// score for i, less one point per AssignAging it is behind first in line
// (first, the first waiter's key; a class below adds Aging to the distance,
// so classes keep their order unless a lower one waited that much longer).
func (q *WaitQueue) value(t *Ticket, i int, first int64) float64 {
	score := 0.0
	if i < len(t.scores) {
		score = t.scores[i]
	}
	return score - float64(t.key-first)/float64(q.ageScale)
}

// maxAssign bounds the waiters one assignment considers (the first in line):
// the Hungarian algorithm is cubic.
const maxAssign = 64

// bestForLocked is the waiter a slot on backend i is worth most to (assign
// mode), among the first maxAssign in line without a pending wake.
func (q *WaitQueue) bestForLocked(i int) *Ticket {
	if q.head == nil {
		return nil
	}
	first := q.head.key
	var best *Ticket
	bestValue := 0.0
	seen := 0
	for t := q.head; t != nil && seen < maxAssign; t = t.next {
		seen++
		if t.woken >= 0 || !t.wants.Has(i) {
			continue
		}
		if v := q.value(t, i, first); best == nil || v > bestValue {
			best, bestValue = t, v
		}
	}
	return best
}

// NotifyMany wakes waiters for slots freed together on the given backends
// (one slot each; a backend may repeat): first in line for each in order,
// or in assign mode by maximum total value over the first maxAssign waiters
// (engine.Assigner). It returns how many it woke.
func (q *WaitQueue) NotifyMany(backends []int) int {
	if q.waiting.Load() == 0 || len(backends) == 0 {
		return 0
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.window > 0 {
		q.batchLocked(backends...)
		return len(backends)
	}
	return q.notifyManyLocked(backends)
}

func (q *WaitQueue) notifyManyLocked(backends []int) int {
	if len(backends) == 0 || q.head == nil {
		return 0
	}
	if !q.assign || len(backends) == 1 {
		n := 0
		for _, i := range backends {
			if q.notifyLocked(i) {
				n++
			}
		}
		return n
	}
	first := q.head.key
	var cands []*Ticket
	for t := q.head; t != nil && len(cands) < maxAssign; t = t.next {
		if t.woken < 0 {
			cands = append(cands, t)
		}
	}
	match := make([]int, len(cands))
	q.assigner.Assign(len(cands), len(backends), func(r, c int) float64 {
		t, i := cands[r], backends[c]
		if !t.wants.Has(i) {
			return engine.Forbidden
		}
		return -q.value(t, i, first)
	}, match)
	n := 0
	for r, c := range match {
		if c < 0 || !cands[r].wants.Has(backends[c]) {
			continue
		}
		cands[r].wakeFor(backends[c])
		n++
	}
	return n
}

// wakeForRoom wakes, for every slot the store's view shows free (free(i)
// per backend), the waiter next in line for it; see NotifyMany.
func (q *WaitQueue) wakeForRoom(free func(i int) int, backends int) {
	if q.Len() == 0 {
		return
	}
	var slots []int
	for i := range backends {
		for range min(free(i), q.Len()) {
			slots = append(slots, i)
		}
	}
	q.NotifyMany(slots)
}

// Full reports whether the queue holds as many waiters as it may (a request
// that enters now gets ErrQueueFull, unless one leaves first).
func (q *WaitQueue) Full() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.n >= q.max
}

// Len returns how many requests wait.
func (q *WaitQueue) Len() int { return int(q.waiting.Load()) }

// Ahead counts the waiters ahead of t in line that can use backend i.
func (q *WaitQueue) Ahead(t *Ticket, i int) int {
	n, _ := q.AheadShare(t, i)
	return n
}

// AheadShare is Ahead, and those waiters' share of backend i (see Share).
func (q *WaitQueue) AheadShare(t *Ticket, i int) (n int, share float64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if !t.queued {
		return 0, 0
	}
	var units int64
	for o := q.head; o != nil && o != t; o = o.next {
		if o.wants.Has(i) {
			n++
			units += shareOf(o.wants)
		}
	}
	return n, float64(units) / shareUnit
}

// each calls fn with every waiter's class and arrival, under the queue's
// lock.
func (q *WaitQueue) each(fn func(class int, arrived time.Time)) {
	if q.waiting.Load() == 0 {
		return
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	for t := q.head; t != nil; t = t.next {
		fn(t.class, t.arrived)
	}
}

// OldestWait returns how long the longest-waiting request in line has waited
// by now (0 when nobody waits), for operators and alerts. With priority
// classes the head of the line need not be the oldest: every waiter is
// looked at (at most max_queue, under the queue's lock).
func (q *WaitQueue) OldestWait(now time.Time) time.Duration {
	if q.waiting.Load() == 0 {
		return 0
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	var oldest time.Duration
	for t := q.head; t != nil; t = t.next {
		oldest = max(oldest, now.Sub(t.arrived))
	}
	return oldest
}
