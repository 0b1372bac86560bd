package engine

import "time"

// LatencyScorer prefers backends that answered fast recently:
//
//	lat(b)   = TTFTP95 if req.Stream and TTFTP95 known, else LatencyP95 (0 = unknown)
//	score(b) = min{lat(c) : c a candidate with lat(c) known} / lat(b)   when lat(b) known
//	         = 0.5                                                      when lat(b) unknown
//
// The fastest known candidate scores 1 and one twice as slow scores 0.5, the same
// as a backend not measured yet: an unknown backend is neither favoured nor
// starved, and its first requests give it a number. For streams the latency per
// backend is the TTFT p95 when that backend has one, because time to first token
// is what a streaming client waits for.
type LatencyScorer struct{}

// Name returns "latency".
func (LatencyScorer) Name() string { return "latency" }

// Score writes each candidate's latency score into out.
func (LatencyScorer) Score(req *Request, p *Pool, cands []Candidate, out []float64) {
	var fastest time.Duration
	for _, c := range cands {
		if l := latencyKey(req, &p.Loads[c.Index]); l > 0 && (fastest == 0 || l < fastest) {
			fastest = l
		}
	}
	for k, c := range cands {
		if l := latencyKey(req, &p.Loads[c.Index]); l > 0 {
			out[k] = float64(fastest) / float64(l)
		} else {
			out[k] = neutralScore
		}
	}
}

// neutralScore is what a scorer gives when it knows nothing about a backend.
const neutralScore = 0.5

// Interface guards
var _ Scorer = LatencyScorer{}
