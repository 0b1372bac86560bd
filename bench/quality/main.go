// Command quality measures routing quality under load: heterogeneous
// simulated backends (model_router_sim sites in one Caddy process), an
// open-loop Poisson arrival stream at a fixed share of their total capacity,
// half of it streaming, and the same arrivals sent through each contender:
//
//	(b)   stock Caddy reverse_proxy, lb_policy least_conn
//	(b')  stock Caddy least_conn, per-upstream max_requests = slots,
//	      lb_try_duration, lb_try_interval 10ms (the strongest stock setup)
//	(c0)  model_router balanced as of -baseline-ref (before predictive routing)
//	(cf)  model_router, strategy fastest
//	(c)   model_router, strategy balanced (the default)
//	(c2)  model_router, strategy least_load
//	(cg)  model_router, strategy greedy
//	(co)  model_router, strategy optimal
//
// and, with -replicas N, N stock replicas of (b') and, with -redis, N
// model_router replicas sharing state in Redis, arrivals spread round-robin.
// The workload (-workload) is fixed (issue 2: every answer 32 tokens), wide
// or heavy (issue 7: answer lengths and prompt sizes drawn per request), or
// mixed (issue 8: tasks of model "auto" on sims whose capabilities differ;
// the report adds the capability score of the served requests, and the
// replicas run strategy optimal).
// Contenders take turns in rounds, against freshly reset sims; the report is
// latency percentiles, failures, requests that reached a full backend (from
// the sims' own counters), where the requests went and ratios against the
// stock baseline and our earlier self.
//
//	go run ./bench/quality [-workload wide] [-requests 3000] [-rounds 6] [-load 0.85] [-replicas 3 -redis 127.0.0.1:6390|auto]
package main

import (
	"flag"
	"fmt"
	"net/http"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/modelrouter/modelrouter/bench/internal/configs"
	"github.com/modelrouter/modelrouter/bench/internal/harness"
	"github.com/modelrouter/modelrouter/bench/internal/loadgen"
	"github.com/modelrouter/modelrouter/bench/internal/report"
	"github.com/modelrouter/modelrouter/bench/internal/simfleet"
	"github.com/modelrouter/modelrouter/bench/internal/stats"
	"github.com/modelrouter/modelrouter/bench/internal/workload"
)

type options struct {
	workload    string
	contenders  string
	requests    int
	rounds      int
	load        float64
	stream      float64
	seed        uint64
	tokens      int
	scale       float64
	maxWait     time.Duration
	aging       time.Duration
	timeout     time.Duration
	warmup      time.Duration
	replicas    int
	redis       string
	baselineRef string
	explain     bool
	bin         string
	keep        bool
}

// explainRequestHeader is the explain_header of the routers with -explain.
const explainRequestHeader = "X-Bench-Explain"

// defaultContenders is who runs when -contenders is not given.
var defaultContenders = map[string]string{
	"fixed": "b,b',c0,c,c2",
	"wide":  "b',c0,cf,c",
	"heavy": "b',c0,cf,c",
	"mixed": "b',cg,co,c",
}

// defaultLoad is -load when not given: mixed runs under contention (see
// bench/README.md), the others at 85%.
var defaultLoad = map[string]float64{"mixed": 1.0}

// contender is one way of routing the workload to the sims: one or more
// Caddy processes with the same config, arrivals spread round-robin.
type contender struct {
	key      string // as printed: b, b', c, c2, ...
	slug     string // in process and file names
	label    string
	replicas int
	baseline bool // runs the gateway built from -baseline-ref
	explain  bool // asks the router to explain its decisions (-explain)
	config   func(listen string) (config, adapter string)

	urls  []string
	procs []*harness.Process
	err   error

	outcomes  []loadgen.Outcome
	roundP99s []time.Duration
	perSim    []simfleet.Stats // summed over rounds; PeakConcurrent is the maximum
	leaks     []string
}

func (c *contender) name() string { return "(" + c.key + ")" }

