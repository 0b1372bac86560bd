package loadstate

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// admClock is a Clock whose time moves only when the test advances it;
// its timers fire then.
type admClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*admTimer
}

type admTimer struct {
	c       chan time.Time
	at      time.Time
	stopped bool
	fired   bool
}

func newAdmClock() *admClock { return &admClock{now: time.Unix(1_700_000_000, 0)} }

func (c *admClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }

func (c *admClock) NewTimer(d time.Duration) Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &admTimer{c: make(chan time.Time, 1), at: c.now.Add(d)}
	c.timers = append(c.timers, t)
	return &admTimerHandle{c: c, t: t}
}

type admTimerHandle struct {
	c *admClock
	t *admTimer
}

func (h *admTimerHandle) C() <-chan time.Time { return h.t.c }
func (h *admTimerHandle) Stop() bool {
	h.c.mu.Lock()
	defer h.c.mu.Unlock()
	was := !h.t.stopped && !h.t.fired
	h.t.stopped = true
	return was
}

// pending reports how many live timers there are (waiters' deadlines).
func (c *admClock) pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, t := range c.timers {
		if !t.stopped && !t.fired {
			n++
		}
	}
	return n
}

func (c *admClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	for _, t := range c.timers {
		if !t.stopped && !t.fired && !c.now.Before(t.at) {
			t.fired = true
			t.c <- c.now
		}
	}
}

// admissionEnv is an Admission over a memory store with backends of the given
// capacities, woken by the store's releases as the router wires it.
type admissionEnv struct {
	t      *testing.T
	store  *MemoryStore
	queue  *WaitQueue
	adm    *Admission
	clock  *admClock
	caps   []int
	tries  atomic.Int64 // store calls made
	parked atomic.Int64 // times a waiter blocked
	// seenParked is parked as of the test's last look.
	seenParked int64
	names      []string
	cancel     func()
}

func newAdmissionEnv(t *testing.T, opts QueueOptions, caps ...int) *admissionEnv {
	e := &admissionEnv{t: t, store: NewMemoryStore(), clock: newAdmClock(), caps: caps}
	for i := range caps {
		e.names = append(e.names, string(rune('a'+i)))
	}
	opts.Now = e.clock.Now
	if opts.Max == 0 {
		opts.Max = 100
	}
	e.queue = NewWaitQueueWith(opts)
	e.adm = NewAdmission(AdmissionOptions{Store: e.store, Queue: e.queue, Backends: len(caps),
		Free: func(i int) int { return max(caps[i]-e.store.Inflight(e.names[i]), 0) }, Clock: e.clock})
	e.adm.parked = func() { e.parked.Add(1) }
	e.cancel = e.store.Watch(func(backend string) {
		for i, n := range e.names {
			if n == backend {
				e.queue.Notify(i)
			}
		}
	})
	t.Cleanup(e.cancel)
	return e
}

// waiter is a request that can use the given backends, tried in that order.
func (e *admissionEnv) waiter(id string, backends ...int) *Waiter {
	wants := NewBackendSet(len(e.caps))
	for _, b := range backends {
		wants.Add(b)
	}
	return &Waiter{
		ID: id,
		Plan: func(woken, settled bool) (Plan, error) {
			return Plan{Try: backends, Wants: wants}, nil
		},
		Slots: func(cands []int) ([]Slot, []int) {
			e.tries.Add(1)
			slots := make([]Slot, len(cands))
			for k, c := range cands {
				slots[k] = Slot{Backend: e.names[c], Capacity: e.caps[c]}
			}
			return slots, cands
		},
		Settle: func(int) {},
	}
}

type admitted struct {
	backend int
	waited  time.Duration
	err     error
}

func (e *admissionEnv) admit(ctx context.Context, w *Waiter, maxWait time.Duration) chan admitted {
	out := make(chan admitted, 1)
	go func() {
		b, waited, err := e.adm.Admit(ctx, w, maxWait)
		out <- admitted{b, waited, err}
	}()
	return out
}

