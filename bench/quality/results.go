package main

import (
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/modelrouter/modelrouter/bench/internal/loadgen"
	"github.com/modelrouter/modelrouter/bench/internal/report"
	"github.com/modelrouter/modelrouter/bench/internal/simfleet"
	"github.com/modelrouter/modelrouter/bench/internal/stats"
	"github.com/modelrouter/modelrouter/bench/internal/workload"
)

// Targets from issues 2, 3 and 7.
const (
	targetP99VsStock    = 0.90 // fixed: p99 (c) ÷ p99 (b') at most (issue 2)
	targetP99Replicated = 1.10 // p99 (c×N on Redis) ÷ p99 (c) at most (issue 3)
	targetP99Wide       = 0.60 // wide (and heavy, shown): p99 (c) ÷ p99 (b') at most (issue 7)
	targetP99VsBaseline = 1.05 // fixed: p99 (c) ÷ p99 (c0) at most, within noise (issue 7)
)

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
		if !o.OK {
			r.failed++
			r.failures[o.Failure]++
			continue
		}
		r.ok++
		lat = append(lat, o.Latency)
		if o.Arrival.Stream {
			ttft = append(ttft, o.TTFT)
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

func printReport(o options, spec workload.Spec, sims []simfleet.Sim, contenders []*contender) {
	var slots []string
	for _, s := range sims {
		slots = append(slots, strconv.Itoa(s.Slots))
	}
	simCols := strings.Join(simfleet.Names(sims), "/")
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
			lags = append(lags, out.Lag)
		}
	}
	sortedLags := stats.Sorted(lags)
	fmt.Printf("load generator sent late by p99 %s, max %s (large values: the machine was too busy to keep the schedule)\n",
		report.Ms(stats.Percentile(sortedLags, 0.99)), report.Ms(stats.Percentile(sortedLags, 1)))

	printRoundP99s(contenders)
	if len(spec.Buckets) > 0 {
		printBuckets(spec, sims, contenders)
		printExplanations(spec, sims, contenders)
	}
	if len(spec.Tasks) > 0 {
		scores := printScores(spec, sims, contenders)
		printMixedTargets(contenders, results, scores)
		return
	}
	printTargets(spec, contenders, results)
}

// printRoundP99s shows each contender's p99 round by round, with their
// spread: a verdict near its target is only as good as this is tight.
func printRoundP99s(contenders []*contender) {
	fmt.Println("\np99 per round (rounds in order; min-max)")
	for _, c := range contenders {
		if len(c.roundP99s) == 0 {
			continue
		}
		var ps []string
		for _, p := range c.roundP99s {
			ps = append(ps, report.Ms(p))
		}
		sorted := stats.Sorted(c.roundP99s)
		fmt.Printf("  %-6s %s   (%s-%s)\n", c.name(), strings.Join(ps, " "), report.Ms(sorted[0]), report.Ms(sorted[len(sorted)-1]))
	}
}

// bucketStats is one contender's requests of one output-length bucket.
type bucketStats struct {
	latencies []time.Duration
	perSim    map[string]int
}

// printBuckets breaks latency down by the requests' output length, with the
// sims that answered them: whether the long answers went to the fast sim.
func printBuckets(spec workload.Spec, sims []simfleet.Sim, contenders []*contender) {
	names := simfleet.Names(sims)
	labels := spec.BucketLabels()
	fmt.Printf("\nby output length (tokens): p50, p99 and requests per sim %s (answered ones, from the %s header)\n",
		strings.Join(names, "/"), loadgen.SimHeader)
	t := &report.Table{Left: 2}
	t.Row("contender", "tokens", "requests", "p50", "p99", "per sim "+strings.Join(names, "/"), "share "+strings.Join(names, "/"))
	for _, c := range contenders {
		if len(c.outcomes) == 0 {
			continue
		}
		buckets := make([]bucketStats, len(labels))
		for i := range buckets {
			buckets[i].perSim = map[string]int{}
		}
		for _, o := range c.outcomes {
			b := spec.Bucket(o.Arrival.Output)
			if b < 0 || !o.OK {
				continue
			}
			buckets[b].latencies = append(buckets[b].latencies, o.Latency)
			buckets[b].perSim[o.Sim]++
		}
		for i, b := range buckets {
			sorted := stats.Sorted(b.latencies)
			var counts, shares []string
			for _, n := range names {
				counts = append(counts, strconv.Itoa(b.perSim[n]))
				share := 0.0
				if len(sorted) > 0 {
					share = 100 * float64(b.perSim[n]) / float64(len(sorted))
				}
				shares = append(shares, fmt.Sprintf("%.0f%%", share))
			}
			key := c.name()
			if i > 0 {
				key = ""
			}
			t.Row(key, labels[i], strconv.Itoa(len(sorted)), report.Ms(stats.Percentile(sorted, 0.5)),
				report.Ms(stats.Percentile(sorted, 0.99)), strings.Join(counts, "/"), strings.Join(shares, "/"))
		}
	}
	t.Write(os.Stdout, "  ")
}

