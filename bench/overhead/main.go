// Command overhead measures what the gateway costs on the request path: a
// closed-loop load at fixed concurrency against a stub backend that answers at
// once, sent (a) to the stub directly, (b) through stock Caddy reverse_proxy
// with lb_policy least_conn, (c) through model_router, and, with -redis,
// (d) through model_router on the Redis store. Contenders take turns in short
// rounds so that the noise of a shared machine falls on all of them alike, and
// the report is ratios between them.
//
//	go run ./bench/overhead [-concurrency 32] [-rounds 10] [-duration 1.5s] [-redis 127.0.0.1:6390]
package main

import (
	"flag"
	"fmt"
	"math"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/modelrouter/modelrouter/bench/internal/harness"
	"github.com/modelrouter/modelrouter/bench/internal/report"
	"github.com/modelrouter/modelrouter/bench/internal/stats"
)

// Targets from issues 2 and 3.
const (
	targetThroughput      = 0.85 // (c)/(b) throughput at least
	targetP99             = 1.15 // (c)/(b) p99 at most
	targetRedisThroughput = 0.70 // (d)/(c) throughput at least
)

type options struct {
	concurrency int
	rounds      int
	duration    time.Duration
	warmup      time.Duration
	upstreams   int
	strategy    string
	redis       string
	bin         string
	keep        bool
}

// contender is one way of reaching the stub.
type contender struct {
	key    string // a, b, c, d
	label  string
	urls   []string
	client *http.Client
	proc   *harness.Process // nil for the direct contender
	err    error            // set when it could not start or died
	rounds []roundResult
}

func (c *contender) name() string { return "(" + c.key + ")" }

func main() {
	var o options
	serveStubAddrs := flag.String("serve-stub", "", "internal: run as the stub backend on these comma-separated addresses")
	flag.IntVar(&o.concurrency, "concurrency", 32, "closed-loop workers, each with one request in flight")
	flag.IntVar(&o.rounds, "rounds", 10, "rounds; each contender runs once per round, in rotating order")
	flag.DurationVar(&o.duration, "duration", 1500*time.Millisecond, "how long each contender runs in each round")
	flag.DurationVar(&o.warmup, "warmup", 2*time.Second, "unmeasured run per contender before the first round")
	flag.IntVar(&o.upstreams, "upstreams", 2, "stub listeners: upstreams of (b), backends of (c) and (d)")
	flag.StringVar(&o.strategy, "strategy", "balanced", "model_router strategy for (c) and (d)")
	flag.StringVar(&o.redis, "redis", "", "host:port of a Redis to add contender (d), model_router with `redis redis://ADDR/0`")
	flag.StringVar(&o.bin, "bin", "", "prebuilt gateway binary (default: go build ./cmd/modelrouter into a temp dir)")
	flag.BoolVar(&o.keep, "keep", false, "keep the temp dir with configs and process logs")
	flag.Parse()

	if *serveStubAddrs != "" {
		err := serveStub(*serveStubAddrs)
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if o.concurrency < 1 || o.rounds < 1 || o.duration <= 0 || o.upstreams < 1 || o.warmup < 0 {
		fmt.Fprintln(os.Stderr, "overhead: -concurrency, -rounds, -duration and -upstreams must be positive")
		os.Exit(2)
	}
	harness.Main("overhead", o.keep, func(h *harness.Harness) error { return run(h, o) })
}

func run(h *harness.Harness, o options) error {
	bin, err := h.Gateway(o.bin)
	if err != nil {
		return err
	}
	fmt.Printf("bench/overhead: closed loop, %d workers, small chat POSTs to a stub answering at once on %d port(s)\n", o.concurrency, o.upstreams)
	fmt.Printf("%d rounds × %s per contender (rotating order), %s warm-up each; %d CPUs, %s\n\n",
		o.rounds, o.duration, o.warmup, runtime.NumCPU(), runtime.Version())
	stubAddrs, err := h.FreeAddrs(o.upstreams)
	if err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("locating the benchmark binary to start the stub: %w", err)
	}
	stub, err := h.Start("stub", self, []string{"-serve-stub", strings.Join(stubAddrs, ",")}, nil)
	if err != nil {
		return err
	}
	if err := stub.WaitListening(stubAddrs...); err != nil {
		return err
	}

	direct := &contender{key: "a", label: "stub directly"}
	for _, a := range stubAddrs {
		direct.urls = append(direct.urls, "http://"+a+"/v1/chat/completions")
	}
	contenders := []*contender{
		direct,
		startCaddy(h, bin, "b", "stock Caddy reverse_proxy least_conn", func(listen string) string {
			return stockCaddyfile(listen, stubAddrs)
		}),
		startCaddy(h, bin, "c", "model_router "+o.strategy+", memory store", func(listen string) string {
			return gatewayCaddyfile(listen, stubAddrs, o.strategy, "")
		}),
	}
	if o.redis != "" {
		contenders = append(contenders, startCaddy(h, bin, "d", "model_router "+o.strategy+", Redis store", func(listen string) string {
			return gatewayCaddyfile(listen, stubAddrs, o.strategy, o.redis)
		}))
	}
	for _, c := range contenders {
		c.client = newClient(o.concurrency)
		if c.err != nil {
			fmt.Printf("%s %s: NOT RUN: %v\n", c.name(), c.label, c.err)
		}
	}

	if o.warmup > 0 {
		for _, c := range contenders {
			if c.available() {
				if res := closedLoop(h.Context(), c.client, c.urls, o.concurrency, o.warmup); res.requests == 0 {
					c.fail(fmt.Errorf("no successful request during warm-up: %s", res.firstErr))
				}
			}
		}
	}
	for r := range o.rounds {
		line := fmt.Sprintf("round %d/%d:", r+1, o.rounds)
		for i := range contenders {
			c := contenders[(r+i)%len(contenders)] // rotate who goes first
			if h.Interrupted() {
				return h.Context().Err()
			}
			if !c.available() {
				continue
			}
			res := closedLoop(h.Context(), c.client, c.urls, o.concurrency, o.duration)
			c.rounds = append(c.rounds, res)
			line += fmt.Sprintf("  %s %.0f req/s", c.name(), res.throughput())
			if res.errors > 0 {
				line += fmt.Sprintf(" (%d errors)", res.errors)
			}
		}
		fmt.Println(line)
	}
	fmt.Println()
	printReport(o, contenders)
	return nil
}