// patientFor queues a request that waits for backend i whatever the counts
// say (one holding out for it, or woken and not yet served), until the
// returned stop is called.
func (e *admissionEnv) patientFor(i int) (stop func()) {
	e.t.Helper()
	wants := NewBackendSet(len(e.caps))
	wants.Add(i)
	w := e.waiter("patient", i)
	w.Plan = func(woken, settled bool) (Plan, error) { return Plan{Wants: wants, Patience: time.Hour}, nil }
	ctx, cancel := context.WithCancel(context.Background())
	n := e.queue.Len() + 1
	done := e.admit(ctx, w, time.Hour)
	e.queued(n)
	return func() { cancel(); <-done }
}

// queueGrew is closed when more than n requests wait (polled until the
// test ends).
func (e *admissionEnv) queueGrew(n int) <-chan struct{} {
	c := make(chan struct{})
	done := e.t.Context().Done()
	go func() {
		for e.queue.Len() <= n {
			select {
			case <-done:
				return
			case <-time.After(time.Millisecond):
			}
		}
		close(c)
	}()
	return c
}

// queued waits until n requests wait and the newest has blocked (its timers
// set, its first look at the store done): the test may then move the clock.
func (e *admissionEnv) queued(n int) {
	e.t.Helper()
	waitFor(e.t, 10*time.Second, "waiters in the queue", func() bool { return e.queue.Len() == n })
	e.parkedSince(e.seenParked + 1)
}

// parkedSince waits until waiters blocked n times in all.
func (e *admissionEnv) parkedSince(n int64) {
	e.t.Helper()
	waitFor(e.t, 10*time.Second, "a waiter to block", func() bool { return e.parked.Load() >= n })
	e.seenParked = e.parked.Load()
}

func (e *admissionEnv) release(id string, backend int) {
	e.t.Helper()
	mustRelease(e.t, e.store, id, e.names[backend])
}

func TestAdmissionTakesARoomyBackendAtOnce(t *testing.T) {
	e := newAdmissionEnv(t, QueueOptions{}, 1, 2)
	for i, want := range []int{0, 1, 1} {
		r := <-e.admit(context.Background(), e.waiter(string(rune('x'+i)), 0, 1), time.Second)
		if r.err != nil || r.backend != want || r.waited != 0 {
			t.Fatalf("request %d: %+v, want backend %d at once", i, r, want)
		}
	}
}

// TestAdmissionWaitsForARelease: a request that finds everything full waits,
// with no timer tick polling the store, until a release wakes it.
func TestAdmissionWaitsForARelease(t *testing.T) {
	e := newAdmissionEnv(t, QueueOptions{}, 1)
	if r := <-e.admit(context.Background(), e.waiter("first", 0), time.Second); r.backend != 0 {
		t.Fatalf("first: %+v", r)
	}
	done := e.admit(context.Background(), e.waiter("second", 0), time.Minute)
	e.queued(1)
	tries := e.tries.Load()
	// Time passes (less than the deadline): no polling, no store call.
	e.clock.advance(30 * time.Second)
	select {
	case r := <-done:
		t.Fatalf("answered without a release: %+v", r)
	default:
	}
	if n := e.tries.Load() - tries; n != 0 {
		t.Fatalf("%d store calls while nothing was released: polling", n)
	}
	e.release("first", 0)
	r := <-done
	if r.err != nil || r.backend != 0 || r.waited != 30*time.Second {
		t.Fatalf("second: %+v, want backend 0 after 30s", r)
	}
	if e.queue.Len() != 0 {
		t.Fatal("the queue kept a served waiter")
	}
}

func TestAdmissionDeadline(t *testing.T) {
	e := newAdmissionEnv(t, QueueOptions{}, 1)
	<-e.admit(context.Background(), e.waiter("first", 0), time.Second)
	done := e.admit(context.Background(), e.waiter("second", 0), 2*time.Second)
	e.queued(1)
	e.clock.advance(1999 * time.Millisecond)
	select {
	case r := <-done:
		t.Fatalf("answered before its deadline: %+v", r)
	default:
	}
	e.clock.advance(time.Millisecond)
	if r := <-done; !errors.Is(r.err, ErrWaitTimeout) || r.backend != -1 {
		t.Fatalf("at the deadline: %+v, want ErrWaitTimeout", r)
	}
	if e.queue.Len() != 0 || e.store.Inflight("a") != 1 {
		t.Fatalf("after the timeout: queue %d, inflight %d", e.queue.Len(), e.store.Inflight("a"))
	}
}

