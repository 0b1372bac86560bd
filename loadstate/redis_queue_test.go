package loadstate

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modelrouter/modelrouter/internal/redistest"
)

// fleetReplica is one replica of a fleet-wide-queue test: a Redis store and
// an admission over it, for backends of the given capacities named a, b, ...
type fleetReplica struct {
	store *RedisStore
	adm   *Admission
	names []string
	caps  []int
	queue *WaitQueue
}

func newFleetReplica(t *testing.T, env redisEnv, pool, id string, assign bool, caps ...int) *fleetReplica {
	return newFleetReplicaWith(t, env, RedisOptions{Pool: pool, ReplicaID: id, Heartbeat: 100 * time.Millisecond}, assign, caps...)
}

func newFleetReplicaWith(t testing.TB, env redisEnv, opts RedisOptions, assign bool, caps ...int) *fleetReplica {
	r := &fleetReplica{store: newTestStore(t, env, opts), caps: caps}
	for i := range caps {
		r.names = append(r.names, string(rune('a'+i)))
	}
	r.store.SetQueueMode(assign, 10*time.Second)
	r.queue = NewWaitQueueWith(QueueOptions{Max: 1000, Aging: 10 * time.Second, AssignAging: 10 * time.Second, Assign: assign})
	r.adm = NewAdmission(AdmissionOptions{Store: r.store, Queue: r.queue, Backends: len(caps),
		Free: func(i int) int { return caps[i] - r.store.Inflight(r.names[i]) }})
	stop := r.store.Watch(func(backend string) {
		for i, n := range r.names {
			if n == backend {
				r.queue.Notify(i)
			}
		}
	})
	t.Cleanup(stop)
	return r
}

// waiter is a request that can use the given backends (tried in order), of
// priority class, with an optional score per backend.
func (r *fleetReplica) waiter(id string, class int, scores []float64, backends ...int) *Waiter {
	wants := NewBackendSet(len(r.caps))
	for _, b := range backends {
		wants.Add(b)
	}
	slot := func(i int) Slot { return Slot{Backend: r.names[i], Capacity: r.caps[i]} }
	return &Waiter{
		ID: id, Class: class,
		Plan: func(woken, settled bool) (Plan, error) {
			return Plan{Try: backends, Wants: wants, Scores: scores}, nil
		},
		Slots: func(cands []int) ([]Slot, []int) {
			out := make([]Slot, len(cands))
			for k, c := range cands {
				out[k] = slot(c)
			}
			return out, cands
		},
		Settle: func(int) {},
		Want: func(bs []int) []Slot {
			out := make([]Slot, len(bs))
			for k, b := range bs {
				out[k] = slot(b)
			}
			return out
		},
		Index: func(name string) int {
			for i, n := range r.names {
				if n == name {
					return i
				}
			}
			return -1
		},
	}
}

func (r *fleetReplica) admit(ctx context.Context, w *Waiter, maxWait time.Duration) chan admitted {
	out := make(chan admitted, 1)
	go func() {
		b, waited, err := r.adm.Admit(ctx, w, maxWait)
		out <- admitted{b, waited, err}
	}()
	return out
}

// ticketsWaiting is how many tickets the pool's queue holds.
func ticketsWaiting(t *testing.T, r *fleetReplica) int64 {
	n, err := r.store.client.HLen(context.Background(), r.store.keys.tickets()).Result()
	if err != nil {
		t.Fatalf("reading the tickets: %v", err)
	}
	return n
}

