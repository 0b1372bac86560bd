package engine

import (
	"testing"
	"time"
)

func TestLatencyScorer(t *testing.T) {
	ms := time.Millisecond
	tests := []struct {
		name   string
		stream bool
		loads  []Load
		want   []float64
	}{
		{"fastest over own", false, []Load{{LatencyP95: 100 * ms}, {LatencyP95: 200 * ms}, {LatencyP95: 400 * ms}}, []float64{1, 0.5, 0.25}},
		{"unknown is neutral", false, []Load{{LatencyP95: 100 * ms}, {}}, []float64{1, 0.5}},
		{"all unknown", false, []Load{{}, {}}, []float64{0.5, 0.5}},
		{"non-stream ignores ttft", false, []Load{{LatencyP95: 100 * ms, TTFTP95: 10 * ms}, {LatencyP95: 50 * ms, TTFTP95: 40 * ms}}, []float64{0.5, 1}},
		{"stream uses ttft", true, []Load{{LatencyP95: 100 * ms, TTFTP95: 10 * ms}, {LatencyP95: 50 * ms, TTFTP95: 40 * ms}}, []float64{1, 0.25}},
		{"stream falls back to p95 without ttft", true, []Load{{TTFTP95: 20 * ms}, {LatencyP95: 80 * ms}, {}}, []float64{1, 0.25, 0.5}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			nodes := make([]node, len(tt.loads))
			for i, l := range tt.loads {
				nodes[i] = node{l: l}
			}
			checkScores(t, LatencyScorer{}, &Request{Stream: tt.stream}, mkPool(nodes...), tt.want)
		})
	}
}
