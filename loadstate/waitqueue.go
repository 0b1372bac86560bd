package loadstate

import (
	"errors"
	"math/bits"
	"sync"
	"sync/atomic"
	"time"
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
// on a backend, Notify wakes the oldest waiter that can use that backend, so
// waiters are served first-come-first-served among those the slot can serve.
// A woken waiter retries its acquire; if it loses the slot (another replica took
// it) it keeps its place in line.
type WaitQueue struct {
	mu         sync.Mutex
	head, tail *Ticket
	n, max     int
	waiting    atomic.Int64 // n, readable without the lock: releases check it on every request
	// per[i] counts the waiters that want backend i, readable without the
	// lock (predictions read it on every request); grown under mu.
	per atomic.Pointer[[]atomic.Int32]
}

// Ticket is one waiting request's place in a WaitQueue.
type Ticket struct {
	wants      BackendSet
	wake       chan struct{}
	woken      int // backend index of a wake not yet consumed; -1 when none
	prev, next *Ticket
	queued     bool
	entered    time.Time // when it joined the line, for OldestWait
}

// NewWaitQueue returns a queue that holds at most max waiters.
func NewWaitQueue(max int) *WaitQueue { return &WaitQueue{max: max} }

// Enter puts a waiter at the back of the line. wants says which backends it
// can use. It fails with ErrQueueFull when the line is full.
func (q *WaitQueue) Enter(wants BackendSet) (*Ticket, error) {
	t := &Ticket{wants: wants, wake: make(chan struct{}, 1), woken: -1, entered: time.Now()}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.n >= q.max {
		return nil, ErrQueueFull
	}
	t.queued = true
	q.countLocked(wants, 1)
	t.prev = q.tail
	if q.tail != nil {
		q.tail.next = t
	} else {
		q.head = t
	}
	q.tail = t
	q.n++
	q.waiting.Store(int64(q.n))
	return t, nil
}

// countLocked adds d to the waiter count of every backend in wants.
func (q *WaitQueue) countLocked(wants BackendSet, d int32) {
	p := q.per.Load()
	if p == nil || len(*p) < 64*len(wants) {
		grown := make([]atomic.Int32, 64*len(wants))
		if p != nil {
			for i := range *p {
				grown[i].Store((*p)[i].Load())
			}
		}
		q.per.Store(&grown)
		p = &grown
	}
	for w, word := range wants {
		for word != 0 {
			b := bits.TrailingZeros64(word)
			word &^= 1 << b
			(*p)[64*w+b].Add(d)
		}
	}
}

// Waiting returns how many waiters want backend i.
func (q *WaitQueue) Waiting(i int) int {
	p := q.per.Load()
	if p == nil || i < 0 || i >= len(*p) {
		return 0
	}
	return int((*p)[i].Load())
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
	return q.notifyLocked(i)
}

func (q *WaitQueue) notifyLocked(i int) bool {
	for t := q.head; t != nil; t = t.next {
		if t.woken < 0 && t.wants.Has(i) {
			t.woken = i
			select {
			case t.wake <- struct{}{}:
			default:
			}
			return true
		}
	}
	return false
}

// Claimed reports whether some waiter can use backend i. A newcomer skips
// claimed backends while anyone waits, so it never overtakes a request that has
// waited longer for the same slot; it may still take a slot nobody waits for.
func (q *WaitQueue) Claimed(i int) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	for t := q.head; t != nil; t = t.next {
		if t.wants.Has(i) {
			return true
		}
	}
	return false
}

// ClaimedAhead reports whether a waiter ahead of t in line can use backend i;
// t then leaves that backend's next slot to it.
func (q *WaitQueue) ClaimedAhead(t *Ticket, i int) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	for w := q.head; w != nil && w != t; w = w.next {
		if w.wants.Has(i) {
			return true
		}
	}
	return false
}

// Len returns how many requests wait.
func (q *WaitQueue) Len() int { return int(q.waiting.Load()) }

// OldestWait returns how long the waiter at the head of the line has waited
// by now (0 when nobody waits), for operators and alerts.
func (q *WaitQueue) OldestWait(now time.Time) time.Duration {
	if q.waiting.Load() == 0 {
		return 0
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.head == nil {
		return 0
	}
	return max(now.Sub(q.head.entered), 0)
}
