package engine

import "testing"

func TestModelFilter(t *testing.T) {
	b := Backend{Name: "a", Models: map[string]string{"llama": "meta/llama-3"}, MaxInflight: 1}
	tests := []struct {
		name  string
		model string
		want  bool
	}{
		{"serves named model", "llama", true},
		{"does not serve other model", "qwen", false},
		{"every backend serves auto", AutoModel, true},
		{"empty model is not served", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := mkPool(node{b: b})
			if got := (ModelFilter{}).Keep(&Request{Model: tt.model}, p, 0); got != tt.want {
				t.Fatalf("Keep = %v, want %v", got, tt.want)
			}
		})
	}
}