// TestFleetQueueGrantOnRelease: a request waiting on one replica is handed
// the slot another replica releases, in the release's round trip, and told
// through its own channel: it makes one acquire call in all, and the other
// replica none for it.
func TestFleetQueueGrantOnRelease(t *testing.T) {
	env := standaloneEnv(redistest.Start(t))
	pool := newTestPool()
	a, b := newFleetReplica(t, env, pool, "a", false, 1), newFleetReplica(t, env, pool, "b", false, 1)
	if r := <-a.admit(context.Background(), a.waiter("held", 0, nil, 0), time.Second); r.backend != 0 {
		t.Fatalf("first: %+v", r)
	}
	before := b.store.Stats()
	done := b.admit(context.Background(), b.waiter("waiting", 0, nil, 0), time.Minute)
	waitFor(t, 10*time.Second, "the ticket in Redis", func() bool { return ticketsWaiting(t, a) == 1 })
	mustRelease(t, a.store, "held", "a")
	r := <-done
	if r.err != nil || r.backend != 0 {
		t.Fatalf("waiting request: %+v", r)
	}
	after := b.store.Stats()
	if n := after.HotPathCalls - before.HotPathCalls; n != 1 {
		t.Errorf("%d acquire calls for one admitted request, want 1", n)
	}
	if n := after.GrantsReceived - before.GrantsReceived; n != 1 {
		t.Errorf("%d grants received, want 1", n)
	}
	if got := b.store.Inflight("a"); got != 1 {
		t.Errorf("b's view: %d in flight, want 1 (the slot changed hands)", got)
	}
	mustRelease(t, b.store, "waiting", "a")
	waitFor(t, 5*time.Second, "the lease released", snapshotIs(a.store, map[string]int{}))
	if n := ticketsWaiting(t, a); n != 0 {
		t.Errorf("%d tickets left", n)
	}
}

// TestFleetQueueOrder: across replicas, waiters are served by class, then
// arrival: a later arrival of the same class never overtakes an earlier one
// that can use the same backend, and a newcomer never takes a slot a waiter
// could use.
func TestFleetQueueOrder(t *testing.T) {
	env := standaloneEnv(redistest.Start(t))
	pool := newTestPool()
	reps := []*fleetReplica{newFleetReplica(t, env, pool, "r0", false, 1), newFleetReplica(t, env, pool, "r1", false, 1), newFleetReplica(t, env, pool, "r2", false, 1)}
	if r := <-reps[0].admit(context.Background(), reps[0].waiter("held", 0, nil, 0), time.Second); r.backend != 0 {
		t.Fatalf("first: %+v", r)
	}
	type entry struct {
		id    string
		class int
		rep   *fleetReplica
	}
	// Arrival order: low-1 (r1), normal-1 (r2), low-2 (r0), normal-2 (r1).
	entries := []entry{{"low-1", 1, reps[1]}, {"normal-1", 0, reps[2]}, {"low-2", 1, reps[0]}, {"normal-2", 0, reps[1]}}
	done := map[string]chan admitted{}
	for k, e := range entries {
		done[e.id] = e.rep.admit(context.Background(), e.rep.waiter(e.id, e.class, nil, 0), time.Minute)
		waitFor(t, 10*time.Second, "ticket "+e.id, func() bool { return ticketsWaiting(t, reps[0]) == int64(k+1) })
	}
	// Every replica learns the fleet's line with its heartbeat (for
	// Retry-After): 4, though each holds only 1 or 2 of the tickets.
	waitFor(t, 10*time.Second, "every replica to count the fleet's 4 waiting", func() bool {
		for _, r := range reps {
			if n, ok := r.store.FleetWaiting(); !ok || n != 4 {
				return false
			}
		}
		return true
	})
	// A newcomer finds the slot free after the release, but waiters come first.
	holder := "held"
	holderRep := reps[0]
	for _, want := range []string{"normal-1", "normal-2", "low-1", "low-2"} {
		mustRelease(t, holderRep.store, holder, "a")
		r := <-done[want]
		if r.err != nil || r.backend != 0 {
			t.Fatalf("%s: %+v", want, r)
		}
		for _, e := range entries {
			if e.id == want {
				holderRep = e.rep
			}
		}
		holder = want
		if want == "normal-1" {
			// A newcomer now: it must wait behind the three left.
			if r := <-reps[2].admit(context.Background(), reps[2].waiter("newcomer", 0, nil, 0), 50*time.Millisecond); !errors.Is(r.err, ErrWaitTimeout) {
				t.Fatalf("newcomer: %+v, want it to wait (and time out) behind the queue", r)
			}
		}
	}
	mustRelease(t, holderRep.store, holder, "a")
	waitFor(t, 5*time.Second, "everything released", snapshotIs(reps[0].store, map[string]int{}))
	if n := ticketsWaiting(t, reps[0]); n != 0 {
		t.Errorf("%d tickets left", n)
	}
}

