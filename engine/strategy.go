package engine

import (
	"fmt"
	"math"
	"strings"
	"sync/atomic"
)

// Strategy names accepted by NewStrategy.
const (
	StrategyGreedy     = "greedy"
	StrategyBalanced   = "balanced"
	StrategyLeastLoad  = "least_load"
	StrategyP2C        = "p2c"
	StrategyRoundRobin = "round_robin"
	StrategyLatency    = "latency"

	// DefaultStrategy is used when no strategy is named.
	DefaultStrategy = StrategyBalanced
)

// The balanced blend. Capability leads because sending a coding prompt to a weak
// coder costs more than a short queue; load is close behind so that the best
// backend does not take everything while others idle; latency and cost only
// nudge between otherwise similar backends. They sum to 1.
const (
	balancedCapabilityWeight = 0.45
	balancedLoadWeight       = 0.35
	balancedLatencyWeight    = 0.15
	balancedCostWeight       = 0.05
)

// defaultFilters apply to every strategy, cheapest first.
var defaultFilters = []Filter{DrainingFilter{}, CooldownFilter{}, ModelFilter{}, ContextFilter{}, CapabilityFilter{}}

// Reason says why no backend is eligible for a request (see Diagnose).
type Reason uint8

const (
	// ReasonEligible: some backend is eligible.
	ReasonEligible Reason = iota
	// ReasonNoModel: no backend serves the model (for AutoModel: has the
	// capability).
	ReasonNoModel
	// ReasonContext: the backends that serve the model cannot hold the
	// request (prompt estimate + max tokens over their context): the
	// client's error, not an outage.
	ReasonContext
	// ReasonUnhealthy: backends could serve the request but are set aside
	// (cooling down, rate-limited or draining).
	ReasonUnhealthy
)

// Diagnose says why no backend of the pool is eligible for req, judging the
// request's fit (model, capability, context) apart from the backends' state
// (draining, cooling down). It is meant for the rare path where Rank found no
// eligible backend, and does not allocate.
func (s *Strategy) Diagnose(req *Request, p *Pool) Reason {
	serves, fits := false, false
	n := min(len(p.Backends), len(p.Loads))
	for i := 0; i < n; i++ {
		if !(ModelFilter{}).Keep(req, p, i) || !(CapabilityFilter{}).Keep(req, p, i) {
			continue
		}
		serves = true
		if !(ContextFilter{}).Keep(req, p, i) {
			continue
		}
		fits = true
		if s.keep(req, p, i) {
			return ReasonEligible
		}
	}
	switch {
	case !serves:
		return ReasonNoModel
	case !fits:
		return ReasonContext
	}
	return ReasonUnhealthy
}

// Fits reports whether backend i could serve req apart from its state: it
// serves the model, has the capability and holds the context. Used to find
// the backends worth a probe when every candidate is cooling down.
func (s *Strategy) Fits(req *Request, p *Pool, i int) bool {
	if i < 0 || i >= len(p.Backends) || i >= len(p.Loads) {
		return false
	}
	return (ModelFilter{}).Keep(req, p, i) && (CapabilityFilter{}).Keep(req, p, i) && (ContextFilter{}).Keep(req, p, i)
}

// Strategy ranks the backends of a pool for a request: filters decide who may
// serve it, weighted scorers rate the survivors that have room, and an orderer
// puts them in the order they should be tried. A Strategy is immutable after
// NewStrategy except for its turn counter (atomic) and its Rand (behind a
// mutex), so concurrent Rank calls are safe.
type Strategy struct {
	name        string
	filters     []Filter
	scorers     []Weighted
	totalWeight float64
	order       orderer
	turn        atomic.Uint64 // advances once per Rank: round robin and tie rotation
}

// StrategyNames returns the valid strategy names, the default among them.
func StrategyNames() []string {
	return []string{StrategyGreedy, StrategyBalanced, StrategyLeastLoad, StrategyP2C, StrategyRoundRobin, StrategyLatency}
}

