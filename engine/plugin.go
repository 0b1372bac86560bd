package engine

import (
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// Rand is injected randomness (p2c, tie breaking). *math/rand.Rand satisfies it.
// A Strategy serialises its calls, so the Rand need not be safe for concurrent use.
type Rand interface{ Intn(n int) int }

// Filter drops backends that cannot serve a request at all. A backend must pass
// every filter of a strategy to be eligible; room (free slots) is checked apart,
// so that "nobody can serve this" and "everybody is full" stay distinguishable.
type Filter interface {
	Name() string
	Keep(req *Request, p *Pool, i int) bool // i indexes p.Backends/p.Loads
}

// Scorer rates eligible candidates for a request.
type Scorer interface {
	Name() string
	// Score writes a score in [0,1] for each candidate into out[k] (len(out)==len(cands)); may normalise across candidates.
	Score(req *Request, p *Pool, cands []Candidate, out []float64)
}

// Weighted gives a scorer its weight in a strategy's blend. The weight lives in
// this wrapper rather than in the scorer so that one scorer serves many blends.
type Weighted struct {
	Scorer
	Weight float64
}

// scoresCapability reports whether the request's capability says anything about
// the backends. An embeddings request that named no capability would otherwise be
// judged by DefaultCapability ("chat"), which says nothing about embeddings.
func scoresCapability(req *Request) bool {
	return req.Kind != KindEmbedding || req.Capability != ""
}

// loadRatio returns Inflight/MaxInflight in [0,1]; a backend with no capacity
// counts as full. Negative counts (drift) count as idle.
func loadRatio(b *Backend, l *Load) float64 {
	if b.MaxInflight <= 0 {
		return 1
	}
	return math.Min(float64(max(l.Inflight, 0))/float64(b.MaxInflight), 1)
}

// compareLoad orders backends i and j by load ratio, lower first. It
// cross-multiplies instead of dividing so that equal ratios (1/4 and 2/8) tie
// exactly and fall through to the tie rules.
func compareLoad(p *Pool, i, j int) int {
	ii, mi := int64(max(p.Loads[i].Inflight, 0)), int64(max(p.Backends[i].MaxInflight, 0))
	ij, mj := int64(max(p.Loads[j].Inflight, 0)), int64(max(p.Backends[j].MaxInflight, 0))
	switch l, r := ii*mj, ij*mi; {
	case l < r:
		return -1
	case l > r:
		return 1
	}
	return 0
}

// freeSlots is how many more requests backend i accepts.
func freeSlots(p *Pool, i int) int {
	return p.Backends[i].MaxInflight - max(p.Loads[i].Inflight, 0)
}

// latencyKey is the latency a request should be judged by on one backend: the
// TTFT p95 for a stream when known (what a streaming client waits for), else the
// end-to-end p95. 0 means not yet known.
func latencyKey(req *Request, l *Load) time.Duration {
	if req.Stream && l.TTFTP95 > 0 {
		return l.TTFTP95
	}
	return max(l.LatencyP95, 0)
}

// lockedRand serialises access to an injected Rand, which (like *math/rand.Rand)
// is usually not safe for concurrent use.
type lockedRand struct {
	mu  sync.Mutex
	rnd Rand
}

// intn draws one number in [0,n) in a critical section.
func (l *lockedRand) intn(n int) int {
	l.mu.Lock()
	v := l.rnd.Intn(n)
	l.mu.Unlock()
	return ((v % n) + n) % n
}

// two draws two distinct indexes in [0,n), n >= 2, in one critical section.
func (l *lockedRand) two(n int) (int, int) {
	l.mu.Lock()
	a, b := l.rnd.Intn(n), l.rnd.Intn(n-1)
	l.mu.Unlock()
	// Reduce defensively: a faulty Rand must not make Rank index out of range.
	a, b = ((a%n)+n)%n, ((b%(n-1))+(n-1))%(n-1)
	if b >= a {
		b++
	}
	return a, b
}

// splitMix is the fallback Rand when the caller injects none: a SplitMix64
// sequence from seed 0, deterministic and independent of global state.
type splitMix struct{ state atomic.Uint64 }

// Intn returns a pseudo-random int in [0,n).
func (s *splitMix) Intn(n int) int {
	z := s.state.Add(0x9e3779b97f4a7c15)
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	z ^= z >> 31
	return int(z % uint64(n))
}

// scratchPool recycles the per-scorer score buffers so that Rank does not
// allocate on the hot path. A stack array would escape anyway, because it is
// handed to a Scorer through an interface.
var scratchPool = sync.Pool{New: func() any { s := make([]float64, 0, 64); return &s }}

// getScratch returns a zeroed buffer of length n; give it back with putScratch.
func getScratch(n int) *[]float64 {
	sp := scratchPool.Get().(*[]float64)
	if cap(*sp) < n {
		*sp = make([]float64, n)
	}
	*sp = (*sp)[:n]
	clear(*sp)
	return sp
}

func putScratch(sp *[]float64) { scratchPool.Put(sp) }
