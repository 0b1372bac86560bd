// Command quality measures routing quality under load: heterogeneous
// simulated backends (model_router_sim sites in one Caddy process), an
// open-loop Poisson arrival stream at a fixed share of their total capacity,
// half of it streaming, and the same arrivals sent through each contender:
//
//	(b)   stock Caddy reverse_proxy, lb_policy least_conn
//	(b')  stock Caddy least_conn, per-upstream max_requests = slots,
//	      lb_try_duration, lb_try_interval 10ms (the strongest stock setup)
//	(c)   model_router, strategy balanced
//	(c2)  model_router, strategy least_load
//
// and, with -replicas N, N stock replicas of (b') and, with -redis, N
// model_router replicas sharing state in Redis, arrivals spread round-robin.
// Contenders take turns in rounds, against freshly reset sims; the report is
// latency percentiles, failures, requests that reached a full backend (from
// the sims' own counters) and ratios against the stock baseline.
//
//	go run ./bench/quality [-requests 3000] [-rounds 6] [-load 0.85] [-replicas 3 -redis 127.0.0.1:6390]
package main

import (
	"flag"
	"fmt"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/modelrouter/modelrouter/bench/internal/harness"
	"github.com/modelrouter/modelrouter/bench/internal/report"
	"github.com/modelrouter/modelrouter/bench/internal/stats"
)

// Targets from issues 2 and 3.
const (
	targetP99VsStock    = 0.90 // p99 (c) ÷ p99 (b') at most
	targetP99Replicated = 1.10 // p99 (c×N on Redis) ÷ p99 (c) at most
)

type options struct {
	requests int
	rounds   int
	load     float64
	stream   float64
	seed     uint64
	tokens   int
	scale    float64
	maxWait  time.Duration
	timeout  time.Duration
	replicas int
	redis    string
	bin      string
	keep     bool
}

// contender is one way of routing the workload to the sims: one or more
// Caddy processes with the same config, arrivals spread round-robin.
type contender struct {
	key      string // as printed: b, b', c, c2, ...
	slug     string // in process and file names
	label    string
	replicas int
	config   func(listen string) (config, adapter string)

	urls  []string
	procs []*harness.Process
	err   error

	outcomes []outcome
	perSim   []simStats // summed over rounds; PeakConcurrent is the maximum
	leaks    []string
}

func (c *contender) name() string { return "(" + c.key + ")" }

func main() {
	var o options
	flag.IntVar(&o.requests, "requests", 3000, "requests per contender, the same arrivals for each")
	flag.IntVar(&o.rounds, "rounds", 6, "rounds; the requests are cut into this many chunks and contenders take turns on each")
	flag.Float64Var(&o.load, "load", 0.85, "arrival rate as a share of total capacity (Σ slots ÷ service time)")
	flag.Float64Var(&o.stream, "stream", 0.5, "share of requests that stream")
	flag.Uint64Var(&o.seed, "seed", 1, "seed of the arrival times and of which requests stream")
	flag.IntVar(&o.tokens, "tokens", 32, "completion tokens per answer")
	flag.Float64Var(&o.scale, "scale", 1, "multiplies every sim delay (ttft, per_token); the arrival rate follows")
	flag.DurationVar(&o.maxWait, "max-wait", 5*time.Second, "model_router max_wait and stock lb_try_duration")
	flag.DurationVar(&o.timeout, "timeout", 60*time.Second, "client timeout per request")
	flag.IntVar(&o.replicas, "replicas", 1, "with N > 1, add N stock replicas of (b'), and N model_router replicas when -redis is set")
	flag.StringVar(&o.redis, "redis", "", "host:port of a Redis: adds model_router replicas with `pool bench` and `redis redis://ADDR/0`")
	flag.StringVar(&o.bin, "bin", "", "prebuilt gateway binary (default: go build ./cmd/modelrouter into a temp dir)")
	flag.BoolVar(&o.keep, "keep", false, "keep the temp dir with configs and process logs")
	flag.Parse()
	if o.requests < 1 || o.rounds < 1 || o.load <= 0 || o.stream < 0 || o.stream > 1 || o.tokens < 1 || o.scale <= 0 || o.replicas < 1 || o.maxWait <= 0 || o.timeout <= 0 {
		fmt.Fprintln(os.Stderr, "quality: -requests, -rounds, -load, -tokens, -scale, -replicas, -max-wait and -timeout must be positive; -stream in [0,1]")
		os.Exit(2)
	}
	harness.Main("quality", o.keep, func(h *harness.Harness) error { return run(h, o) })
}

