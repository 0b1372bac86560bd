package engine

import "testing"

func TestDrainingFilter(t *testing.T) {
	tests := []struct {
		name string
		load Load
		want bool
	}{
		{"serving", Load{}, true},
		{"draining", Load{Draining: true}, false},
		{"cooling down is not this filter's business", Load{CoolingDown: true}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := (DrainingFilter{}).Keep(&Request{}, mkPool(node{l: tt.load}), 0); got != tt.want {
				t.Fatalf("Keep = %v, want %v", got, tt.want)
			}
		})
	}
}
