package engine

import (
	"fmt"
	"math"
	"strings"
	"sync/atomic"
	"time"
)

// Strategy names accepted by NewStrategy.
const (
	StrategyGreedy     = "greedy"
	StrategyBalanced   = "balanced"
	StrategyFastest    = "fastest"
	StrategyOptimal    = "optimal"
	StrategyLeastLoad  = "least_load"
	StrategyP2C        = "p2c"
	StrategyRoundRobin = "round_robin"
	StrategyLatency    = "latency"

	// DefaultStrategy is used when no strategy is named.
	DefaultStrategy = StrategyBalanced
)

// Weights are the balanced strategy's blend of its four scores. They need
// not sum to 1: the blend is divided by their sum. Negative weights are
// invalid (see Validate).
type Weights struct {
	Capability float64 `json:"capability"` // how good the backend is at the request's task
	Latency    float64 `json:"latency"`    // predicted completion (time to first token for streams), waits included
	Load       float64 `json:"load"`       // free share of its slots
	Cost       float64 `json:"cost"`       // cheapness
}

// DefaultWeights is the balanced blend. Capability and predicted latency lead
// together: sending a coding prompt to a weak coder costs more than a short
// wait, and sending a long answer to a slow backend costs more than waiting
// for a fast one. Load keeps the best backend from taking everything while
// others idle; cost only nudges between otherwise similar backends.
var DefaultWeights = Weights{Capability: 0.40, Latency: 0.40, Load: 0.15, Cost: 0.05}

// Validate reports a weight that is negative or not a number, or weights that
// are all zero.
func (w Weights) Validate() error {
	for _, x := range []struct {
		name string
		v    float64
	}{{"capability", w.Capability}, {"latency", w.Latency}, {"load", w.Load}, {"cost", w.Cost}} {
		if x.v < 0 || math.IsNaN(x.v) || math.IsInf(x.v, 0) {
			return fmt.Errorf("weight %s must be a non-negative number, not %v", x.name, x.v)
		}
	}
	if w.Capability+w.Latency+w.Load+w.Cost == 0 {
		return fmt.Errorf("at least one weight must be positive")
	}
	return nil
}

// DefaultExplore is the default exploration share: at most this share of the
// requests that could go to a backend the router knows too little about is
// sent there, so that it gets data (see StrategyOptions.Explore).
const DefaultExplore = 0.05

// exploreMinSamples is how many successful attempts a backend's model must
// have in the window to count as known.
const exploreMinSamples = 8

// waitGain is how much sooner waiting for a full backend must be predicted to
// finish than the best backend with room, for a predictive strategy to rank
// the full one first: at most 90% of its predicted cost. Predictions are
// estimates; a slot in hand is worth a margin.
const waitGain = 0.9

// StrategyOptions tune NewStrategyWith. The zero value gives the defaults.
type StrategyOptions struct {
	// Rand draws p2c's pairs and exploration; access is serialised. nil: a
	// fixed-seed SplitMix64 sequence (deterministic).
	Rand Rand
	// Weights of the balanced blend; nil: DefaultWeights.
	Weights *Weights
	// Explore is the exploration share of the predictive strategies
	// (balanced, fastest): when a backend with room has fewer than 8
	// successes in the window for the request's model, the request is sent
	// to it with this probability. 0: DefaultExplore; negative: never.
	Explore float64
}

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
	// predictive strategies predict each candidate's timeline, may rank a
	// full backend first (the request should wait for it), and explore.
	predictive bool
	// product: the score is the product of the scorers' (capability ×
	// prediction), not their weighted sum; and waiting requests are
	// assigned to freed slots by it (Assigns).
	product bool
	explore float64
	rnd     *lockedRand
}

// StrategyNames returns the valid strategy names, the default among them.
func StrategyNames() []string {
	return []string{StrategyGreedy, StrategyBalanced, StrategyFastest, StrategyOptimal, StrategyLeastLoad, StrategyP2C, StrategyRoundRobin, StrategyLatency}
}

// NewStrategy builds the named strategy with default options; "" means
// DefaultStrategy. rnd is used by p2c and for exploration (see
// StrategyOptions.Rand).
func NewStrategy(name string, rnd Rand) (*Strategy, error) {
	return NewStrategyWith(name, StrategyOptions{Rand: rnd})
}