func main() {
	var o options
	flag.StringVar(&o.workload, "workload", "fixed", "fixed (every answer -tokens long), wide (answers 16-256 tokens, prompts 50-4000), heavy (answers 8-1024, heavy-tailed) or mixed (as wide, 40% chat, 30% coding, 30% reasoning as model auto)")
	flag.StringVar(&o.contenders, "contenders", "", "comma-separated contenders of b, b', c0, cf, c, c2, cg, co (default: b,b',c0,c,c2 for fixed; b',c0,cf,c for wide and heavy; b',cg,co,c for mixed)")
	flag.IntVar(&o.requests, "requests", 3000, "requests per contender, the same arrivals for each")
	flag.IntVar(&o.rounds, "rounds", 6, "rounds; the requests are cut into this many chunks and contenders take turns on each")
	flag.Float64Var(&o.load, "load", 0, "arrival rate as a share of total capacity (Σ slots ÷ mean service time); default 0.85, 1.0 for mixed")
	flag.Float64Var(&o.stream, "stream", 0.5, "share of requests that stream")
	flag.Uint64Var(&o.seed, "seed", 1, "seed of the arrival times, of which requests stream, and of their sizes")
	flag.IntVar(&o.tokens, "tokens", 32, "completion tokens per answer of the fixed workload")
	flag.Float64Var(&o.scale, "scale", 1, "multiplies every sim delay (ttft, per_token, prefill); the arrival rate follows")
	flag.DurationVar(&o.maxWait, "max-wait", 5*time.Second, "model_router max_wait and stock lb_try_duration")
	flag.DurationVar(&o.aging, "assign-aging", 0, "model_router assign_aging of the optimal contenders ((co) and its replicas): one point of score per this much waiting; 0: the router's default, 500ms")
	flag.DurationVar(&o.timeout, "timeout", 60*time.Second, "client timeout per request")
	flag.DurationVar(&o.warmup, "warmup", 10*time.Second, "unmeasured traffic before each contender's turn in each round (the learned latency model forgets in 1 minute, and a contender waits for the others' turns; 0: none)")
	flag.IntVar(&o.replicas, "replicas", 1, "with N > 1, add N stock replicas of (b'), and N model_router replicas when -redis is set")
	flag.StringVar(&o.redis, "redis", "", "host:port of a Redis, or auto (a throwaway redis-server on a free port): adds model_router replicas with `pool bench` and `redis redis://ADDR/0`")
	flag.StringVar(&o.baselineRef, "baseline-ref", "0dfb174", "git commit of contender (c0): our gateway before predictive routing")
	flag.BoolVar(&o.explain, "explain", false, "ask (cf), (c), (c2), (cg) and (co) to explain every decision (explain_header) and show what they predicted for long answers sent to the slowest sim")
	flag.StringVar(&o.bin, "bin", "", "prebuilt gateway binary (default: go build ./cmd/modelrouter into a temp dir)")
	flag.BoolVar(&o.keep, "keep", false, "keep the temp dir with configs and process logs")
	flag.Parse()
	if o.load == 0 {
		o.load = 0.85
		if l, ok := defaultLoad[o.workload]; ok {
			o.load = l
		}
	}
	if o.requests < 1 || o.rounds < 1 || o.load <= 0 || o.stream < 0 || o.stream > 1 || o.tokens < 1 || o.scale <= 0 || o.replicas < 1 || o.maxWait <= 0 || o.timeout <= 0 || o.warmup < 0 || o.aging < 0 {
		fmt.Fprintln(os.Stderr, "quality: -requests, -rounds, -load, -tokens, -scale, -replicas, -max-wait and -timeout must be positive, -warmup and -assign-aging not negative; -stream in [0,1]")
		os.Exit(2)
	}
	spec, err := workload.Named(o.workload, o.tokens)
	if err != nil {
		fmt.Fprintln(os.Stderr, "quality:", err)
		os.Exit(2)
	}
	if o.contenders == "" {
		o.contenders = defaultContenders[spec.Name]
	}
	if _, err := selectContenders(o, nil); err != nil {
		fmt.Fprintln(os.Stderr, "quality:", err)
		os.Exit(2)
	}
	harness.Main("quality", o.keep, func(h *harness.Harness) error { return run(h, o, spec) })
}

