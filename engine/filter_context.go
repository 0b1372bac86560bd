package engine

// ContextFilter keeps the backends whose context window holds the request:
//
//	keep(b) = b.Context == 0 || req.PromptTokens + req.MaxTokens <= b.Context
//
// PromptTokens is an estimate and MaxTokens is 0 when the client set none, so the
// filter only drops backends that are sure to reject the request.
type ContextFilter struct{}

// Name returns "context".
func (ContextFilter) Name() string { return "context" }

// Keep reports whether the request fits backend i's context window.
func (ContextFilter) Keep(req *Request, p *Pool, i int) bool {
	c := p.Backends[i].Context
	return c == 0 || req.PromptTokens+req.MaxTokens <= c
}

// Interface guards
var _ Filter = ContextFilter{}
