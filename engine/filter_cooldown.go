package engine

// CooldownFilter drops backends that passive health (see Health) has put aside:
//
//	keep(b) = !load(b).CoolingDown
type CooldownFilter struct{}

// Name returns "cooldown".
func (CooldownFilter) Name() string { return "cooldown" }

// Keep reports whether backend i is not cooling down.
func (CooldownFilter) Keep(_ *Request, p *Pool, i int) bool { return !p.Loads[i].CoolingDown }

// Interface guards
var _ Filter = CooldownFilter{}
