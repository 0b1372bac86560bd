package main

import (
	"strings"
	"testing"

	"github.com/modelrouter/modelrouter/bench/internal/simfleet"
	"github.com/modelrouter/modelrouter/bench/internal/workload"
)

// TestFleets: the fixed fleet is issue 2's (66.4 req/s at 32 tokens); the
// wide and heavy fleets differ at least 5× in speed per token and generate
// at least the longest answer asked for, so max_tokens alone sets lengths.
func TestFleets(t *testing.T) {
	fixed, _ := workload.Named("fixed", 32)
	if got := simfleet.Capacity(fleet(fixed, 32, 1), fixed); got < 66.3 || got > 66.5 {
		t.Errorf("fixed capacity %.2f req/s, want 66.4", got)
	}
	for _, name := range []string{"wide", "heavy"} {
		spec, _ := workload.Named(name, 32)
		sims := fleet(spec, 32, 1)
		fastest, slowest := sims[0].PerToken, sims[0].PerToken
		for _, s := range sims {
			fastest, slowest = min(fastest, s.PerToken), max(slowest, s.PerToken)
			if s.Tokens < spec.Output.Max() {
				t.Errorf("%s: sim %s generates %d tokens, less than the longest answer %d", name, s.Name, s.Tokens, spec.Output.Max())
			}
			if s.Prefill <= 0 {
				t.Errorf("%s: sim %s has no prefill", name, s.Name)
			}
		}
		if slowest < 5*fastest {
			t.Errorf("%s: per-token speeds %s to %s, want at least 5× apart", name, fastest, slowest)
		}
		if scaled := fleet(spec, 32, 2); scaled[0].TTFT != 2*sims[0].TTFT || scaled[0].Prefill != 2*sims[0].Prefill {
			t.Errorf("%s: -scale 2 gives %+v from %+v", name, scaled[0], sims[0])
		}
	}
}

func TestSelectContenders(t *testing.T) {
	for name, list := range defaultContenders {
		o := options{contenders: list, replicas: 1}
		cs, err := selectContenders(o, nil)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		var keys []string
		for _, c := range cs {
			keys = append(keys, c.key)
			if c.baseline != (c.key == "c0") {
				t.Errorf("%s: contender %s baseline = %v", name, c.key, c.baseline)
			}
		}
		if strings.Join(keys, ",") != list {
			t.Errorf("%s: contenders %v, want %s", name, keys, list)
		}
	}
	for _, bad := range []string{"c,x", "c,c", ""} {
		if _, err := selectContenders(options{contenders: bad}, nil); err == nil {
			t.Errorf("-contenders %q accepted", bad)
		}
	}
}

func TestClassifyDecision(t *testing.T) {
	for _, tc := range []struct {
		explain string
		want    decisionKind
	}{
		{"strategy=balanced chosen=C; A score=0.400 inflight=4/4 full wait=120ms ttft=150ms total=600ms; B score=0.300 inflight=4/4 full; C score=0.200 inflight=3/8 wait=0s ttft=200ms total=2s", othersFull},
		{"strategy=balanced chosen=C; C score=0.695 inflight=0/8; B score=0.695 inflight=0/4; A score=0.657 inflight=1/4", noPrediction},
		{"strategy=balanced chosen=C; C score=0.839 inflight=3/8 wait=0s ttft=75ms total=123ms; B score=0.820 inflight=2/4 wait=0s ttft=75ms total=123ms; A score=0.782 inflight=3/4 wait=0s ttft=75ms total=123ms", predictedFaster},
		{"strategy=balanced chosen=C; C score=0.401 inflight=6/8 wait=0s ttft=405ms total=7.71s; B score=0.512 inflight=1/4 wait=0s ttft=207ms total=3.443s", predictedSlower},
		{"strategy=balanced chosen=C; A score=0.745 inflight=4/4 full wait=1.356s ttft=1.391s total=2.738s; C score=0.403 inflight=7/8 wait=0s ttft=160ms total=7.871s; B score=0.000 inflight=4/4", othersFull},
		{"strategy=balanced chosen=C; C score=0.403 inflight=7/8 wait=0s total=1s; A score=0.745 inflight=3/4 wait=0s total=900ms; B score=0.7 inflight=1/4 wait=0s total=2s", predictedSlower},
		{"strategy=balanced chosen=C; C score=0.748 inflight=6/8 wait=0s ttft=90ms total=2.074s; A left_out inflight=4/4 waiting=7 full wait=1.9s ttft=1.9s total=2.3s; B left_out inflight=4/4 waiting=7 full wait=2.9s ttft=3s total=4s", othersFull},
		{"", unexplained},
		{"strategy=balanced chosen=A; A score=1 inflight=1/4", unexplained},
		{"strategy=balanced chosen=C; C score=0.775 inflight=2/8 wait=0s ttft=109ms total=1.997s", onlyCandidate},
	} {
		if got := classify(tc.explain, "C"); got != tc.want {
			t.Errorf("classify(%q) = %v, want %v", tc.explain, got, tc.want)
		}
	}
}
