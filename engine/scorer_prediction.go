package engine

// PredictionScorer scores candidates by their predicted cost (see
// Prediction.Cost: completion time, or for streams mostly time to first
// token, waits for a slot included), by how much later than the cheapest
// they would serve the request, in units of the pool's typical request
// duration ref (the mean service time of its backends, PoolPerf):
//
//	score(b) = 1 ÷ (1 + (cost(b) − min cost) ÷ ref)      0.5 when unknown
//
// Measured in absolute time, a slow backend loses much for a long answer and
// little for a short one, so that under load a blend (balanced) keeps the
// fast backends' slots for the requests that gain most from them and lets
// short requests fill the slow ones. With ref unknown, the cheapest cost
// stands in for it, which makes the score min cost ÷ cost. Candidates must
// carry their Predicted timeline (Strategy.Rank fills it).
type PredictionScorer struct{}

// Name returns "prediction".
func (PredictionScorer) Name() string { return "prediction" }

// Score implements Scorer.
func (PredictionScorer) Score(req *Request, p *Pool, cands []Candidate, out []float64) {
	var best float64
	for _, c := range cands {
		if x := float64(c.Predicted.Cost(req.Stream)); x > 0 && (best == 0 || x < best) {
			best = x
		}
	}
	ref := float64(PoolPerf(p).MeanService)
	if ref <= 0 {
		ref = best
	}
	for k, c := range cands {
		if x := float64(c.Predicted.Cost(req.Stream)); x > 0 {
			out[k] = 1 / (1 + (x-best)/ref)
		} else {
			out[k] = neutralScore
		}
	}
}

// Interface guards
var _ Scorer = PredictionScorer{}
