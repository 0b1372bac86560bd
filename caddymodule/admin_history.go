package caddymodule

import (
	"sync"
	"time"

	"github.com/modelrouter/modelrouter/loadstate"
)

// The dashboard draws the last minutes of each backend from a history the
// pool's evaluator samples once a second (historyPoints samples: 5 minutes),
// so that the page has its charts filled as soon as it opens.

const (
	historyPoints = 300
	historyEvery  = time.Second
)

// historyBackend is one backend at one sample. Durations in seconds.
type historyBackend struct {
	Name        string  `json:"name"`
	Inflight    int     `json:"inflight"`
	Capacity    int     `json:"capacity"`
	Utilization float64 `json:"utilization"`
	P50         float64 `json:"p50"`
	P95         float64 `json:"p95"`
	P99         float64 `json:"p99"`
	TTFTP50     float64 `json:"ttft_p50"`
	TTFTP95     float64 `json:"ttft_p95"`
	TTFTP99     float64 `json:"ttft_p99"`
	ErrorRate   float64 `json:"error_rate"`
	Requests    int     `json:"requests_1m"`
}

type historySample struct {
	At       time.Time        `json:"at"`
	Backends []historyBackend `json:"backends"`
}

type history struct {
	mu      sync.Mutex
	samples []historySample // ring
	next    int
	full    bool
	last    time.Time
}

func newHistory(n int) *history { return &history{samples: make([]historySample, n)} }

// sample records the pool's backends at t, at most once per historyEvery.
func (hi *history) sample(h *Handler, t time.Time) {
	hi.mu.Lock()
	due := t.Sub(hi.last) >= historyEvery || t.Before(hi.last)
	hi.mu.Unlock()
	if !due {
		return
	}
	view := h.currentView()
	s := historySample{At: t, Backends: make([]historyBackend, len(view.backends))}
	for i := range view.backends {
		b := &view.backends[i]
		hb := &s.Backends[i]
		hb.Name, hb.Capacity = b.Name, b.MaxInflight
		hb.Inflight = h.store.Inflight(b.Name)
		if b.MaxInflight > 0 {
			hb.Utilization = float64(hb.Inflight) / float64(b.MaxInflight)
		}
		hb.P50 = h.sketches.Quantile(b.Name, loadstate.EndToEnd, 0.50).Seconds()
		hb.P95 = h.sketches.Quantile(b.Name, loadstate.EndToEnd, 0.95).Seconds()
		hb.P99 = h.sketches.Quantile(b.Name, loadstate.EndToEnd, 0.99).Seconds()
		hb.TTFTP50 = h.sketches.Quantile(b.Name, loadstate.TTFT, 0.50).Seconds()
		hb.TTFTP95 = h.sketches.Quantile(b.Name, loadstate.TTFT, 0.95).Seconds()
		hb.TTFTP99 = h.sketches.Quantile(b.Name, loadstate.TTFT, 0.99).Seconds()
		attempts, errs := backendAttempts(h, i)
		hb.Requests = attempts
		if attempts > 0 {
			hb.ErrorRate = float64(errs) / float64(attempts)
		}
	}
	hi.mu.Lock()
	hi.samples[hi.next] = s
	hi.next = (hi.next + 1) % len(hi.samples)
	hi.full = hi.full || hi.next == 0
	hi.last = t
	hi.mu.Unlock()
}

// since returns the samples after t, oldest first.
func (hi *history) since(t time.Time) []historySample {
	hi.mu.Lock()
	defer hi.mu.Unlock()
	out := []historySample{}
	n, start := hi.next, 0
	if hi.full {
		n, start = len(hi.samples), hi.next
	}
	for k := 0; k < n; k++ {
		s := hi.samples[(start+k)%len(hi.samples)]
		if s.At.After(t) {
			out = append(out, s)
		}
	}
	return out
}
