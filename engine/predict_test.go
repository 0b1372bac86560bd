package engine

import (
	"math"
	"math/rand"
	"slices"
	"testing"
	"time"
)

// fast and slow are the two kinds of backend of the predictive tests: the
// slow one is 6× slower per output token.
var (
	fastPerf = Perf{TTFTBase: 20 * ms, TTFTPerToken: float64(50 * time.Microsecond), TPOT: 2 * ms, MeanService: 300 * ms, Samples: 50}
	slowPerf = Perf{TTFTBase: 80 * ms, TTFTPerToken: float64(200 * time.Microsecond), TPOT: 12 * ms, MeanService: 1500 * ms, Samples: 50}
)

func TestPredict(t *testing.T) {
	tests := []struct {
		name     string
		req      Request
		b        Backend
		l        Load
		fallback Perf
		want     Prediction
	}{
		{
			name: "room: TTFT from the prompt, TPOT per further token",
			req:  Request{PromptTokens: 1000, MaxTokens: 101},
			b:    Backend{MaxInflight: 4}, l: Load{Inflight: 3, Perf: fastPerf},
			// TTFT 20ms + 1000×50µs = 70ms; total 70ms + 100×2ms = 270ms
			want: Prediction{TTFT: 70 * ms, Total: 270 * ms},
		},
		{
			name: "full: wait for the slots ahead at the backend's pace",
			req:  Request{PromptTokens: 0, MaxTokens: 1},
			b:    Backend{MaxInflight: 4}, l: Load{Inflight: 4, Waiting: 1, Perf: fastPerf},
			// 2 ahead (itself and one waiting) × 300ms ÷ 4 slots = 150ms
			want: Prediction{Wait: 150 * ms, TTFT: 170 * ms, Total: 170 * ms},
		},
		{
			name: "waiters that can also use other backends count by their share",
			req:  Request{PromptTokens: 0, MaxTokens: 1},
			// 4 waiting, but 3 of them can use 2 backends and the 4th 4:
			// 3 × ½ + ¼ = 1.75 of them are expected here.
			b: Backend{MaxInflight: 4}, l: Load{Inflight: 4, Waiting: 4, Queued: 1.75, Perf: fastPerf},
			// (1.75 + 1) × 300ms ÷ 4 slots = 206.25ms
			want: Prediction{Wait: 206250 * time.Microsecond, TTFT: 226250 * time.Microsecond, Total: 226250 * time.Microsecond},
		},
		{
			name: "a free slot a waiter ahead is due is not room",
			req:  Request{MaxTokens: 1},
			b:    Backend{MaxInflight: 4}, l: Load{Inflight: 3, Waiting: 1, Perf: fastPerf},
			// the waiter takes the free slot; this request needs 1 more
			// release: 1 × 300ms ÷ 4 = 75ms
			want: Prediction{Wait: 75 * ms, TTFT: 95 * ms, Total: 95 * ms},
		},
		{
			name: "free slots beyond the waiters ahead are room",
			req:  Request{MaxTokens: 1},
			b:    Backend{MaxInflight: 4}, l: Load{Inflight: 2, Waiting: 1, Perf: fastPerf},
			want: Prediction{TTFT: 20 * ms, Total: 20 * ms},
		},
		{
			name: "full over capacity (a reload lowered it) counts the excess",
			req:  Request{MaxTokens: 1},
			b:    Backend{MaxInflight: 2}, l: Load{Inflight: 3, Perf: fastPerf},
			// 2 ahead × 300ms ÷ 2 = 300ms
			want: Prediction{Wait: 300 * ms, TTFT: 320 * ms, Total: 320 * ms},
		},
		{
			name: "full with an unknown pace: its own service time stands in",
			req:  Request{MaxTokens: 11},
			b:    Backend{MaxInflight: 1}, l: Load{Inflight: 1, Perf: Perf{TTFTBase: 10 * ms, TPOT: 5 * ms}},
			// service 10 + 10×5 = 60ms; 1 ahead × 60ms ÷ 1
			want: Prediction{Wait: 60 * ms, TTFT: 70 * ms, Total: 120 * ms},
		},
		{
			name: "no max_tokens: the learned mean output",
			req:  Request{ExpectedOutput: 51},
			b:    Backend{MaxInflight: 4}, l: Load{Perf: slowPerf},
			want: Prediction{TTFT: 80 * ms, Total: 680 * ms},
		},
		{
			name: "nothing known: the default output length",
			req:  Request{},
			b:    Backend{MaxInflight: 4}, l: Load{Perf: Perf{TPOT: ms}},
			want: Prediction{TTFT: 0, Total: time.Duration(DefaultExpectedOutput-1) * ms},
		},
		{
			name: "unknown backend: the fleet average",
			req:  Request{MaxTokens: 2},
			b:    Backend{MaxInflight: 4}, l: Load{}, fallback: Perf{TTFTBase: 30 * ms, TPOT: 7 * ms},
			want: Prediction{TTFT: 30 * ms, Total: 37 * ms},
		},
		{
			name: "unknown everywhere: no prediction",
			req:  Request{MaxTokens: 2},
			b:    Backend{MaxInflight: 4}, l: Load{},
			want: Prediction{},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Predict(&tt.req, &tt.b, &tt.l, &tt.fallback); got != tt.want {
				t.Fatalf("Predict = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestPredictionCost(t *testing.T) {
	p := Prediction{Wait: 10 * ms, TTFT: 50 * ms, Total: 450 * ms}
	if got := p.Cost(false); got != 450*ms {
		t.Errorf("non-stream cost %v, want the completion 450ms", got)
	}
	if got := p.Cost(true); got != 350*ms {
		t.Errorf("stream cost %v, want TTFT + three quarters of the rest = 350ms", got)
	}
}

func TestPoolPerf(t *testing.T) {
	p := mkPool(
		node{l: Load{Perf: Perf{TTFTBase: 10 * ms, TPOT: 2 * ms, Samples: 30}}},
		node{l: Load{Perf: Perf{TTFTBase: 50 * ms, TPOT: 10 * ms, Samples: 10}}},
		node{l: Load{Perf: Perf{TTFTBase: time.Second, TPOT: time.Second}}}, // hints only: not an observation
		node{},
	)
	got := PoolPerf(p)
	if got.TTFTBase != 20*ms || got.TPOT != 4*ms || got.Samples != 0 {
		t.Fatalf("PoolPerf = %+v, want the sample-weighted mean 20ms/4ms", got)
	}
	if pp := PoolPerf(mkPool(node{}, node{})); pp.Known() {
		t.Fatal("a pool that learned nothing has a known average")
	}
}

func TestFeedbackFactor(t *testing.T) {
	tests := []struct {
		name             string
		errors, attempts int
		latency, slo     time.Duration
		want             float64
	}{
		{"healthy", 0, 100, 0, 0, 1},
		{"10% errors", 10, 100, 0, 0, 0.81},
		{"50% errors", 50, 100, 0, 0, 0.25},
		{"too few attempts for a rate", 3, 4, 0, 0, 1},
		{"every attempt failing: the floor", 10, 10, 0, 0, MinFeedback},
		{"within its SLO", 0, 100, 400 * ms, 500 * ms, 1},
		{"twice its SLO", 0, 100, time.Second, 500 * ms, 0.5},
		{"errors and slow multiply", 10, 100, time.Second, 500 * ms, 0.405},
		{"no SLO set", 0, 100, time.Minute, 0, 1},
		{"recovered: the window forgot the errors", 0, 20, 0, 0, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := FeedbackFactor(tt.errors, tt.attempts, tt.latency, tt.slo); math.Abs(got-tt.want) > 1e-12 {
				t.Fatalf("FeedbackFactor = %v, want %v", got, tt.want)
			}
		})
	}
}

// TestFeedbackDecay: as a sliding window forgets an outage, the factor climbs
// back to 1, monotonically.
func TestFeedbackDecay(t *testing.T) {
	// A window of 60 attempts; the backend failed 30 in a row, then every
	// new attempt succeeds and one old failure leaves the window.
	prev := 0.0
	for ok := 0; ok <= 60; ok++ {
		errors := max(30-ok, 0)
		f := FeedbackFactor(errors, 60, 0, 0)
		if f < prev {
			t.Fatalf("after %d successes the factor fell from %v to %v", ok, prev, f)
		}
		prev = f
	}
	if prev != 1 {
		t.Fatalf("factor %v once the window holds no failure, want 1", prev)
	}
}

// predictivePool is a fast backend with 2 slots and a slow one with 8, for a
// request of out tokens.
func predictivePool(fastInflight, fastWaiting, slowInflight int) *Pool {
	return mkPool(
		node{b: Backend{Name: "fast", MaxInflight: 2, Capabilities: caps("chat", 1.0)}, l: Load{Inflight: fastInflight, Waiting: fastWaiting, Perf: fastPerf}},
		node{b: Backend{Name: "slow", MaxInflight: 8, Capabilities: caps("chat", 1.0)}, l: Load{Inflight: slowInflight, Perf: slowPerf}},
	)
}

func TestPredictiveRanking(t *testing.T) {
	long := Request{Model: AutoModel, MaxTokens: 256}
	short := Request{Model: AutoModel, MaxTokens: 16}
	longStream := long
	longStream.Stream = true
	tests := []struct {
		name                   string
		req                    Request
		fastIn, fastWait, slow int
		want                   []int // candidate indexes, in order
		wantFull               []bool
		balanced               []int // when balanced (whose load score favours a slot in hand) differs
	}{
		// Both with room: the fast backend finishes anything sooner.
		{"long request, both free", long, 0, 0, 0, []int{0, 1}, []bool{false, false}, nil},
		// Fast full, one slot frees every 150ms: waiting (≈150 + 530ms)
		// beats the slow backend (≈3.1s).
		{"long request waits for the fast backend", long, 2, 0, 0, []int{0, 1}, []bool{true, false}, nil},
		// A short answer: the slow backend (≈260ms) beats waiting for the
		// fast one (≈150 + 50ms)? No: 200ms < 90% of 260ms. balanced's load
		// score tips it to the slot in hand.
		{"short request waits too, a little", short, 2, 0, 0, []int{0, 1}, []bool{true, false}, []int{1}},
		// With 4 already waiting for the fast one, the slow free backend wins
		// for a short answer ...
		{"short request takes the free slow backend when the line is long", short, 2, 4, 0, []int{1}, []bool{false}, nil},
		// ... but not for a long one.
		{"long request waits even behind a line", long, 2, 4, 0, []int{0, 1}, []bool{true, false}, nil},
		// Everything full: nothing ranked, the caller waits for any.
		// All full: both ranked, both Full (WorthWaiting says which to wait for).
		{"all full", long, 2, 0, 8, []int{0, 1}, []bool{true, true}, nil},
		// Streams weigh the first token: the long stream still prefers the
		// fast backend when it has room.
		{"long stream, both free", longStream, 1, 0, 0, []int{0, 1}, []bool{false, false}, nil},
	}
	for _, name := range []string{StrategyFastest, StrategyBalanced} {
		for _, tt := range tests {
			t.Run(name+"/"+tt.name, func(t *testing.T) {
				s, err := NewStrategyWith(name, StrategyOptions{Explore: -1})
				if err != nil {
					t.Fatal(err)
				}
				p := predictivePool(tt.fastIn, tt.fastWait, tt.slow)
				ranked, eligible := s.Rank(&tt.req, p, nil)
				if eligible != 2 {
					t.Fatalf("eligible %d", eligible)
				}
				full := make([]bool, len(ranked))
				for k, c := range ranked {
					full[k] = c.Full
				}
				want, wantFull := tt.want, tt.wantFull
				if name == StrategyBalanced && tt.balanced != nil {
					want, wantFull = tt.balanced, make([]bool, len(tt.balanced))
				}
				if !slices.Equal(indexes(ranked), want) || !slices.Equal(full, wantFull) {
					t.Fatalf("ranked %v full %v, want %v %v (%+v)", indexes(ranked), full, want, wantFull, ranked)
				}
				for _, c := range ranked {
					if c.Predicted.Total <= 0 {
						t.Errorf("candidate %d has no prediction", c.Index)
					}
				}
			})
		}
	}
}

// TestWaitingNeedsAMargin: a full backend predicted to finish only a little
// sooner than one with room (less than 10%) is not waited for.
func TestWaitingNeedsAMargin(t *testing.T) {
	s, _ := NewStrategyWith(StrategyFastest, StrategyOptions{Explore: -1})
	same := Perf{TTFTBase: 100 * ms, TPOT: 10 * ms, MeanService: 40 * ms, Samples: 50}
	slower := same
	slower.TTFTBase = 105 * ms
	p := mkPool(
		node{b: Backend{MaxInflight: 4, Capabilities: caps("chat", 1.0)}, l: Load{Inflight: 4, Perf: same}},   // waits 10ms for 100+90
		node{b: Backend{MaxInflight: 4, Capabilities: caps("chat", 1.0)}, l: Load{Inflight: 0, Perf: slower}}, // 105+90
	)
	ranked, _ := s.Rank(&Request{Model: AutoModel, MaxTokens: 10}, p, nil)
	if len(ranked) != 1 || ranked[0].Index != 1 || ranked[0].Full {
		t.Fatalf("ranked %+v: want only the backend with room", ranked)
	}
}

// TestFeedbackSteersAway: a backend with a poor feedback factor loses its
// place to a slower healthy one.
func TestFeedbackSteersAway(t *testing.T) {
	for _, name := range []string{StrategyFastest, StrategyBalanced} {
		s, _ := NewStrategyWith(name, StrategyOptions{Explore: -1})
		p := predictivePool(0, 0, 0)
		req := Request{Model: AutoModel, MaxTokens: 32}
		if ranked, _ := s.Rank(&req, p, nil); ranked[0].Index != 0 {
			t.Fatalf("%s: healthy fast backend not first: %v", name, indexes(ranked))
		}
		p.Loads[0].Feedback = FeedbackFactor(60, 100, 0, 0) // 60% errors: 0.16
		if ranked, _ := s.Rank(&req, p, nil); ranked[0].Index != 1 {
			t.Fatalf("%s: erring fast backend still first: %v", name, indexes(ranked))
		}
	}
}

// TestExplorationIsBounded: a backend without data gets about the
// exploration share of the requests it could take, never much more, and
// none when exploration is off.
func TestExplorationIsBounded(t *testing.T) {
	for _, tt := range []struct {
		explore  float64
		min, max float64
	}{{0, 0.03, 0.07}, {0.2, 0.16, 0.24}, {-1, 0, 0}} {
		s, _ := NewStrategyWith(StrategyFastest, StrategyOptions{Explore: tt.explore, Rand: rand.New(rand.NewSource(7))})
		p := mkPool(
			node{b: Backend{MaxInflight: 4, Capabilities: caps("chat", 1.0)}, l: Load{Perf: fastPerf}},
			node{b: Backend{MaxInflight: 4, Capabilities: caps("chat", 1.0)}, l: Load{Perf: slowPerf}},
			node{b: Backend{MaxInflight: 4, Capabilities: caps("chat", 1.0)}, l: Load{Perf: Perf{Samples: 2}}}, // too little data
		)
		const n = 20000
		picked := 0
		req := Request{Model: AutoModel, MaxTokens: 64}
		for range n {
			if ranked, _ := s.Rank(&req, p, nil); ranked[0].Index == 2 {
				picked++
			}
		}
		if share := float64(picked) / n; share < tt.min || share > tt.max {
			t.Errorf("explore %v: the unknown backend got %.3f of the requests, want within [%v, %v]", tt.explore, share, tt.min, tt.max)
		}
	}
}

func TestWeights(t *testing.T) {
	if err := DefaultWeights.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, w := range []Weights{{Capability: -1, Latency: 1}, {Latency: math.NaN()}, {}} {
		if _, err := NewStrategyWith(StrategyBalanced, StrategyOptions{Weights: &w}); err == nil {
			t.Errorf("weights %+v accepted", w)
		}
	}
	// A coding request: the good coder is slow, the fast one codes badly.
	p := mkPool(
		node{b: Backend{MaxInflight: 4, Capabilities: caps("coding", 1.0)}, l: Load{Perf: slowPerf}},
		node{b: Backend{MaxInflight: 4, Capabilities: caps("coding", 0.3)}, l: Load{Perf: fastPerf}},
	)
	req := Request{Model: AutoModel, Capability: "coding", MaxTokens: 200}
	for _, tt := range []struct {
		w     Weights
		first int
	}{
		{Weights{Capability: 1}, 0},
		{Weights{Latency: 1}, 1},
		{Weights{Capability: 0.8, Latency: 0.2}, 0},
		{Weights{Capability: 0.2, Latency: 0.8}, 1},
	} {
		s, err := NewStrategyWith(StrategyBalanced, StrategyOptions{Weights: &tt.w, Explore: -1})
		if err != nil {
			t.Fatal(err)
		}
		if ranked, _ := s.Rank(&req, p, nil); ranked[0].Index != tt.first {
			t.Errorf("weights %+v: %v first, want %d (%+v)", tt.w, ranked[0].Index, tt.first, ranked)
		}
	}
}

func TestPredictionScorer(t *testing.T) {
	cands := func(costs ...time.Duration) []Candidate {
		c := make([]Candidate, len(costs))
		for k, x := range costs {
			c[k] = Candidate{Index: k, Predicted: Prediction{TTFT: x, Total: x}}
		}
		return c
	}
	tests := []struct {
		name  string
		pool  *Pool
		costs []time.Duration
		want  []float64
	}{
		{"no reference: min ÷ own", mkPool(node{}, node{}, node{}), []time.Duration{100 * ms, 200 * ms, 400 * ms}, []float64{1, 0.5, 0.25}},
		{"unknown is neutral", mkPool(node{}, node{}), []time.Duration{100 * ms, 0}, []float64{1, 0.5}},
		{
			// A typical request (256 tokens): 255×2 = 510ms and 255×6 =
			// 1530ms on these two: a reference of 1020ms.
			"absolute lateness in units of a typical request",
			mkPool(node{l: Load{Perf: Perf{TPOT: 2 * ms, Samples: 9}}}, node{l: Load{Perf: Perf{TPOT: 6 * ms}}}),
			[]time.Duration{100 * ms, 1120 * ms}, []float64{1, 0.5},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := cands(tt.costs...)
			got := make([]float64, len(c))
			PredictionScorer{}.Score(&Request{}, tt.pool, c, got)
			for k := range tt.want {
				if math.Abs(got[k]-tt.want[k]) > 1e-9 {
					t.Fatalf("scores %v, want %v", got, tt.want)
				}
			}
		})
	}
}

// TestBalancedKeepsFastSlotsForLongAnswers: with both backends free but the
// fast one half busy, balanced sends a long answer to the fast backend and a
// short one to the slow backend (whose slot costs it little); fastest sends
// both to the fast one.
func TestBalancedKeepsFastSlotsForLongAnswers(t *testing.T) {
	p := predictivePool(1, 0, 0)
	for _, tt := range []struct {
		strategy    string
		out         int
		wantBackend int
	}{
		{StrategyBalanced, 256, 0}, {StrategyBalanced, 8, 1},
		{StrategyFastest, 256, 0}, {StrategyFastest, 8, 0},
	} {
		s, _ := NewStrategyWith(tt.strategy, StrategyOptions{Explore: -1})
		req := Request{Model: AutoModel, MaxTokens: tt.out}
		if ranked, _ := s.Rank(&req, p, nil); ranked[0].Index != tt.wantBackend {
			t.Errorf("%s, %d tokens: backend %d first, want %d (%+v)", tt.strategy, tt.out, ranked[0].Index, tt.wantBackend, ranked)
		}
	}
}

func TestTokenLimit(t *testing.T) {
	b := Backend{MaxInflight: 8, MaxTokensInflight: 1000}
	tests := []struct {
		name     string
		inflight int
		tokens   int
		req      Request
		want     bool
	}{
		{"room for both", 1, 500, Request{PromptTokens: 100, MaxTokens: 100}, true},
		{"exactly at the limit", 1, 800, Request{PromptTokens: 100, MaxTokens: 100}, true},
		{"one token over", 1, 801, Request{PromptTokens: 100, MaxTokens: 100}, false},
		{"no max_tokens: the expected output counts", 1, 500, Request{PromptTokens: 100, ExpectedOutput: 500}, false},
		{"slots full", 8, 0, Request{MaxTokens: 1}, false},
		{"larger than the limit: alone only", 0, 0, Request{PromptTokens: 5000, MaxTokens: 10}, true},
		{"larger than the limit, backend busy", 1, 10, Request{PromptTokens: 5000, MaxTokens: 10}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := Load{Inflight: tt.inflight, TokensInflight: tt.tokens}
			if got := l.Fits(&b, &tt.req); got != tt.want {
				t.Fatalf("Fits = %v, want %v", got, tt.want)
			}
		})
	}
	if (&Load{Inflight: 1, TokensInflight: 1 << 30}).Fits(&Backend{MaxInflight: 2}, &Request{MaxTokens: 9}) != true {
		t.Error("a backend without a token limit refused a request for its tokens")
	}
	// Ranking: the backend without token room is left out like a full one.
	s, _ := NewStrategyWith(StrategyLeastLoad, StrategyOptions{})
	p := mkPool(
		node{b: Backend{MaxInflight: 8, MaxTokensInflight: 1000, Capabilities: caps("chat", 1.0)}, l: Load{Inflight: 1, TokensInflight: 900}},
		node{b: Backend{MaxInflight: 8, Capabilities: caps("chat", 1.0)}, l: Load{Inflight: 4}},
	)
	if ranked, eligible := s.Rank(&Request{Model: AutoModel, MaxTokens: 200}, p, nil); eligible != 2 || !slices.Equal(indexes(ranked), []int{1}) {
		t.Errorf("ranked %v eligible %d, want [1] and 2", indexes(ranked), eligible)
	}
}

// TestOptimalScores: the optimal strategy scores capability × predicted
// latency, for full backends too (a waiting request is matched with slots
// about to free), and nothing for backends that cannot serve the request.
func TestOptimalScores(t *testing.T) {
	s, err := NewStrategyWith(StrategyOptimal, StrategyOptions{Explore: -1})
	if err != nil || !s.Assigns() {
		t.Fatalf("optimal: %v, assigns %v", err, s != nil && s.Assigns())
	}
	if b, _ := NewStrategy(StrategyBalanced, nil); b.Assigns() {
		t.Fatal("balanced assigns")
	}
	p := mkPool(
		node{b: Backend{MaxInflight: 2, Capabilities: caps("coding", 1.0)}, l: Load{Inflight: 2, Perf: slowPerf}}, // full, great coder, slow
		node{b: Backend{MaxInflight: 2, Capabilities: caps("coding", 0.5)}, l: Load{Inflight: 0, Perf: fastPerf}}, // half as good, fast
		node{b: Backend{MaxInflight: 2, Capabilities: caps("chat", 1.0)}, l: Load{Perf: fastPerf}},                // cannot code
	)
	req := Request{Model: AutoModel, Capability: "coding", MaxTokens: 16}
	out := make([]float64, 3)
	s.AssignScores(&req, p, out, nil)
	if out[2] != 0 || out[0] <= 0 || out[1] <= 0 {
		t.Fatalf("scores %v: want positive for the coders, 0 for the chat backend", out)
	}
	// A short answer loses little on the slow backend: capability decides.
	if out[0] <= out[1] {
		t.Errorf("short coding answer: %v, want the better coder ahead", out)
	}
	if n := testing.AllocsPerRun(100, func() { s.AssignScores(&req, p, out, make([]Candidate, 0, 3)) }); n > 1 && !raceEnabled {
		t.Errorf("%v allocations", n)
	}
}

// TestWorthWaiting: which Full candidates a request waits for, and how long.
func TestWorthWaiting(t *testing.T) {
	pred := func(wait, total time.Duration) Prediction { return Prediction{Wait: wait, TTFT: wait, Total: total} }
	full := func(i int, wait, total time.Duration) Candidate {
		return Candidate{Index: i, Full: true, Predicted: pred(wait, total)}
	}
	room := func(i int, total time.Duration) Candidate { return Candidate{Index: i, Predicted: pred(0, total)} }
	req := &Request{}
	const s = time.Second
	tests := []struct {
		name         string
		ranked       []Candidate
		wantIdx      []int // the wanted candidates, in order
		wantN        int
		wantPatience time.Duration
	}{
		{"none full", []Candidate{room(0, 1*s), room(1, 2*s)}, nil, 0, 0},
		{"a full one leads one with room", []Candidate{full(0, 300*ms, 1*s), room(1, 3*s)}, []int{0}, 1, 300*ms + 1*s},
		// All full: A (soonest, 1s) and C (within 1/0.9 of it) are waited
		// for; B (3s) is not; patience = A's wait + (3s − 1s)/2.
		{"all full: the soonest and those near it", []Candidate{full(0, 400*ms, 1*s), full(1, 100*ms, 3*s), full(2, 200*ms, 1050*ms)},
			[]int{0, 2}, 2, 200*ms + 1*s},
		// The strategy ranked B (slower) above A: both kept, in rank order.
		{"all full: ranked above the soonest", []Candidate{full(1, 100*ms, 2*s), full(0, 400*ms, 1*s), full(2, 100*ms, 4*s)},
			[]int{1, 0}, 2, 100*ms + 1500*ms},
		{"all full, all alike: any", []Candidate{full(0, 100*ms, 1*s), full(1, 100*ms, 1050*ms)}, nil, 0, 0},
		{"all full, nothing predicted: any", []Candidate{{Index: 0, Full: true}, {Index: 1, Full: true}}, nil, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ranked := append([]Candidate(nil), tt.ranked...)
			n, patience := WorthWaiting(req, ranked)
			if n != tt.wantN || patience != tt.wantPatience {
				t.Fatalf("WorthWaiting = %d, %v; want %d, %v", n, patience, tt.wantN, tt.wantPatience)
			}
			if tt.wantIdx != nil && !slices.Equal(indexes(ranked[:n]), tt.wantIdx) {
				t.Fatalf("waits for %v, want %v", indexes(ranked[:n]), tt.wantIdx)
			}
			if !slices.Equal(sortedIdx(ranked), sortedIdx(tt.ranked)) {
				t.Fatalf("candidates changed: %v from %v", indexes(ranked), indexes(tt.ranked))
			}
		})
	}
}