// TestFleetQueueLeaving: a waiter whose deadline passes or whose client
// leaves is taken out of the queue, and a slot handed to it as it left is
// not lost.
func TestFleetQueueLeaving(t *testing.T) {
	env := standaloneEnv(redistest.Start(t))
	pool := newTestPool()
	a, b := newFleetReplica(t, env, pool, "a", false, 1), newFleetReplica(t, env, pool, "b", false, 1)
	<-a.admit(context.Background(), a.waiter("held", 0, nil, 0), time.Second)
	if r := <-b.admit(context.Background(), b.waiter("late", 0, nil, 0), 100*time.Millisecond); !errors.Is(r.err, ErrWaitTimeout) {
		t.Fatalf("deadline: %+v", r)
	}
	if n := ticketsWaiting(t, a); n != 0 {
		t.Fatalf("%d tickets after the deadline", n)
	}
	ctx, cancel := context.WithCancel(context.Background())
	gone := b.admit(ctx, b.waiter("gone", 0, nil, 0), time.Minute)
	waitFor(t, 10*time.Second, "the ticket", func() bool { return ticketsWaiting(t, a) == 1 })
	cancel()
	if r := <-gone; !errors.Is(r.err, context.Canceled) {
		t.Fatalf("client gone: %+v", r)
	}
	if n := ticketsWaiting(t, a); n != 0 {
		t.Fatalf("%d tickets after the client left", n)
	}
	// The slot is still a's; once released it is free for anyone.
	mustRelease(t, a.store, "held", "a")
	waitFor(t, 5*time.Second, "the slot free", snapshotIs(a.store, map[string]int{}))
	if r := <-b.admit(context.Background(), b.waiter("next", 0, nil, 0), time.Second); r.backend != 0 {
		t.Fatalf("next: %+v", r)
	}
}

// TestFleetQueueDeadReplica: the tickets of a replica that died lapse: a
// release after that does not hand the slot to them.
func TestFleetQueueDeadReplica(t *testing.T) {
	env := standaloneEnv(redistest.Start(t))
	pool := newTestPool()
	a, b := newFleetReplica(t, env, pool, "a", false, 1), newFleetReplica(t, env, pool, "b", false, 1)
	<-a.admit(context.Background(), a.waiter("held", 0, nil, 0), time.Second)
	_ = b.admit(context.Background(), b.waiter("doomed", 0, nil, 0), 200*time.Millisecond) // its ticket lives 1.2s
	waitFor(t, 10*time.Second, "the ticket", func() bool { return ticketsWaiting(t, a) == 1 })
	b.store.abandon() // dies without leaving the queue
	// Once the ticket has lapsed (Redis time), a release frees the slot.
	waitFor(t, 10*time.Second, "the ticket to lapse", func() bool {
		raw, err := a.store.client.HGet(context.Background(), a.store.keys.tickets(), "doomed").Result()
		if err != nil {
			return true
		}
		rec := parseTicketForTest(raw)
		now, _ := a.store.client.Time(context.Background()).Result()
		return rec < now.UnixMilli()
	})
	mustRelease(t, a.store, "held", "a")
	waitFor(t, 5*time.Second, "the slot free", snapshotIs(a.store, map[string]int{}))
}

// parseTicketForTest reads a ticket's expiry (ms).
func parseTicketForTest(raw string) int64 {
	var replica, member string
	var expiry int64
	_, _ = fmt.Sscanf(raw, "%s", &replica)
	parts := splitN(raw, '|', 4)
	if len(parts) >= 3 {
		_, _ = fmt.Sscan(parts[2], &expiry)
	}
	_ = member
	return expiry
}

