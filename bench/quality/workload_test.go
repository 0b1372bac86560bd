package main

import (
	"math"
	"strings"
	"testing"
	"time"
)

func TestScheduleIsDeterministicAndComplete(t *testing.T) {
	const n, rounds, rate = 1001, 3, 50.0
	a := schedule(n, rounds, rate, 0.5, 7)
	b := schedule(n, rounds, rate, 0.5, 7)
	if len(a) != rounds {
		t.Fatalf("got %d chunks, want %d", len(a), rounds)
	}
	total, streams := 0, 0
	var span time.Duration
	for r, chunk := range a {
		if chunk[0].offset != 0 {
			t.Errorf("chunk %d starts at %v, want 0", r, chunk[0].offset)
		}
		for i, arr := range chunk {
			if arr != b[r][i] {
				t.Fatalf("same seed, different arrival %d of chunk %d: %+v vs %+v", i, r, arr, b[r][i])
			}
			if arr.index != total {
				t.Fatalf("arrival index %d, want %d", arr.index, total)
			}
			if i > 0 && arr.offset < chunk[i-1].offset {
				t.Fatalf("offsets go backwards in chunk %d at %d", r, i)
			}
			if arr.stream {
				streams++
			}
			total++
		}
		span += chunk[len(chunk)-1].offset
	}
	if total != n {
		t.Errorf("%d arrivals in all, want %d", total, n)
	}
	if want := 501; streams != want { // 1001 × 0.5 rounded
		t.Errorf("%d streaming, want %d", streams, want)
	}
	// The mean gap should be near 1/rate: a loose bound, n is large.
	if got := float64(n-rounds) / span.Seconds(); math.Abs(got-rate)/rate > 0.15 {
		t.Errorf("observed rate %.1f/s, want about %.1f/s", got, rate)
	}
	if c := schedule(n, rounds, rate, 0.5, 8); c[0][1] == a[0][1] && c[0][2] == a[0][2] {
		t.Error("a different seed gave the same arrivals")
	}
}

func TestReadStream(t *testing.T) {
	at := time.Now()
	for _, tc := range []struct {
		name, body string
		ok, ttft   bool
	}{
		{"complete", "data: {\"x\":1}\n\ndata: {\"x\":2}\n\ndata: [DONE]\n\n", true, true},
		{"cut short", "data: {\"x\":1}\n\n", false, true},
		{"empty", "", false, false},
		{"done only", "data: [DONE]\n\n", true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var ttft time.Duration
			ok, failure := readStream(strings.NewReader(tc.body), at, &ttft)
			if ok != tc.ok {
				t.Errorf("ok = %v (%s), want %v", ok, failure, tc.ok)
			}
			if (ttft > 0) != tc.ttft {
				t.Errorf("ttft = %v, want set: %v", ttft, tc.ttft)
			}
		})
	}
}

func TestCapacity(t *testing.T) {
	sims := []sim{{slots: 2, ttft: 10 * time.Millisecond, perToken: 10 * time.Millisecond}} // 10 tokens: 100ms
	if got := capacity(sims, 10); math.Abs(got-20) > 1e-9 {
		t.Errorf("capacity = %v, want 20 req/s", got)
	}
}