func TestAdmissionQueueFullShedAndClientGone(t *testing.T) {
	e := newAdmissionEnv(t, QueueOptions{Max: 1}, 1)
	<-e.admit(context.Background(), e.waiter("first", 0), time.Second)
	ctx, cancel := context.WithCancel(context.Background())
	waiting := e.admit(ctx, e.waiter("waiting", 0), time.Minute)
	e.queued(1)
	if r := <-e.admit(context.Background(), e.waiter("overflow", 0), time.Minute); !errors.Is(r.err, ErrQueueFull) {
		t.Fatalf("over max_queue: %+v, want ErrQueueFull", r)
	}
	shed := e.waiter("shed", 0)
	shed.Shed = true
	if r := <-e.admit(context.Background(), shed, time.Minute); !errors.Is(r.err, ErrShed) {
		t.Fatalf("sheddable: %+v, want ErrShed", r)
	}
	cancel()
	if r := <-waiting; !errors.Is(r.err, context.Canceled) {
		t.Fatalf("client gone: %+v", r)
	}
	if e.queue.Len() != 0 {
		t.Fatal("a waiter whose client left is still queued")
	}
}

// TestAdmissionFIFO: waiters are served in arrival order, and a newcomer
// never takes the slot an older waiter could use.
func TestAdmissionFIFO(t *testing.T) {
	e := newAdmissionEnv(t, QueueOptions{}, 1, 1)
	<-e.admit(context.Background(), e.waiter("h0", 0), time.Second)
	<-e.admit(context.Background(), e.waiter("h1", 1), time.Second)
	var order []chan admitted
	for i, wants := range [][]int{{0}, {0, 1}, {1}} {
		order = append(order, e.admit(context.Background(), e.waiter("w"+string(rune('0'+i)), wants...), time.Minute))
		e.queued(i + 1)
		e.clock.advance(time.Millisecond)
	}
	e.release("h1", 1) // w1 (wants 0 or 1) is older than w2 (wants 1)
	if r := <-order[1]; r.backend != 1 {
		t.Fatalf("w1: %+v, want backend 1", r)
	}
	// A newcomer for backend 0 while w0 waits for it: it must queue behind.
	late := e.admit(context.Background(), e.waiter("late", 0), time.Minute)
	e.queued(3)
	e.release("h0", 0)
	if r := <-order[0]; r.backend != 0 {
		t.Fatalf("w0: %+v, want backend 0", r)
	}
	select {
	case r := <-late:
		t.Fatalf("the newcomer was served before older waiters: %+v", r)
	default:
	}
	e.release("w1", 1)
	if r := <-order[2]; r.backend != 1 {
		t.Fatalf("w2: %+v", r)
	}
	e.release("w0", 0)
	if r := <-late; r.backend != 0 {
		t.Fatalf("late: %+v", r)
	}
}

// TestAdmissionNewcomerTakesRoomNobodyIsOwed: a newcomer leaves to the
// waiting requests as many free slots as there are requests waiting for
// them, and no more: with two free slots on a backend and one request
// waiting for it, the newcomer takes the other free slot there rather than
// fall through to its next candidate (which it did when any waiter for a
// backend kept every newcomer off it); with one free slot and one waiter, it
// goes on to the next candidate.
func TestAdmissionNewcomerTakesRoomNobodyIsOwed(t *testing.T) {
	e := newAdmissionEnv(t, QueueOptions{}, 3, 4)
	stop := e.patientFor(0)
	mustAcquire(t, e.store, "holder", []Slot{{Backend: "a", Capacity: 3}}, 0) // 1 of 3 in flight: 2 free, 1 owed
	newcomer := e.admit(context.Background(), e.waiter("newcomer", 0, 1), time.Second)
	select {
	case r := <-newcomer:
		if r.err != nil || r.backend != 0 || r.waited != 0 {
			t.Fatalf("newcomer with a free slot nobody is owed: %+v, want backend 0 at once", r)
		}
	case <-e.queueGrew(1):
		t.Fatal("the newcomer queued behind the waiter although a free slot was left for it")
	}
	// 1 free, owed to the waiter: the next newcomer goes on to backend 1.
	if r := <-e.admit(context.Background(), e.waiter("next", 0, 1), time.Second); r.err != nil || r.backend != 1 {
		t.Fatalf("newcomer with the last free slot owed: %+v, want backend 1", r)
	}
	if n := e.store.Inflight("a"); n != 2 {
		t.Fatalf("backend 0 has %d in flight, want 2 (its last slot left to the waiter)", n)
	}
	stop()
}