func run(h *harness.Harness, o options) error {
	bin, err := h.Gateway(o.bin)
	if err != nil {
		return err
	}
	sims := fleet(o.scale)
	addrs, err := h.FreeAddrs(len(sims))
	if err != nil {
		return err
	}
	for i := range sims {
		sims[i].addr = addrs[i]
	}
	capReqs := capacity(sims, o.tokens)
	rate := o.load * capReqs

	fmt.Printf("bench/quality: %d simulated backends in one Caddy, %d tokens per answer\n", len(sims), o.tokens)
	for _, s := range sims {
		fmt.Printf("  %s %-6s %2d slots, ttft %s, %s/token: %s per request, %.1f req/s\n", s.name, s.kind, s.slots,
			s.ttft, s.perToken, s.service(o.tokens).Round(time.Millisecond), float64(s.slots)/s.service(o.tokens).Seconds())
	}
	fmt.Printf("capacity %.1f req/s; Poisson arrivals at %.0f%% = %.1f req/s; %d requests per contender (%.0f%% streaming) in %d rounds; seed %d\n",
		capReqs, o.load*100, rate, o.requests, o.stream*100, o.rounds, o.seed)
	fmt.Printf("%d CPUs, %s\n\n", runtime.NumCPU(), runtime.Version())

	if _, err := h.StartCaddy("sims", bin, simsCaddyfile(sims, o.tokens), "caddyfile", addrs...); err != nil {
		return fmt.Errorf("starting the sims: %w", err)
	}

	contenders := defineContenders(o, sims)
	for _, c := range contenders {
		fmt.Printf("%-12s %s\n", c.name(), c.label)
	}
	fmt.Println()
	for _, c := range contenders {
		start(h, bin, c)
		if c.err != nil {
			fmt.Printf("%s NOT RUN: %v\n", c.name(), c.err)
		}
	}

	control := simControl{client: newClient()}
	chunks := schedule(o.requests, o.rounds, rate, o.stream, o.seed)
	for r, chunk := range chunks {
		line := fmt.Sprintf("round %d/%d (%d requests):", r+1, len(chunks), len(chunk))
		for i := range contenders {
			c := contenders[(r+i)%len(contenders)] // rotate who goes first
			if h.Interrupted() {
				return h.Context().Err()
			}
			if !c.available() {
				continue
			}
			if err := control.reset(sims); err != nil {
				return err
			}
			client := newClient()
			outs := openLoop(h.Context(), client, c.urls, chunk, o.timeout)
			client.CloseIdleConnections()
			if h.Interrupted() {
				return h.Context().Err()
			}
			c.outcomes = append(c.outcomes, outs...)
			simStats, err := control.settle(sims)
			if err != nil {
				c.leaks = append(c.leaks, fmt.Sprintf("round %d: %v", r+1, err))
			}
			c.addSimStats(simStats)
			p99, fails, full := roundSummary(outs, simStats)
			line += fmt.Sprintf("  %s p99 %s", c.name(), report.Ms(p99))
			if fails > 0 {
				line += fmt.Sprintf(" %d failed", fails)
			}
			if full > 0 {
				line += fmt.Sprintf(" %d full", full)
			}
		}
		fmt.Println(line)
	}
	fmt.Println()
	printReport(o, sims, contenders)
	return nil
}

// defineContenders lists the contenders the options ask for.
func defineContenders(o options, sims []sim) []*contender {
	stock := func(capped bool) func(string) (string, string) {
		return func(listen string) (string, string) { return stockConfig(listen, sims, capped, o.maxWait), "" }
	}
	ours := func(strategy, redis string) func(string) (string, string) {
		return func(listen string) (string, string) {
			return gatewayConfig(listen, sims, strategy, o.maxWait, redis), "caddyfile"
		}
	}
	cappedLabel := fmt.Sprintf("least_conn, per-upstream max_requests = slots, lb_try_duration %s, lb_try_interval 10ms", o.maxWait)
	oursLabel := fmt.Sprintf("max_inflight = slots, max_wait %s", o.maxWait)
	cs := []*contender{
		{key: "b", slug: "b", replicas: 1, label: "stock Caddy reverse_proxy, lb_policy least_conn", config: stock(false)},
		{key: "b'", slug: "bcap", replicas: 1, label: "stock Caddy reverse_proxy, " + cappedLabel, config: stock(true)},
		{key: "c", slug: "c", replicas: 1, label: "model_router strategy balanced, " + oursLabel, config: ours("balanced", "")},
		{key: "c2", slug: "c2", replicas: 1, label: "model_router strategy least_load, " + oursLabel, config: ours("least_load", "")},
	}
	n := o.replicas
	if n > 1 {
		cs = append(cs, &contender{key: fmt.Sprintf("b'×%d", n), slug: fmt.Sprintf("bcap-x%d", n), replicas: n,
			label:  fmt.Sprintf("%d stock Caddy replicas, each (b') with its own counts", n),
			config: stock(true)})
	}
	if o.redis != "" {
		key, label := "c redis", "model_router balanced on Redis "+o.redis+" (pool bench), "+oursLabel
		if n > 1 {
			key = fmt.Sprintf("c×%d redis", n)
			label = fmt.Sprintf("%d model_router replicas sharing Redis %s (pool bench), balanced, %s", n, o.redis, oursLabel)
		}
		cs = append(cs, &contender{key: key, slug: fmt.Sprintf("c-redis-x%d", n), replicas: n, label: label,
			config: ours("balanced", o.redis)})
	}
	return cs
}