// NewStrategyWith builds the named strategy; "" means DefaultStrategy.
//
//	greedy       score = capability                               order by score
//	balanced     score = (wc·capability + wl·prediction + wd·load + wk·cost) ÷ (wc+wl+wd+wk)
//	             (DefaultWeights .40/.40/.15/.05)                 order by score
//	fastest      score = prediction  (cheapest predicted cost ÷ own)          order by score
//	optimal      score = capability × prediction                          order by score;
//	             waiting requests get freed slots by maximum total score (see Assigns)
//	least_load   score = load       order by Inflight/MaxInflight, then free slots
//	p2c          score = load       the less loaded of two random picks, then least_load order
//	round_robin  score = load       pool order rotated by a counter
//	latency      score = latency    unknown latency first, then lowest p95 (TTFT p95 for streams)
//
// where capability is the backend's score for the request's task, load is
// its free share of slots, cost is cheapest ÷ its price, and prediction is
// the cheapest predicted cost ÷ its predicted cost (see Predict and
// PredictionScorer: the expected wait for a slot, time to first token from
// the prompt size, and time per output token times the expected output).
//
// Every score is multiplied by the backend's Weight (0 means 1) and, for
// balanced and fastest, by its adaptive Feedback (see FeedbackFactor).
// Score-ordered strategies (greedy, balanced, fastest) break ties by lower load ratio, then by rotating the tied
// backends on every call. The classic baselines order by their own metric,
// so Weight only shows in their Score.
//
// balanced and fastest are predictive: they may rank first a backend that is
// full when waiting for it is predicted to finish the request sooner (by at
// least 10%) than any backend with room, and they explore backends they know
// too little about (see StrategyOptions.Explore).
func NewStrategyWith(name string, o StrategyOptions) (*Strategy, error) {
	s := &Strategy{name: name, filters: defaultFilters}
	rnd := o.Rand
	if rnd == nil {
		rnd = &splitMix{}
	}
	s.rnd = &lockedRand{rnd: rnd}
	switch name {
	case "", StrategyBalanced:
		s.name = StrategyBalanced
		w := DefaultWeights
		if o.Weights != nil {
			w = *o.Weights
		}
		if err := w.Validate(); err != nil {
			return nil, err
		}
		s.scorers = []Weighted{
			{CapabilityScorer{}, w.Capability},
			{PredictionScorer{}, w.Latency},
			{LoadScorer{}, w.Load},
			{CostScorer{}, w.Cost},
		}
		s.order = scoreOrder{}
		s.predictive = true
	case StrategyOptimal:
		s.scorers = []Weighted{{CapabilityScorer{}, 1}, {PredictionScorer{}, 1}}
		s.order = scoreOrder{}
		s.predictive = true
		s.product = true
	case StrategyFastest:
		// Ordering by this score is ordering by predicted cost ÷ (weight ×
		// feedback), cheapest first.
		s.scorers = []Weighted{{PredictionScorer{}, 1}}
		s.order = scoreOrder{}
		s.predictive = true
	case StrategyGreedy:
		s.scorers = []Weighted{{CapabilityScorer{}, 1}}
		s.order = scoreOrder{}
	case StrategyLeastLoad:
		s.scorers = []Weighted{{LoadScorer{}, 1}}
		s.order = leastLoadOrder{}
	case StrategyP2C:
		s.scorers = []Weighted{{LoadScorer{}, 1}}
		s.order = p2cOrder{rnd: s.rnd}
	case StrategyRoundRobin:
		s.scorers = []Weighted{{LoadScorer{}, 1}}
		s.order = roundRobinOrder{}
	case StrategyLatency:
		s.scorers = []Weighted{{LatencyScorer{}, 1}}
		s.order = latencyOrder{}
	default:
		return nil, fmt.Errorf("unknown strategy %q (valid: %s)", name, strings.Join(StrategyNames(), ", "))
	}
	if s.predictive {
		s.explore = o.Explore
		if s.explore == 0 {
			s.explore = DefaultExplore
		}
		s.explore = min(s.explore, 1)
	}
	for _, w := range s.scorers {
		s.totalWeight += w.Weight
	}
	return s, nil
}

// Name returns the strategy's name as accepted by NewStrategy.
func (s *Strategy) Name() string { return s.name }