// TestWorthHoldingOut: with room on the first candidate, the request holds
// out for the candidates predicted within 1/0.9 of it (in rank order) when
// others are much slower, with half the gain over the soonest of those as its
// patience; otherwise it may take any.
func TestWorthHoldingOut(t *testing.T) {
	room := func(i int, total time.Duration) Candidate {
		return Candidate{Index: i, Predicted: Prediction{TTFT: total / 10, Total: total}}
	}
	const s = time.Second
	tests := []struct {
		name         string
		ranked       []Candidate
		wantIdx      []int
		wantPatience time.Duration
	}{
		{"one candidate", []Candidate{room(0, 1*s)}, nil, 0},
		{"all about as good", []Candidate{room(0, 1*s), room(1, 1050*ms), room(2, 900*ms)}, nil, 0},
		{"the rest much slower", []Candidate{room(0, 500*ms), room(1, 1300*ms), room(2, 3*s)}, []int{0}, 400 * ms},
		// Ranked by a blend, a slower one may lead: the faster ones within
		// its bound are held out for too, in rank order.
		{"near ones anywhere in the ranking", []Candidate{room(2, 1*s), room(1, 3*s), room(0, 300*ms)}, []int{2, 0}, 1 * s},
		{"a full one leads: WorthWaiting's case", []Candidate{{Index: 0, Full: true, Predicted: Prediction{Total: s}}, room(1, 3*s)}, nil, 0},
		{"a full one later: not this case", []Candidate{room(0, 300*ms), {Index: 1, Full: true, Predicted: Prediction{Total: 3 * s}}}, nil, 0},
		{"nothing predicted", []Candidate{{Index: 0}, {Index: 1}}, nil, 0},
		{"one unpredicted", []Candidate{room(0, 300*ms), {Index: 1}}, nil, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ranked := append([]Candidate(nil), tt.ranked...)
			n, patience := WorthHoldingOut(&Request{}, ranked)
			if !slices.Equal(indexes(ranked[:n]), tt.wantIdx) && (n != 0 || tt.wantIdx != nil) {
				t.Fatalf("holds out for %v, want %v", indexes(ranked[:n]), tt.wantIdx)
			}
			if patience != tt.wantPatience {
				t.Fatalf("patience %v, want %v", patience, tt.wantPatience)
			}
			if !slices.Equal(sortedIdx(ranked), sortedIdx(tt.ranked)) {
				t.Fatalf("candidates changed: %v from %v", indexes(ranked), indexes(tt.ranked))
			}
		})
	}
	// Streams are judged by their cost: the time to the first token counts
	// more (the 300ms backend writes its first token 10× later here).
	stream := []Candidate{
		{Index: 0, Predicted: Prediction{TTFT: 250 * ms, Total: 300 * ms}},
		{Index: 1, Predicted: Prediction{TTFT: 20 * ms, Total: 400 * ms}},
	}
	if n, _ := WorthHoldingOut(&Request{Stream: true}, stream); n != 0 {
		t.Errorf("stream: holds out for %v; both are about as good by its cost", indexes(stream[:n]))
	}
}

func sortedIdx(c []Candidate) []int {
	out := indexes(c)
	slices.Sort(out)
	return out
}