// startCaddy starts one Caddy contender on a free port with the config that
// config builds for its listen address; a failure is kept on the contender so
// the rest of the benchmark still runs.
func startCaddy(h *harness.Harness, bin, key, label string, config func(listen string) string) *contender {
	c := &contender{key: key, label: label}
	addrs, err := h.FreeAddrs(1)
	if err != nil {
		c.err = err
		return c
	}
	c.proc, c.err = h.StartCaddy("caddy-"+key, bin, config(addrs[0]), "caddyfile", addrs[0])
	c.urls = []string{"http://" + addrs[0] + "/v1/chat/completions"}
	return c
}

func (c *contender) available() bool {
	if c.err == nil && c.proc != nil {
		if err := c.proc.Check(); err != nil {
			c.fail(err)
		}
	}
	return c.err == nil
}

func (c *contender) fail(err error) {
	c.err = err
	fmt.Printf("%s %s: STOPPED: %v\n", c.name(), c.label, err)
}

// globalOptions keeps every Caddy on loopback, without an admin endpoint and
// without writing an autosaved config.
const globalOptions = `{
	admin off
	persist_config off
	auto_https off
	default_bind 127.0.0.1
}
`

func stockCaddyfile(listen string, upstreams []string) string {
	return globalOptions + fmt.Sprintf(`
http://%s {
	reverse_proxy %s {
		lb_policy least_conn
	}
}
`, listen, strings.Join(upstreams, " "))
}

func gatewayCaddyfile(listen string, upstreams []string, strategy, redis string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s\nhttp://%s {\n\tmodel_router {\n\t\tstrategy %s\n\t\tmax_queue 10000\n", globalOptions, listen, strategy)
	if redis != "" {
		fmt.Fprintf(&b, "\t\tredis redis://%s/0\n", redis)
	}
	for i, u := range upstreams {
		// Capacity far above the concurrency: this measures routing, not queueing.
		fmt.Fprintf(&b, "\t\tbackend stub%d http://%s {\n\t\t\tmodels bench\n\t\t\tcapabilities chat=1\n\t\t\tmax_inflight 100000\n\t\t}\n", i+1, u)
	}
	b.WriteString("\t}\n}\n")
	return b.String()
}

// summary is a contender's rounds taken together.
type summary struct {
	throughput float64 // requests over time, all rounds
	p50, p99   time.Duration
	requests   int
	errors     int
	firstErr   string
	perRound   []float64 // throughput in each round
}

