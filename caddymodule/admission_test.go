package caddymodule

import (
	"testing"
	"time"

	"github.com/modelrouter/modelrouter/engine"
	"github.com/modelrouter/modelrouter/loadstate"
)

// TestDrainTime: the Retry-After of a full answer is the waiting requests
// over the pool's service rate, bounded.
func TestDrainTime(t *testing.T) {
	learner := loadstate.NewLearner(0, 0, nil)
	h := &Handler{
		backends:  []engine.Backend{{Name: "a", MaxInflight: 4, Models: map[string]string{"m": "m"}}, {Name: "b", MaxInflight: 6, Models: map[string]string{"m": "m"}}},
		Backends:  []BackendConfig{{Name: "a"}, {Name: "b"}},
		upstreams: [][]string{{"m"}, {"m"}},
		learner:   learner,
		sketches:  loadstate.NewSketches(0, 0, nil),
		learned:   new(learnedCache),
		queue:     loadstate.NewWaitQueue(1000),
		views:     new(viewCache),
	}
	h.admission = loadstate.NewAdmission(loadstate.AdmissionOptions{Queue: h.queue, Backends: 2})
	if d := h.drainTime(nil); d != minRetryAfter {
		t.Fatalf("nothing known: %v, want %v", d, minRetryAfter)
	}
	// a serves 4 at a time in 2s, b 6 at a time in 3s: 4 requests a second.
	for range 10 {
		learner.Record(loadstate.LearnSample{Backend: "a", Model: "m", Outcome: engine.OutcomeSuccess, Total: 2 * time.Second})
		learner.Record(loadstate.LearnSample{Backend: "b", Model: "m", Outcome: engine.OutcomeSuccess, Total: 3 * time.Second})
	}
	h.learned = new(learnedCache)
	for range 19 {
		if _, err := h.queue.Enter(loadstate.NewBackendSet(2)); err != nil {
			t.Fatal(err)
		}
	}
	if d := h.drainTime(nil); d != 5*time.Second {
		t.Fatalf("20 requests at 4 a second: %v, want 5s", d)
	}
	// Only a can serve the request (b serves another model, or drains):
	// 2 a second.
	if d := h.drainTime(func(i int) bool { return i == 0 }); d != 10*time.Second {
		t.Fatalf("20 requests at a's 2 a second: %v, want 10s", d)
	}
	for range 500 {
		_, _ = h.queue.Enter(loadstate.NewBackendSet(2))
	}
	if d := h.drainTime(nil); d != maxRetryAfter {
		t.Fatalf("a long queue: %v, want the bound %v", d, maxRetryAfter)
	}
}