// start starts the contender's replicas; a failure is kept on the contender
// so the others still run.
func start(h *harness.Harness, bin string, c *contender) {
	addrs, err := h.FreeAddrs(c.replicas)
	if err != nil {
		c.err = err
		return
	}
	for i, addr := range addrs {
		cfg, adapter := c.config(addr)
		name := "caddy-" + c.slug
		if c.replicas > 1 {
			name += "-" + strconv.Itoa(i+1)
		}
		p, err := h.StartCaddy(name, bin, cfg, adapter, addr)
		if err != nil {
			c.err = err
			for _, p := range c.procs {
				p.Stop() // free the machine for the contenders that do run
			}
			return
		}
		c.procs = append(c.procs, p)
		c.urls = append(c.urls, "http://"+addr+"/v1/chat/completions")
	}
}

func (c *contender) available() bool {
	if c.err != nil {
		return false
	}
	for _, p := range c.procs {
		if err := p.Check(); err != nil {
			c.err = err
			fmt.Printf("%s STOPPED: %v\n", c.name(), err)
			return false
		}
	}
	return true
}

func (c *contender) addSimStats(all []simStats) {
	if c.perSim == nil {
		c.perSim = make([]simStats, len(all))
	}
	for i, s := range all {
		p := &c.perSim[i]
		p.Requests += s.Requests
		p.ReachedFull += s.ReachedFull
		p.Failed += s.Failed
		p.Canceled += s.Canceled
		p.PeakConcurrent = max(p.PeakConcurrent, s.PeakConcurrent)
	}
}

func roundSummary(outs []outcome, sims []simStats) (p99 time.Duration, fails int, full int64) {
	var lat []time.Duration
	for _, o := range outs {
		if o.ok {
			lat = append(lat, o.latency)
		} else {
			fails++
		}
	}
	for _, s := range sims {
		full += s.ReachedFull
	}
	return stats.Percentile(stats.Sorted(lat), 0.99), fails, full
}

// result is a contender's outcomes taken together.
type result struct {
	ok, failed    int
	p50, p95, p99 time.Duration
	ttftP99       time.Duration
	reachedFull   int64
	failures      map[string]int
}

func summarize(c *contender) result {
	r := result{failures: map[string]int{}}
	var lat, ttft []time.Duration
	for _, o := range c.outcomes {
		if !o.ok {
			r.failed++
			r.failures[o.failure]++
			continue
		}
		r.ok++
		lat = append(lat, o.latency)
		if o.stream {
			ttft = append(ttft, o.ttft)
		}
	}
	sorted := stats.Sorted(lat)
	r.p50, r.p95, r.p99 = stats.Percentile(sorted, 0.50), stats.Percentile(sorted, 0.95), stats.Percentile(sorted, 0.99)
	r.ttftP99 = stats.Percentile(stats.Sorted(ttft), 0.99)
	for _, s := range c.perSim {
		r.reachedFull += s.ReachedFull
	}
	return r
}