func summarize(c *contender) summary {
	var s summary
	var all []time.Duration
	var elapsed time.Duration
	for _, r := range c.rounds {
		s.requests += r.requests
		s.errors += r.errors
		elapsed += r.elapsed
		all = append(all, r.latencies...)
		s.perRound = append(s.perRound, r.throughput())
		if s.firstErr == "" {
			s.firstErr = r.firstErr
		}
	}
	if elapsed > 0 {
		s.throughput = float64(s.requests) / elapsed.Seconds()
	}
	sorted := stats.Sorted(all)
	s.p50, s.p99 = stats.Percentile(sorted, 0.50), stats.Percentile(sorted, 0.99)
	return s
}

func printReport(o options, contenders []*contender) {
	sums := map[string]summary{}
	byKey := map[string]*contender{}
	t := &report.Table{Left: 1}
	t.Row("contender", "req/s", "p50", "p99", "errors", "requests")
	for _, c := range contenders {
		byKey[c.key] = c
		if len(c.rounds) == 0 {
			t.Row(c.name() + " " + c.label + ": not run")
			continue
		}
		s := summarize(c)
		sums[c.key] = s
		t.Row(c.name()+" "+c.label, fmt.Sprintf("%.0f", s.throughput), report.Ms(s.p50), report.Ms(s.p99),
			strconv.Itoa(s.errors), strconv.Itoa(s.requests))
	}
	t.Write(os.Stdout, "")
	for _, c := range contenders {
		if s, ok := sums[c.key]; ok && s.errors > 0 {
			fmt.Printf("  %s first error: %s\n", c.name(), s.firstErr)
		}
	}

	fmt.Println("\nratios (throughput: higher is better; latency: lower is better)")
	t = &report.Table{Left: 1}
	t.Row("", "throughput", "per round min/median/max", "p50", "p99")
	for _, pair := range [][2]string{{"b", "a"}, {"c", "a"}, {"c", "b"}, {"d", "c"}} {
		num, okN := sums[pair[0]]
		den, okD := sums[pair[1]]
		if !okN || !okD {
			continue
		}
		lo, med, hi := perRoundRatios(byKey[pair[0]], byKey[pair[1]])
		t.Row(fmt.Sprintf("(%s)/(%s)", pair[0], pair[1]),
			report.Ratio(stats.Ratio(num.throughput, den.throughput)),
			report.Ratio(lo)+" / "+report.Ratio(med)+" / "+report.Ratio(hi),
			report.Ratio(stats.DurationRatio(num.p50, den.p50)),
			report.Ratio(stats.DurationRatio(num.p99, den.p99)))
	}
	t.Write(os.Stdout, "  ")

	fmt.Println("\ntargets")
	c, b := sums["c"], sums["b"]
	tput := stats.Ratio(c.throughput, b.throughput)
	p99 := stats.DurationRatio(c.p99, b.p99)
	fmt.Printf("  (c)/(b) throughput %s ≥ %.2f  %s\n", report.PreciseRatio(tput), targetThroughput, report.AtLeast(tput, targetThroughput))
	fmt.Printf("  (c)/(b) p99         %s ≤ %.2f  %s\n", report.PreciseRatio(p99), targetP99, report.AtMost(p99, targetP99))
	if c.errors > 0 {
		fmt.Printf("  (c) had %d errors: MISS whatever the ratios\n", c.errors)
	}
	if o.redis != "" {
		r := stats.Ratio(sums["d"].throughput, c.throughput)
		fmt.Printf("  (d)/(c) throughput %s ≥ %.2f  %s", report.PreciseRatio(r), targetRedisThroughput, report.AtLeast(r, targetRedisThroughput))
		if d := byKey["d"]; d != nil && d.err != nil {
			fmt.Print("  ((d) did not run to the end: see above)")
		}
		fmt.Println()
		if sums["d"].errors > 0 {
			fmt.Printf("  (d) had %d errors: MISS whatever the ratios\n", sums["d"].errors)
		}
	}
}

// perRoundRatios pairs the two contenders' throughput round by round (they
// ran back to back) and returns the lowest, median and highest ratio.
func perRoundRatios(num, den *contender) (lo, med, hi float64) {
	var rs []float64
	for i := range min(len(num.rounds), len(den.rounds)) {
		if r := stats.Ratio(num.rounds[i].throughput(), den.rounds[i].throughput()); !math.IsNaN(r) {
			rs = append(rs, r)
		}
	}
	if len(rs) == 0 {
		return math.NaN(), math.NaN(), math.NaN()
	}
	lo, hi = rs[0], rs[0]
	for _, r := range rs {
		lo, hi = min(lo, r), max(hi, r)
	}
	return lo, stats.Median(rs), hi
}
