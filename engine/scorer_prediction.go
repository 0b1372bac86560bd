package engine

// PredictionScorer scores candidates by their predicted cost (see
// Prediction.Cost: completion time, or for streams mostly time to first
// token), relative to the cheapest, waits for a slot included:
//
//	score(b) = min cost ÷ cost(b)      0.5 when unknown
//
// Candidates must carry their Predicted timeline (Strategy.Rank fills it).
type PredictionScorer struct{}

// Name returns "prediction".
func (PredictionScorer) Name() string { return "prediction" }

// Score implements Scorer.
func (PredictionScorer) Score(req *Request, _ *Pool, cands []Candidate, out []float64) {
	var best float64
	for _, c := range cands {
		if x := float64(c.Predicted.Cost(req.Stream)); x > 0 && (best == 0 || x < best) {
			best = x
		}
	}
	for k, c := range cands {
		if x := float64(c.Predicted.Cost(req.Stream)); x > 0 {
			out[k] = best / x
		} else {
			out[k] = neutralScore
		}
	}
}

// Interface guards
var _ Scorer = PredictionScorer{}
