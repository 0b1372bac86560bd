package engine

// CapabilityScorer rates how good each candidate is at what the request asks for:
//
//	score(b) = clamp(b.Capabilities[req.WantedCapability()], 0, 1)
//
// An embeddings request that named no capability scores 1 everywhere: the
// default "chat" capability says nothing about embeddings, so the scorer stays
// neutral and the rest of the blend decides.
type CapabilityScorer struct{}

// Name returns "capability".
func (CapabilityScorer) Name() string { return "capability" }

// Score writes each candidate's capability score into out.
func (CapabilityScorer) Score(req *Request, p *Pool, cands []Candidate, out []float64) {
	if !scoresCapability(req) {
		for k := range cands {
			out[k] = 1
		}
		return
	}
	capability := req.WantedCapability()
	for k, c := range cands {
		out[k] = min(max(p.Backends[c.Index].Capabilities[capability], 0), 1)
	}
}

// Interface guards
var _ Scorer = CapabilityScorer{}