// TestAdmissionHoldsOutForTheBackendsTried: a plan that tries backends with
// room and, should the store refuse them all, waits for them a while
// (Try and Patience both set) asks the store for those only, then waits for
// them rather than take another backend with room; a release on one of them
// serves it.
func TestAdmissionHoldsOutForTheBackendsTried(t *testing.T) {
	e := newAdmissionEnv(t, QueueOptions{}, 1, 4)
	<-e.admit(context.Background(), e.waiter("taker", 0), time.Second) // took the slot since the ranking
	wants0 := NewBackendSet(2)
	wants0.Add(0)
	w := e.waiter("holding-out", 0, 1)
	w.Plan = func(woken, settled bool) (Plan, error) {
		if settled {
			return Plan{Try: []int{0, 1}, Wants: wants0}, nil
		}
		return Plan{Try: []int{0}, Wants: wants0, Patience: 2 * time.Second}, nil
	}
	done := e.admit(context.Background(), w, time.Minute)
	e.queued(1)
	if n := e.store.Inflight("b"); n != 0 {
		t.Fatalf("took the much slower backend with room (%d in flight there)", n)
	}
	e.clock.advance(time.Second)
	e.release("taker", 0)
	if r := <-done; r.err != nil || r.backend != 0 || r.waited != time.Second {
		t.Fatalf("%+v, want backend 0 after 1s", r)
	}
}

// TestAdmissionPriorities: a higher class is served first; the aging bound
// lets a lower class that has waited longer than Aging go ahead.
func TestAdmissionPriorities(t *testing.T) {
	e := newAdmissionEnv(t, QueueOptions{Aging: 10 * time.Second}, 1)
	<-e.admit(context.Background(), e.waiter("holder", 0), time.Second)
	low := e.waiter("low", 0)
	low.Class = 2
	lowDone := e.admit(context.Background(), low, time.Hour)
	e.queued(1)
	e.clock.advance(5 * time.Second)
	high := e.waiter("high", 0) // class 0, 5s later: 20s of aging ahead
	highDone := e.admit(context.Background(), high, time.Hour)
	e.queued(2)
	e.release("holder", 0)
	if r := <-highDone; r.backend != 0 {
		t.Fatalf("high: %+v", r)
	}
	// Aging: a class-1 request arriving now is behind low (which arrived
	// 5s ago with 20s of class penalty: at +15s; class 1 now: at +15s too,
	// but later in line), and one arriving 20s later surely is.
	e.clock.advance(20 * time.Second)
	mid := e.waiter("mid", 0)
	mid.Class = 1
	midDone := e.admit(context.Background(), mid, time.Hour)
	e.queued(2)
	e.release("high", 0)
	if r := <-lowDone; r.backend != 0 {
		t.Fatalf("low, waiting longer than the aging bound: %+v", r)
	}
	e.release("low", 0)
	if r := <-midDone; r.backend != 0 {
		t.Fatalf("mid: %+v", r)
	}
}

