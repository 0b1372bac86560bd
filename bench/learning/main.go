// Command learning measures how fast the router notices that a backend
// became slow, and that it recovered: identical simulated backends serve the
// same model through one model_router (default strategy balanced) under a
// Poisson load at -load of their capacity; after -warmup one of them becomes
// -slowdown times slower (POST /sim/config {"slowdown":3}), and after -slow
// more it recovers ({"slowdown":1}). The requests are followed in windows of
// -window (by scheduled arrival; the sim that answered names itself in the
// X-Sim-Name header): the share sent to the slowed sim, how long after the
// slowdown it falls below -drop × its warm-up share, how long after the
// recovery it climbs back to -climb × that share, and the p99 of each phase.
//
//	go run ./bench/learning [-warmup 20s -slow 40s -recover 40s] [-strategy balanced,least_load]
package main

import (
	"flag"
	"fmt"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/modelrouter/modelrouter/bench/internal/configs"
	"github.com/modelrouter/modelrouter/bench/internal/harness"
	"github.com/modelrouter/modelrouter/bench/internal/loadgen"
	"github.com/modelrouter/modelrouter/bench/internal/simfleet"
	"github.com/modelrouter/modelrouter/bench/internal/workload"
)

type options struct {
	sims       int
	slots      int
	strategies []string
	load       float64
	stream     float64
	seed       uint64
	warmup     time.Duration
	slow       time.Duration
	recover    time.Duration
	slowdown   float64
	window     time.Duration
	smooth     int
	hold       int
	drop       float64
	climb      float64
	maxWait    time.Duration
	timeout    time.Duration
	bin        string
	keep       bool
}

// spec is the learning workload: answers uniform 16-64 tokens (sent as
// max_tokens), prompts log-uniform 50-1000 tokens, short enough that each
// window holds a few dozen requests.
var spec = workload.Spec{
	Name:      "learning",
	Output:    workload.Uniform{Lo: 16, Hi: 64},
	Prompt:    workload.LogUniform{Lo: 50, Hi: 1000},
	MaxTokens: true,
}

func main() {
	var o options
	var strategies string
	flag.IntVar(&o.sims, "sims", 3, "identical sims serving the same model (2 or more); the second one (B) is slowed")
	flag.IntVar(&o.slots, "slots", 8, "slots per sim (= max_inflight)")
	flag.StringVar(&strategies, "strategy", "balanced", "model_router strategy; a comma-separated list runs each in turn (e.g. balanced,least_load)")
	flag.Float64Var(&o.load, "load", 0.6, "arrival rate as a share of the sims' capacity at full speed")
	flag.Float64Var(&o.stream, "stream", 0.5, "share of requests that stream")
	flag.Uint64Var(&o.seed, "seed", 1, "seed of the arrivals and their sizes")
	flag.DurationVar(&o.warmup, "warmup", 20*time.Second, "time before the slowdown")
	flag.DurationVar(&o.slow, "slow", 40*time.Second, "how long the sim stays slow")
	flag.DurationVar(&o.recover, "recover", 40*time.Second, "time after the recovery")
	flag.Float64Var(&o.slowdown, "slowdown", 3, "how many times slower the sim becomes")
	flag.DurationVar(&o.window, "window", 250*time.Millisecond, "window of the timeline")
	flag.IntVar(&o.smooth, "smooth", 4, "the share is judged over this many windows (rolling)")
	flag.IntVar(&o.hold, "hold", 20, "and over this many, for a crossing that holds")
	flag.Float64Var(&o.drop, "drop", 0.5, "the slowed sim's share has fallen when below this × its warm-up share")
	flag.Float64Var(&o.climb, "climb", 0.8, "it has recovered when back to this × its warm-up share")
	flag.DurationVar(&o.maxWait, "max-wait", 5*time.Second, "model_router max_wait")
	flag.DurationVar(&o.timeout, "timeout", 60*time.Second, "client timeout per request")
	flag.StringVar(&o.bin, "bin", "", "prebuilt gateway binary (default: go build ./cmd/modelrouter into a temp dir)")
	flag.BoolVar(&o.keep, "keep", false, "keep the temp dir with configs and process logs")
	flag.Parse()
	for _, s := range strings.Split(strategies, ",") {
		if s = strings.TrimSpace(s); s != "" {
			o.strategies = append(o.strategies, s)
		}
	}
	if o.sims < 2 || o.slots < 1 || len(o.strategies) == 0 || o.load <= 0 || o.stream < 0 || o.stream > 1 ||
		o.warmup <= 0 || o.slow <= 0 || o.recover <= 0 || o.slowdown <= 0 || o.window <= 0 || o.smooth < 1 || o.hold < 1 ||
		o.drop <= 0 || o.climb <= 0 || o.maxWait <= 0 || o.timeout <= 0 {
		fmt.Fprintln(os.Stderr, "learning: -sims at least 2; -slots, -load, the phases, -slowdown, -window, -smooth, -drop, -climb, -max-wait and -timeout positive; -stream in [0,1]; a -strategy")
		os.Exit(2)
	}
	harness.Main("learning", o.keep, func(h *harness.Harness) error { return run(h, o) })
}