func splitN(s string, sep byte, n int) []string {
	var out []string
	for len(out) < n-1 {
		i := -1
		for k := 0; k < len(s); k++ {
			if s[k] == sep {
				i = k
				break
			}
		}
		if i < 0 {
			break
		}
		out = append(out, s[:i])
		s = s[i+1:]
	}
	return append(out, s)
}

// TestFleetQueueAssign: in assign mode a freed slot goes to the waiting
// request it suits best, on whichever replica it waits.
func TestFleetQueueAssign(t *testing.T) {
	env := standaloneEnv(redistest.Start(t))
	pool := newTestPool()
	a, b := newFleetReplica(t, env, pool, "a", true, 1), newFleetReplica(t, env, pool, "b", true, 1)
	<-a.admit(context.Background(), a.waiter("held", 0, []float64{1}, 0), time.Second)
	poor := a.admit(context.Background(), a.waiter("poor", 0, []float64{0.1}, 0), time.Minute)
	waitFor(t, 10*time.Second, "poor's ticket", func() bool { return ticketsWaiting(t, a) == 1 })
	good := b.admit(context.Background(), b.waiter("good", 0, []float64{0.9}, 0), time.Minute)
	waitFor(t, 10*time.Second, "good's ticket", func() bool { return ticketsWaiting(t, a) == 2 })
	mustRelease(t, a.store, "held", "a")
	if r := <-good; r.backend != 0 {
		t.Fatalf("good: %+v", r)
	}
	mustRelease(t, b.store, "good", "a")
	if r := <-poor; r.backend != 0 {
		t.Fatalf("poor: %+v", r)
	}
	mustRelease(t, a.store, "poor", "a")
}

// TestFleetQueueContention measures the fleet-wide queue under contention:
// replicas send bursts well above capacity through their admissions; every
// admitted request costs about one acquire round trip, requests in all at
// most 2.2 round trips (background excluded), and no request is overtaken by
// a later one of its class. Redis CPU per request is reported (commandstats).
func TestFleetQueueContention(t *testing.T) {
	for _, replicas := range []int{1, 3, 6} {
		t.Run(fmt.Sprintf("%d replicas", replicas), func(t *testing.T) {
			env := standaloneEnv(redistest.Start(t))
			res := runContention(t, env, replicas, 240, 4, 20*time.Millisecond)
			t.Logf("%d replicas: %v", replicas, res)
			if res.acquirePerAdmitted > 1.1 {
				t.Errorf("%.3f acquire round trips per admitted request, want ≤ 1.1", res.acquirePerAdmitted)
			}
			if res.perRequest > 2.2 {
				t.Errorf("%.3f round trips per request, want ≤ 2.2", res.perRequest)
			}
			if res.overtaken != 0 {
				t.Errorf("%d requests overtaken by a later one", res.overtaken)
			}
			if res.admitted != res.requests {
				t.Errorf("%d of %d admitted", res.admitted, res.requests)
			}
		})
	}
}

// BenchmarkFleetQueueContention is TestFleetQueueContention's measurement as
// a benchmark: the same burst (240 requests at once on one backend of
// capacity 4, each holding its slot 20 ms) through 1, 3 and 6 replicas
// sharing one Redis, reporting per request the acquire round trips per
// admitted request, Redis round trips in all (heartbeats excluded), Redis
// CPU in µs (INFO commandstats, scripts' inner commands not counted twice)
// and that CPU as a ratio to the 1-replica run of the same invocation.
//
//	go test ./loadstate -run '^$' -bench FleetQueueContention -benchtime 1x
func BenchmarkFleetQueueContention(b *testing.B) {
	var base float64
	for _, replicas := range []int{1, 3, 6} {
		b.Run(fmt.Sprintf("replicas=%d", replicas), func(b *testing.B) {
			var sum contention
			for range b.N {
				b.StopTimer()
				env := standaloneEnv(redistest.Start(b))
				b.StartTimer()
				res := runContention(b, env, replicas, 240, 4, 20*time.Millisecond)
				sum.acquirePerAdmitted += res.acquirePerAdmitted / float64(b.N)
				sum.perRequest += res.perRequest / float64(b.N)
				sum.usecPerRequest += res.usecPerRequest / float64(b.N)
				sum.overtaken += res.overtaken
			}
			if replicas == 1 {
				base = sum.usecPerRequest
			}
			b.ReportMetric(sum.acquirePerAdmitted, "acquire-rtt/admitted")
			b.ReportMetric(sum.perRequest, "redis-rtt/req")
			b.ReportMetric(sum.usecPerRequest, "redis-µs/req")
			if base > 0 {
				b.ReportMetric(sum.usecPerRequest/base, "redis-µs-vs-1-replica")
			}
			b.ReportMetric(float64(sum.overtaken), "overtaken")
		})
	}
}

