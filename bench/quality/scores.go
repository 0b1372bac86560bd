package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/modelrouter/modelrouter/bench/internal/loadgen"
	"github.com/modelrouter/modelrouter/bench/internal/report"
	"github.com/modelrouter/modelrouter/bench/internal/simfleet"
	"github.com/modelrouter/modelrouter/bench/internal/stats"
	"github.com/modelrouter/modelrouter/bench/internal/workload"
)

// Targets from issue 8 (mixed workload).
const (
	targetScoreOptimal = 1.08 // total capability score (co) ÷ (cg) at least
	targetP99Optimal   = 1.00 // p99 (co) ÷ (cg) at most: equal or better
	targetP99Fleet     = 1.05 // p99 (co×N on Redis) ÷ (co) at most
)

// capabilityScore is what a contender's served requests were worth: each
// successful request scores the capability that the sim which served it
// declares for the request's task. The sim is the one that names itself in
// the answer (loadgen.SimHeader, set by the sim, passed through by the
// proxies); the task is the one the load generator asked for.
type capabilityScore struct {
	served       int     // successful requests with a task, attributed to a sim
	unattributed int     // successful requests with a task whose answer named no known sim
	total        float64 // Σ capability over the served ones
	byTask       map[string]*taskScore
}

// taskScore is the served requests of one task.
type taskScore struct {
	served    int
	total     float64
	perSim    map[string]int
	latencies []time.Duration
}

// mean is the score per served request, 0 when none was served.
func (s capabilityScore) mean() float64 {
	if s.served == 0 {
		return 0
	}
	return s.total / float64(s.served)
}

// scoreOutcomes adds up the capability score of the successful requests.
func scoreOutcomes(outs []loadgen.Outcome, sims []simfleet.Sim) capabilityScore {
	byName := map[string]simfleet.Sim{}
	for _, s := range sims {
		byName[s.Name] = s
	}
	sc := capabilityScore{byTask: map[string]*taskScore{}}
	for _, o := range outs {
		task := o.Arrival.Task
		if !o.OK || task == "" {
			continue
		}
		sim, ok := byName[o.Sim]
		if !ok {
			sc.unattributed++
			continue
		}
		ts := sc.byTask[task]
		if ts == nil {
			ts = &taskScore{perSim: map[string]int{}}
			sc.byTask[task] = ts
		}
		c := sim.Capability(task)
		ts.served++
		ts.total += c
		ts.perSim[sim.Name]++
		ts.latencies = append(ts.latencies, o.Latency)
		sc.served++
		sc.total += c
	}
	return sc
}

// bestScore is the mean score if every request of the mix went to the sim
// best at its task: a bound no router reaches when those sims have fewer
// slots than their task's share.
func bestScore(tasks []workload.TaskShare, sims []simfleet.Sim) float64 {
	var sum, shares float64
	for _, t := range tasks {
		best := 0.0
		for _, s := range sims {
			best = max(best, s.Capability(t.Task))
		}
		sum += t.Share * best
		shares += t.Share
	}
	return sum / shares
}