func run(h *harness.Harness, o options, spec workload.Spec) error {
	bin, err := h.Gateway(o.bin)
	if err != nil {
		return err
	}
	sims := fleet(spec, o.tokens, o.scale)
	addrs, err := h.FreeAddrs(len(sims))
	if err != nil {
		return err
	}
	for i := range sims {
		sims[i].Addr = addrs[i]
	}
	capReqs := simfleet.Capacity(sims, spec)
	rate := o.load * capReqs
	if o.redis == "auto" {
		if o.redis, err = startRedis(h); err != nil {
			return err
		}
	}

	printHeader(o, spec, sims, capReqs, rate)
	if _, err := h.StartCaddy("sims", bin, simfleet.Caddyfile(sims), "caddyfile", addrs...); err != nil {
		return fmt.Errorf("starting the sims: %w", err)
	}

	contenders, err := selectContenders(o, sims)
	if err != nil {
		return err
	}
	for _, c := range contenders {
		fmt.Printf("%-12s %s\n", c.name(), c.label)
	}
	fmt.Println()
	var baselineBin string
	var baselineErr error
	for _, c := range contenders {
		cbin := bin
		if c.baseline {
			if baselineBin == "" && baselineErr == nil {
				baselineBin, baselineErr = h.GatewayAt(o.baselineRef)
			}
			if baselineErr != nil {
				c.err = fmt.Errorf("cannot build the gateway at %s: %w", o.baselineRef, baselineErr)
				fmt.Printf("%s NOT RUN: %v\n", c.name(), c.err)
				continue
			}
			cbin = baselineBin
		}
		start(h, cbin, c)
		if c.err != nil {
			fmt.Printf("%s NOT RUN: %v\n", c.name(), c.err)
		}
	}

	control := simfleet.Control{Client: loadgen.NewClient()}
	chunks := workload.Schedule(o.requests, o.rounds, rate, o.stream, o.seed, spec)
	// The warm-up traffic is drawn from another seed, the same for every
	// contender and round.
	var warmup []workload.Arrival
	if o.warmup > 0 {
		warmup = trimAfter(workload.Arrivals(int(rate*o.warmup.Seconds()*1.5)+10, rate, o.stream, o.seed+1_000_003, spec), o.warmup)
		fmt.Printf("before each contender's turn: %s (%d requests) of unmeasured warm-up, then the sims are reset\n\n", o.warmup, len(warmup))
	}
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
			client := loadgen.NewClient()
			var header http.Header
			if c.explain {
				header = http.Header{explainRequestHeader: {"1"}}
			}
			if len(warmup) > 0 {
				// Unmeasured: the router relearns what its window forgot
				// while the others had their turns.
				loadgen.OpenLoop(h.Context(), client, c.urls, header, warmup, time.Now(), o.timeout)
				if _, err := control.Settle(sims); err != nil {
					c.leaks = append(c.leaks, fmt.Sprintf("round %d warm-up: %v", r+1, err))
				}
			}
			if err := control.Reset(sims); err != nil {
				return err
			}
			outs := loadgen.OpenLoop(h.Context(), client, c.urls, header, chunk, time.Now(), o.timeout)
			client.CloseIdleConnections()
			if h.Interrupted() {
				return h.Context().Err()
			}
			c.outcomes = append(c.outcomes, outs...)
			simStats, err := control.Settle(sims)
			if err != nil {
				c.leaks = append(c.leaks, fmt.Sprintf("round %d: %v", r+1, err))
			}
			c.addSimStats(simStats)
			p99, fails, full := roundSummary(outs, simStats)
			c.roundP99s = append(c.roundP99s, p99)
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
	printReport(o, spec, sims, contenders)
	return nil
}

