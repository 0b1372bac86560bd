package engine

import (
	"cmp"
	"slices"
)

// orderer puts a strategy's candidates (all eligible, all with room, already
// scored) in the order they should be tried, best first. turn is a per-strategy
// counter that advances on every Rank call; orderers use it to rotate ties so
// that equal backends take turns instead of index 0 taking everything.
type orderer interface {
	order(req *Request, p *Pool, cands []Candidate, turn uint64)
}

// sortWithTies sorts cands by primary, then rotates every run of candidates that
// primary cannot tell apart by turn (mod the run's length). Sorting by index
// first makes the runs deterministic; rotating whole runs, rather than comparing
// rotated indexes, makes each member of a run of g come first once every g turns
// however sparse the run's indexes are.
func sortWithTies(cands []Candidate, turn uint64, primary func(a, b Candidate) int) {
	slices.SortFunc(cands, func(a, b Candidate) int {
		if c := primary(a, b); c != 0 {
			return c
		}
		return cmp.Compare(a.Index, b.Index)
	})
	for start := 0; start < len(cands); {
		end := start + 1
		for end < len(cands) && primary(cands[start], cands[end]) == 0 {
			end++
		}
		if g := end - start; g > 1 {
			rotateLeft(cands[start:end], int(turn%uint64(g)))
		}
		start = end
	}
}

// rotateLeft moves s[k:] to the front in place, without allocating.
func rotateLeft(s []Candidate, k int) {
	if k == 0 || k == len(s) {
		return
	}
	slices.Reverse(s[:k])
	slices.Reverse(s[k:])
	slices.Reverse(s)
}

// scoreOrder is the order of the score-based strategies (greedy, balanced):
//
//	higher Score first; tie: lower load ratio first; tie: rotate by turn
type scoreOrder struct{}

func (scoreOrder) order(_ *Request, p *Pool, cands []Candidate, turn uint64) {
	sortWithTies(cands, turn, func(a, b Candidate) int {
		if c := cmp.Compare(b.Score, a.Score); c != 0 {
			return c
		}
		return compareLoad(p, a.Index, b.Index)
	})
}

// Interface guards
var _ orderer = scoreOrder{}
