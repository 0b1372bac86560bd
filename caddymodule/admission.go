package caddymodule

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/modelrouter/modelrouter/engine"
	"github.com/modelrouter/modelrouter/loadstate"
)

// renewTimeout bounds one lease renewal of a long request.
const renewTimeout = 2 * time.Second

// scratch holds per-request buffers, reused across requests.
type scratch struct {
	loads   []engine.Load
	probe   []bool // probe[i]: backend i may take this request only as its breaker's probe
	cands   []engine.Candidate
	try     []int // a plan's candidates
	slots   []loadstate.Slot
	idx     []int
	claimed []int // probes claimed for one acquire
	scores  []float64
	assign  []engine.Candidate
	// decision is the ranking of the last acquire (routing.decision).
	decision []engine.Candidate
	// rest is what a plan ranked but left out of its attempt (see
	// engine.WorthHoldingOut), and decisionRest its copy for the last
	// acquire (routing.rest).
	rest, decisionRest []engine.Candidate
}

var scratchPool = sync.Pool{New: func() any { return new(scratch) }}

// routing is the state of one routed request.
type routing struct {
	h     *Handler
	ctx   context.Context // the client's
	req   engine.Request
	c     classified
	body  []byte
	id    string
	start time.Time
	sc    *scratch
	pool  engine.Pool
	tried loadstate.BackendSet
	wait  time.Duration
	lease lease
	// alone: every backend that fits the request is set aside by passive
	// health, so cooling-down backends are offered for probes.
	alone bool
	// explain: the decision is to be explained (explain header, or debug
	// logging); decision holds the ranking the slot was taken from.
	explain  bool
	decision []engine.Candidate
	rest     []engine.Candidate // ranked with room, but left out of that attempt
	// class is the request's priority class (index into the priorities,
	// 0 the highest).
	class int
	// waiter is the request in admission, while it is.
	waiter *loadstate.Waiter
	// retrying: the request is moving to another backend after a failed
	// attempt (it does not queue again).
	retrying bool
	// patience is how long it was first willing to wait for a better
	// backend (for the explanation); 0 when it did not.
	firstPatience time.Duration
}

// lease is a held slot; release is idempotent.
type lease struct {
	h       *Handler
	id      string
	backend int // -1 when none is held
	renew   *time.Timer
	done    *atomic.Bool // set on release, so an in-flight renewal does not re-arm
	probe   bool         // the slot is its backend's half-open probe, not yet judged
}

func (l *lease) release() {
	if l.backend < 0 {
		return
	}
	if l.renew != nil {
		l.done.Store(true)
		l.renew.Stop()
		l.renew, l.done = nil, nil
	}
	name := l.h.backends[l.backend].Name
	if l.probe {
		// The request ended without an outcome for the backend.
		l.h.health.EndProbe(name)
		l.probe = false
	}
	// Detached from the request: a client that went away still gets its slot
	// released. Stores never block in Release (shared ones apply it in the
	// background), so no timeout is needed here.
	err := l.h.store.Release(context.Background(), l.id, name)
	if err != nil {
		if c := l.h.logger.Check(zapcore.WarnLevel, "releasing slot"); c != nil {
			c.Write(zap.String("backend", name), zap.Error(err))
		}
	}
	l.backend = -1
}

// keepAlive renews the lease at a third of its lifetime for as long as the
// request runs, so a long stream is not mistaken for an abandoned slot.
func (l *lease) keepAlive() {
	ttl := l.h.store.LeaseTTL()
	if ttl <= 0 || l.backend < 0 {
		return
	}
	backend, id, store := l.h.backends[l.backend].Name, l.id, l.h.store
	done := new(atomic.Bool)
	var timer *time.Timer
	// Armed only after timer is assigned, so the callback always sees it.
	timer = time.AfterFunc(time.Duration(1<<62), func() {
		if done.Load() {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), renewTimeout)
		_ = store.Renew(ctx, id, backend)
		cancel()
		if !done.Load() {
			timer.Reset(ttl / 3)
		}
	})
	timer.Reset(ttl / 3)
	l.renew, l.done = timer, done
}

