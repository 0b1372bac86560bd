package loadstate

import (
	"context"
	"testing"
	"time"
)

// holdOutWaiter mimics caddymodule's rt.plan for a hold-out: backend 0 (fast)
// has room when first ranked, backend 1 (slow) has room too; between the
// ranking and the store call another request takes 0's last slot (race).
// Any later ranking sees 0 full and, waiting not paying, plans to take 1.
func holdOutWaiter(e *admissionEnv, id string) *Waiter {
	w := e.waiter(id, 0, 1)
	all := NewBackendSet(len(e.caps))
	all.Add(0)
	all.Add(1)
	only0 := NewBackendSet(len(e.caps))
	only0.Add(0)
	calls := 0
	w.Plan = func(woken, settled bool) (Plan, error) {
		calls++
		if calls == 1 {
			// ranked with room on 0: hold out for it ...
			p := Plan{Try: []int{0}, Wants: only0, Patience: 2 * time.Second}
			// ... and the race: someone else takes 0's only slot now.
			mustAcquire(e.t, e.store, "racer", []Slot{{Backend: "a", Capacity: 1}}, 0)
			return p, nil
		}
		return Plan{Try: []int{1}, Wants: all}, nil
	}
	return w
}

// TestAdmissionHoldOutCannotWaitShed: a sheddable request that held out for
// a backend another request took since its ranking takes the other backend
// with room (its class cannot wait), rather than ErrShed.
func TestAdmissionHoldOutCannotWaitShed(t *testing.T) {
	e := newAdmissionEnv(t, QueueOptions{}, 1, 4)
	w := holdOutWaiter(e, "shed")
	w.Shed = true
	r := <-e.admit(context.Background(), w, time.Minute)
	if r.err != nil || r.backend != 1 {
		t.Fatalf("sheddable hold-out refused on fast while slow has 4 free slots: %+v (slow inflight %d), want backend 1 (err %v)",
			r, e.store.Inflight("b"), r.err)
	}
}

// TestAdmissionHoldOutCannotWaitQueueFull: likewise with the line full: the
// other backend with room, rather than ErrQueueFull.
func TestAdmissionHoldOutCannotWaitQueueFull(t *testing.T) {
	e := newAdmissionEnv(t, QueueOptions{Max: 1}, 1, 4, 1)
	// Backend 2 full, one request waiting for it: the line (max 1) is full.
	mustAcquire(t, e.store, "h2", []Slot{{Backend: "c", Capacity: 1}}, 0)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	waiting := e.admit(ctx, e.waiter("w2", 2), time.Hour)
	e.queued(1)
	r := <-e.admit(context.Background(), holdOutWaiter(e, "hold"), time.Minute)
	if r.err != nil || r.backend != 1 {
		t.Fatalf("hold-out refused on fast with the line full, slow has 4 free: %+v (err %v), want backend 1",
			r, r.err)
	}
	cancel()
	<-waiting
}

// gateStore holds the Acquire call of the listed id until released.
type gateStore struct {
	*MemoryStore
	arrived chan string
	release chan struct{}
	hold    string
}

func (g *gateStore) Acquire(ctx context.Context, id string, c []Slot) (int, error) {
	g.arrived <- id
	if id == g.hold {
		<-g.release
	}
	return g.MemoryStore.Acquire(ctx, id, c)
}

// TestAdmissionOwedIsOneStep: with two free slots on a backend and one
// request waiting for it, two newcomers that look at once do not both take
// a slot there (each would see one owed of two free): the second looks only
// after the first has its slot, and goes to its next candidate.
func TestAdmissionOwedIsOneStep(t *testing.T) {
	e := newAdmissionEnv(t, QueueOptions{}, 3, 4)
	gs := &gateStore{MemoryStore: e.store, arrived: make(chan string, 4), release: make(chan struct{}), hold: "n1"}
	e.adm.Store = gs
	blocked := make(chan struct{}, 1)
	e.adm.lookBlocked = func() { blocked <- struct{}{} }
	stop := e.patientFor(0)
	defer stop()
	mustAcquire(t, e.store, "holder", []Slot{{Backend: "a", Capacity: 3}}, 0) // 2 free, 1 owed
	r1 := e.admit(context.Background(), e.waiter("n1", 0, 1), time.Second)
	if id := <-gs.arrived; id != "n1" {
		t.Fatalf("store call from %s, want n1", id)
	}
	r2 := e.admit(context.Background(), e.waiter("n2", 0, 1), time.Second)
	select {
	case id := <-gs.arrived:
		t.Fatalf("%s asked the store while n1 was still taking its slot", id)
	case <-blocked: // n2 waits for n1's look
	}
	close(gs.release)
	a, b := <-r1, <-r2
	if a.backend != 0 || b.backend != 1 {
		t.Fatalf("n1 on %d, n2 on %d; want 0 and 1 (the last free slot on 0 is the waiter's)", a.backend, b.backend)
	}
}