// TestAdmissionPatience: a request waiting for a better (full) backend takes
// a slot on the other once its patience runs out.
func TestAdmissionPatience(t *testing.T) {
	for _, tt := range []struct {
		name string
		// pays: whether ranking again after the k-th expiry (k = 1, 2)
		// still predicts that waiting pays.
		pays []bool
		// waits: the patience expiries before it settles.
		waits int
	}{
		{"waiting stops paying", []bool{false}, 1},
		{"still pays once", []bool{true, false}, 2},
		{"still pays: renewed at most twice", []bool{true, true, true}, 3},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := newAdmissionEnv(t, QueueOptions{}, 1, 4)
			<-e.admit(context.Background(), e.waiter("fast-holder", 0), time.Second)
			better := NewBackendSet(2)
			better.Add(0)
			any := NewBackendSet(2)
			any.Add(0)
			any.Add(1)
			var mu sync.Mutex
			expiries := 0
			w := e.waiter("patient", 0, 1)
			w.Plan = func(woken, settled bool) (Plan, error) {
				mu.Lock()
				defer mu.Unlock()
				if !settled && (expiries == 0 || tt.pays[expiries-1]) {
					return Plan{Try: []int{0}, Wants: better, Patience: 3 * time.Second}, nil
				}
				return Plan{Try: []int{0, 1}, Wants: any}, nil
			}
			done := e.admit(context.Background(), w, time.Minute)
			e.queued(1)
			for k := 1; k <= tt.waits; k++ {
				if e.store.Inflight("b") != 0 {
					t.Fatalf("took the slower backend after %d expiries", k-1)
				}
				mu.Lock()
				expiries = k
				mu.Unlock()
				e.clock.advance(3 * time.Second)
				if k < tt.waits {
					e.parkedSince(e.seenParked + 1) // waiting again
				}
			}
			r := <-done
			if r.backend != 1 || r.err != nil || r.waited != time.Duration(tt.waits)*3*time.Second {
				t.Fatalf("%+v, want the other backend after %d expiries", r, tt.waits)
			}
		})
	}
}

// TestAdmissionAssignMode: a freed slot goes to the waiter it suits best,
// not the oldest, unless the oldest has waited a whole Aging longer.
func TestAdmissionAssignMode(t *testing.T) {
	e := newAdmissionEnv(t, QueueOptions{Assign: true, Aging: 10 * time.Second, AssignAging: 10 * time.Second}, 1)
	<-e.admit(context.Background(), e.waiter("holder", 0), time.Second)
	scored := func(id string, score float64) *Waiter {
		w := e.waiter(id, 0)
		plan := w.Plan
		w.Plan = func(woken, settled bool) (Plan, error) {
			p, err := plan(woken, settled)
			p.Scores = []float64{score}
			return p, err
		}
		return w
	}
	poor := e.admit(context.Background(), scored("poor", 0.2), time.Hour)
	e.queued(1)
	e.clock.advance(time.Second)
	good := e.admit(context.Background(), scored("good", 0.9), time.Hour)
	e.queued(2)
	e.release("holder", 0)
	if r := <-good; r.backend != 0 {
		t.Fatalf("good: %+v", r)
	}
	// Now poor has waited 20s more than a fresh better-suited waiter: the age
	// term (2 points) outweighs the score (0.7).
	e.clock.advance(20 * time.Second)
	better := e.admit(context.Background(), scored("better", 0.9), time.Hour)
	e.queued(2)
	e.release("good", 0)
	if r := <-poor; r.backend != 0 {
		t.Fatalf("poor, after waiting long: %+v", r)
	}
	e.release("poor", 0)
	<-better
}

// TestWaitQueueNotifyManyAssigns: two slots freed together go to the two
// waiters that suit them best in total (greedy would not).
func TestWaitQueueNotifyManyAssigns(t *testing.T) {
	clock := newAdmClock()
	q := NewWaitQueueWith(QueueOptions{Max: 10, Assign: true, Aging: time.Hour, AssignAging: time.Hour, Now: clock.Now})
	a, _ := q.Enter(set(2, 0, 1))
	q.SetScores(a, []float64{0.9, 0.8})
	b, _ := q.Enter(set(2, 0, 1))
	q.SetScores(b, []float64{0.8, 0.1})
	if n := q.NotifyMany([]int{0, 1}); n != 2 {
		t.Fatalf("woke %d, want 2", n)
	}
	if a.woken != 1 || b.woken != 0 {
		t.Fatalf("a woken for %d, b for %d; want a→1, b→0 (total 1.6, not greedy's 1.0)", a.woken, b.woken)
	}
}

