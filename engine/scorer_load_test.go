package engine

import "testing"

func TestLoadScorer(t *testing.T) {
	tests := []struct {
		name  string
		nodes []node
		want  []float64
	}{
		{"ratios", []node{
			{b: Backend{MaxInflight: 4}, l: Load{Inflight: 0}},
			{b: Backend{MaxInflight: 4}, l: Load{Inflight: 1}},
			{b: Backend{MaxInflight: 10}, l: Load{Inflight: 5}},
			{b: Backend{MaxInflight: 4}, l: Load{Inflight: 4}},
		}, []float64{1, 0.75, 0.5, 0}},
		{"over limit and drift are clamped", []node{
			{b: Backend{MaxInflight: 4}, l: Load{Inflight: 9}},
			{b: Backend{MaxInflight: 4}, l: Load{Inflight: -3}},
		}, []float64{0, 1}},
		{"no capacity scores 0", []node{{b: Backend{MaxInflight: 0}}}, []float64{0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { checkScores(t, LoadScorer{}, &Request{}, mkPool(tt.nodes...), tt.want) })
	}
}
