package engine

import "testing"

func TestCooldownFilter(t *testing.T) {
	tests := []struct {
		name string
		load Load
		want bool
	}{
		{"healthy", Load{}, true},
		{"cooling down", Load{CoolingDown: true}, false},
		{"draining is not this filter's business", Load{Draining: true}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := (CooldownFilter{}).Keep(&Request{}, mkPool(node{l: tt.load}), 0); got != tt.want {
				t.Fatalf("Keep = %v, want %v", got, tt.want)
			}
		})
	}
}
