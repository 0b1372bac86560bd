package engine

import (
	"math/rand"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

const ms = time.Millisecond

func mustStrategy(t testing.TB, name string, rnd Rand) *Strategy {
	t.Helper()
	s, err := NewStrategy(name, rnd)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestNewStrategy(t *testing.T) {
	for _, name := range StrategyNames() {
		s := mustStrategy(t, name, rand.New(rand.NewSource(1)))
		if s.Name() != name {
			t.Errorf("NewStrategy(%q).Name() = %q", name, s.Name())
		}
	}
	if s := mustStrategy(t, "", nil); s.Name() != DefaultStrategy || DefaultStrategy != StrategyBalanced {
		t.Errorf(`NewStrategy("").Name() = %q, want balanced`, s.Name())
	}
	_, err := NewStrategy("quickest", nil)
	if err == nil {
		t.Fatal("unknown strategy accepted")
	}
	for _, name := range StrategyNames() {
		if !strings.Contains(err.Error(), name) {
			t.Errorf("error %q does not list %q", err, name)
		}
	}
	if !slices.Equal(StrategyNames(), []string{"greedy", "balanced", "fastest", "optimal", "least_load", "p2c", "round_robin", "latency"}) {
		t.Errorf("StrategyNames() = %v", StrategyNames())
	}
}

func caps(kv ...any) map[string]float64 {
	m := map[string]float64{}
	for i := 0; i < len(kv); i += 2 {
		m[kv[i].(string)] = kv[i+1].(float64)
	}
	return m
}

var (
	models   = map[string]string{"llama": "meta/llama"}
	chatOnly = caps("chat", 1.0)
)

// TestRank covers each strategy's order on hand-computed pools. Every strategy
// is fresh, so the first call has turn 0 (no tie rotation).
func TestRank(t *testing.T) {
	auto := Request{Model: AutoModel, Capability: "coding"}
	tests := []struct {
		name         string
		strategy     string
		rnd          Rand
		req          Request
		nodes        []node
		want         []int
		wantEligible int
	}{
		{
			name: "greedy: capability, then load ratio", strategy: StrategyGreedy, req: auto,
			nodes: []node{
				{b: Backend{MaxInflight: 4, Capabilities: caps("coding", 0.9)}, l: Load{Inflight: 2}},
				{b: Backend{MaxInflight: 4, Capabilities: caps("coding", 0.5)}},
				{b: Backend{MaxInflight: 4, Capabilities: caps("coding", 0.9)}, l: Load{Inflight: 1}},
				{b: Backend{MaxInflight: 4, Capabilities: caps("coding", 1.0)}, l: Load{Inflight: 4}}, // full
				{b: Backend{MaxInflight: 4, Capabilities: caps("chat", 1.0)}},                         // lacks coding
			},
			want: []int{2, 0, 1}, wantEligible: 4,
		},
		{
			name: "greedy: weight multiplies capability", strategy: StrategyGreedy, req: auto,
			nodes: []node{
				{b: Backend{MaxInflight: 4, Capabilities: caps("coding", 0.9)}},
				{b: Backend{MaxInflight: 4, Capabilities: caps("coding", 0.5), Weight: 2}},
			},
			want: []int{1, 0}, wantEligible: 2,
		},
		{
			// A: .40*1 + .40*.5 + .15*.25 + .05*.5 = .6625; B: .40*.8 + .40*.5 + .15*1 + .05*.5 = .695
			name: "balanced: load outweighs a small capability edge", strategy: StrategyBalanced, req: auto,
			nodes: []node{
				{b: Backend{MaxInflight: 4, Capabilities: caps("coding", 1.0)}, l: Load{Inflight: 3}},
				{b: Backend{MaxInflight: 4, Capabilities: caps("coding", 0.8)}},
			},
			want: []int{1, 0}, wantEligible: 2,
		},
		{
			// Predicted 4s, 1s, 1s for the default 256 tokens.
			// A: .40 + .40*.25 + .15 + .05 = .70; B: .40*.7 + .40 + .15 + .05*.5 = .855;
			// C: .40*.6 + .40 + .15 + .05 = .84
			name: "balanced: predicted latency and cost nudge", strategy: StrategyBalanced, req: auto,
			nodes: []node{
				{b: Backend{MaxInflight: 4, Capabilities: caps("coding", 1.0), Cost: 1}, l: Load{Perf: Perf{TPOT: 16 * ms, Samples: 50}}},
				{b: Backend{MaxInflight: 4, Capabilities: caps("coding", 0.7)}, l: Load{Perf: Perf{TPOT: 4 * ms, Samples: 50}}},
				{b: Backend{MaxInflight: 4, Capabilities: caps("coding", 0.6), Cost: 1}, l: Load{Perf: Perf{TPOT: 4 * ms, Samples: 50}}},
			},
			want: []int{1, 2, 0}, wantEligible: 3,
		},
		{
			name: "balanced: weight doubles an equal backend", strategy: StrategyBalanced, req: auto,
			nodes: []node{
				{b: Backend{MaxInflight: 4, Capabilities: caps("coding", 1.0)}},
				{b: Backend{MaxInflight: 4, Capabilities: caps("coding", 1.0), Weight: 2}},
			},
			want: []int{1, 0}, wantEligible: 2,
		},
		{
			name: "balanced: named model ignores missing capability", strategy: StrategyBalanced,
			req: Request{Model: "llama", Capability: "coding"},
			nodes: []node{
				{b: Backend{MaxInflight: 4, Models: models}},
				{b: Backend{MaxInflight: 4, Capabilities: caps("coding", 1.0)}}, // does not serve llama
				{b: Backend{MaxInflight: 4, Models: models, Capabilities: caps("coding", 0.5)}},
			},
			want: []int{2, 0}, wantEligible: 2,
		},
		{
			name: "least_load: ratio, then more free slots", strategy: StrategyLeastLoad, req: auto,
			nodes: []node{
				{b: Backend{MaxInflight: 4, Capabilities: caps("coding", 1.0)}, l: Load{Inflight: 2}},
				{b: Backend{MaxInflight: 4, Capabilities: caps("coding", 1.0)}, l: Load{Inflight: 1}},
				{b: Backend{MaxInflight: 8, Capabilities: caps("coding", 0.1)}, l: Load{Inflight: 2}},
				{b: Backend{MaxInflight: 2, Capabilities: caps("coding", 0.1)}},
				{b: Backend{MaxInflight: 2, Capabilities: caps("coding", 0.1)}, l: Load{Inflight: 2}}, // full
			},
			want: []int{3, 2, 1, 0}, wantEligible: 5,
		},
		{
			// draws 0 (load .5) and 1+1=2 (load .9): 0 wins; the rest by load.
			name: "p2c: less loaded of the two, rest by load", strategy: StrategyP2C, req: auto,
			rnd: &scriptedRand{vals: []int{0, 1}},
			nodes: []node{
				{b: Backend{MaxInflight: 10, Capabilities: caps("coding", 1.0)}, l: Load{Inflight: 5}},
				{b: Backend{MaxInflight: 10, Capabilities: caps("coding", 1.0)}, l: Load{Inflight: 1}},
				{b: Backend{MaxInflight: 10, Capabilities: caps("coding", 1.0)}, l: Load{Inflight: 9}},
			},
			want: []int{0, 1, 2}, wantEligible: 3,
		},
		{
			name: "p2c: second draw wins when less loaded", strategy: StrategyP2C, req: auto,
			rnd: &scriptedRand{vals: []int{2, 0}},
			nodes: []node{
				{b: Backend{MaxInflight: 10, Capabilities: caps("coding", 1.0)}, l: Load{Inflight: 5}},
				{b: Backend{MaxInflight: 10, Capabilities: caps("coding", 1.0)}, l: Load{Inflight: 1}},
				{b: Backend{MaxInflight: 10, Capabilities: caps("coding", 1.0)}, l: Load{Inflight: 9}},
			},
			want: []int{0, 1, 2}, wantEligible: 3,
		},
		{
			name: "p2c: single candidate draws nothing", strategy: StrategyP2C, req: auto,
			rnd: &scriptedRand{},
			nodes: []node{
				{b: Backend{MaxInflight: 1, Capabilities: caps("coding", 1.0)}, l: Load{Inflight: 1}},
				{b: Backend{MaxInflight: 1, Capabilities: caps("coding", 1.0)}},
			},
			want: []int{1}, wantEligible: 2,
		},
		{
			name: "round_robin: pool order on turn 0, full skipped", strategy: StrategyRoundRobin, req: auto,
			nodes: []node{
				{b: Backend{MaxInflight: 1, Capabilities: caps("coding", 1.0)}, l: Load{Inflight: 1}},
				{b: Backend{MaxInflight: 4, Capabilities: caps("coding", 0.1)}, l: Load{Inflight: 3}},
				{b: Backend{MaxInflight: 4, Capabilities: caps("coding", 1.0)}},
			},
			want: []int{1, 2}, wantEligible: 3,
		},
		{
			name: "latency: unknown first, then p95, then load", strategy: StrategyLatency, req: auto,
			nodes: []node{
				{b: Backend{MaxInflight: 4, Capabilities: caps("coding", 1.0)}, l: Load{LatencyP95: 100 * ms}},
				{b: Backend{MaxInflight: 4, Capabilities: caps("coding", 1.0)}},
				{b: Backend{MaxInflight: 4, Capabilities: caps("coding", 1.0)}, l: Load{LatencyP95: 50 * ms, Inflight: 1}},
				{b: Backend{MaxInflight: 4, Capabilities: caps("coding", 1.0)}, l: Load{LatencyP95: 50 * ms}},
				{b: Backend{MaxInflight: 4, Capabilities: caps("coding", 1.0)}, l: Load{LatencyP95: 1 * ms, Inflight: 4}}, // full
			},
			want: []int{1, 3, 2, 0}, wantEligible: 5,
		},
		{
			name: "latency: streams go by ttft", strategy: StrategyLatency,
			req: Request{Model: AutoModel, Capability: "coding", Stream: true},
			nodes: []node{
				{b: Backend{MaxInflight: 4, Capabilities: caps("coding", 1.0)}, l: Load{LatencyP95: 100 * ms, TTFTP95: 10 * ms}},
				{b: Backend{MaxInflight: 4, Capabilities: caps("coding", 1.0)}, l: Load{LatencyP95: 50 * ms, TTFTP95: 30 * ms}},
			},
			want: []int{0, 1}, wantEligible: 2,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := mustStrategy(t, tt.strategy, tt.rnd)
			got, eligible := s.Rank(&tt.req, mkPool(tt.nodes...), nil)
			if !slices.Equal(indexes(got), tt.want) || eligible != tt.wantEligible {
				t.Fatalf("Rank = %v (scores %v), eligible %d; want %v, eligible %d", indexes(got), got, eligible, tt.want, tt.wantEligible)
			}
		})
	}
}

// TestRankOutcomes checks the three answers the handler acts on, for every strategy.
func TestRankOutcomes(t *testing.T) {
	coder := Backend{MaxInflight: 2, Models: models, Capabilities: caps("coding", 1.0)}
	tests := []struct {
		name         string
		req          Request
		nodes        []node
		wantRanked   int
		wantEligible int
	}{
		{"nobody serves the model", Request{Model: "qwen"}, []node{{b: coder}, {b: coder}}, 0, 0},
		{"all cooling down or draining", Request{Model: "llama"}, []node{{b: coder, l: Load{CoolingDown: true}}, {b: coder, l: Load{Draining: true}}}, 0, 0},
		{"context too large everywhere", Request{Model: "llama", PromptTokens: 9000}, []node{{b: Backend{MaxInflight: 2, Models: models, Context: 8192}}}, 0, 0},
		{"all full: wait", Request{Model: "llama"}, []node{{b: coder, l: Load{Inflight: 2}}, {b: coder, l: Load{Inflight: 3}}}, 0, 2},
		{"no capacity configured is never room", Request{Model: "llama"}, []node{{b: Backend{Models: models}, l: Load{Inflight: -1}}}, 0, 1},
		{"one with room", Request{Model: "llama"}, []node{{b: coder, l: Load{Inflight: 2}}, {b: coder, l: Load{Inflight: 1}}}, 1, 2},
		{"empty pool", Request{Model: AutoModel}, nil, 0, 0},
	}
	for _, name := range StrategyNames() {
		for _, tt := range tests {
			t.Run(name+"/"+tt.name, func(t *testing.T) {
				s := mustStrategy(t, name, rand.New(rand.NewSource(1)))
				got, eligible := s.Rank(&tt.req, mkPool(tt.nodes...), nil)
				if s.Predictive() && tt.wantRanked == 0 && eligible > 0 {
					// A predictive strategy ranks every backend when all
					// are full, each marked Full.
					for _, c := range got {
						if !c.Full {
							t.Fatalf("all full: %+v not marked Full", c)
						}
					}
					got = withoutFullCands(got)
				}
				if len(got) != tt.wantRanked || eligible != tt.wantEligible {
					t.Fatalf("Rank = %v, eligible %d; want %d ranked, eligible %d", got, eligible, tt.wantRanked, tt.wantEligible)
				}
			})
		}
	}
}

func TestRankSkipsBackendsWithoutLoad(t *testing.T) {
	p := &Pool{Backends: []Backend{{MaxInflight: 1, Capabilities: chatOnly}, {MaxInflight: 1, Capabilities: chatOnly}}, Loads: []Load{{}}}
	s := mustStrategy(t, StrategyBalanced, nil)
	got, eligible := s.Rank(&Request{Model: AutoModel}, p, nil)
	if !slices.Equal(indexes(got), []int{0}) || eligible != 1 {
		t.Fatalf("Rank = %v, %d; want [0], 1", indexes(got), eligible)
	}
	if s.Eligible(&Request{Model: AutoModel}, p, 1) {
		t.Fatal("backend without a Load is eligible")
	}
}

func TestRankReusesOut(t *testing.T) {
	p := mkPool(node{b: Backend{MaxInflight: 1}}, node{b: Backend{MaxInflight: 1}})
	out := make([]Candidate, 3, 8)
	out[0] = Candidate{Index: 7, Score: 9} // stale content must not leak into the result
	got, _ := mustStrategy(t, StrategyGreedy, nil).Rank(&Request{Model: AutoModel, Kind: KindEmbedding}, p, out)
	if len(got) != 2 || &got[0] != &out[0] || got[0].Score > 1 {
		t.Fatalf("Rank did not reuse out[:0]: %v", got)
	}
}

func TestEligible(t *testing.T) {
	p := mkPool(
		node{b: Backend{MaxInflight: 1, Models: models}, l: Load{Inflight: 1}},
		node{b: Backend{MaxInflight: 1, Models: models}, l: Load{Draining: true}},
		node{b: Backend{MaxInflight: 1}},
	)
	req := &Request{Model: "llama"}
	s := mustStrategy(t, StrategyBalanced, nil)
	tests := []struct {
		i    int
		want bool
	}{{0, true}, {1, false}, {2, false}, {-1, false}, {3, false}}
	for _, tt := range tests {
		if got := s.Eligible(req, p, tt.i); got != tt.want {
			t.Errorf("Eligible(%d) = %v, want %v", tt.i, got, tt.want)
		}
	}
}

// tiePool has four equally good backends at sparse indexes 0, 2, 3, 5 and two
// worse ones (by every strategy's measure) at 1 and 4.
func tiePool() *Pool {
	good := node{b: Backend{MaxInflight: 4, Capabilities: caps("chat", 0.9)}, l: Load{LatencyP95: 100 * ms}}
	bad := node{b: Backend{MaxInflight: 4, Capabilities: caps("chat", 0.1)}, l: Load{Inflight: 3, LatencyP95: 900 * ms}}
	return mkPool(good, bad, good, good, bad, good)
}

func TestTiesTakeTurns(t *testing.T) {
	const rounds = 25
	for _, name := range StrategyNames() {
		t.Run(name, func(t *testing.T) {
			s := mustStrategy(t, name, rand.New(rand.NewSource(7)))
			p, req := tiePool(), &Request{Model: AutoModel}
			counts := map[int]int{}
			var out []Candidate
			for range 4 * rounds {
				out, _ = s.Rank(req, p, out)
				counts[out[0].Index]++
			}
			switch name {
			case StrategyRoundRobin: // load-blind: all six take turns
				for i := range 6 {
					if counts[i] < 4*rounds/6 {
						t.Fatalf("first picks %v: backend %d starved", counts, i)
					}
				}
			case StrategyP2C: // random: the good ones share, the bad only win against each other
				for _, i := range []int{0, 2, 3, 5} {
					if counts[i] == 0 {
						t.Fatalf("first picks %v: backend %d never first", counts, i)
					}
				}
			default: // exact rotation among the four
				want := map[int]int{0: rounds, 2: rounds, 3: rounds, 5: rounds}
				if !mapsEqual(counts, want) {
					t.Fatalf("first picks %v, want %v", counts, want)
				}
			}
		})
	}
}

func mapsEqual(a, b map[int]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func TestRoundRobinSequence(t *testing.T) {
	p := mkPool(
		node{b: Backend{MaxInflight: 2, Capabilities: chatOnly}},
		node{b: Backend{MaxInflight: 2, Capabilities: chatOnly}, l: Load{Inflight: 2}}, // full: skipped
		node{b: Backend{MaxInflight: 2, Capabilities: chatOnly}},
		node{b: Backend{MaxInflight: 2, Capabilities: chatOnly}, l: Load{Inflight: 1}},
	)
	s := mustStrategy(t, StrategyRoundRobin, nil)
	want := [][]int{{0, 2, 3}, {2, 3, 0}, {3, 0, 2}, {0, 2, 3}}
	for call, w := range want {
		got, _ := s.Rank(&Request{Model: AutoModel}, p, nil)
		if !slices.Equal(indexes(got), w) {
			t.Fatalf("call %d: Rank = %v, want %v", call, indexes(got), w)
		}
	}
}

func TestP2CDeterministic(t *testing.T) {
	rnd := rand.New(rand.NewSource(99))
	p := randomPool(rnd, 12)
	for i := range p.Backends {
		p.Loads[i] = Load{Inflight: rnd.Intn(4)}
		p.Backends[i].MaxInflight = 4
		p.Backends[i].Context = 0
	}
	req := &Request{Model: AutoModel}
	run := func(s *Strategy) (seq [][]int) {
		for range 200 {
			got, _ := s.Rank(req, p, nil)
			seq = append(seq, indexes(got))
		}
		return seq
	}
	a := run(mustStrategy(t, StrategyP2C, rand.New(rand.NewSource(42))))
	b := run(mustStrategy(t, StrategyP2C, rand.New(rand.NewSource(42))))
	for k := range a {
		if !slices.Equal(a[k], b[k]) {
			t.Fatalf("call %d differs with the same seed: %v vs %v", k, a[k], b[k])
		}
	}
	c := run(mustStrategy(t, StrategyP2C, nil)) // nil Rand: deterministic fallback
	d := run(mustStrategy(t, StrategyP2C, nil))
	firsts := map[int]bool{}
	for k := range c {
		if !slices.Equal(c[k], d[k]) {
			t.Fatalf("nil Rand: call %d differs: %v vs %v", k, c[k], d[k])
		}
		firsts[c[k][0]] = true
	}
	if len(firsts) < 2 {
		t.Fatalf("nil Rand: always picks %v first", firsts)
	}
}

// TestP2CNeverPicksTheMostLoaded: the strictly most loaded candidate loses every
// duel, so it is never first; the least loaded wins 2 duels in 3 (n=3).
func TestP2CNeverPicksTheMostLoaded(t *testing.T) {
	p := mkPool(
		node{b: Backend{MaxInflight: 10, Capabilities: chatOnly}, l: Load{Inflight: 9}},
		node{b: Backend{MaxInflight: 10, Capabilities: chatOnly}, l: Load{Inflight: 5}},
		node{b: Backend{MaxInflight: 10, Capabilities: chatOnly}, l: Load{Inflight: 1}},
	)
	s := mustStrategy(t, StrategyP2C, rand.New(rand.NewSource(3)))
	counts := map[int]int{}
	const n = 3000
	for range n {
		got, _ := s.Rank(&Request{Model: AutoModel}, p, nil)
		counts[got[0].Index]++
		if !isLeastLoadOrder(p, got[1:]) {
			t.Fatalf("rest not in least_load order: %v", indexes(got))
		}
	}
	if counts[0] != 0 {
		t.Fatalf("most loaded picked first %d times", counts[0])
	}
	if c := counts[2]; c < n*2/3-150 || c > n*2/3+150 {
		t.Fatalf("least loaded first %d/%d times, want about 2/3", c, n)
	}
}

func isLeastLoadOrder(p *Pool, c []Candidate) bool {
	for k := 1; k < len(c); k++ {
		if compareLeastLoad(p, c[k-1], c[k]) > 0 {
			return false
		}
	}
	return true
}

// randomPool builds n backends with random models, capabilities, limits,
// context windows, costs and weights, and random live load and health.
func randomPool(rnd *rand.Rand, n int) *Pool {
	p := &Pool{Backends: make([]Backend, n), Loads: make([]Load, n)}
	names := []string{"a", "b"}
	for i := range n {
		b := Backend{Models: map[string]string{}, Capabilities: map[string]float64{}}
		for _, m := range names {
			if rnd.Intn(2) == 0 {
				b.Models[m] = m
			}
		}
		for _, c := range []string{"chat", "coding"} {
			if rnd.Intn(3) > 0 {
				b.Capabilities[c] = float64(rnd.Intn(5)) / 4 // coarse, so ties happen
			}
		}
		b.MaxInflight = rnd.Intn(6)
		if rnd.Intn(3) == 0 {
			b.Context = 1000 * (1 + rnd.Intn(8))
		}
		b.Cost = float64(rnd.Intn(3))
		b.Weight = float64(rnd.Intn(3))
		p.Backends[i] = b
		p.Loads[i] = Load{
			Inflight:    rnd.Intn(7) - 1,
			LatencyP95:  time.Duration(rnd.Intn(4)) * 100 * ms,
			TTFTP95:     time.Duration(rnd.Intn(3)) * 20 * ms,
			CoolingDown: rnd.Intn(10) == 0,
			Draining:    rnd.Intn(10) == 0,
		}
	}
	return p
}

func randomRequest(rnd *rand.Rand) *Request {
	return &Request{
		Kind:         Kind(rnd.Intn(4)),
		Model:        []string{AutoModel, "a", "b", "c"}[rnd.Intn(4)],
		Capability:   []string{"", "chat", "coding"}[rnd.Intn(3)],
		PromptTokens: rnd.Intn(6000),
		MaxTokens:    rnd.Intn(3000),
		Stream:       rnd.Intn(2) == 0,
	}
}

// TestNeverPicksFull is a property test over many random pools: for every
// strategy, Rank returns exactly the eligible backends with room, each once,
// in the strategy's order, and counts eligibility the way Eligible does.
func TestNeverPicksFull(t *testing.T) {
	for _, name := range StrategyNames() {
		t.Run(name, func(t *testing.T) {
			rnd := rand.New(rand.NewSource(2024))
			s := mustStrategy(t, name, rand.New(rand.NewSource(5)))
			var out []Candidate
			for iter := range 3000 {
				p, req := randomPool(rnd, rnd.Intn(25)), randomRequest(rnd)
				var eligible int
				out, eligible = s.Rank(req, p, out)
				// Full candidates (predictive strategies: backends worth
				// waiting for, or every one when all are full) must be
				// eligible, without room, each once, and lead the ranking.
				nFull := 0
				for k, c := range out {
					if !c.Full {
						continue
					}
					b, l := &p.Backends[c.Index], &p.Loads[c.Index]
					if !s.Predictive() || k != nFull || l.Fits(b, req) || !s.Eligible(req, p, c.Index) {
						t.Fatalf("iter %d: Full candidate %d at %d (predictive %v, fits %v)", iter, c.Index, k, s.Predictive(), l.Fits(b, req))
					}
					nFull++
				}
				out = out[nFull:]
				wantEligible, wantRanked := 0, 0
				for i := range p.Backends {
					if s.Eligible(req, p, i) {
						wantEligible++
						if p.Loads[i].HasRoom(&p.Backends[i]) && p.Backends[i].MaxInflight > 0 {
							wantRanked++
						}
					}
				}
				if eligible != wantEligible || len(out) != wantRanked {
					t.Fatalf("iter %d: ranked %d, eligible %d; want %d, %d", iter, len(out), eligible, wantRanked, wantEligible)
				}
				seen := map[int]bool{}
				for _, c := range out {
					b, l := &p.Backends[c.Index], &p.Loads[c.Index]
					if !l.HasRoom(b) || !s.Eligible(req, p, c.Index) || seen[c.Index] {
						t.Fatalf("iter %d: picked full, ineligible or duplicate backend %d (%+v, %+v)", iter, c.Index, b, l)
					}
					seen[c.Index] = true
					if c.Score < 0 || c.Score > backendWeight(b)+1e-9 {
						t.Fatalf("iter %d: score %v out of [0, weight]", iter, c.Score)
					}
				}
				checkOrder(t, name, req, p, out)
			}
		})
	}
}

// withoutFullCands drops the Full candidates.
func withoutFullCands(cands []Candidate) []Candidate {
	var out []Candidate
	for _, c := range cands {
		if !c.Full {
			out = append(out, c)
		}
	}
	return out
}

// checkOrder asserts the strategy's documented order on a ranked list.
func checkOrder(t *testing.T, name string, req *Request, p *Pool, out []Candidate) {
	t.Helper()
	for k := 1; k < len(out); k++ {
		a, b := out[k-1], out[k]
		ok := true
		switch name {
		case StrategyGreedy, StrategyBalanced:
			ok = a.Score > b.Score || a.Score == b.Score && compareLoad(p, a.Index, b.Index) <= 0
		case StrategyLeastLoad:
			ok = compareLeastLoad(p, a, b) <= 0
		case StrategyP2C:
			ok = k == 1 || compareLeastLoad(p, a, b) <= 0
		case StrategyLatency:
			la, lb := latencyKey(req, &p.Loads[a.Index]), latencyKey(req, &p.Loads[b.Index])
			ok = la == 0 || lb != 0 && la <= lb
		case StrategyRoundRobin:
			// A rotation of pool order: at most one descent.
		}
		if !ok {
			t.Fatalf("%s: %v out of order at %d", name, out, k)
		}
	}
	if name == StrategyRoundRobin {
		descents := 0
		for k := 1; k < len(out); k++ {
			if out[k].Index < out[k-1].Index {
				descents++
			}
		}
		if descents > 1 {
			t.Fatalf("round_robin: %v is not a rotation of pool order", indexes(out))
		}
	}
}

// TestConcurrentRank hammers one strategy from many goroutines; run with -race.
// Round robin must hand out turns exactly evenly, which only holds if the
// counter is atomic.
func TestConcurrentRank(t *testing.T) {
	const goroutines, calls = 8, 300
	p := mkPool(
		node{b: Backend{MaxInflight: 4, Capabilities: caps("chat", 1.0)}, l: Load{Inflight: 1, LatencyP95: 80 * ms}},
		node{b: Backend{MaxInflight: 4, Capabilities: caps("chat", 1.0)}, l: Load{Inflight: 1, LatencyP95: 80 * ms}},
		node{b: Backend{MaxInflight: 8, Capabilities: caps("chat", 0.5)}, l: Load{Inflight: 2}},
		node{b: Backend{MaxInflight: 2, Capabilities: caps("chat", 0.7)}, l: Load{Inflight: 1, LatencyP95: 300 * ms}},
	)
	for _, name := range StrategyNames() {
		t.Run(name, func(t *testing.T) {
			s := mustStrategy(t, name, rand.New(rand.NewSource(11)))
			var mu sync.Mutex
			counts := map[int]int{}
			var wg sync.WaitGroup
			for range goroutines {
				wg.Go(func() {
					req := &Request{Model: AutoModel}
					out := make([]Candidate, 0, 4)
					local := map[int]int{}
					for range calls {
						var eligible int
						out, eligible = s.Rank(req, p, out)
						if len(out) != 4 || eligible != 4 {
							t.Errorf("Rank = %v, eligible %d", out, eligible)
							return
						}
						local[out[0].Index]++
					}
					mu.Lock()
					for k, v := range local {
						counts[k] += v
					}
					mu.Unlock()
				})
			}
			wg.Wait()
			if name == StrategyRoundRobin {
				for i := range 4 {
					if counts[i] != goroutines*calls/4 {
						t.Fatalf("round robin first picks %v, want %d each", counts, goroutines*calls/4)
					}
				}
			}
		})
	}
}

// TestRankAllocs pins the hot-path budget: no allocation when out has room.
func TestRankAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector makes sync.Pool drop items")
	}
	p, req := benchPool(), &Request{Model: AutoModel, Capability: "chat"}
	for _, name := range StrategyNames() {
		s := mustStrategy(t, name, rand.New(rand.NewSource(1)))
		out := make([]Candidate, 0, 16)
		s.Rank(req, p, out) // warm the scratch pool
		if n := testing.AllocsPerRun(200, func() { out, _ = s.Rank(req, p, out) }); n != 0 {
			t.Errorf("%s: %v allocs per Rank, want 0", name, n)
		}
	}
}

