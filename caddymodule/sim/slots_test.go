package sim

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

func TestSlotPoolFIFO(t *testing.T) {
	p := newSlotPool(1, 10)
	holder, full, err := p.Acquire(context.Background(), nil)
	if err != nil || full {
		t.Fatalf("first Acquire: full=%v err=%v", full, err)
	}

	// Queue waiters one at a time so their arrival order is known.
	const waiters = 5
	granted := make(chan int, waiters)
	releases := make(chan func(), waiters)
	for i := range waiters {
		go func() {
			release, full, err := p.Acquire(context.Background(), nil)
			if err != nil || !full {
				t.Errorf("waiter %d: full=%v err=%v", i, full, err)
				return
			}
			granted <- i
			releases <- release
		}()
		eventually(t, "the waiter queues", func() bool { _, q := p.Busy(); return q == i+1 })
	}

	holder()
	for want := range waiters {
		if got := <-granted; got != want {
			t.Fatalf("slot went to waiter %d, want %d", got, want)
		}
		if busy, _ := p.Busy(); busy != 1 {
			t.Fatalf("busy = %d while one waiter holds the slot", busy)
		}
		(<-releases)()
	}
	if busy, queued := p.Busy(); busy != 0 || queued != 0 {
		t.Errorf("busy %d queued %d at the end", busy, queued)
	}
}

func TestSlotPoolLimits(t *testing.T) {
	p := newSlotPool(2, 1)
	var calls []bool
	onFull := func(queued bool) { calls = append(calls, queued) }
	r1, _, _ := p.Acquire(context.Background(), onFull)
	r2, _, _ := p.Acquire(context.Background(), onFull)
	if len(calls) != 0 {
		t.Fatalf("onFull called with free slots: %v", calls)
	}

	ctx, cancel := context.WithCancel(context.Background())
	waited := make(chan error)
	go func() {
		_, full, err := p.Acquire(ctx, onFull)
		if !full {
			t.Error("a queued request must report full")
		}
		waited <- err
	}()
	eventually(t, "the third request queues", func() bool { _, q := p.Busy(); return q == 1 })

	if _, full, err := p.Acquire(context.Background(), onFull); !errors.Is(err, errQueueFull) || !full {
		t.Errorf("fourth Acquire: full=%v err=%v, want errQueueFull", full, err)
	}
	if len(calls) != 2 || !calls[0] || calls[1] {
		t.Errorf("onFull calls = %v, want [true false]", calls)
	}

	cancel()
	if err := <-waited; !errors.Is(err, context.Canceled) {
		t.Errorf("canceled waiter got %v", err)
	}
	// Release is idempotent: a second call must not free a second slot.
	r1()
	r1()
	if busy, queued := p.Busy(); busy != 1 || queued != 0 {
		t.Errorf("busy %d queued %d, want 1 and 0", busy, queued)
	}
	r2()
}

// TestSlotPoolCancelRace cancels waiters while slots are handed over, so some
// are granted a slot just as they give up; none may be lost.
func TestSlotPoolCancelRace(t *testing.T) {
	p := newSlotPool(2, 100)
	var wg sync.WaitGroup
	for i := range 200 {
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(i%7)*50*time.Microsecond)
		wg.Go(func() {
			defer cancel()
			release, _, err := p.Acquire(ctx, nil)
			if err == nil {
				time.Sleep(20 * time.Microsecond)
				release()
			}
		})
	}
	wg.Wait()
	if busy, queued := p.Busy(); busy != 0 || queued != 0 {
		t.Errorf("busy %d queued %d after everyone left", busy, queued)
	}
}

// TestSlotPoolGrantedAsCanceled hands a slot to a waiter whose context has
// just ended: the waiter must pass the slot on, not drop it.
func TestSlotPoolGrantedAsCanceled(t *testing.T) {
	for range 20 {
		p := newSlotPool(1, 1)
		if _, _, err := p.Acquire(context.Background(), nil); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		result := make(chan func())
		go func() {
			release, _, err := p.Acquire(ctx, nil)
			if err != nil {
				release = func() {}
			}
			result <- release
		}()
		eventually(t, "the waiter queues", func() bool { _, q := p.Busy(); return q == 1 })

		// Cancel while holding the pool lock, give the waiter time to wake
		// and block on that lock, then hand it the slot.
		p.mu.Lock()
		cancel()
		time.Sleep(time.Millisecond)
		p.releaseLocked() // the holder's release, under the lock already held
		p.mu.Unlock()

		(<-result)() // a waiter that still saw the grant first holds the slot
		if busy, queued := p.Busy(); busy != 0 || queued != 0 {
			t.Fatalf("busy %d queued %d: the handed-over slot was lost", busy, queued)
		}
	}
}
