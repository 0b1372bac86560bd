package engine

import "time"

// PredictionScorer scores candidates by their predicted cost (see
// Prediction.Cost: completion time, or for streams mostly time to first
// token, waits for a slot included), by how much later than the cheapest
// they would serve the request, in units of the pool's typical request
// duration ref (see typicalService):
//
//	score(b) = 1 ÷ (1 + (cost(b) − min cost) ÷ ref)      0.5 when unknown
//
// Measured in absolute time, a slow backend loses much for a long answer and
// little for a short one, so that under load a blend (balanced) keeps the
// fast backends' slots for the requests that gain most from them and lets
// short requests fill the slow ones. With nothing known of the pool, the
// cheapest cost stands in for ref, which makes the score min cost ÷ cost.
// Candidates must carry their Predicted timeline (Strategy.Rank fills it).
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
	ref := float64(typicalService(p, req))
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

// typicalService is how long a typical request of the model takes on the
// pool's backends: the mean, over the backends whose speed is known (learned
// or hinted), of their predicted service time for this prompt and the
// model's usual output (ExpectedOutput, else DefaultExpectedOutput); 0 when
// nothing is known. It depends on the backends' speed, not on which requests
// happened to be served lately.
func typicalService(p *Pool, req *Request) time.Duration {
	out := req.ExpectedOutput
	if out <= 0 {
		out = DefaultExpectedOutput
	}
	var sum time.Duration
	n := 0
	for i := range p.Loads {
		if pf := &p.Loads[i].Perf; pf.Known() {
			sum += pf.Service(req.PromptTokens, out)
			n++
		}
	}
	if n == 0 {
		return 0
	}
	return sum / time.Duration(n)
}
