package main

import (
	"time"

	"github.com/modelrouter/modelrouter/bench/internal/simfleet"
	"github.com/modelrouter/modelrouter/bench/internal/workload"
)

// wideTokens is what the sims of the wide and heavy workloads are configured
// to generate: at least the longest answer asked for, so a request's
// max_tokens alone sets its length.
const wideTokens = 1024

// fleet returns the sims for the workload; scale stretches every delay.
//
// fixed (issue 2): a small fast sim, a big slow one, a medium one and a small
// slow one, 4× apart per request, every answer the same length, no prefill.
//
// wide and heavy (issue 7): three sims 6× apart per output token, with a
// prefill cost per prompt token, so that where a long answer goes matters:
//
//	A fast    4 slots  20ms ttft   2ms/token   20µs/prompt token
//	B medium  4 slots  40ms ttft   5ms/token   50µs/prompt token
//	C slow    8 slots  80ms ttft  12ms/token  100µs/prompt token
func fleet(w workload.Spec, tokens int, scale float64) []simfleet.Sim {
	d := func(ms float64) time.Duration { return time.Duration(ms * scale * float64(time.Millisecond)) }
	if w.Name == "fixed" {
		return []simfleet.Sim{
			{Name: "A", Kind: "fast", Slots: 2, TTFT: d(20), PerToken: d(3), Tokens: tokens},
			{Name: "B", Kind: "slow", Slots: 12, TTFT: d(80), PerToken: d(12), Tokens: tokens},
			{Name: "C", Kind: "medium", Slots: 4, TTFT: d(40), PerToken: d(6), Tokens: tokens},
			{Name: "D", Kind: "slow", Slots: 2, TTFT: d(80), PerToken: d(12), Tokens: tokens},
		}
	}
	n := max(wideTokens, w.Output.Max())
	return []simfleet.Sim{
		{Name: "A", Kind: "fast", Slots: 4, TTFT: d(20), PerToken: d(2), Prefill: d(0.020), Tokens: n},
		{Name: "B", Kind: "medium", Slots: 4, TTFT: d(40), PerToken: d(5), Prefill: d(0.050), Tokens: n},
		{Name: "C", Kind: "slow", Slots: 8, TTFT: d(80), PerToken: d(12), Prefill: d(0.100), Tokens: n},
	}
}
