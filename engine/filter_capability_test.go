package engine

import "testing"

func TestCapabilityFilter(t *testing.T) {
	coder := Backend{Models: map[string]string{"m": "m"}, Capabilities: map[string]float64{"coding": 0.9}}
	chatty := Backend{Models: map[string]string{"m": "m"}, Capabilities: map[string]float64{"chat": 0.5, "coding": 0}}
	bare := Backend{Models: map[string]string{"m": "m"}}
	tests := []struct {
		name string
		req  Request
		b    Backend
		want bool
	}{
		{"auto keeps backend with capability", Request{Model: AutoModel, Capability: "coding"}, coder, true},
		{"auto drops backend lacking capability", Request{Model: AutoModel, Capability: "chat"}, coder, false},
		{"auto drops zero capability score", Request{Model: AutoModel, Capability: "coding"}, chatty, false},
		{"auto with no capability uses chat", Request{Model: AutoModel}, chatty, true},
		{"auto with no capability drops non-chat", Request{Model: AutoModel}, coder, false},
		{"named model never filtered by capability", Request{Model: "m", Capability: "coding"}, chatty, true},
		{"named model without capabilities kept", Request{Model: "m"}, bare, true},
		{"embedding without explicit capability kept", Request{Kind: KindEmbedding, Model: AutoModel}, bare, true},
		{"embedding with explicit capability filtered", Request{Kind: KindEmbedding, Model: AutoModel, Capability: "embed"}, bare, false},
		{"embedding with explicit capability kept", Request{Kind: KindEmbedding, Model: AutoModel, Capability: "coding"}, coder, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := (CapabilityFilter{}).Keep(&tt.req, mkPool(node{b: tt.b}), 0); got != tt.want {
				t.Fatalf("Keep = %v, want %v", got, tt.want)
			}
		})
	}
}
