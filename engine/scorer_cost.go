package engine

// CostScorer prefers cheap backends:
//
//	score(b) = min{c.Cost : c a candidate with Cost > 0} / b.Cost   when b.Cost > 0
//	         = 0.5                                                 when b.Cost is unknown (0)
//
// The cheapest known candidate scores 1; a backend with no configured cost is
// treated as neutral rather than free, so leaving cost out of the configuration
// does not attract traffic.
type CostScorer struct{}

// Name returns "cost".
func (CostScorer) Name() string { return "cost" }

// Score writes each candidate's cost score into out.
func (CostScorer) Score(_ *Request, p *Pool, cands []Candidate, out []float64) {
	cheapest := 0.0
	for _, c := range cands {
		if x := p.Backends[c.Index].Cost; x > 0 && (cheapest == 0 || x < cheapest) {
			cheapest = x
		}
	}
	for k, c := range cands {
		if x := p.Backends[c.Index].Cost; x > 0 {
			out[k] = cheapest / x
		} else {
			out[k] = neutralScore
		}
	}
}

// Interface guards
var _ Scorer = CostScorer{}
