package sim

import (
	"container/list"
	"context"
	"errors"
	"sync"
)

// errQueueFull is returned by Acquire when every slot is busy and the wait
// queue is at its limit.
var errQueueFull = errors.New("all slots busy and the wait queue is full")

// slotPool bounds how many requests are served at once. Requests that find
// every slot busy wait in strict arrival order; a buffered channel would also
// bound concurrency, but it cannot tell a caller that it had to wait, nor cap
// the queue atomically with the check for a free slot.
type slotPool struct {
	mu       sync.Mutex
	size     int
	maxQueue int // < 0: no queue at all
	busy     int
	waiters  list.List // of chan struct{}, closed when the slot is handed over
}

func newSlotPool(size, maxQueue int) *slotPool {
	return &slotPool{size: size, maxQueue: maxQueue}
}

// Acquire takes a slot, waiting in FIFO order while all are busy. full reports
// whether the request arrived while every slot was busy, in which case it
// either waited (and has left the queue when Acquire returns) or was turned
// away with errQueueFull. onFull, if not nil, is called at the moment the pool
// is found full, with queued telling whether the caller joins the queue; it
// runs under the pool lock, so it must not call back into the pool. The
// returned release is idempotent.
func (p *slotPool) Acquire(ctx context.Context, onFull func(queued bool)) (release func(), full bool, err error) {
	p.mu.Lock()
	if p.busy < p.size && p.waiters.Len() == 0 {
		p.busy++
		p.mu.Unlock()
		return p.releaser(), false, nil
	}
	if p.maxQueue < 0 || p.waiters.Len() >= p.maxQueue {
		if onFull != nil {
			onFull(false)
		}
		p.mu.Unlock()
		return nil, true, errQueueFull
	}
	granted := make(chan struct{})
	elem := p.waiters.PushBack(granted)
	if onFull != nil {
		onFull(true)
	}
	p.mu.Unlock()

	select {
	case <-granted:
		return p.releaser(), true, nil
	case <-ctx.Done():
	}

	p.mu.Lock()
	select {
	case <-granted:
		// The slot was handed over just as the caller gave up: pass it on.
		p.releaseLocked()
	default:
		p.waiters.Remove(elem)
	}
	p.mu.Unlock()
	return nil, true, ctx.Err()
}

// Busy reports how many slots are taken and how many requests wait.
func (p *slotPool) Busy() (busy, queued int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.busy, p.waiters.Len()
}

func (p *slotPool) releaser() func() {
	var once sync.Once
	return func() {
		once.Do(func() {
			p.mu.Lock()
			p.releaseLocked()
			p.mu.Unlock()
		})
	}
}

// releaseLocked hands the slot to the oldest waiter, or frees it.
func (p *slotPool) releaseLocked() {
	if front := p.waiters.Front(); front != nil {
		p.waiters.Remove(front)
		close(front.Value.(chan struct{}))
		return
	}
	p.busy--
}
