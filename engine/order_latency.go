package engine

import "cmp"

// latencyOrder is the order of the latency strategy:
//
//	lat(b) = TTFTP95 if req.Stream and TTFTP95 known, else LatencyP95 (0 = unknown)
//	unknown lat first; then lower lat first; tie: lower load ratio first; tie: rotate by turn
//
// Unknown goes first so that a new (or newly reset) backend gets measured: sorting
// it last would starve it forever whenever the known ones have room. The cost is
// bounded: it only receives traffic while it has room, and its first completed
// requests give it a p95 that puts it in its place.
type latencyOrder struct{}

func (latencyOrder) order(req *Request, p *Pool, cands []Candidate, turn uint64) {
	sortWithTies(cands, turn, func(a, b Candidate) int {
		la, lb := latencyKey(req, &p.Loads[a.Index]), latencyKey(req, &p.Loads[b.Index])
		if (la == 0) != (lb == 0) {
			if la == 0 {
				return -1
			}
			return 1
		}
		if c := cmp.Compare(la, lb); c != 0 {
			return c
		}
		return compareLoad(p, a.Index, b.Index)
	})
}

// Interface guards
var _ orderer = latencyOrder{}