// contention is what runContention measured.
type contention struct {
	requests, admitted, overtaken int
	background                    int // heartbeats and the like during the run
	acquirePerAdmitted            float64
	perRequest                    float64
	usecPerRequest                float64
}

func (c contention) String() string {
	return fmt.Sprintf("%d requests, %d admitted, %.3f acquire round trips per admitted request, %.3f round trips per request in all, %.1f µs of Redis CPU per request, %d overtaken",
		c.requests, c.admitted, c.acquirePerAdmitted, c.perRequest, c.usecPerRequest, c.overtaken)
}

// runContention sends requests through n replicas sharing one backend of
// capacity cap: all arrive at once (far above capacity), each holds its slot
// for hold, waits as long as it takes. Arrival order is recorded (each request
// is queued in turn) and admissions checked against it.
func runContention(t testing.TB, env redisEnv, n, requests, capacity int, hold time.Duration) contention {
	pool := newTestPool()
	reps := make([]*fleetReplica, n)
	for i := range reps {
		// Heartbeats (background, the same per replica whatever the
		// load) are few over the run: a long period.
		reps[i] = newFleetReplicaWith(t, env, RedisOptions{Pool: pool, ReplicaID: fmt.Sprintf("r%d", i), Lease: time.Minute, Heartbeat: 20 * time.Second}, false, capacity)
	}
	env.reset()
	before := make([]RedisStats, n)
	for i, r := range reps {
		before[i] = r.store.Stats()
	}
	var admittedN, overtaken atomic.Int64
	var mu sync.Mutex
	arrival := map[string]int{}
	var servedMax int
	var wg sync.WaitGroup
	for k := range requests {
		rep := reps[k%n]
		id := fmt.Sprintf("req-%04d", k)
		mu.Lock()
		arrival[id] = k
		mu.Unlock()
		wg.Add(1)
		done := rep.admit(context.Background(), rep.waiter(id, 0, nil, 0), time.Minute)
		go func() {
			defer wg.Done()
			r := <-done
			if r.err != nil {
				t.Errorf("%s: %v", id, r.err)
				return
			}
			admittedN.Add(1)
			mu.Lock()
			if a := arrival[id]; a < servedMax-capacity {
				// Served after a request that arrived more than a
				// capacity's worth later.
				overtaken.Add(1)
			} else if a > servedMax {
				servedMax = a
			}
			mu.Unlock()
			time.Sleep(hold) // the request's work
			_ = rep.store.Release(context.Background(), id, "a")
		}()
		// Arrivals in order: the next is sent once this one is in (queued
		// or admitted).
		waitFor(t, 10*time.Second, "request "+id+" in", func() bool {
			return rep.store.Stats().HotPathCalls > before[k%n].HotPathCalls+uint64(k/n)
		})
	}
	wg.Wait()
	waitFor(t, 10*time.Second, "every lease gone", snapshotIs(reps[0].store, map[string]int{}))
	usec := env.usec()
	var hot, rel, q, background uint64
	for i, r := range reps {
		st := r.store.Stats()
		hot += st.HotPathCalls - before[i].HotPathCalls
		rel += st.Releases - before[i].Releases
		q += st.QueueCalls - before[i].QueueCalls
		background += (st.Heartbeats - before[i].Heartbeats) + (st.Resyncs - before[i].Resyncs) + (st.Renewals - before[i].Renewals)
	}
	c := contention{requests: requests, admitted: int(admittedN.Load()), overtaken: int(overtaken.Load())}
	c.acquirePerAdmitted = float64(hot) / float64(max(c.admitted, 1))
	c.perRequest = float64(hot+rel+q) / float64(requests)
	// Scripts' CPU, their inner commands included (not counted twice).
	c.usecPerRequest = float64(usec["evalsha"]+usec["eval"]) / float64(requests)
	c.background = int(background)
	return c
}