// NewStrategy builds the named strategy; "" means DefaultStrategy. rnd is used
// only by p2c; access to it is serialised inside the strategy, so a plain
// *math/rand.Rand will do. When rnd is nil, p2c draws from a fixed-seed
// SplitMix64 sequence, which keeps it deterministic.
//
//	greedy       score = capability                               order by score
//	balanced     score = .45 capability + .35 load + .15 latency + .05 cost   order by score
//	least_load   score = load       order by Inflight/MaxInflight, then free slots
//	p2c          score = load       the less loaded of two random picks, then least_load order
//	round_robin  score = load       pool order rotated by a counter
//	latency      score = latency    unknown latency first, then lowest p95 (TTFT p95 for streams)
//
// Every score is multiplied by the backend's Weight (0 means 1). Score-ordered
// strategies (greedy, balanced) break ties by lower load ratio, then by rotating
// the tied backends on every call. The classic baselines order by their own
// metric, so Weight only shows in their Score.
func NewStrategy(name string, rnd Rand) (*Strategy, error) {
	s := &Strategy{name: name, filters: defaultFilters}
	switch name {
	case "", StrategyBalanced:
		s.name = StrategyBalanced
		s.scorers = []Weighted{
			{CapabilityScorer{}, balancedCapabilityWeight},
			{LoadScorer{}, balancedLoadWeight},
			{LatencyScorer{}, balancedLatencyWeight},
			{CostScorer{}, balancedCostWeight},
		}
		s.order = scoreOrder{}
	case StrategyGreedy:
		s.scorers = []Weighted{{CapabilityScorer{}, 1}}
		s.order = scoreOrder{}
	case StrategyLeastLoad:
		s.scorers = []Weighted{{LoadScorer{}, 1}}
		s.order = leastLoadOrder{}
	case StrategyP2C:
		if rnd == nil {
			rnd = &splitMix{}
		}
		s.scorers = []Weighted{{LoadScorer{}, 1}}
		s.order = p2cOrder{rnd: &lockedRand{rnd: rnd}}
	case StrategyRoundRobin:
		s.scorers = []Weighted{{LoadScorer{}, 1}}
		s.order = roundRobinOrder{}
	case StrategyLatency:
		s.scorers = []Weighted{{LatencyScorer{}, 1}}
		s.order = latencyOrder{}
	default:
		return nil, fmt.Errorf("unknown strategy %q (valid: %s)", name, strings.Join(StrategyNames(), ", "))
	}
	for _, w := range s.scorers {
		s.totalWeight += w.Weight
	}
	return s, nil
}

// Name returns the strategy's name as accepted by NewStrategy.
func (s *Strategy) Name() string { return s.name }

// Rank appends to out[:0] the backends that pass every filter AND have room (Load.Inflight < MaxInflight),
// best first, and returns them, plus `eligible`: how many backends pass every filter ignoring room.
// eligible == 0 means "no backend can serve this" (the caller answers 503 no healthy backend);
// len(ranked)==0 && eligible>0 means "all full, wait".
//
// A backend with MaxInflight <= 0 never has room. Backends without a Load
// (len(p.Loads) < len(p.Backends)) are skipped rather than assumed idle. Rank does
// not allocate when out has capacity for the candidates.
func (s *Strategy) Rank(req *Request, p *Pool, out []Candidate) (ranked []Candidate, eligible int) {
	out = out[:0]
	n := min(len(p.Backends), len(p.Loads))
	for i := 0; i < n; i++ {
		if !s.keep(req, p, i) {
			continue
		}
		eligible++
		if b := &p.Backends[i]; b.MaxInflight > 0 && p.Loads[i].HasRoom(b) {
			out = append(out, Candidate{Index: i})
		}
	}
	if len(out) == 0 {
		return out, eligible
	}
	s.score(req, p, out)
	s.order.order(req, p, out, s.turn.Add(1)-1)
	return out, eligible
}

// Eligible reports whether backend i passes every filter, ignoring room (used to decide whether a
// waiting request can use a slot just freed on backend i).
func (s *Strategy) Eligible(req *Request, p *Pool, i int) bool {
	if i < 0 || i >= len(p.Backends) || i >= len(p.Loads) {
		return false
	}
	return s.keep(req, p, i)
}

func (s *Strategy) keep(req *Request, p *Pool, i int) bool {
	for _, f := range s.filters {
		if !f.Keep(req, p, i) {
			return false
		}
	}
	return true
}

// score sets each candidate's Score to its weighted blend, normalised by the
// total weight so that it stays in [0,1], times the backend's Weight.
func (s *Strategy) score(req *Request, p *Pool, cands []Candidate) {
	if s.totalWeight > 0 {
		sp := getScratch(len(cands))
		buf := *sp
		for _, w := range s.scorers {
			clear(buf)
			w.Score(req, p, cands, buf)
			for k := range cands {
				cands[k].Score += w.Weight * buf[k]
			}
		}
		putScratch(sp)
	}
	for k := range cands {
		sc := cands[k].Score
		if s.totalWeight > 0 {
			sc /= s.totalWeight
		}
		cands[k].Score = quantize(sc * backendWeight(&p.Backends[cands[k].Index]))
	}
}

// backendWeight is the backend's configured weight; 0 (unset) and nonsense
// (negative, NaN) mean 1, so a missing weight never hides a backend.
func backendWeight(b *Backend) float64 {
	if b.Weight > 0 {
		return b.Weight
	}
	return 1
}

// quantize rounds a score to 1e-9 so that blends equal up to floating-point
// noise compare equal and get the tie rules instead of an arbitrary order.
func quantize(x float64) float64 { return math.Round(x*1e9) / 1e9 }
