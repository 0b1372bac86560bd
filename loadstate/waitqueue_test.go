package loadstate

import (
	"errors"
	"math"
	"testing"
)

func set(n int, members ...int) BackendSet {
	s := NewBackendSet(n)
	for _, m := range members {
		s.Add(m)
	}
	return s
}

func woken(t *Ticket) bool {
	select {
	case <-t.C():
		return true
	default:
		return false
	}
}

func TestBackendSet(t *testing.T) {
	s := set(130, 0, 64, 129)
	for _, i := range []int{0, 64, 129} {
		if !s.Has(i) {
			t.Errorf("Has(%d) = false", i)
		}
	}
	for _, i := range []int{-1, 1, 63, 65, 128, 130, 1000} {
		if s.Has(i) {
			t.Errorf("Has(%d) = true", i)
		}
	}
	if !s.Overlaps(set(130, 129)) || s.Overlaps(set(130, 1, 2, 128)) {
		t.Error("Overlaps is wrong")
	}
}

func TestWaitQueueWakesOldestWaiterThatCanUseTheSlot(t *testing.T) {
	q := NewWaitQueue(10)
	a, _ := q.Enter(set(4, 0))    // waits for backend 0 only
	b, _ := q.Enter(set(4, 1, 2)) // backends 1 or 2
	c, _ := q.Enter(set(4, 1))    // backend 1, behind b

	if !q.Notify(1) {
		t.Fatal("Notify(1) woke nobody")
	}
	if woken(a) || !woken(b) || woken(c) {
		t.Fatalf("slot on 1: woken a=%v b=%v c=%v, want only b (oldest that can use it)", woken(a), woken(b), woken(c))
	}
	// b has a wake pending, so the next slot on 1 goes to c.
	if !q.Notify(1) || !woken(c) {
		t.Fatal("second slot on 1 did not wake c")
	}
	if q.Notify(3) {
		t.Fatal("Notify(3) woke a waiter that cannot use backend 3")
	}
	if q.Waiting(0) != 1 || q.Waiting(1) != 2 || q.Waiting(2) != 1 || q.Waiting(3) != 0 {
		t.Fatalf("waiting per backend %d %d %d %d, want 1 2 1 0", q.Waiting(0), q.Waiting(1), q.Waiting(2), q.Waiting(3))
	}
	if n := q.Ahead(c, 1); n != 1 {
		t.Fatalf("waiters ahead of c for backend 1: %d, want 1 (b)", n)
	}
	q.Leave(a)
	q.Leave(b)
	q.Leave(c)
	if q.Len() != 0 || q.Waiting(1) != 0 {
		t.Fatalf("queue not empty after everyone left: len %d", q.Len())
	}
}

// TestWaitQueueShare: a waiter that can use k backends counts 1/k on each
// of them, in the whole queue and ahead of a given waiter, and its share
// follows it when it changes what it wants and when it leaves.
func TestWaitQueueShare(t *testing.T) {
	q := NewWaitQueue(10)
	a, _ := q.Enter(set(4, 0))          // 1 on backend 0
	b, _ := q.Enter(set(4, 0, 1))       // ½ on 0 and 1
	c, _ := q.Enter(set(4, 0, 1, 2, 3)) // ¼ on each
	near := func(x, want float64) bool { return math.Abs(x-want) < 1e-9 }
	if !near(q.Share(0), 1.75) || !near(q.Share(1), 0.75) || !near(q.Share(3), 0.25) || q.Waiting(0) != 3 {
		t.Fatalf("shares %v %v %v (waiting on 0: %d), want 1.75 0.75 0.25 (3)", q.Share(0), q.Share(1), q.Share(3), q.Waiting(0))
	}
	if n, share := q.AheadShare(c, 0); n != 2 || !near(share, 1.5) {
		t.Fatalf("ahead of c for backend 0: %d, %v; want 2, 1.5", n, share)
	}
	q.SetWants(b, set(4, 1))
	if !near(q.Share(0), 1.25) || !near(q.Share(1), 1.25) {
		t.Fatalf("after b wants only 1: shares %v %v, want 1.25 1.25", q.Share(0), q.Share(1))
	}
	for _, w := range []*Ticket{a, b, c} {
		q.Leave(w)
	}
	for i := range 4 {
		if q.Share(i) != 0 || q.Waiting(i) != 0 {
			t.Fatalf("backend %d: share %v, waiting %d after everyone left", i, q.Share(i), q.Waiting(i))
		}
	}
}

func TestWaitQueuePassesOnAWakeItsWaiterDidNotUse(t *testing.T) {
	q := NewWaitQueue(10)
	a, _ := q.Enter(set(2, 0))
	b, _ := q.Enter(set(2, 0))
	q.Notify(0)
	if !woken(a) {
		t.Fatal("a not woken")
	}
	// a gives up (timeout) without using the slot: b must get it.
	q.Leave(a)
	if !woken(b) {
		t.Fatal("the slot a did not use was not passed to b")
	}
	q.Consumed(b)
	q.Leave(b)
}

func TestWaitQueueConsumedKeepsPlace(t *testing.T) {
	q := NewWaitQueue(10)
	a, _ := q.Enter(set(1, 0))
	b, _ := q.Enter(set(1, 0))
	q.Notify(0)
	<-a.C()
	q.Consumed(a) // a lost the race for the slot; it stays first in line
	q.Notify(0)
	if !woken(a) || woken(b) {
		t.Fatal("a lost its place after a consumed wake-up")
	}
	q.Leave(a)
	q.Leave(a) // idempotent
	q.Leave(b)
	if q.Len() != 0 {
		t.Fatalf("len %d after leaving", q.Len())
	}
}

func TestWaitQueueBounded(t *testing.T) {
	q := NewWaitQueue(2)
	for i := 0; i < 2; i++ {
		if _, err := q.Enter(set(1, 0)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := q.Enter(set(1, 0)); !errors.Is(err, ErrQueueFull) {
		t.Fatalf("third Enter: %v, want ErrQueueFull", err)
	}
	if _, err := NewWaitQueue(0).Enter(set(1, 0)); !errors.Is(err, ErrQueueFull) {
		t.Fatalf("Enter on a zero-length queue: %v, want ErrQueueFull", err)
	}
}

func TestWaitQueueCountsWaitersPerBackend(t *testing.T) {
	q := NewWaitQueue(10)
	set := func(idx ...int) BackendSet {
		s := NewBackendSet(70)
		for _, i := range idx {
			s.Add(i)
		}
		return s
	}
	a, _ := q.Enter(set(0, 1))
	b, _ := q.Enter(set(1, 65))
	for i, want := range map[int]int{0: 1, 1: 2, 2: 0, 65: 1, 69: 0, 500: 0, -1: 0} {
		if got := q.Waiting(i); got != want {
			t.Errorf("Waiting(%d) = %d, want %d", i, got, want)
		}
	}
	q.SetWants(a, set(2))
	if q.Waiting(0) != 0 || q.Waiting(1) != 1 || q.Waiting(2) != 1 {
		t.Errorf("after SetWants: %d %d %d, want 0 1 1", q.Waiting(0), q.Waiting(1), q.Waiting(2))
	}
	if !q.Notify(2) {
		t.Error("a waiter that now wants 2 was not woken for it")
	}
	q.Leave(a)
	q.Leave(b)
	q.Leave(b)
	for _, i := range []int{0, 1, 2, 65} {
		if got := q.Waiting(i); got != 0 {
			t.Errorf("Waiting(%d) = %d after everyone left", i, got)
		}
	}
}