func printHeader(o options, spec workload.Spec, sims []simfleet.Sim, capReqs, rate float64) {
	fmt.Printf("bench/quality: workload %s, %d simulated backends in one Caddy\n", spec.Name, len(sims))
	if spec.Prompt == nil {
		fmt.Printf("  answers %d tokens (the sims' tokens), one short prompt\n", o.tokens)
	} else {
		fmt.Printf("  answers %s tokens (mean %.1f), sent as max_tokens; prompts %s tokens (mean %.1f); sims' tokens %d\n",
			spec.Output, spec.Output.Mean(), spec.Prompt, spec.Prompt.Mean(), sims[0].Tokens)
	}
	kindWidth := 0
	for _, s := range sims {
		kindWidth = max(kindWidth, len(s.Kind))
	}
	for _, s := range sims {
		prefill := ""
		if s.Prefill > 0 {
			prefill = fmt.Sprintf(", prefill %s/prompt token", s.Prefill)
		}
		fmt.Printf("  %s %-*s %2d slots, ttft %s, %s/token%s: mean %s per request, %.1f req/s%s\n", s.Name, kindWidth, s.Kind, s.Slots,
			s.TTFT, s.PerToken, prefill, s.MeanService(spec).Round(time.Millisecond), s.Rate(spec), capabilityNote(s, spec))
	}
	if len(spec.Tasks) > 0 {
		var mix []string
		for _, t := range spec.Tasks {
			mix = append(mix, fmt.Sprintf("%.0f%% %s", 100*t.Share, t.Task))
		}
		fmt.Printf("  tasks %s, each as model %q with %s\n", strings.Join(mix, ", "), workload.AutoModel, workload.CapabilityHeader)
	}
	fmt.Printf("capacity %.1f req/s; Poisson arrivals at %.0f%% = %.1f req/s; %d requests per contender (%.0f%% streaming) in %d rounds; seed %d\n",
		capReqs, o.load*100, rate, o.requests, o.stream*100, o.rounds, o.seed)
	fmt.Printf("%d CPUs, %s\n\n", runtime.NumCPU(), runtime.Version())
}

// selectContenders lists the contenders -contenders and the other options
// ask for; with sims nil it only checks the names.
func selectContenders(o options, sims []simfleet.Sim) ([]*contender, error) {
	stock := func(capped bool) func(string) (string, string) {
		return func(listen string) (string, string) { return configs.Stock(listen, sims, capped, o.maxWait), "" }
	}
	ours := func(strategy, redis string, explain bool) func(string) (string, string) {
		ro := configs.RouterOptions{Strategy: strategy, MaxWait: o.maxWait, Redis: redis, AssignAging: o.aging}
		if explain {
			ro.ExplainHeader = explainRequestHeader
		}
		return func(listen string) (string, string) { return configs.Router(listen, sims, ro), "caddyfile" }
	}
	cappedLabel := fmt.Sprintf("least_conn, per-upstream max_requests = slots, lb_try_duration %s, lb_try_interval 10ms", o.maxWait)
	oursLabel := fmt.Sprintf("max_inflight = slots, max_wait %s", o.maxWait)
	if o.aging > 0 {
		oursLabel += fmt.Sprintf(", assign_aging %s (optimal)", o.aging)
	}
	known := []*contender{
		{key: "b", slug: "b", replicas: 1, label: "stock Caddy reverse_proxy, lb_policy least_conn", config: stock(false)},
		{key: "b'", slug: "bcap", replicas: 1, label: "stock Caddy reverse_proxy, " + cappedLabel, config: stock(true)},
		{key: "c0", slug: "c0", replicas: 1, baseline: true,
			label:  fmt.Sprintf("model_router strategy balanced built from %s (before predictive routing), %s", o.baselineRef, oursLabel),
			config: ours("balanced", "", false)}, // 0dfb174 has no explain_header
		{key: "cf", slug: "cf", replicas: 1, label: "model_router strategy fastest, " + oursLabel, config: ours("fastest", "", o.explain), explain: o.explain},
		{key: "c", slug: "c", replicas: 1, label: "model_router strategy balanced (default weights), " + oursLabel, config: ours("balanced", "", o.explain), explain: o.explain},
		{key: "c2", slug: "c2", replicas: 1, label: "model_router strategy least_load, " + oursLabel, config: ours("least_load", "", o.explain), explain: o.explain},
		{key: "cg", slug: "cg", replicas: 1, label: "model_router strategy greedy, " + oursLabel, config: ours("greedy", "", o.explain), explain: o.explain},
		{key: "co", slug: "co", replicas: 1, label: "model_router strategy optimal, " + oursLabel, config: ours("optimal", "", o.explain), explain: o.explain},
	}
	var cs []*contender
	for _, key := range strings.Split(o.contenders, ",") {
		key = strings.TrimSpace(key)
		i := slices.IndexFunc(known, func(c *contender) bool { return c.key == key })
		if i < 0 {
			return nil, fmt.Errorf("unknown contender %q in -contenders: want some of b, b', c0, cf, c, c2, cg, co", key)
		}
		if slices.Contains(cs, known[i]) {
			return nil, fmt.Errorf("contender %q named twice in -contenders", key)
		}
		cs = append(cs, known[i])
	}
	n := o.replicas
	if n > 1 && o.workload != "mixed" { // mixed compares optimal's replicas only
		cs = append(cs, &contender{key: fmt.Sprintf("b'×%d", n), slug: fmt.Sprintf("bcap-x%d", n), replicas: n,
			label:  fmt.Sprintf("%d stock Caddy replicas, each (b') with its own counts", n),
			config: stock(true)})
	}
	if o.redis != "" {
		// Against its own single replica: (c) balanced, or (co) optimal on
		// mixed, the workload of optimal's targets.
		base, strategy := replicatedBase(o.workload)
		key, label := base+" redis", "model_router "+strategy+" on Redis "+o.redis+" (pool bench), "+oursLabel
		if n > 1 {
			key = fmt.Sprintf("%s×%d redis", base, n)
			label = fmt.Sprintf("%d model_router replicas sharing Redis %s (pool bench), %s, %s", n, o.redis, strategy, oursLabel)
		}
		cs = append(cs, &contender{key: key, slug: fmt.Sprintf("%s-redis-x%d", base, n), replicas: n, label: label,
			config: ours(strategy, o.redis, false)})
	}
	return cs, nil
}

