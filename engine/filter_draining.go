package engine

// DrainingFilter drops backends an operator is draining; their in-flight
// requests finish, but no new request goes there:
//
//	keep(b) = !load(b).Draining
type DrainingFilter struct{}

// Name returns "draining".
func (DrainingFilter) Name() string { return "draining" }

// Keep reports whether backend i is not draining.
func (DrainingFilter) Keep(_ *Request, p *Pool, i int) bool { return !p.Loads[i].Draining }

// Interface guards
var _ Filter = DrainingFilter{}
