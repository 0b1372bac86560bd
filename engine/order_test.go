package engine

import (
	"slices"
	"testing"
)

func TestRotateLeft(t *testing.T) {
	tests := []struct {
		in   []int
		k    int
		want []int
	}{
		{[]int{0, 1, 2, 3}, 0, []int{0, 1, 2, 3}},
		{[]int{0, 1, 2, 3}, 1, []int{1, 2, 3, 0}},
		{[]int{0, 1, 2, 3}, 3, []int{3, 0, 1, 2}},
		{[]int{0, 1, 2, 3}, 4, []int{0, 1, 2, 3}},
		{[]int{5}, 0, []int{5}},
		{nil, 0, nil},
	}
	for _, tt := range tests {
		c := make([]Candidate, len(tt.in))
		for k, i := range tt.in {
			c[k].Index = i
		}
		rotateLeft(c, tt.k)
		if got := indexes(c); !slices.Equal(got, tt.want) && len(tt.want) > 0 {
			t.Errorf("rotateLeft(%v, %d) = %v, want %v", tt.in, tt.k, got, tt.want)
		}
	}
}

// TestSortWithTies: runs of ties rotate by turn, each run on its own, and
// non-ties keep their order.
func TestSortWithTies(t *testing.T) {
	// key by Score (higher first); indexes 4,1,6 tie at 0.9, 3,0 tie at 0.5.
	scores := map[int]float64{0: 0.5, 1: 0.9, 2: 0.7, 3: 0.5, 4: 0.9, 5: 0.1, 6: 0.9}
	tests := []struct {
		turn uint64
		want []int
	}{
		{0, []int{1, 4, 6, 2, 0, 3, 5}},
		{1, []int{4, 6, 1, 2, 3, 0, 5}},
		{2, []int{6, 1, 4, 2, 0, 3, 5}},
		{3, []int{1, 4, 6, 2, 3, 0, 5}},
	}
	for _, tt := range tests {
		c := make([]Candidate, 0, len(scores))
		for _, i := range []int{6, 5, 4, 3, 2, 1, 0} { // input order must not matter
			c = append(c, Candidate{Index: i, Score: scores[i]})
		}
		sortWithTies(c, tt.turn, func(a, b Candidate) int {
			switch {
			case a.Score > b.Score:
				return -1
			case a.Score < b.Score:
				return 1
			}
			return 0
		})
		if got := indexes(c); !slices.Equal(got, tt.want) {
			t.Errorf("turn %d: %v, want %v", tt.turn, got, tt.want)
		}
	}
}

func TestScoreOrderTieBreaksByLoad(t *testing.T) {
	p := mkPool(
		node{b: Backend{MaxInflight: 4}, l: Load{Inflight: 2}},
		node{b: Backend{MaxInflight: 8}, l: Load{Inflight: 2}},
		node{b: Backend{MaxInflight: 4}, l: Load{Inflight: 0}},
	)
	c := []Candidate{{Index: 0, Score: 0.8}, {Index: 1, Score: 0.8}, {Index: 2, Score: 0.3}}
	scoreOrder{}.order(&Request{}, p, c, 0)
	if got := indexes(c); !slices.Equal(got, []int{1, 0, 2}) {
		t.Fatalf("scoreOrder = %v, want [1 0 2]", got)
	}
}

func TestCompareLoadExact(t *testing.T) {
	p := mkPool(
		node{b: Backend{MaxInflight: 4}, l: Load{Inflight: 1}},
		node{b: Backend{MaxInflight: 8}, l: Load{Inflight: 2}},
		node{b: Backend{MaxInflight: 3}, l: Load{Inflight: 1}},
	)
	tests := []struct{ i, j, want int }{{0, 1, 0}, {0, 2, -1}, {2, 1, 1}}
	for _, tt := range tests {
		if got := compareLoad(p, tt.i, tt.j); got != tt.want {
			t.Errorf("compareLoad(%d, %d) = %d, want %d", tt.i, tt.j, got, tt.want)
		}
	}
}