func printReport(o options, sims []sim, contenders []*contender) {
	var names, slots []string
	for _, s := range sims {
		names = append(names, s.name)
		slots = append(slots, strconv.Itoa(s.slots))
	}
	simCols := strings.Join(names, "/")
	results := map[string]result{}
	t := &report.Table{Left: 1}
	t.Row("contender", "ok", "failed", "p50", "p95", "p99", "TTFT p99", "reached full", "requests "+simCols, "peak "+simCols)
	for _, c := range contenders {
		if len(c.outcomes) == 0 {
			t.Row(c.name() + " not run")
			continue
		}
		r := summarize(c)
		results[c.key] = r
		var reqs, peaks []string
		for _, s := range c.perSim {
			reqs = append(reqs, strconv.FormatInt(s.Requests, 10))
			peaks = append(peaks, strconv.FormatInt(s.PeakConcurrent, 10))
		}
		t.Row(c.name(), strconv.Itoa(r.ok), strconv.Itoa(r.failed), report.Ms(r.p50), report.Ms(r.p95), report.Ms(r.p99),
			report.Ms(r.ttftP99), strconv.FormatInt(r.reachedFull, 10), strings.Join(reqs, "/"), strings.Join(peaks, "/"))
	}
	t.Write(os.Stdout, "")
	fmt.Printf("(latency from each request's scheduled arrival to its last byte, successful requests only; TTFT to the first SSE data line;\n"+
		" reached full = requests that arrived at a sim while all its slots were busy; peak = most requests at a sim at once, slots %s)\n",
		strings.Join(slots, "/"))

	for _, c := range contenders {
		r, ok := results[c.key]
		if ok && r.failed > 0 {
			fmt.Printf("%s failures: %s\n", c.name(), topFailures(r.failures, 3))
		}
		for _, l := range c.leaks {
			fmt.Printf("%s ANOMALY: %s\n", c.name(), l)
		}
	}
	var lags []time.Duration
	for _, c := range contenders {
		for _, out := range c.outcomes {
			lags = append(lags, out.lag)
		}
	}
	sortedLags := stats.Sorted(lags)
	fmt.Printf("load generator sent late by p99 %s, max %s (large values: the machine was too busy to keep the schedule)\n",
		report.Ms(stats.Percentile(sortedLags, 0.99)), report.Ms(stats.Percentile(sortedLags, 1)))

	fmt.Println("\ntargets (issue 2: ours against the strongest stock setup (b'))")
	stockP99 := results["b'"].p99
	for _, key := range []string{"c", "c2"} {
		r, ok := results[key]
		if !ok {
			fmt.Printf("  (%s) not run\n", key)
			continue
		}
		ratio := stats.DurationRatio(r.p99, stockP99)
		fmt.Printf("  %-5s p99 ÷ (b') p99 = %s ≤ %.2f  %s\n", "("+key+")", report.PreciseRatio(ratio), targetP99VsStock, report.AtMost(ratio, targetP99VsStock))
		fmt.Printf("  %-5s reached a full backend = %d, want 0  %s\n", "("+key+")", r.reachedFull, report.Verdict(r.reachedFull == 0, true))
		if r.failed > 0 {
			fmt.Printf("  %-5s failed requests = %d, want 0  MISS\n", "("+key+")", r.failed)
		}
	}
	for _, c := range contenders {
		if !strings.HasPrefix(c.key, "c") || !strings.HasSuffix(c.key, "redis") {
			continue
		}
		fmt.Printf("\ntargets (issue 3: %d replica(s) sharing Redis against our single replica (c))\n", c.replicas)
		r, ok := results[c.key]
		if !ok {
			fmt.Printf("  %s not run: %v\n", c.name(), c.err)
			continue
		}
		ratio := stats.DurationRatio(r.p99, results["c"].p99)
		fmt.Printf("  %s reached a full backend = %d, want 0  %s\n", c.name(), r.reachedFull, report.Verdict(r.reachedFull == 0, true))
		fmt.Printf("  %s p99 ÷ (c) p99 = %s ≤ %.2f  %s\n", c.name(), report.PreciseRatio(ratio), targetP99Replicated, report.AtMost(ratio, targetP99Replicated))
		if r.failed > 0 {
			fmt.Printf("  %s failed requests = %d, want 0  MISS\n", c.name(), r.failed)
		}
	}
}

// topFailures lists the commonest failure reasons with their counts.
func topFailures(failures map[string]int, n int) string {
	type reason struct {
		text  string
		count int
	}
	var rs []reason
	for t, c := range failures {
		rs = append(rs, reason{t, c})
	}
	sort.Slice(rs, func(i, j int) bool {
		return rs[i].count > rs[j].count || (rs[i].count == rs[j].count && rs[i].text < rs[j].text)
	})
	var parts []string
	for i, r := range rs {
		if i == n {
			parts = append(parts, fmt.Sprintf("and %d more kinds", len(rs)-n))
			break
		}
		parts = append(parts, fmt.Sprintf("%d× %q", r.count, r.text))
	}
	return strings.Join(parts, "; ")
}