// Rank appends to out[:0] the backends that pass every filter AND have room (a free slot and, with a
// token limit, room for the request's token cost: see Load.Fits),
// best first, and returns them, plus `eligible`: how many backends pass every filter ignoring room.
// eligible == 0 means "no backend can serve this" (the caller answers 503 no healthy backend);
// len(ranked)==0 && eligible>0 means "all full, wait"; a predictive
// strategy then returns every eligible backend instead, all marked Full, in
// its order (see WorthWaiting for which to wait for).
//
// A predictive strategy (balanced, fastest) may put first one or more
// candidates marked Full: backends without room that the request is
// predicted to finish sooner on by waiting for a slot (by at least 10%, see
// waitGain) than on any backend with room, which follow them. The caller then
// waits for those backends rather than take a slot now. Predictive
// strategies fill each candidate's Predicted timeline.
//
// A backend with MaxInflight <= 0 never has room. Backends without a Load
// (len(p.Loads) < len(p.Backends)) are skipped rather than assumed idle. Rank does
// not allocate when out has capacity for the eligible backends.
func (s *Strategy) Rank(req *Request, p *Pool, out []Candidate) (ranked []Candidate, eligible int) {
	out = out[:0]
	n := min(len(p.Backends), len(p.Loads))
	free := 0
	for i := 0; i < n; i++ {
		if !s.keep(req, p, i) {
			continue
		}
		eligible++
		b := &p.Backends[i]
		room := b.MaxInflight > 0 && p.Loads[i].Fits(b, req)
		if room {
			free++
		}
		if room || (s.predictive && b.MaxInflight > 0) {
			out = append(out, Candidate{Index: i, Full: !room})
		}
	}
	if free == 0 && !s.predictive {
		// Everything full: the caller waits for whichever frees first.
		return out[:0], eligible
	}
	if s.predictive {
		fallback := PoolPerf(p)
		for k := range out {
			i := out[k].Index
			out[k].Predicted = Predict(req, &p.Backends[i], &p.Loads[i], &fallback)
		}
	}
	s.score(req, p, out)
	s.order.order(req, p, out, s.turn.Add(1)-1)
	if s.predictive {
		if free == 0 {
			return out, eligible // every candidate Full: see WorthWaiting
		}
		out = s.keepWorthWaiting(req, out)
		s.exploreFirst(p, out)
	}
	return out, eligible
}

// WorthWaiting is how many of a ranking's leading candidates, all Full, the
// request should wait for, and for how long at most (its patience) before it
// takes any backend; (0, 0) when it should take or wait for any.
//
// With a backend with room in the ranking, the Full ones leading it are
// those Rank kept (predicted to finish at least 10% sooner, waits included),
// and the patience is their predicted wait plus half the predicted gain
// over the best backend with room. When every candidate is Full (a
// predictive Rank returns them all, ranked), the request waits for those
// predicted to finish within waitGain of the soonest (waits included), and
// any that the strategy ranks above the soonest; they are moved to the
// front, in rank order, and the patience is the shortest predicted wait
// among them plus half the predicted gain over the soonest of the others.
// Waiting for whichever backend frees first would put long requests on a
// slow backend that happens to free first.
func WorthWaiting(req *Request, ranked []Candidate) (n int, patience time.Duration) {
	for n < len(ranked) && ranked[n].Full {
		n++
	}
	if n == 0 {
		return 0, 0
	}
	cost := func(c *Candidate) time.Duration { return c.Predicted.Cost(req.Stream) }
	if n < len(ranked) {
		gain := cost(&ranked[n]) - cost(&ranked[0])
		return n, max(ranked[0].Predicted.Wait+gain/2, time.Millisecond)
	}
	// All full.
	soonest := -1
	for k := range ranked {
		if c := cost(&ranked[k]); c > 0 && (soonest < 0 || c < cost(&ranked[soonest])) {
			soonest = k
		}
	}
	if soonest < 0 {
		return 0, 0 // nothing predicted
	}
	least := cost(&ranked[soonest])
	bound := time.Duration(float64(least) / waitGain)
	// Partition: the wanted ones first, in rank order (each is swapped
	// down past others already seen, which keeps their order).
	n = 0
	for k := range ranked {
		if k <= soonest || cost(&ranked[k]) <= bound {
			ranked[n], ranked[k] = ranked[k], ranked[n]
			n++
		}
	}
	if n == len(ranked) {
		return 0, 0
	}
	wait, other := ranked[0].Predicted.Wait, time.Duration(0)
	for k := range ranked {
		if k < n {
			wait = min(wait, ranked[k].Predicted.Wait)
		} else if c := cost(&ranked[k]); other == 0 || c < other {
			other = c
		}
	}
	return n, max(wait+(other-least)/2, time.Millisecond)
}

// WorthHoldingOut is, for a ranking whose first candidate has room, how many
// of its candidates the request should take only, and for how long at most
// (its patience) it should wait for a slot on them when the store refuses
// them all (another request took the last slot between the ranking and the
// attempt) before it takes any other; (0, 0) when it may take any.
//
// The ones to hold out for are those predicted to finish within waitGain of
// the first (its cost ÷ 0.9 at most), in rank order; they are moved to the
// front. When every candidate is, or none is predicted, (0, 0). Otherwise the
// patience is half the predicted gain over the soonest of the others, as for
// WorthWaiting with a predicted wait of 0. Without it, a refused attempt on a
// fast backend would fall straight through to a much slower one, in the same
// call, without the request ever being ranked again.
func WorthHoldingOut(req *Request, ranked []Candidate) (n int, patience time.Duration) {
	if len(ranked) < 2 || ranked[0].Full {
		return 0, 0
	}
	cost := func(c *Candidate) time.Duration { return c.Predicted.Cost(req.Stream) }
	first := cost(&ranked[0])
	if first <= 0 {
		return 0, 0
	}
	bound := time.Duration(float64(first) / waitGain)
	var other time.Duration
	for k := range ranked {
		c := cost(&ranked[k])
		if c <= 0 || ranked[k].Full {
			return 0, 0 // unpredicted, or a full one to wait for: not this case
		}
		if c <= bound {
			ranked[n], ranked[k] = ranked[k], ranked[n]
			n++
		} else if other == 0 || c < other {
			other = c
		}
	}
	if other == 0 {
		return 0, 0
	}
	return n, max((other-first)/2, time.Millisecond)
}

