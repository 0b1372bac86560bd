package loadstate

import (
	"math"
	"testing"
	"time"
)

type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time          { return c.t }
func (c *fakeClock) advance(d time.Duration) { c.t = c.t.Add(d) }

func within(got, want time.Duration, rel float64) bool {
	return math.Abs(float64(got-want)) <= rel*float64(want)
}

func TestSketchesQuantiles(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1000, 0)}
	s := NewSketches(time.Minute, 6, clk.now)
	for i := 1; i <= 1000; i++ {
		s.Record("a", EndToEnd, time.Duration(i)*time.Millisecond)
	}
	for _, tc := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 500 * time.Millisecond}, {0.95, 950 * time.Millisecond}, {0.99, 990 * time.Millisecond}} {
		if got := s.Quantile("a", EndToEnd, tc.q); !within(got, tc.want, 0.02) {
			t.Errorf("p%v = %v, want %v ±2%%", tc.q*100, got, tc.want)
		}
	}
	if got := s.Quantile("a", TTFT, 0.95); got != 0 {
		t.Errorf("TTFT p95 with no data = %v, want 0", got)
	}
	if got := s.Quantile("b", EndToEnd, 0.95); got != 0 {
		t.Errorf("unknown backend p95 = %v, want 0", got)
	}
	if n := s.Count("a", EndToEnd); n != 1000 {
		t.Errorf("Count = %d, want 1000", n)
	}
}

func TestSketchesSlideOut(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1000, 0)}
	s := NewSketches(time.Minute, 6, clk.now)
	for i := 0; i < 100; i++ {
		s.Record("a", EndToEnd, time.Second)
	}
	clk.advance(30 * time.Second)
	for i := 0; i < 100; i++ {
		s.Record("a", EndToEnd, 10*time.Millisecond)
	}
	if n := s.Count("a", EndToEnd); n != 200 {
		t.Fatalf("count within the window = %d, want 200", n)
	}
	// 40s later the slow observations (70s old) have left the window, the
	// fast ones (40s old) have not.
	clk.advance(40 * time.Second)
	if n := s.Count("a", EndToEnd); n != 100 {
		t.Fatalf("count after the first batch slid out = %d, want 100", n)
	}
	if got := s.Quantile("a", EndToEnd, 0.99); !within(got, 10*time.Millisecond, 0.02) {
		t.Fatalf("p99 after slide = %v, want ~10ms", got)
	}
	clk.advance(10 * time.Minute)
	if n := s.Count("a", EndToEnd); n != 0 {
		t.Fatalf("count after a long idle = %d, want 0", n)
	}
}

func TestSketchesMergeRemote(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1000, 0)}
	local := NewSketches(time.Minute, 6, clk.now)
	remote := NewSketches(time.Minute, 6, clk.now)
	for i := 0; i < 100; i++ {
		local.Record("a", TTFT, 10*time.Millisecond)
		remote.Record("a", TTFT, 100*time.Millisecond)
		remote.Record("a", TTFT, 100*time.Millisecond)
	}
	data := remote.EncodeWindow("a", TTFT)
	if data == nil {
		t.Fatal("EncodeWindow returned nothing")
	}
	if err := local.MergeRemote("replica-2", "a", TTFT, data); err != nil {
		t.Fatal(err)
	}
	if n := local.Count("a", TTFT); n != 300 {
		t.Fatalf("merged count = %d, want 300", n)
	}
	if got := local.Quantile("a", TTFT, 0.5); !within(got, 100*time.Millisecond, 0.02) {
		t.Fatalf("merged p50 = %v, want ~100ms (two thirds of the fleet's observations)", got)
	}
	// Publishing again replaces, never adds up.
	if err := local.MergeRemote("replica-2", "a", TTFT, data); err != nil {
		t.Fatal(err)
	}
	if n := local.Count("a", TTFT); n != 300 {
		t.Fatalf("count after a second publish = %d, want 300", n)
	}
	// A replica that stops publishing drops out after the window.
	clk.advance(2 * time.Minute)
	if n := local.Count("a", TTFT); n != 0 {
		t.Fatalf("count after the remote went quiet = %d, want 0", n)
	}
	if err := local.MergeRemote("x", "a", TTFT, []byte("garbage")); err == nil {
		t.Fatal("MergeRemote accepted garbage")
	}
}
