package engine

// p2cOrder is the order of the p2c strategy (power of two choices):
//
//	first:   of two distinct candidates drawn at random, the less loaded
//	         (least_load's key; on a tie the first drawn)
//	then:    every other candidate in least_load order
//
// Two random choices avoid the herd that pure least-load causes when many
// replicas act on the same stale load numbers, while still steering away from
// busy backends. The rest follow so that the caller has a fallback when the
// first pick is taken by another replica before it can acquire a slot.
type p2cOrder struct{ rnd *lockedRand }

func (o p2cOrder) order(req *Request, p *Pool, cands []Candidate, turn uint64) {
	if len(cands) < 2 {
		return
	}
	a, b := o.rnd.two(len(cands))
	if compareLeastLoad(p, cands[b], cands[a]) < 0 {
		a = b
	}
	cands[0], cands[a] = cands[a], cands[0]
	leastLoadOrder{}.order(req, p, cands[1:], turn)
}

// Interface guards
var _ orderer = p2cOrder{}