// printScores shows each contender's capability score, in all and by task,
// with where each task's requests went and their p99 (whether one task pays
// for another's score).
func printScores(spec workload.Spec, sims []simfleet.Sim, contenders []*contender) map[string]capabilityScore {
	names := simfleet.Names(sims)
	scores := map[string]capabilityScore{}
	fmt.Printf("\ncapability score of served requests (each scores the capability its sim declares for its task; sim from the %s header the sims set)\n",
		loadgen.SimHeader)
	t := &report.Table{Left: 1}
	header := []string{"contender", "served", "total score", "mean"}
	for _, task := range spec.Tasks {
		header = append(header, task.Task+" mean", "per sim "+strings.Join(names, "/"), "p99")
	}
	t.Row(header...)
	for _, c := range contenders {
		if len(c.outcomes) == 0 {
			continue
		}
		sc := scoreOutcomes(c.outcomes, sims)
		scores[c.key] = sc
		row := []string{c.name(), strconv.Itoa(sc.served), fmt.Sprintf("%.1f", sc.total), fmt.Sprintf("%.4f", sc.mean())}
		for _, task := range spec.Tasks {
			ts := sc.byTask[task.Task]
			if ts == nil {
				row = append(row, "-", "-", "-")
				continue
			}
			var counts []string
			for _, n := range names {
				counts = append(counts, strconv.Itoa(ts.perSim[n]))
			}
			row = append(row, fmt.Sprintf("%.4f", ts.total/float64(ts.served)), strings.Join(counts, "/"),
				report.Ms(stats.Percentile(stats.Sorted(ts.latencies), 0.99)))
		}
		t.Row(row...)
		if sc.unattributed > 0 {
			fmt.Printf("%s: %d successful answers named no known sim and are not scored\n", c.name(), sc.unattributed)
		}
	}
	t.Write(os.Stdout, "")
	fmt.Printf("(every request on the sim best at its task would score %.4f per request; failed requests score nothing)\n", bestScore(spec.Tasks, sims))
	return scores
}

// printMixedTargets prints issue 8's targets: optimal against greedy in
// capability score at equal or better p99, and optimal's replicas on Redis
// against its single replica.
func printMixedTargets(contenders []*contender, results map[string]result, scores map[string]capabilityScore) {
	fmt.Println("\ntargets (issue 8: strategy optimal against greedy on mixed tasks under contention; optimal's replicas on Redis against one)")
	ro, oko := results["co"]
	rg, okg := results["cg"]
	if !oko || !okg {
		fmt.Printf("  (co) ÷ (cg): n/a (%s not run)\n", notRun(oko, "co", okg, "cg"))
	} else {
		ratio := scores["co"].total / scores["cg"].total
		fmt.Printf("  (co)  total score ÷ (cg) total score = %s ≥ %.2f  %s  (mean per served request %.4f vs %.4f: %s)\n",
			report.PreciseRatio(ratio), targetScoreOptimal, report.AtLeast(ratio, targetScoreOptimal),
			scores["co"].mean(), scores["cg"].mean(), report.PreciseRatio(scores["co"].mean()/scores["cg"].mean()))
		p99 := stats.DurationRatio(ro.p99, rg.p99)
		fmt.Printf("  (co)  p99 ÷ (cg) p99 = %s ≤ %.2f  %s\n", report.PreciseRatio(p99), targetP99Optimal, report.AtMost(p99, targetP99Optimal))
	}
	for _, key := range []string{"cg", "co"} {
		if r, ok := results[key]; ok {
			fmt.Printf("  %-5s reached a full backend = %d, want 0  %s; failed %d\n", "("+key+")", r.reachedFull, report.Verdict(r.reachedFull == 0, true), r.failed)
		}
	}
	for _, c := range contenders {
		if !strings.HasPrefix(c.key, "co") || !strings.HasSuffix(c.key, "redis") {
			continue
		}
		r, ok := results[c.key]
		if !ok {
			fmt.Printf("  %s not run: %v\n", c.name(), c.err)
			continue
		}
		if !oko {
			fmt.Printf("  %s p99 ÷ (co) p99: n/a ((co) not run)\n", c.name())
			continue
		}
		ratio := stats.DurationRatio(r.p99, ro.p99)
		fmt.Printf("  %s p99 ÷ (co) p99 = %s ≤ %.2f  %s\n", c.name(), report.PreciseRatio(ratio), targetP99Fleet, report.AtMost(ratio, targetP99Fleet))
		fmt.Printf("  %s total score ÷ (co) total score = %s (for comparison); reached a full backend = %d  %s; failed %d\n", c.name(),
			report.PreciseRatio(scores[c.key].total/scores["co"].total), r.reachedFull, report.Verdict(r.reachedFull == 0, true), r.failed)
	}
}
