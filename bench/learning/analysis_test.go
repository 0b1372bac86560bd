package main

import (
	"math"
	"testing"
	"time"

	"github.com/modelrouter/modelrouter/bench/internal/loadgen"
	"github.com/modelrouter/modelrouter/bench/internal/workload"
)

const w = 250 * time.Millisecond

// synthetic makes 6 answered requests per 250ms window over 10s; bOf says
// how many of window i's went to B.
func synthetic(bOf func(i int) int) []loadgen.Outcome {
	var outs []loadgen.Outcome
	for i := 0; i < 40; i++ {
		for j := 0; j < 6; j++ {
			sim := "A"
			if j < bOf(i) {
				sim = "B"
			}
			at := time.Duration(i)*w + time.Duration(j)*w/6
			outs = append(outs, loadgen.Outcome{Arrival: workload.Arrival{Offset: at}, OK: true, Sim: sim, Latency: time.Duration(i+1) * time.Millisecond})
		}
	}
	// A failure counts as failed and in no window.
	return append(outs, loadgen.Outcome{Arrival: workload.Arrival{Offset: 5 * time.Second}, Sim: "B"})
}

func TestAnalyze(t *testing.T) {
	// Warm-up to 4s: 2 of 6 to B (1/3). Slowed at 4s: window 16 has 1, then
	// none until the recovery at 7s (window 28); B gets 2 of 6 again from
	// window 30.
	outs := synthetic(func(i int) int {
		switch {
		case i < 16:
			return 2
		case i == 16:
			return 1
		case i < 30:
			return 0
		}
		return 2
	})
	a := analyze(outs, "B", 10*time.Second, 4*time.Second, 4*time.Second, 7*time.Second, w, 2, 8, 0.5, 0.8)
	if a.failed != 1 || len(a.windows) != 40 || a.slowW != 16 || a.backW != 28 {
		t.Fatalf("failed %d, %d windows, slowdown in %d, recovery in %d", a.failed, len(a.windows), a.slowW, a.backW)
	}
	if math.Abs(a.base-1.0/3) > 1e-9 {
		t.Errorf("base share %v, want 1/3", a.base)
	}
	// Rolling over 2 windows: window 17 holds 1 of 12 (< 1/6) and ends at
	// 4.5s; window 31 holds 4 of 12 (≥ 0.8/3) and ends at 8s.
	if a.dropT != 500*time.Millisecond {
		t.Errorf("drop after %s, want 500ms", a.dropT)
	}
	if a.climbT != time.Second {
		t.Errorf("climb after %s, want 1s", a.climbT)
	}
	// Over 8 windows (48 requests): the 8 ending with window 19 hold 9 of
	// B's, those ending with 20 hold 7 (< 8, a sixth) and end at 5.25s; for
	// the climb (≥ 0.8/3 of 48 needs 13) the 8 ending with 35 hold 12, those
	// ending with 36 hold 14 and end at 9.25s.
	if a.dropHeld != 1250*time.Millisecond {
		t.Errorf("held drop after %s, want 1.25s", a.dropHeld)
	}
	if a.climbHeld != 2250*time.Millisecond {
		t.Errorf("held climb after %s, want 2.25s", a.climbHeld)
	}

	// B never loses its share, and never gets it back after losing it.
	a = analyze(synthetic(func(int) int { return 2 }), "B", 10*time.Second, 4*time.Second, 4*time.Second, 7*time.Second, w, 2, 8, 0.5, 0.8)
	if a.dropT != -1 {
		t.Errorf("a steady share dropped after %s", a.dropT)
	}
	a = analyze(synthetic(func(i int) int { return map[bool]int{true: 2}[i < 16] }), "B", 10*time.Second, 4*time.Second, 4*time.Second, 7*time.Second, w, 2, 8, 0.5, 0.8)
	// Windows 15 and 16 hold 2 of 12, exactly half of 1/3 and so not below
	// it; windows 16 and 17 hold none.
	if a.dropT != 500*time.Millisecond || a.climbT != -1 {
		t.Errorf("drop %s (want 500ms), climb %s (want never)", a.dropT, a.climbT)
	}
}

func TestTrim(t *testing.T) {
	all := []workload.Arrival{{Offset: 0}, {Offset: time.Second}, {Offset: 2 * time.Second}}
	if got := trim(all, 2*time.Second); len(got) != 2 {
		t.Errorf("trim kept %d, want 2", len(got))
	}
	if got := trim(all, time.Hour); len(got) != 3 {
		t.Errorf("trim kept %d, want 3", len(got))
	}
}