// TestWaitQueueBatchWindow: with a batch window, slots freed one at a time
// within it are assigned together when it ends (the optimal pair, where
// assigning each as it frees gives the greedy one), and a request that
// arrived during the window is part of the batch. Without a window each slot
// is assigned as it frees.
func TestWaitQueueBatchWindow(t *testing.T) {
	clock := newAdmClock()
	var timers []func()
	var windows []time.Duration
	after := func(d time.Duration, f func()) { windows = append(windows, d); timers = append(timers, f) }
	setup := func(window time.Duration) (*WaitQueue, *Ticket) {
		timers, windows = nil, nil
		q := NewWaitQueueWith(QueueOptions{Max: 10, Assign: true, Aging: time.Hour, AssignAging: time.Hour, Now: clock.Now,
			BatchWindow: window, AfterFunc: after})
		a, _ := q.Enter(set(2, 0, 1))
		q.SetScores(a, []float64{0.9, 0.8})
		return q, a
	}

	// No window: slot 0 frees, a takes it (the best waiter for it then);
	// b, arriving after, gets slot 1.
	q, a := setup(0)
	q.Notify(0)
	b, _ := q.Enter(set(2, 0, 1))
	q.SetScores(b, []float64{0.8, 0.1})
	q.Notify(1)
	if a.woken != 0 || b.woken != 1 || len(timers) != 0 {
		t.Fatalf("without a window: a→%d, b→%d, %d timers; want a→0, b→1 at once", a.woken, b.woken, len(timers))
	}

	// A 20ms window: nothing is woken until it ends; then both slots go to
	// both waiters together: a→1, b→0 (total 1.6, not 1.0).
	q, a = setup(20 * time.Millisecond)
	q.Notify(0)
	b, _ = q.Enter(set(2, 0, 1))
	q.SetScores(b, []float64{0.8, 0.1})
	q.Notify(1)
	if a.woken != -1 || b.woken != -1 {
		t.Fatalf("woken during the window: a→%d, b→%d", a.woken, b.woken)
	}
	if len(timers) != 1 || windows[0] != 20*time.Millisecond {
		t.Fatalf("%d timers (%v), want one of 20ms", len(timers), windows)
	}
	timers[0]()
	if a.woken != 1 || b.woken != 0 {
		t.Fatalf("after the window: a→%d, b→%d; want a→1, b→0", a.woken, b.woken)
	}
	// The next freed slot starts a new window.
	q.Notify(0)
	if len(timers) != 2 {
		t.Fatalf("%d timers after a new release, want 2", len(timers))
	}
}

// TestAdmissionReplanCountsOnlyWaitersAhead: a waiting request that ranks
// itself again sees, through Waiter.Ahead, the waiters ahead of it in line,
// not itself and not those that came after (its predicted wait for a slot
// would otherwise grow with its own place in line and with newcomers, and a
// request waiting for a better backend would give up on it for nothing).
func TestAdmissionReplanCountsOnlyWaitersAhead(t *testing.T) {
	e := newAdmissionEnv(t, QueueOptions{}, 1, 1)
	for _, id := range []string{"h0", "h1"} {
		<-e.admit(context.Background(), e.waiter(id, 0, 1), time.Second)
	}
	type seen struct {
		ahead  int
		queued bool
	}
	var mu sync.Mutex
	saw := map[string][]seen{}
	waiter := func(id string) *Waiter {
		w := e.waiter(id, 0)
		plan := w.Plan
		w.Plan = func(woken, settled bool) (Plan, error) {
			n, _, q := w.Ahead(0)
			mu.Lock()
			saw[id] = append(saw[id], seen{n, q})
			mu.Unlock()
			p, err := plan(woken, settled)
			p.Patience = time.Hour // ranks itself again once queued
			return p, err
		}
		return w
	}
	var dones []chan admitted
	for i, id := range []string{"w0", "w1", "w2"} {
		dones = append(dones, e.admit(context.Background(), waiter(id), time.Hour))
		e.queued(i + 1)
	}
	mu.Lock()
	for i, id := range []string{"w0", "w1", "w2"} {
		got := saw[id]
		// Before joining: not queued. Then its re-rank in line: i ahead.
		if len(got) != 2 || got[0].queued || !got[1].queued || got[1].ahead != i {
			t.Errorf("%s saw %+v, want not queued, then %d ahead", id, got, i)
		}
	}
	mu.Unlock()
	e.release("h0", 0)
	if r := <-dones[0]; r.backend != 0 {
		t.Fatalf("w0: %+v", r)
	}
	if n, share, q := (&Waiter{}).Ahead(0); n != 0 || share != 0 || q {
		t.Fatalf("a waiter not in line: %d, %v", n, q)
	}
	e.release("h1", 1)
	e.release("w0", 0)
	<-dones[1]
	e.release("w1", 0)
	<-dones[2]
}