func TestDiagnose(t *testing.T) {
	s, err := NewStrategy(StrategyBalanced, nil)
	if err != nil {
		t.Fatal(err)
	}
	mk := func(model string, ctx int, caps map[string]float64, l Load) node {
		return node{b: Backend{Models: map[string]string{model: model}, Context: ctx, Capabilities: caps, MaxInflight: 1}, l: l}
	}
	chat := map[string]float64{"chat": 1}
	tests := []struct {
		name  string
		req   Request
		nodes []node
		want  Reason
	}{
		{"eligible", Request{Model: "m"}, []node{mk("m", 0, chat, Load{})}, ReasonEligible},
		{"eligible even when full", Request{Model: "m"}, []node{mk("m", 0, chat, Load{Inflight: 1})}, ReasonEligible},
		{"nobody serves the model", Request{Model: "x"}, []node{mk("m", 0, chat, Load{})}, ReasonNoModel},
		{"auto without the capability", Request{Model: AutoModel, Capability: "coding"}, []node{mk("m", 0, chat, Load{})}, ReasonNoModel},
		{"too long for every context", Request{Model: "m", PromptTokens: 900, MaxTokens: 200}, []node{mk("m", 1000, chat, Load{}), mk("m", 512, chat, Load{})}, ReasonContext},
		{"too long for those that serve it", Request{Model: "m", PromptTokens: 900}, []node{mk("m", 512, chat, Load{}), mk("other", 0, chat, Load{})}, ReasonContext},
		{"fits but cooling down", Request{Model: "m", PromptTokens: 900}, []node{mk("m", 512, chat, Load{}), mk("m", 4096, chat, Load{CoolingDown: true})}, ReasonUnhealthy},
		{"fits but draining", Request{Model: "m"}, []node{mk("m", 0, chat, Load{Draining: true})}, ReasonUnhealthy},
		{"too long and cooling down is still the client's error", Request{Model: "m", PromptTokens: 900}, []node{mk("m", 512, chat, Load{CoolingDown: true})}, ReasonContext},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := mkPool(tt.nodes...)
			if got := s.Diagnose(&tt.req, p); got != tt.want {
				t.Fatalf("Diagnose = %d, want %d", got, tt.want)
			}
			for i := range tt.nodes {
				want := tt.want != ReasonNoModel && tt.want != ReasonContext && (ModelFilter{}).Keep(&tt.req, p, i) && (ContextFilter{}).Keep(&tt.req, p, i)
				if tt.want == ReasonUnhealthy || tt.want == ReasonEligible {
					if got := s.Fits(&tt.req, p, i); got != want {
						t.Errorf("Fits(%d) = %v, want %v", i, got, want)
					}
				}
			}
		})
	}
}
