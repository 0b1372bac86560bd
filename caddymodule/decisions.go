package caddymodule

import (
	"sync"
	"time"

	"github.com/modelrouter/modelrouter/engine"
)

// The decisions log keeps the last routing decisions of a pool for the admin
// API (GET /model_router/decisions): which backends were ranked, with what
// score and prediction, which one took the request and how the attempt
// ended. Never request content: backend and model names come from the
// configuration (a request for a model that is not configured is refused
// before routing), outcomes and codes from fixed sets.
//
// Recording copies a fixed-size struct into a ring under a mutex: no
// allocation on the request path.

const (
	// decisionRingSize is how many decisions a pool keeps.
	decisionRingSize = 256
	// decisionCandidates is how many ranked candidates a decision keeps
	// (the best ones).
	decisionCandidates = 8
)

// decisionCandidate is one ranked backend of a decision.
type decisionCandidate struct {
	backend            string
	score              float64
	full               bool
	inflight, capacity int32
	wait, ttft, total  time.Duration
}

// decision is one routing decision: an attempt on a backend, or a request
// the router refused (outcome is then the error code).
type decision struct {
	seq       uint64
	at        time.Time
	model     string
	strategy  string
	chosen    string // "" when refused
	outcome   string // engine.Outcome name, or the error code of a refusal
	queueWait time.Duration
	probe     bool
	retry     bool // an attempt after another backend failed the request
	n         int  // candidates in use; ranked beyond decisionCandidates were dropped
	ranked    int  // how many candidates were ranked in all
	cands     [decisionCandidates]decisionCandidate
}

// decisionRing is a bounded log of decisions, newest last.
type decisionRing struct {
	mu   sync.Mutex
	seq  uint64
	ring [decisionRingSize]decision
}

// slot returns the next entry to fill, under r.mu held by the caller.
func (r *decisionRing) slotLocked() *decision {
	r.seq++
	d := &r.ring[r.seq%decisionRingSize]
	d.seq = r.seq
	return d
}

// last returns up to limit decisions, newest first.
func (r *decisionRing) last(limit int) []decision {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := int(min(uint64(limit), r.seq, decisionRingSize))
	out := make([]decision, 0, n)
	for k := 0; k < n; k++ {
		out = append(out, r.ring[(r.seq-uint64(k))%decisionRingSize])
	}
	return out
}

// recordAttempt logs the decision behind one proxy attempt on backend and
// its outcome.
func (rt *routing) recordAttempt(backend int, o engine.Outcome) {
	ops := rt.h.ops
	if ops == nil {
		return
	}
	ops.decisions.mu.Lock()
	d := ops.decisions.slotLocked()
	rt.fillDecision(d)
	d.chosen = rt.h.backends[backend].Name
	d.outcome = o.String()
	d.retry = rt.tried != nil
	ops.decisions.mu.Unlock()
}

// recordRefusal logs a request the router refused after ranking it (no
// backend with room in time, none healthy, none that fits).
func (rt *routing) recordRefusal(code string) {
	ops := rt.h.ops
	if ops == nil {
		return
	}
	if code == "capacity_exhausted" {
		ops.capacityRejects.add(now(), 1)
	}
	ops.decisions.mu.Lock()
	d := ops.decisions.slotLocked()
	rt.fillDecision(d)
	d.chosen, d.outcome, d.retry = "", code, false
	ops.decisions.mu.Unlock()
}

// fillDecision copies the request's last ranking into d.
func (rt *routing) fillDecision(d *decision) {
	h := rt.h
	d.at = now()
	d.model = rt.req.Model
	d.strategy = h.strategy.Name()
	d.queueWait = rt.wait
	d.probe = rt.alone
	d.ranked = len(rt.decision)
	d.n = min(len(rt.decision), decisionCandidates)
	for k := 0; k < d.n; k++ {
		c := rt.decision[k]
		dc := &d.cands[k]
		dc.backend = h.backends[c.Index].Name
		dc.score, dc.full = c.Score, c.Full
		dc.wait, dc.ttft, dc.total = c.Predicted.Wait, c.Predicted.TTFT, c.Predicted.Total
		dc.inflight, dc.capacity = 0, 0
		if c.Index < len(rt.pool.Loads) {
			dc.inflight = int32(rt.pool.Loads[c.Index].Inflight)
			dc.capacity = int32(rt.pool.Backends[c.Index].MaxInflight)
		}
	}
}

// secondCounts counts events per second over the last minute (a ring of 60
// one-second buckets): the rate an alert looks at.
type secondCounts struct {
	mu      sync.Mutex
	buckets [60]struct {
		sec int64
		n   int64
	}
}

func (c *secondCounts) add(t time.Time, n int64) {
	sec := t.Unix()
	c.mu.Lock()
	b := &c.buckets[sec%60]
	if b.sec != sec {
		b.sec, b.n = sec, 0
	}
	b.n += n
	c.mu.Unlock()
}

// lastMinute returns the events counted in the minute up to t.
func (c *secondCounts) lastMinute(t time.Time) int64 {
	sec := t.Unix()
	c.mu.Lock()
	defer c.mu.Unlock()
	var sum int64
	for _, b := range c.buckets {
		if b.sec > sec-60 && b.sec <= sec {
			sum += b.n
		}
	}
	return sum
}
