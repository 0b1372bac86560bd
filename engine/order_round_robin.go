package engine

// roundRobinOrder is the order of the round_robin strategy:
//
//	candidates in pool order, rotated left by turn mod len(candidates)
//
// turn advances atomically on every Rank call, so successive requests start at
// successive candidates. Load is ignored except that full backends are never
// candidates.
type roundRobinOrder struct{}

func (roundRobinOrder) order(_ *Request, _ *Pool, cands []Candidate, turn uint64) {
	if len(cands) > 1 {
		rotateLeft(cands, int(turn%uint64(len(cands))))
	}
}

// Interface guards
var _ orderer = roundRobinOrder{}
