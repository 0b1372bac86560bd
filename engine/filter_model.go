package engine

// ModelFilter keeps the backends that serve the requested public model:
//
//	keep(b) = b.Serves(req.Model)   // every backend serves AutoModel
type ModelFilter struct{}

// Name returns "model".
func (ModelFilter) Name() string { return "model" }

// Keep reports whether backend i serves req.Model.
func (ModelFilter) Keep(req *Request, p *Pool, i int) bool { return p.Backends[i].Serves(req.Model) }

// Interface guards
var _ Filter = ModelFilter{}