// TestWaitQueueAssignAging: the age term's scale. A better-suited waiter
// (0.9 against 0.5) overtakes one ahead of it by less than AssignAging ×
// 0.4, and not one further ahead; the priority aging plays no part within a
// class.
func TestWaitQueueAssignAging(t *testing.T) {
	for _, tt := range []struct {
		name     string
		aging    time.Duration // AssignAging
		behind   time.Duration // how much later the better-suited one arrived
		overtake bool
	}{
		{"default 500ms, 150ms behind", 0, 150 * time.Millisecond, true},
		{"default 500ms, 250ms behind", 0, 250 * time.Millisecond, false},
		{"2s, 500ms behind", 2 * time.Second, 500 * time.Millisecond, true},
		{"2s, 900ms behind", 2 * time.Second, 900 * time.Millisecond, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Unix(1000, 0)
			q := NewWaitQueueWith(QueueOptions{Max: 10, Assign: true, Aging: time.Hour, AssignAging: tt.aging, Now: func() time.Time { return start }})
			first, _ := q.EnterClass(set(1, 0), 0, start)
			q.SetScores(first, []float64{0.5})
			suited, _ := q.EnterClass(set(1, 0), 0, start.Add(tt.behind))
			q.SetScores(suited, []float64{0.9})
			q.Notify(0)
			if got := suited.woken == 0; got != tt.overtake || (first.woken == 0) == tt.overtake {
				t.Fatalf("first woken for %d, the better-suited one for %d; want it to overtake: %v", first.woken, suited.woken, tt.overtake)
			}
		})
	}
}

// TestFleetWaitersShare: this replica's waiters in the fleet's line count
// their share of each backend like the local line's (see WaitQueue.Share).
func TestFleetWaitersShare(t *testing.T) {
	a := NewAdmission(AdmissionOptions{Store: NewMemoryStore(), Queue: NewWaitQueue(10), Backends: 3})
	t0 := time.Unix(1_700_000_000, 0)
	x := a.fleet.enter(t0, 0, set(3, 0))
	y := a.fleet.enter(t0.Add(time.Second), 0, set(3, 0, 1))
	if a.ShareOf(0) != 1.5 || a.ShareOf(1) != 0.5 || a.WaitingFor(0) != 2 {
		t.Fatalf("shares %v %v, waiting %d; want 1.5 0.5, 2", a.ShareOf(0), a.ShareOf(1), a.WaitingFor(0))
	}
	if n, share := a.fleet.ahead(y, 0); n != 1 || share != 1 {
		t.Fatalf("ahead of y: %d, %v; want 1, 1", n, share)
	}
	a.fleet.setWants(x, set(3, 1, 2))
	if a.ShareOf(0) != 0.5 || a.ShareOf(1) != 1 || a.ShareOf(2) != 0.5 {
		t.Fatalf("after x moved: shares %v %v %v; want 0.5 1 0.5", a.ShareOf(0), a.ShareOf(1), a.ShareOf(2))
	}
	a.fleet.leave(x)
	a.fleet.leave(y)
	for i := range 3 {
		if a.ShareOf(i) != 0 || a.WaitingFor(i) != 0 {
			t.Fatalf("backend %d: share %v, waiting %d after both left", i, a.ShareOf(i), a.WaitingFor(i))
		}
	}
}