// waiting is how many requests wait for backend i ahead of this one, and
// their share of it (see loadstate.WaitQueue.Share): while it waits itself,
// those ahead of it in line (not itself nor those behind); for a retry none;
// otherwise all of them (it would join at the back).
func (rt *routing) waiting(i int) (int, float64) {
	if rt.retrying {
		return 0, 0 // a retry has been through the line: it goes ahead
	}
	if rt.waiter != nil {
		if n, share, queued := rt.waiter.Ahead(i); queued {
			return n, share
		}
	}
	return rt.h.admission.WaitingFor(i), rt.h.admission.ShareOf(i)
}

// loadPool fills the pool with the backends' live state.
func (rt *routing) loadPool() {
	h := rt.h
	n := len(h.backends)
	if cap(rt.sc.loads) < n {
		rt.sc.loads = make([]engine.Load, n)
	}
	if cap(rt.sc.probe) < n {
		rt.sc.probe = make([]bool, n)
	}
	loads, probe := rt.sc.loads[:n], rt.sc.probe[:n]
	t := now()
	view := h.learned.get(h, t)
	rt.req.ExpectedOutput = view.outputs[rt.req.Model]
	// The backends with the operators' overrides (weight, capabilities,
	// max_inflight) applied, and which are drained.
	backends := h.currentView()
	for i := range backends.backends {
		b := &backends.backends[i]
		a, _ := h.health.Check(b.Name, t, rt.alone)
		bl := &view.backends[i]
		var tokens int
		if b.MaxTokensInflight > 0 {
			tokens = h.store.Tokens(b.Name)
		}
		waiting, queued := rt.waiting(i)
		loads[i] = engine.Load{
			TokensInflight: tokens,
			Inflight:       h.store.Inflight(b.Name),
			LatencyP95:     bl.e2e,
			TTFTP95:        bl.ttft,
			CoolingDown:    a == engine.Unavailable,
			Draining:       backends.drained[i],
			Perf:           bl.perf[b.UpstreamModel(rt.req.Model)],
			Waiting:        waiting,
			Queued:         queued,
			Feedback:       bl.feedback,
		}
		probe[i] = a == engine.ProbeAvailable
		if rt.tried != nil && rt.tried.Has(i) {
			// A backend that already failed this request is out for its retry.
			loads[i].CoolingDown = true
		}
	}
	rt.pool = engine.Pool{Backends: backends.backends, Loads: loads}
}

// rank loads the pool and ranks the candidates with room. When no backend is
// eligible it says why: the request fits none (400 context_length_exceeded),
// or every backend that fits is set aside by passive health; then the
// cooling-down ones are offered for probes (one request at a time each)
// rather than refusing everything, and only when none can take one does the
// request get 503 no_healthy_backend with Retry-After = time to the next probe.
func (rt *routing) rank() ([]engine.Candidate, *apiError) {
	h := rt.h
	for {
		rt.loadPool()
		ranked, eligible := h.strategy.Rank(&rt.req, &rt.pool, rt.sc.cands[:0])
		rt.sc.cands = ranked
		if eligible > 0 {
			return ranked, nil
		}
		switch h.strategy.Diagnose(&rt.req, &rt.pool) {
		case engine.ReasonContext:
			return nil, invalidRequest(http.StatusBadRequest, "context_length_exceeded", "messages",
				"the request (prompt and max tokens) is longer than the context of every backend that serves its model")
		case engine.ReasonUnhealthy:
			if !rt.alone {
				rt.alone = true
				continue
			}
		}
		return nil, rt.unhealthy()
	}
}