// printTargets prints the ratio lines of the issues' targets that the
// workload and contenders allow.
func printTargets(spec workload.Spec, contenders []*contender, results map[string]result) {
	ran := func(key string) (result, bool) { r, ok := results[key]; return r, ok }
	ratioLine := func(num, den string, target float64, note string) {
		rn, okn := ran(num)
		rd, okd := ran(den)
		if !okn || !okd {
			fmt.Printf("  %-5s p99 ÷ (%s) p99: n/a (%s not run)\n", "("+num+")", den, notRun(okn, num, okd, den))
			return
		}
		ratio := stats.DurationRatio(rn.p99, rd.p99)
		fmt.Printf("  %-5s p99 ÷ (%s) p99 = %s ≤ %.2f  %s%s\n", "("+num+")", den, report.PreciseRatio(ratio), target,
			report.AtMost(ratio, target), note)
	}
	fullLine := func(key string) {
		r, ok := ran(key)
		if !ok {
			return
		}
		fmt.Printf("  %-5s reached a full backend = %d, want 0  %s\n", "("+key+")", r.reachedFull, report.Verdict(r.reachedFull == 0, true))
		if r.failed > 0 {
			fmt.Printf("  %-5s failed requests = %d, want 0  MISS\n", "("+key+")", r.failed)
		}
	}

	if spec.Name == "fixed" {
		fmt.Println("\ntargets (issue 2: ours against the strongest stock setup (b'); issue 7: no worse than before predictive routing (c0))")
		ratioLine("c", "b'", targetP99VsStock, "")
		ratioLine("c2", "b'", targetP99VsStock, "")
		ratioLine("c", "c0", targetP99VsBaseline, "")
	} else {
		note := ""
		if spec.Name != "wide" {
			note = "  (the target is set on wide; shown for " + spec.Name + ")"
		}
		fmt.Printf("\ntargets (issue 7: predictive routing on the %s workload against the strongest stock setup (b'))\n", spec.Name)
		ratioLine("c", "b'", targetP99Wide, note)
		ratioLine("cf", "b'", targetP99Wide, "  (for comparison)")
		ratioLine("c0", "b'", targetP99Wide, "  (for comparison)")
		ratioLine("c", "c0", 1, "  (for comparison: ours now against before)")
	}
	for _, key := range []string{"c0", "cf", "c", "c2"} {
		fullLine(key)
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

func notRun(okn bool, num string, okd bool, den string) string {
	var missing []string
	if !okn {
		missing = append(missing, "("+num+")")
	}
	if !okd {
		missing = append(missing, "("+den+")")
	}
	return strings.Join(missing, " and ")
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

// printExplanations shows, for the contenders that explained their
// decisions (-explain), the longest answers (the top bucket) that went to the
// slowest sim, sorted by why: it was the only candidate left in the attempt;
// every other sim was full; the router had no predictions; it predicted the slowest sim no slower than the others with
// room; or it predicted it slower than a sim listed with room that the
// attempt passed over (left to an earlier waiter, or full in the store). A few of
// the latest decisions of each kind follow, as the router explained them.
func printExplanations(spec workload.Spec, sims []simfleet.Sim, contenders []*contender) {
	slowest := sims[0]
	for _, s := range sims {
		if s.PerToken > slowest.PerToken {
			slowest = s
		}
	}
	top := len(spec.Buckets) - 2
	label := spec.BucketLabels()[top]
	header := false
	for _, c := range contenders {
		if !c.explain || len(c.outcomes) == 0 {
			continue
		}
		if !header {
			fmt.Printf("\nanswers of %s tokens sent to the slowest sim %s, by why, as the router explained them (%s; latest first)\n",
				label, slowest.Name, loadgen.ExplainHeader)
			header = true
		}
		sent := 0
		byKind := map[decisionKind][]string{}
		for i := len(c.outcomes) - 1; i >= 0; i-- {
			o := c.outcomes[i]
			if !o.OK || spec.Bucket(o.Arrival.Output) != top || o.Sim != slowest.Name {
				continue
			}
			sent++
			k := classify(o.Explain, slowest.Name)
			byKind[k] = append(byKind[k], fmt.Sprintf("request %d, %d tokens, prompt %d, took %s: %s",
				o.Arrival.Index, o.Arrival.Output, o.Arrival.Prompt, report.Ms(o.Latency), o.Explain))
		}
		fmt.Printf("  %s %d sent to %s\n", c.name(), sent, slowest.Name)
		for k := decisionKind(0); k < numDecisionKinds; k++ {
			if len(byKind[k]) == 0 {
				continue
			}
			fmt.Printf("    %4d %s\n", len(byKind[k]), k)
			for _, s := range byKind[k][:min(2, len(byKind[k]))] {
				fmt.Printf("         %s\n", s)
			}
		}
	}
	for _, c := range contenders {
		if c.explain && len(c.outcomes) > 0 {
			printTail(c)
		}
	}
}

// printTail lists the slowest 1% of a contender's successful requests (what
// sets its p99), slowest first: where each went, how long it was, and the
// router's explanation (its wait for a slot and its patience included).
func printTail(c *contender) {
	var ok []loadgen.Outcome
	for _, o := range c.outcomes {
		if o.OK {
			ok = append(ok, o)
		}
	}
	sort.Slice(ok, func(i, j int) bool { return ok[i].Latency > ok[j].Latency })
	tail := ok[:max(len(ok)/100, 1)]
	perSim := map[string]int{}
	for _, o := range tail {
		perSim[o.Sim]++
	}
	fmt.Printf("\n%s: the slowest 1%% (%d requests, from %s), by sim %v\n", c.name(), len(tail), report.Ms(tail[len(tail)-1].Latency), perSim)
	for _, o := range tail {
		fmt.Printf("  request %d, %d tokens, prompt %d, stream %v, on %s, took %s: %s\n",
			o.Arrival.Index, o.Arrival.Output, o.Arrival.Prompt, o.Arrival.Stream, o.Sim, report.Ms(o.Latency), o.Explain)
	}
}

// decisionKind is why a request went to the slowest sim.
type decisionKind int

const (
	onlyCandidate   decisionKind = iota // the explanation lists no other sim
	othersFull                          // every other candidate was full
	noPrediction                        // the router predicted nothing (no data yet)
	predictedFaster                     // predicted no slower than the best other with room
	predictedSlower                     // predicted slower than another listed with room, which was passed over
	unexplained                         // no explanation, or one this does not read
	numDecisionKinds
)

func (k decisionKind) String() string {
	return [...]string{
		"were the only candidate the explanation lists",
		"found every other sim full",
		"had no predictions (no total= in the explanation)",
		"were predicted to finish no later there than on another sim with room",
		"were predicted to finish later there than on another sim listed with room (passed over: claimed by an earlier waiter, or full in the store)",
		"were not explained",
	}[k]
}

// candidate is one entry of an explanation: "A score=0.400 inflight=4/4 full
// wait=120ms ttft=150ms total=600ms", or one the attempt left out: "A
// left_out inflight=4/4 waiting=3 full wait=…".
type candidate struct {
	name  string
	full  bool          // marked full, or in flight at its capacity
	total time.Duration // 0: no prediction
}

// parseExplanation reads the candidates of an explanation ("strategy=…
// chosen=C; A …; B …; C …").
func parseExplanation(explain string) []candidate {
	parts := strings.Split(explain, "; ")
	var cs []candidate
	for _, p := range parts[1:] {
		fields := strings.Fields(p)
		if len(fields) == 0 {
			continue
		}
		c := candidate{name: fields[0]}
		for _, f := range fields[1:] {
			if f == "full" {
				c.full = true
			}
			if v, ok := strings.CutPrefix(f, "inflight="); ok {
				var n, capacity int
				if _, err := fmt.Sscanf(v, "%d/%d", &n, &capacity); err == nil && capacity > 0 && n >= capacity {
					c.full = true
				}
			}
			if v, ok := strings.CutPrefix(f, "total="); ok {
				c.total, _ = time.ParseDuration(v)
			}
		}
		cs = append(cs, c)
	}
	return cs
}

// classify sorts the decision that sent a request to chosen.
func classify(explain, chosen string) decisionKind {
	cs := parseExplanation(explain)
	var mine *candidate
	for i := range cs {
		if cs[i].name == chosen {
			mine = &cs[i]
		}
	}
	if mine == nil {
		return unexplained
	}
	others, open := 0, 0
	var bestOpen time.Duration
	for _, c := range cs {
		if c.name == chosen {
			continue
		}
		others++
		if c.full {
			continue
		}
		open++
		if c.total > 0 && (bestOpen == 0 || c.total < bestOpen) {
			bestOpen = c.total
		}
	}
	switch {
	case others == 0:
		return onlyCandidate
	case open == 0:
		return othersFull
	case mine.total == 0 || bestOpen == 0:
		return noPrediction
	case mine.total <= bestOpen:
		return predictedFaster
	}
	return predictedSlower
}