// keepWorthWaiting drops the full candidates a request should not wait for:
// every one ranked after the first candidate with room, and the leading ones
// unless predicted to finish at least 10% sooner than that candidate. cands
// holds at least one candidate with room.
func (s *Strategy) keepWorthWaiting(req *Request, cands []Candidate) []Candidate {
	first := 0
	for cands[first].Full {
		first++
	}
	keep := 0
	if bound := float64(cands[first].Predicted.Cost(req.Stream)); bound > 0 {
		for keep < first {
			c := float64(cands[keep].Predicted.Cost(req.Stream))
			if c <= 0 || c > waitGain*bound {
				break
			}
			keep++
		}
	}
	out := cands[:keep]
	for k := first; k < len(cands); k++ {
		if !cands[k].Full {
			out = append(out, cands[k])
		}
	}
	return out
}

// exploreFirst sends, with probability s.explore, the request to a backend
// with room that knows too little about the request's model (fewer than
// exploreMinSamples successes): it moves the first such candidate to the
// front (ahead of any full one). The share is bounded by s.explore of the
// requests that could explore.
func (s *Strategy) exploreFirst(p *Pool, cands []Candidate) {
	if s.explore <= 0 {
		return
	}
	pick := -1
	for k := range cands {
		if !cands[k].Full && p.Loads[cands[k].Index].Perf.Samples < exploreMinSamples {
			pick = k
			break
		}
	}
	if pick <= 0 && (pick < 0 || !cands[0].Full) {
		return // nobody to explore, or it is first already
	}
	const scale = 1 << 20
	if s.rnd.intn(scale) >= int(s.explore*scale) {
		return
	}
	c := cands[pick]
	copy(cands[1:pick+1], cands[:pick])
	cands[0] = c
}

// Predictive reports whether the strategy predicts each candidate's
// timeline and may rank Full candidates (see Rank and WorthWaiting).
func (s *Strategy) Predictive() bool { return s.predictive }

// Assigns reports whether waiting requests should get freed slots by the
// optimal assignment of AssignScores (the optimal strategy) rather than first
// come, first served.
func (s *Strategy) Assigns() bool { return s.product }

// AssignScores writes to out[i] how well backend i suits req (its score,
// capability × prediction, full backends included: a waiting request is
// being matched with slots about to free), and 0 for a backend that cannot
// serve it. out must have len(p.Backends). cands is scratch space; the
// filled buffer is returned for reuse. It does not allocate when cands has
// room for every backend.
func (s *Strategy) AssignScores(req *Request, p *Pool, out []float64, cands []Candidate) []Candidate {
	cands = cands[:0]
	clear(out)
	n := min(len(p.Backends), len(p.Loads), len(out))
	for i := 0; i < n; i++ {
		if s.keep(req, p, i) && p.Backends[i].MaxInflight > 0 {
			cands = append(cands, Candidate{Index: i, Full: !p.Loads[i].Fits(&p.Backends[i], req)})
		}
	}
	if len(cands) == 0 {
		return cands
	}
	fallback := PoolPerf(p)
	for k := range cands {
		i := cands[k].Index
		// The slot is about to be free: judged without the wait.
		pred := Predict(req, &p.Backends[i], &p.Loads[i], &fallback)
		pred.TTFT -= pred.Wait
		pred.Total -= pred.Wait
		pred.Wait = 0
		cands[k].Predicted = pred
	}
	s.score(req, p, cands)
	for _, c := range cands {
		out[c.Index] = c.Score
	}
	return cands
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
	if s.product {
		sp := getScratch(len(cands))
		buf := *sp
		for k := range cands {
			cands[k].Score = 1
		}
		for _, w := range s.scorers {
			clear(buf)
			w.Score(req, p, cands, buf)
			for k := range cands {
				cands[k].Score *= buf[k]
			}
		}
		putScratch(sp)
		for k := range cands {
			i := cands[k].Index
			cands[k].Score = quantize(cands[k].Score * backendWeight(&p.Backends[i]) * feedback(&p.Loads[i]))
		}
		return
	}
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
		sc *= backendWeight(&p.Backends[cands[k].Index])
		if s.predictive {
			sc *= feedback(&p.Loads[cands[k].Index])
		}
		cands[k].Score = quantize(sc)
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