// unhealthy is the answer when every backend that could serve the request is
// set aside: 503 with Retry-After, the time until one of them may take a
// request again (its next probe, or the end of its rate limit), at least 1s.
func (rt *routing) unhealthy() *apiError {
	h := rt.h
	t := now()
	var next time.Time
	for i := range h.backends {
		if !h.strategy.Fits(&rt.req, &rt.pool, i) {
			continue
		}
		if _, at := h.health.Check(h.backends[i].Name, t, true); !at.IsZero() && (next.IsZero() || at.Before(next)) {
			next = at
		}
	}
	e := serverError(http.StatusServiceUnavailable, "no_healthy_backend", "no healthy backend can serve this request")
	e.RetryAfter = time.Second
	if d := next.Sub(t); d > e.RetryAfter {
		e.RetryAfter = d
	}
	return e
}

// acquire takes a slot on the best candidate with room, waiting in the queue
// (bounded by MaxQueue and MaxWait) when every candidate is full: see
// loadstate.Admission, which this feeds with the request's plans (plan) and
// store slots (slots, settle).
//
// A predictive strategy may rank first a full backend that the request is
// predicted to finish sooner on by waiting for it (see engine.Strategy.Rank):
// the request then waits for those backends only, re-ranking on every wake,
// for as long as the wait still pays: its predicted wait plus half the
// predicted gain over the best backend with room (its patience). Past that, it
// takes the best backend with room, or waits for any. Likewise, when the
// store refuses the backends with room that are predicted much better than
// the others with room (another request took their last slot since the
// ranking), the request waits for them a while rather than fall through to a
// much slower one (see engine.WorthHoldingOut).
func (rt *routing) acquire() (int, *apiError) {
	h := rt.h
	w := &loadstate.Waiter{ID: rt.id, Class: rt.class, Shed: h.shed[rt.class], Plan: rt.plan, Slots: rt.slots, Settle: rt.settle,
		Want: rt.want, Index: h.backendIndex}
	rt.waiter = w
	defer func() { rt.waiter = nil }()
	b, waited, err := h.admission.Admit(rt.ctx, w, time.Duration(h.MaxWait))
	rt.wait = waited
	var apiErr *apiError
	switch {
	case err == nil:
		rt.lease.backend = b
		rt.lease.keepAlive()
		return b, nil
	case errors.As(err, &apiErr):
		return -1, apiErr
	case rt.ctx.Err() != nil:
		return -1, &apiError{Status: 499, Code: "client_closed_request"}
	case errors.Is(err, loadstate.ErrQueueFull):
		return -1, rt.full("every backend that can serve this request is busy and the wait queue is full")
	case errors.Is(err, loadstate.ErrWaitTimeout):
		return -1, rt.full("every backend that can serve this request stayed busy for the longest wait allowed")
	case errors.Is(err, loadstate.ErrShed):
		return -1, rt.full("every backend that can serve this request is busy, and its priority class does not wait")
	case errors.Is(err, context.DeadlineExceeded):
		// A shared store kept retrying an acquire in doubt for the whole
		// wait budget: as for a wait that ran out, come back later.
		return -1, rt.full("the shared load state did not confirm a slot within the longest wait allowed")
	}
	if c := h.logger.Check(zapcore.WarnLevel, "acquiring slot"); c != nil {
		c.Write(zap.Error(err))
	}
	return -1, serverError(http.StatusServiceUnavailable, "load_state_unavailable", "the gateway cannot reach its shared load state")
}

