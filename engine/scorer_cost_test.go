package engine

import "testing"

func TestCostScorer(t *testing.T) {
	tests := []struct {
		name  string
		costs []float64
		want  []float64
	}{
		{"cheapest over own", []float64{1, 2, 4}, []float64{1, 0.5, 0.25}},
		{"unknown is neutral", []float64{0, 3}, []float64{0.5, 1}},
		{"all unknown", []float64{0, 0}, []float64{0.5, 0.5}},
		{"negative is unknown", []float64{-1, 2}, []float64{0.5, 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			nodes := make([]node, len(tt.costs))
			for i, c := range tt.costs {
				nodes[i] = node{b: Backend{Cost: c}}
			}
			checkScores(t, CostScorer{}, &Request{}, mkPool(nodes...), tt.want)
		})
	}
}
