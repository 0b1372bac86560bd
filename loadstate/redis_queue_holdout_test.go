package loadstate

import (
	"context"
	"testing"
	"time"

	"github.com/modelrouter/modelrouter/internal/redistest"
)

// TestFleetHoldOutCannotWait: with Redis, a request that holds out for a
// backend another request just took, and cannot wait (sheddable, or the line
// is full), takes the other backend with room instead of being refused.
func TestFleetHoldOutCannotWait(t *testing.T) {
	for _, tt := range []struct {
		name      string
		shed      bool
		queueFull bool
	}{{"shed", true, false}, {"queue full", false, true}} {
		t.Run(tt.name, func(t *testing.T) {
			env := standaloneEnv(redistest.Start(t))
			r := newFleetReplica(t, env, newTestPool(), "a", false, 1, 4)
			if tt.queueFull {
				r.queue = NewWaitQueueWith(QueueOptions{Max: 1})
				r.adm.Queue = r.queue
				any := NewBackendSet(2)
				any.Add(1)
				if _, err := r.queue.EnterClass(any, 0, time.Now()); err != nil { // the line is full
					t.Fatal(err)
				}
			}
			only0, any := NewBackendSet(2), NewBackendSet(2)
			only0.Add(0)
			any.Add(0)
			any.Add(1)
			w := r.waiter("hold", 0, nil, 0, 1)
			w.Shed = tt.shed
			calls := 0
			w.Plan = func(woken, settled bool) (Plan, error) {
				calls++
				if calls == 1 {
					// Ranked with room on 0; another request takes it before the store call.
					if res := <-r.admit(context.Background(), r.waiter("racer", 0, nil, 0), time.Second); res.backend != 0 {
						t.Errorf("racer: %+v", res)
					}
					return Plan{Try: []int{0}, Wants: only0, Patience: 2 * time.Second}, nil
				}
				return Plan{Try: []int{1}, Wants: any}, nil
			}
			res := <-r.admit(context.Background(), w, time.Minute)
			if res.err != nil || res.backend != 1 {
				t.Fatalf("hold-out refused on a, b has 4 free: %+v, want backend 1 (err %v)", res, res.err)
			}
		})
	}
}