// plan is the request's loadstate.Plan: ranked afresh, what to ask the store
// for and what to wait for.
func (rt *routing) plan(woken, settled bool) (loadstate.Plan, error) {
	h := rt.h
	ranked, apiErr := rt.rank()
	if apiErr != nil {
		return loadstate.Plan{}, apiErr
	}
	var p loadstate.Plan
	worth := 0    // the leading candidates worth waiting for
	hold := false // they have room: hold out for them if the store refuses them
	if !settled {
		worth, p.Patience = engine.WorthWaiting(&rt.req, ranked)
		if worth == 0 {
			worth, p.Patience = engine.WorthHoldingOut(&rt.req, ranked)
			hold = worth > 0
		}
		if rt.firstPatience == 0 && !hold {
			rt.firstPatience = p.Patience
		}
	}
	better := p.Patience > 0
	p.Wants = rt.wants(ranked[:worth], better)
	rt.sc.rest = rt.sc.rest[:0]
	switch {
	case hold:
		// Backends with room, much better than the rest: ask the store for
		// them only, and wait for them a while if it refuses.
		rt.sc.rest = append(rt.sc.rest, ranked[worth:]...)
		ranked = ranked[:worth]
	case better && woken:
		// A release on a backend worth waiting for: the store checks
		// them, whatever the view says.
		ranked = ranked[:worth]
	case better:
		ranked = nil // they are full as far as this replica knows
	case woken:
		// A release just happened, maybe on another replica, which this
		// replica's view of the counts may not show yet: let the store,
		// which decides atomically, check the full ones too.
		ranked = rt.appendFull(ranked, p.Wants)
	default:
		ranked = withoutFull(ranked)
	}
	rt.sc.cands = ranked
	rt.sc.try = rt.sc.try[:0]
	for _, c := range ranked {
		rt.sc.try = append(rt.sc.try, c.Index)
	}
	p.Try = rt.sc.try
	if h.strategy.Assigns() {
		if cap(rt.sc.scores) < len(h.backends) {
			rt.sc.scores = make([]float64, len(h.backends))
		}
		rt.sc.scores = rt.sc.scores[:len(h.backends)]
		rt.sc.assign = h.strategy.AssignScores(&rt.req, &rt.pool, rt.sc.scores, rt.sc.assign)
		p.Scores = rt.sc.scores
	}
	return p, nil
}

// slots turns candidates into store slots: each backend's capacity and token
// capacity, and for a backend whose breaker is half-open the claim of its
// probe (a candidate whose probe another request holds is left out).
func (rt *routing) slots(cands []int) ([]loadstate.Slot, []int) {
	h := rt.h
	slots, idx, claimed := rt.sc.slots[:0], rt.sc.idx[:0], rt.sc.claimed[:0]
	t := now()
	for _, i := range cands {
		b := &rt.pool.Backends[i] // max_inflight as overridden
		probe := false
		if rt.sc.probe[i] {
			if !h.health.TryProbe(b.Name, t, rt.alone) {
				continue // another request is this backend's probe
			}
			claimed = append(claimed, i)
			probe = true
		}
		slot := loadstate.Slot{Backend: b.Name, Capacity: b.MaxInflight, Probe: probe}
		if b.MaxTokensInflight > 0 {
			slot.Tokens, slot.TokenCapacity = rt.req.TokenCost(), b.MaxTokensInflight
		}
		slots = append(slots, slot)
		idx = append(idx, i)
	}
	rt.sc.slots, rt.sc.idx, rt.sc.claimed = slots, idx, claimed
	if len(slots) > 0 {
		// The ranking offered to the store, for the explanation and the
		// decisions log; in the pooled scratch, so it costs no allocation.
		rt.sc.decision = append(rt.sc.decision[:0], rt.sc.cands...)
		rt.sc.decisionRest = append(rt.sc.decisionRest[:0], rt.sc.rest...)
		rt.decision, rt.rest = rt.sc.decision, rt.sc.decisionRest
	}
	return slots, idx
}

// want describes the backends the request waits for, as slots (no claims).
func (rt *routing) want(backends []int) []loadstate.Slot {
	out := make([]loadstate.Slot, 0, len(backends))
	for _, i := range backends {
		b := &rt.pool.Backends[i] // max_inflight as overridden
		slot := loadstate.Slot{Backend: b.Name, Capacity: b.MaxInflight}
		if b.MaxTokensInflight > 0 {
			slot.Tokens, slot.TokenCapacity = rt.req.TokenCost(), b.MaxTokensInflight
		}
		out = append(out, slot)
	}
	return out
}

// backendIndex is a backend's index by name, -1 for none.
func (h *Handler) backendIndex(name string) int {
	if i, ok := h.index[name]; ok {
		return i
	}
	return -1
}