// TestFleetQueueOutage: requests waiting in the fleet-wide queue when Redis
// goes away carry on in their replicas' local queues, and are served as
// local slots free up.
func TestFleetQueueOutage(t *testing.T) {
	srv := redistest.Start(t)
	env := standaloneEnv(srv)
	pool := newTestPool()
	a := newFleetReplicaWith(t, env, RedisOptions{Pool: pool, ReplicaID: "a", Lease: time.Second, Heartbeat: 100 * time.Millisecond, Timeout: 100 * time.Millisecond}, false, 2)
	for _, id := range []string{"h1", "h2"} {
		if r := <-a.admit(context.Background(), a.waiter(id, 0, nil, 0), time.Second); r.backend != 0 {
			t.Fatalf("%s: %+v", id, r)
		}
	}
	done := a.admit(context.Background(), a.waiter("waiting", 0, nil, 0), time.Minute)
	waitFor(t, 10*time.Second, "the ticket", func() bool { return ticketsWaiting(t, a) == 1 })
	srv.Stop()
	// The release cannot reach Redis: the breaker opens, the waiter moves
	// to the local queue and gets the slot freed locally.
	mustRelease(t, a.store, "h1", "a")
	if r := <-done; r.err != nil || r.backend != 0 {
		t.Fatalf("waiting through the outage: %+v", r)
	}
	if a.store.Mode() == ModeRedis {
		t.Errorf("mode %s during the outage", a.store.Mode())
	}
}

// TestFleetQueuePatience: a request waiting in the fleet-wide queue for a
// better backend keeps its place when, its patience run out, ranking it
// again still predicts that waiting pays (no call to Redis for that), and
// settles for any backend when it no longer does: it leaves the queue and
// takes the other backend.
func TestFleetQueuePatience(t *testing.T) {
	for _, tt := range []struct {
		name string
		pays []bool // after the k-th expiry, does waiting still pay?
	}{
		{"stops paying", []bool{false}},
		{"pays once more", []bool{true, false}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			env := standaloneEnv(redistest.Start(t))
			r := newFleetReplica(t, env, newTestPool(), "a", false, 1, 4)
			if res := <-r.admit(context.Background(), r.waiter("holder", 0, nil, 0), time.Second); res.backend != 0 {
				t.Fatalf("holder: %+v", res)
			}
			better, any := NewBackendSet(2), NewBackendSet(2)
			better.Add(0)
			any.Add(0)
			any.Add(1)
			var mu sync.Mutex
			expiries, plans := 0, 0
			w := r.waiter("patient", 0, nil, 0, 1)
			w.Plan = func(woken, settled bool) (Plan, error) {
				mu.Lock()
				defer mu.Unlock()
				plans++
				if !settled && plans > 1 {
					expiries++ // a re-rank only follows an expiry here
				}
				if !settled && (expiries == 0 || tt.pays[expiries-1]) {
					return Plan{Try: []int{0}, Wants: better, Patience: 50 * time.Millisecond}, nil
				}
				return Plan{Try: []int{0, 1}, Wants: any}, nil
			}
			before := r.store.Stats()
			res := <-r.admit(context.Background(), w, time.Minute)
			if res.backend != 1 || res.err != nil {
				t.Fatalf("%+v, want the other backend once waiting stopped paying", res)
			}
			mu.Lock()
			if expiries != len(tt.pays) {
				t.Errorf("%d expiries, want %d", expiries, len(tt.pays))
			}
			mu.Unlock()
			// Calls: the first acquire-or-queue, leaving the queue, the
			// settled acquire; whatever the renewals.
			after := r.store.Stats()
			if calls := (after.HotPathCalls - before.HotPathCalls) + (after.QueueCalls - before.QueueCalls); calls != 3 {
				t.Errorf("%d calls to Redis, want 3", calls)
			}
			mustRelease(t, r.store, "patient", "b")
			mustRelease(t, r.store, "holder", "a")
		})
	}
}