// replicatedBase is the single-replica contender that the Redis replicas
// repeat, and its strategy.
func replicatedBase(workload string) (key, strategy string) {
	if workload == "mixed" {
		return "co", "optimal"
	}
	return "c", "balanced"
}

// capabilityNote lists a sim's declared capabilities for the workload's
// tasks, "" when the workload has none.
func capabilityNote(s simfleet.Sim, spec workload.Spec) string {
	if len(spec.Tasks) == 0 {
		return ""
	}
	var parts []string
	for _, t := range spec.Tasks {
		parts = append(parts, fmt.Sprintf("%s %.2g", t.Task, s.Capability(t.Task)))
	}
	return "; " + strings.Join(parts, ", ")
}

// startRedis starts a throwaway redis-server on a free loopback port, with
// no persistence, for -redis auto, and returns its host:port.
func startRedis(h *harness.Harness) (string, error) {
	port, err := h.FreePort()
	if err != nil {
		return "", err
	}
	p, err := h.Start("redis", "redis-server", []string{"--port", strconv.Itoa(port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", h.Dir}, nil)
	if err != nil {
		return "", fmt.Errorf("starting redis-server for -redis auto: %w", err)
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	if err := p.WaitListening(addr); err != nil {
		return "", fmt.Errorf("starting redis-server for -redis auto: %w", err)
	}
	return addr, nil
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

func (c *contender) addSimStats(all []simfleet.Stats) {
	if c.perSim == nil {
		c.perSim = make([]simfleet.Stats, len(all))
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

func roundSummary(outs []loadgen.Outcome, sims []simfleet.Stats) (p99 time.Duration, fails int, full int64) {
	var lat []time.Duration
	for _, o := range outs {
		if o.OK {
			lat = append(lat, o.Latency)
		} else {
			fails++
		}
	}
	for _, s := range sims {
		full += s.ReachedFull
	}
	return stats.Percentile(stats.Sorted(lat), 0.99), fails, full
}

// trimAfter keeps the arrivals before end.
func trimAfter(all []workload.Arrival, end time.Duration) []workload.Arrival {
	for i, a := range all {
		if a.Offset >= end {
			return all[:i]
		}
	}
	return all
}
