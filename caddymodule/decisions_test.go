package caddymodule

import (
	"testing"
	"time"
)

// TestDecisionRing: the ring keeps the last decisionRingSize decisions,
// newest first, however many were recorded.
func TestDecisionRing(t *testing.T) {
	var r decisionRing
	if got := r.last(10); len(got) != 0 {
		t.Fatalf("empty ring gave %d", len(got))
	}
	for i := 1; i <= 300; i++ {
		r.mu.Lock()
		d := r.slotLocked()
		d.outcome = "success"
		d.n = i % 3
		r.mu.Unlock()
	}
	got := r.last(decisionRingSize + 50)
	if len(got) != decisionRingSize {
		t.Fatalf("kept %d, want %d", len(got), decisionRingSize)
	}
	for k, d := range got {
		if want := uint64(300 - k); d.seq != want {
			t.Fatalf("entry %d is decision %d, want %d", k, d.seq, want)
		}
	}
	if got := r.last(3); len(got) != 3 || got[0].seq != 300 || got[2].seq != 298 {
		t.Fatalf("last(3): %v", []uint64{got[0].seq, got[1].seq, got[2].seq})
	}
}

// TestSecondCounts: counts fall out of the window a minute after they were
// added, and a reused bucket forgets its old second.
func TestSecondCounts(t *testing.T) {
	var c secondCounts
	t0 := time.Unix(10_000, 0)
	c.add(t0, 2)
	c.add(t0.Add(30*time.Second), 3)
	if n := c.lastMinute(t0.Add(30 * time.Second)); n != 5 {
		t.Errorf("within the minute: %d, want 5", n)
	}
	if n := c.lastMinute(t0.Add(60 * time.Second)); n != 3 {
		t.Errorf("a minute after the first: %d, want 3", n)
	}
	c.add(t0.Add(120*time.Second), 1) // same bucket as t0, two minutes on
	if n := c.lastMinute(t0.Add(120 * time.Second)); n != 1 {
		t.Errorf("after the bucket was reused: %d, want 1", n)
	}
}