// TestFleetQueuePatienceLeaveStalls: Redis stalls just as a waiter whose
// patience ran out leaves the line. The failed leave is one slow reply, not
// the request's failure: it asks again for any backend and is served.
func TestFleetQueuePatienceLeaveStalls(t *testing.T) {
	srv := redistest.Start(t)
	r := newFleetReplicaWith(t, standaloneEnv(srv), RedisOptions{Pool: newTestPool(), ReplicaID: "a",
		Heartbeat: 100 * time.Millisecond, Timeout: 100 * time.Millisecond}, false, 1, 4)
	if res := <-r.admit(context.Background(), r.waiter("holder", 0, nil, 0), time.Second); res.backend != 0 {
		t.Fatalf("holder: %+v", res)
	}
	better, any := NewBackendSet(2), NewBackendSet(2)
	better.Add(0)
	any.Add(0)
	any.Add(1)
	var mu sync.Mutex
	plans, stalled := 0, false
	w := r.waiter("patient", 0, nil, 0, 1)
	w.Plan = func(woken, settled bool) (Plan, error) {
		mu.Lock()
		defer mu.Unlock()
		plans++
		if !settled && plans == 1 {
			return Plan{Try: []int{0}, Wants: better, Patience: 50 * time.Millisecond}, nil
		}
		if !settled && !stalled {
			// The re-rank after the patience ran out: waiting no longer
			// pays, and Redis stalls for three of its timeouts as the
			// waiter leaves the line.
			stalled = true
			srv.Pause(300 * time.Millisecond)
		}
		return Plan{Try: []int{0, 1}, Wants: any}, nil
	}
	res := <-r.admit(context.Background(), w, time.Minute)
	if res.backend != 1 || res.err != nil {
		t.Fatalf("%+v, want the other backend: a stalled leave is not the request's failure", res)
	}
	mu.Lock()
	if !stalled {
		t.Error("the patience never ran out")
	}
	mu.Unlock()
	waitFor(t, 10*time.Second, "Redis to answer again", func() bool { return r.store.Release(context.Background(), "patient", "b") == nil })
	waitFor(t, 10*time.Second, "the holder's release", func() bool { return r.store.Release(context.Background(), "holder", "a") == nil })
}

