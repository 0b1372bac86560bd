package engine

import "testing"

func TestContextFilter(t *testing.T) {
	tests := []struct {
		name    string
		context int
		prompt  int
		max     int
		want    bool
	}{
		{"no limit", 0, 1 << 20, 1 << 20, true},
		{"fits", 8192, 4000, 1000, true},
		{"fits exactly", 8192, 7192, 1000, true},
		{"one over", 8192, 7193, 1000, false},
		{"prompt alone too big", 4096, 5000, 0, false},
		{"no max tokens counts prompt only", 4096, 4096, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := mkPool(node{b: Backend{Context: tt.context}})
			req := &Request{PromptTokens: tt.prompt, MaxTokens: tt.max}
			if got := (ContextFilter{}).Keep(req, p, 0); got != tt.want {
				t.Fatalf("Keep = %v, want %v", got, tt.want)
			}
		})
	}
}
