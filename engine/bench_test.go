package engine

import (
	"math/rand"
	"testing"
	"time"
)

// benchPool is 16 backends of a realistic fleet: mixed sizes, capabilities,
// latencies and costs, some busy, one full, one draining.
func benchPool() *Pool {
	rnd := rand.New(rand.NewSource(16))
	p := &Pool{Backends: make([]Backend, 16), Loads: make([]Load, 16)}
	for i := range p.Backends {
		p.Backends[i] = Backend{
			Name:         "backend",
			Models:       map[string]string{"llama": "meta/llama", "qwen": "qwen/qwen"},
			DefaultModel: "meta/llama",
			Capabilities: map[string]float64{"chat": float64(rnd.Intn(10)+1) / 10, "coding": float64(rnd.Intn(10)) / 10},
			MaxInflight:  4 << rnd.Intn(3),
			Context:      32768,
			Cost:         float64(rnd.Intn(4)),
			Weight:       float64(rnd.Intn(2)),
		}
		p.Loads[i] = Load{
			Inflight:   rnd.Intn(p.Backends[i].MaxInflight),
			LatencyP95: time.Duration(rnd.Intn(5)) * 100 * ms,
			TTFTP95:    time.Duration(rnd.Intn(3)) * 20 * ms,
			Perf: Perf{
				TTFTBase:     time.Duration(rnd.Intn(100)+10) * ms,
				TTFTPerToken: float64(rnd.Intn(200)) * 1000,
				TPOT:         time.Duration(rnd.Intn(20)+2) * ms,
				MeanService:  time.Duration(rnd.Intn(3000)+200) * ms,
				Samples:      rnd.Intn(100),
			},
			Waiting:  rnd.Intn(3),
			Feedback: float64(rnd.Intn(10)+1) / 10,
		}
	}
	p.Loads[3].Inflight = p.Backends[3].MaxInflight
	p.Loads[5].Inflight = p.Backends[5].MaxInflight
	p.Loads[5].Perf.TPOT = ms // full, but worth waiting for
	p.Loads[9].Draining = true
	return p
}

func BenchmarkRank16(b *testing.B) {
	p, req := benchPool(), &Request{Model: AutoModel, Capability: "chat", PromptTokens: 800, MaxTokens: 256, Stream: true}
	for _, name := range StrategyNames() {
		b.Run(name, func(b *testing.B) {
			s := mustStrategy(b, name, rand.New(rand.NewSource(1)))
			out := make([]Candidate, 0, 16)
			b.ReportAllocs()
			for b.Loop() {
				out, _ = s.Rank(req, p, out)
			}
		})
	}
}
