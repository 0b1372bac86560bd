package engine

// LoadScorer prefers idle backends:
//
//	score(b) = 1 - Inflight/MaxInflight   (clamped to [0,1]; MaxInflight <= 0 scores 0)
//
// It uses the ratio, not the free-slot count, so that a small backend at half
// load and a big one at half load are rated alike.
type LoadScorer struct{}

// Name returns "load".
func (LoadScorer) Name() string { return "load" }

// Score writes each candidate's load score into out.
func (LoadScorer) Score(_ *Request, p *Pool, cands []Candidate, out []float64) {
	for k, c := range cands {
		out[k] = 1 - loadRatio(&p.Backends[c.Index], &p.Loads[c.Index])
	}
}

// Interface guards
var _ Scorer = LoadScorer{}
