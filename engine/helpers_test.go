package engine

import (
	"math"
	"testing"
)

// node is one backend with its live load, for building test pools.
type node struct {
	b Backend
	l Load
}

func mkPool(nodes ...node) *Pool {
	p := &Pool{}
	for _, n := range nodes {
		p.Backends = append(p.Backends, n.b)
		p.Loads = append(p.Loads, n.l)
	}
	return p
}

// allCands returns every backend of p as a candidate, in pool order.
func allCands(p *Pool) []Candidate {
	c := make([]Candidate, len(p.Backends))
	for i := range c {
		c[i].Index = i
	}
	return c
}

func indexes(cands []Candidate) []int {
	out := make([]int, len(cands))
	for k, c := range cands {
		out[k] = c.Index
	}
	return out
}

// checkScores runs a scorer over every backend of p and compares with want.
func checkScores(t *testing.T, s Scorer, req *Request, p *Pool, want []float64) {
	t.Helper()
	cands := allCands(p)
	got := make([]float64, len(cands))
	for k := range got {
		got[k] = -1 // a scorer must write every slot
	}
	s.Score(req, p, cands, got)
	for k := range want {
		if math.Abs(got[k]-want[k]) > 1e-12 {
			t.Fatalf("%s: scores = %v, want %v", s.Name(), got, want)
		}
		if got[k] < 0 || got[k] > 1 {
			t.Fatalf("%s: score %v out of [0,1]", s.Name(), got[k])
		}
	}
}

// scriptedRand returns its values in turn, for exact p2c tests.
type scriptedRand struct{ vals []int }

func (r *scriptedRand) Intn(n int) int {
	v := r.vals[0]
	r.vals = r.vals[1:]
	return v
}
