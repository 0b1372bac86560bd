package engine

// leastLoadOrder is the order of the least_load strategy:
//
//	lower Inflight/MaxInflight first; tie: more free slots first; tie: rotate by turn
//
// The ratio makes backends of different sizes fill evenly; on equal ratios the
// bigger backend has more headroom for a burst, so it goes first.
type leastLoadOrder struct{}

func (leastLoadOrder) order(_ *Request, p *Pool, cands []Candidate, turn uint64) {
	sortWithTies(cands, turn, func(a, b Candidate) int { return compareLeastLoad(p, a, b) })
}

// compareLeastLoad is leastLoadOrder's key, shared with p2c.
func compareLeastLoad(p *Pool, a, b Candidate) int {
	if c := compareLoad(p, a.Index, b.Index); c != 0 {
		return c
	}
	return freeSlots(p, b.Index) - freeSlots(p, a.Index)
}

// Interface guards
var _ orderer = leastLoadOrder{}