func run(h *harness.Harness, o options) error {
	bin, err := h.Gateway(o.bin)
	if err != nil {
		return err
	}
	sims := make([]simfleet.Sim, o.sims)
	addrs, err := h.FreeAddrs(len(sims))
	if err != nil {
		return err
	}
	for i := range sims {
		sims[i] = simfleet.Sim{Name: string(rune('A' + i)), Kind: "same", Slots: o.slots, TTFT: 30 * time.Millisecond,
			PerToken: 4 * time.Millisecond, Prefill: 20 * time.Microsecond, Tokens: spec.Output.Max(), Addr: addrs[i]}
	}
	slowed := sims[1]
	capacity := simfleet.Capacity(sims, spec)
	rate := o.load * capacity
	total := o.warmup + o.slow + o.recover

	s := sims[0]
	fmt.Printf("bench/learning: %d identical sims (%d slots, ttft %s, %s/token, prefill %s/prompt token), one model, through model_router\n",
		len(sims), s.Slots, s.TTFT, s.PerToken, s.Prefill)
	fmt.Printf("  answers %s tokens (mean %.0f) as max_tokens, prompts %s tokens (mean %.0f): mean %s per request\n",
		spec.Output, spec.Output.Mean(), spec.Prompt, spec.Prompt.Mean(), s.MeanService(spec).Round(time.Millisecond))
	fmt.Printf("capacity %.1f req/s; Poisson arrivals at %.0f%% = %.1f req/s (%.0f%% streaming), seed %d; with %s %.3g× slower: %.0f%% of what is left\n",
		capacity, o.load*100, rate, o.stream*100, o.seed, slowed.Name, o.slowdown, 100*rate/(capacity-slowed.Rate(spec)*(1-1/o.slowdown)))
	fmt.Printf("timeline: warm-up %s, then sim %s %.3g× slower for %s, then recovered for %s; windows of %s, shares judged over %d of them (%s)\n",
		o.warmup, slowed.Name, o.slowdown, o.slow, o.recover, o.window, o.smooth, time.Duration(o.smooth)*o.window)
	fmt.Printf("%d CPUs, %s\n", runtime.NumCPU(), runtime.Version())

	if _, err := h.StartCaddy("sims", bin, simfleet.Caddyfile(sims), "caddyfile", addrs...); err != nil {
		return fmt.Errorf("starting the sims: %w", err)
	}
	control := simfleet.Control{Client: loadgen.NewClient()}
	arrivals := trim(workload.Arrivals(int(rate*total.Seconds()*1.2)+10, rate, o.stream, o.seed, spec), total)

	for _, strategy := range o.strategies {
		if h.Interrupted() {
			return h.Context().Err()
		}
		fmt.Printf("\n== strategy %s ==\n", strategy)
		addr, err := h.FreeAddrs(1)
		if err != nil {
			return err
		}
		proc, err := h.StartCaddy("caddy-"+strategy, bin, configs.Router(addr[0], sims, configs.RouterOptions{Strategy: strategy, MaxWait: o.maxWait}), "caddyfile", addr[0])
		if err != nil {
			fmt.Printf("NOT RUN: %v\n", err)
			continue
		}
		tl, err := runTimeline(h, o, control, sims, slowed, "http://"+addr[0]+"/v1/chat/completions", arrivals)
		proc.Stop()
		if err != nil {
			return err
		}
		printTimeline(o, slowed.Name, tl)
	}
	return nil
}

// trim keeps the arrivals before end.
func trim(all []workload.Arrival, end time.Duration) []workload.Arrival {
	for i, a := range all {
		if a.Offset >= end {
			return all[:i]
		}
	}
	return all
}

// timeline is one run: the outcomes and when the slowdown and the recovery
// took effect, from the start of the load.
type timeline struct {
	outcomes       []loadgen.Outcome
	slowAt, backAt time.Duration
	reachedFull    int64
	leak           string
}

// runTimeline sends the arrivals through url, slowing the sim down and back
// at their times, and returns what happened.
func runTimeline(h *harness.Harness, o options, control simfleet.Control, sims []simfleet.Sim, slowed simfleet.Sim, url string, arrivals []workload.Arrival) (*timeline, error) {
	for _, s := range sims {
		if _, err := control.SetConfig(s, `{"reset":true}`); err != nil {
			return nil, err
		}
	}
	if err := control.Reset(sims); err != nil {
		return nil, err
	}
	tl := &timeline{}
	start := time.Now().Add(100 * time.Millisecond)
	changed := make(chan error, 1)
	go func() {
		set := func(at time.Duration, body string, took *time.Duration) error {
			select {
			case <-time.After(time.Until(start.Add(at))):
			case <-h.Context().Done():
				return h.Context().Err()
			}
			if _, err := control.SetConfig(slowed, body); err != nil {
				return err
			}
			*took = time.Since(start) // in force for every request arriving from now on
			return nil
		}
		err := set(o.warmup, fmt.Sprintf(`{"slowdown":%g}`, o.slowdown), &tl.slowAt)
		if err == nil {
			err = set(o.warmup+o.slow, `{"slowdown":1}`, &tl.backAt)
		}
		changed <- err
	}()
	client := loadgen.NewClient()
	tl.outcomes = loadgen.OpenLoop(h.Context(), client, []string{url}, nil, arrivals, start, o.timeout)
	client.CloseIdleConnections()
	if err := <-changed; err != nil {
		return nil, fmt.Errorf("changing sim %s's speed: %w", slowed.Name, err)
	}
	if _, err := control.SetConfig(slowed, `{"reset":true}`); err != nil {
		return nil, err
	}
	all, err := control.Settle(sims)
	if err != nil {
		tl.leak = err.Error()
	}
	for _, s := range all {
		tl.reachedFull += s.ReachedFull
	}
	return tl, nil
}
