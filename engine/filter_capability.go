package engine

// CapabilityFilter keeps, for an AutoModel request, the backends that have the
// wanted capability at all:
//
//	keep(b) = b.Capabilities[req.WantedCapability()] > 0   if req.Model == AutoModel
//	                                                        and (req.Kind != KindEmbedding or req.Capability != "")
//	        = true                                          otherwise
//
// A named model was chosen explicitly by the client, so a backend that serves it
// is never dropped for lacking a capability score (the scorers still rank by it).
// An embeddings request that named no capability would be judged by the default
// "chat" capability, which says nothing about embeddings, so it is not filtered.
type CapabilityFilter struct{}

// Name returns "capability".
func (CapabilityFilter) Name() string { return "capability" }

// Keep reports whether backend i may serve req as far as capability goes.
func (CapabilityFilter) Keep(req *Request, p *Pool, i int) bool {
	if req.Model != AutoModel || !scoresCapability(req) {
		return true
	}
	return p.Backends[i].Capabilities[req.WantedCapability()] > 0
}

// Interface guards
var _ Filter = CapabilityFilter{}