// TestFleetQueueBoundUnderBurst: max_queue holds when a burst of requests
// arrives at once and each asks Redis for a slot or a place in the same
// round trip: a place is reserved before the call, so only max_queue of
// them wait and the rest are refused at once.
func TestFleetQueueBoundUnderBurst(t *testing.T) {
	env := standaloneEnv(redistest.Start(t))
	// A lease far longer than the test: the holder's slot must not come
	// free on a slow machine while the burst is counted.
	r := newFleetReplicaWith(t, env, RedisOptions{Pool: newTestPool(), ReplicaID: "a", Heartbeat: 100 * time.Millisecond, Lease: time.Minute}, false, 1)
	r.queue = NewWaitQueueWith(QueueOptions{Max: 2, Aging: 10 * time.Second})
	r.adm = NewAdmission(AdmissionOptions{Store: r.store, Queue: r.queue, Backends: 1,
		Free: func(i int) int { return r.caps[i] - r.store.Inflight(r.names[i]) }})
	if res := <-r.admit(context.Background(), r.waiter("holder", 0, nil, 0), time.Second); res.backend != 0 {
		t.Fatalf("holder: %+v", res)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const burst = 12
	done := make(chan admitted, burst)
	var ready sync.WaitGroup
	ready.Add(burst)
	begin := make(chan struct{})
	for k := range burst {
		w := r.waiter(fmt.Sprintf("burst-%d", k), 0, nil, 0)
		go func() {
			ready.Done()
			<-begin
			b, waited, err := r.adm.Admit(ctx, w, time.Minute)
			done <- admitted{b, waited, err}
		}()
	}
	ready.Wait()
	close(begin)
	for k := 0; k < burst-2; k++ {
		select {
		case res := <-done:
			if !errors.Is(res.err, ErrQueueFull) {
				t.Fatalf("refusal %d: %+v, want ErrQueueFull (the line holds 2)", k, res)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("only %d of %d refused at once: more than max_queue 2 are waiting (%d tickets)", k, burst-2, ticketsWaiting(t, r))
		}
	}
	if n, local := ticketsWaiting(t, r), r.adm.Waiting(); n != 2 || local != 2 {
		t.Errorf("%d tickets in Redis, %d waiting here; want 2 (max_queue)", n, local)
	}
	cancel()
	for range 2 {
		if res := <-done; !errors.Is(res.err, context.Canceled) {
			t.Errorf("a waiter after cancel: %+v", res)
		}
	}
	mustRelease(t, r.store, "holder", "a")
}

// TestFleetQueueRejoinKeepsPlace: a request whose patience for a better
// backend ran out joins the line again for any backend at its old place,
// not behind a request that arrived after it.
func TestFleetQueueRejoinKeepsPlace(t *testing.T) {
	env := standaloneEnv(redistest.Start(t))
	r := newFleetReplicaWith(t, env, RedisOptions{Pool: newTestPool(), ReplicaID: "a", Heartbeat: 100 * time.Millisecond, Lease: time.Minute}, false, 1, 1)
	for _, h := range []struct {
		id string
		b  int
	}{{"holder-a", 0}, {"holder-b", 1}} {
		if res := <-r.admit(context.Background(), r.waiter(h.id, 0, nil, h.b), time.Second); res.backend != h.b {
			t.Fatalf("%s: %+v", h.id, res)
		}
	}
	better, any := NewBackendSet(2), NewBackendSet(2)
	better.Add(0)
	any.Add(0)
	any.Add(1)
	rerank := make(chan struct{}) // closed once the later request waits
	var mu sync.Mutex
	plans := 0
	first := r.waiter("first", 0, nil, 0, 1)
	first.Plan = func(woken, settled bool) (Plan, error) {
		mu.Lock()
		plans++
		n := plans
		mu.Unlock()
		switch {
		case n == 1:
			return Plan{Try: []int{0}, Wants: better, Patience: 20 * time.Millisecond}, nil
		case !settled:
			<-rerank // its patience ran out: ranked again once "later" waits
		}
		return Plan{Try: []int{0, 1}, Wants: any}, nil
	}
	firstDone := r.admit(context.Background(), first, time.Minute)
	waitFor(t, 10*time.Second, "the first request's ticket", func() bool { return ticketsWaiting(t, r) == 1 })
	laterDone := r.admit(context.Background(), r.waiter("later", 0, nil, 0, 1), time.Minute)
	waitFor(t, 10*time.Second, "the later request's ticket", func() bool { return ticketsWaiting(t, r) == 2 })
	close(rerank)
	// The first one leaves and joins again for any backend: two tickets.
	waitFor(t, 10*time.Second, "the first request to join again", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return plans >= 3 && ticketsWaiting(t, r) == 2
	})
	mustRelease(t, r.store, "holder-b", "b")
	if res := <-firstDone; res.err != nil || res.backend != 1 {
		t.Fatalf("first: %+v, want b's freed slot: it arrived before the later one", res)
	}
	mustRelease(t, r.store, "first", "b")
	if res := <-laterDone; res.err != nil || res.backend != 1 {
		t.Fatalf("later: %+v", res)
	}
	mustRelease(t, r.store, "later", "b")
	mustRelease(t, r.store, "holder-a", "a")
}
