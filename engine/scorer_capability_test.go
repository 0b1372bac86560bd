package engine

import "testing"

func TestCapabilityScorer(t *testing.T) {
	p := mkPool(
		node{b: Backend{Capabilities: map[string]float64{"chat": 0.8, "coding": 0.3}}},
		node{b: Backend{Capabilities: map[string]float64{"coding": 1}}},
		node{b: Backend{}},
		node{b: Backend{Capabilities: map[string]float64{"chat": 1.7, "coding": -2}}}, // misconfigured: clamped
	)
	tests := []struct {
		name string
		req  Request
		want []float64
	}{
		{"named capability", Request{Capability: "coding"}, []float64{0.3, 1, 0, 0}},
		{"default capability is chat", Request{}, []float64{0.8, 0, 0, 1}},
		{"embedding without capability is neutral", Request{Kind: KindEmbedding}, []float64{1, 1, 1, 1}},
		{"embedding with capability scores it", Request{Kind: KindEmbedding, Capability: "coding"}, []float64{0.3, 1, 0, 0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { checkScores(t, CapabilityScorer{}, &tt.req, p, tt.want) })
	}
}