// settle gives back the probe claims slots made on backends the store did
// not give the request, and notes whether its slot is a probe.
func (rt *routing) settle(chosen int) {
	for _, c := range rt.sc.claimed {
		if c == chosen {
			rt.lease.probe = true
		} else {
			rt.h.health.EndProbe(rt.h.backends[c].Name)
		}
	}
	rt.sc.claimed = rt.sc.claimed[:0]
}

// withoutFull drops the full candidates from a ranking, in place.
func withoutFull(ranked []engine.Candidate) []engine.Candidate {
	out := ranked[:0]
	for _, c := range ranked {
		if !c.Full {
			out = append(out, c)
		}
	}
	return out
}

// wants is the set of backends a waiting request can use: those worth
// waiting for when better is set, else every eligible backend.
func (rt *routing) wants(worth []engine.Candidate, better bool) loadstate.BackendSet {
	h := rt.h
	set := loadstate.NewBackendSet(len(h.backends))
	if better {
		for _, c := range worth {
			set.Add(c.Index)
		}
		return set
	}
	for i := range h.backends {
		if h.strategy.Eligible(&rt.req, &rt.pool, i) {
			set.Add(i)
		}
	}
	return set
}

// appendFull adds to ranked the backends in wants that it lacks (those the
// view shows full), after the ranked ones.
func (rt *routing) appendFull(ranked []engine.Candidate, wants loadstate.BackendSet) []engine.Candidate {
	for i := range rt.h.backends {
		if !wants.Has(i) {
			continue
		}
		in := false
		for _, c := range ranked {
			if c.Index == i {
				in = true
				break
			}
		}
		if !in && !rt.pool.Loads[i].CoolingDown && !rt.pool.Loads[i].Draining {
			ranked = append(ranked, engine.Candidate{Index: i})
		}
	}
	return ranked
}

func (rt *routing) full(msg string) *apiError {
	e := serverError(rt.h.FullStatus, "capacity_exhausted", msg)
	if rt.h.FullStatus == http.StatusTooManyRequests {
		e.Type = "rate_limit_error" // what OpenAI's clients expect with a 429
	}
	e.RetryAfter, e.Jitter = rt.h.drainTime(func(i int) bool { return rt.h.strategy.Eligible(&rt.req, &rt.pool, i) }), true
	return e
}

// Bounds of the Retry-After told to requests refused as full, before the
// jitter (which spreads it over [d, 2d]: at most a minute in all).
const (
	minRetryAfter = time.Second
	maxRetryAfter = 30 * time.Second
)

// drainTime estimates how long the requests now waiting take to be served:
// the queue's length over the pool's recent service rate, Σ max_inflight ÷
// mean service time over the backends that could serve the request
// (serves; nil: all) whose service time is known, so that a backend of
// another model, or one draining or cooling down, does not count (with
// Redis, the queue is the fleet's: RedisStore.FleetWaiting). It is
// the Retry-After (jittered) of a request refused as full, bounded to
// [1s, 30s]; 1s while nothing is known.
func (h *Handler) drainTime(serves func(i int) bool) time.Duration {
	view := h.learned.get(h, now())
	current := h.currentView() // max_inflight as overridden
	var rate float64           // requests per second
	for i := range h.backends {
		if serves != nil && !serves(i) {
			continue
		}
		var svc time.Duration
		for _, p := range view.backends[i].perf {
			svc = max(svc, p.MeanService)
		}
		if svc > 0 {
			rate += float64(current.backends[i].MaxInflight) / svc.Seconds()
		}
	}
	if rate <= 0 {
		return minRetryAfter
	}
	waiting := h.admission.Waiting()
	if fq, ok := h.store.(interface{ FleetWaiting() (int, bool) }); ok {
		if n, ok := fq.FleetWaiting(); ok {
			waiting = max(waiting, n) // the whole fleet's line, as of the last heartbeat
		}
	}
	d := time.Duration(float64(waiting+1) / rate * float64(time.Second))
	return min(max(d, minRetryAfter), maxRetryAfter)
}
