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
//
// mixed (issue 8): three sims of one speed whose capabilities differ, each
// declaring a score for every task so every request can go anywhere, the
// specialists' slots fewer than their task's share of the traffic:
//
//	A coder     4 slots  chat 0.6  coding 0.95  reasoning 0.5
//	B reasoner  4 slots  chat 0.6  coding 0.5   reasoning 0.95
//	C general   8 slots  chat 0.9  coding 0.7   reasoning 0.7
//
// each 40ms ttft, 5ms/token, 50µs/prompt token. One speed, so that the
// capability scores compare assignments only: optimal's score multiplies
// capability by predicted speed, and with sims of different speeds it would
// trade capability for speed on purpose.
func fleet(w workload.Spec, tokens int, scale float64) []simfleet.Sim {
	d := func(ms float64) time.Duration { return time.Duration(ms * scale * float64(time.Millisecond)) }
	if w.Name == "mixed" {
		n := max(wideTokens, w.Output.Max())
		sim := func(name, kind string, slots int, chat, coding, reasoning float64) simfleet.Sim {
			return simfleet.Sim{Name: name, Kind: kind, Slots: slots, TTFT: d(40), PerToken: d(5), Prefill: d(0.050), Tokens: n,
				Capabilities: map[string]float64{"chat": chat, "coding": coding, "reasoning": reasoning}}
		}
		return []simfleet.Sim{
			sim("A", "coder", 4, 0.6, 0.95, 0.5),
			sim("B", "reasoner", 4, 0.6, 0.5, 0.95),
			sim("C", "general", 8, 0.9, 0.7, 0.7),
		}
	}
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
