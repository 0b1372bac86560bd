package main

import (
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/modelrouter/modelrouter/bench/internal/loadgen"
	"github.com/modelrouter/modelrouter/bench/internal/workload"
)

// TestScoreOutcomes: a served request scores the capability its sim declares
// for its task; failures, answers naming no known sim and requests without a
// task score nothing.
func TestScoreOutcomes(t *testing.T) {
	mixed, _ := workload.Named("mixed", 0)
	sims := fleet(mixed, 0, 1) // A coder, B reasoner, C general
	out := func(task, sim string, ok bool) loadgen.Outcome {
		return loadgen.Outcome{Arrival: workload.Arrival{Task: task}, Sim: sim, OK: ok}
	}
	sc := scoreOutcomes([]loadgen.Outcome{
		out("coding", "A", true),    // 0.95
		out("coding", "C", true),    // 0.7
		out("reasoning", "A", true), // 0.5
		out("chat", "C", true),      // 0.9
		out("chat", "B", false),     // failed
		out("chat", "", true),       // no sim named
		out("chat", "Z", true),      // no such sim
		out("", "A", true),          // no task
	}, sims)
	if sc.served != 4 || sc.unattributed != 2 {
		t.Errorf("served %d, unattributed %d; want 4, 2", sc.served, sc.unattributed)
	}
	if want := 0.95 + 0.7 + 0.5 + 0.9; math.Abs(sc.total-want) > 1e-9 || math.Abs(sc.mean()-want/4) > 1e-9 {
		t.Errorf("total %v, mean %v; want %v, %v", sc.total, sc.mean(), want, want/4)
	}
	coding := sc.byTask["coding"]
	if coding == nil || coding.served != 2 || math.Abs(coding.total-1.65) > 1e-9 || coding.perSim["A"] != 1 || coding.perSim["C"] != 1 {
		t.Errorf("coding: %+v", coding)
	}
	if sc.byTask["chat"].served != 1 {
		t.Errorf("chat: %+v", sc.byTask["chat"])
	}
	if (capabilityScore{}).mean() != 0 {
		t.Error("mean of nothing served is not 0")
	}
	// Everything on its best sim: chat 0.9, coding and reasoning 0.95.
	if got, want := bestScore(workload.MixedTasks, sims), 0.4*0.9+0.3*0.95+0.3*0.95; math.Abs(got-want) > 1e-9 {
		t.Errorf("best score %v, want %v", got, want)
	}
}

// TestMixedFleet: the mixed sims share one speed, every sim declares every
// task (so every request can go anywhere), each task has its own best sim,
// and the specialists have fewer slots than their task's share of the
// traffic: a router has to choose who gets them.
func TestMixedFleet(t *testing.T) {
	mixed, _ := workload.Named("mixed", 0)
	sims := fleet(mixed, 0, 1)
	slots := 0
	for _, s := range sims {
		slots += s.Slots
		if s.PerToken != sims[0].PerToken || s.TTFT != sims[0].TTFT || s.Prefill != sims[0].Prefill {
			t.Errorf("sim %s has another speed than %s", s.Name, sims[0].Name)
		}
		if s.Tokens < mixed.Output.Max() {
			t.Errorf("sim %s generates %d tokens, less than %d", s.Name, s.Tokens, mixed.Output.Max())
		}
	}
	short := 0 // tasks whose best sim has a smaller share of the slots than the task of the traffic
	for _, task := range mixed.Tasks {
		best, second := -1, 0.0
		for i, s := range sims {
			c := s.Capability(task.Task)
			if c <= 0 || c > 1 {
				t.Errorf("sim %s: %s = %v, want in (0,1]", s.Name, task.Task, c)
			}
			if best < 0 || c > sims[best].Capability(task.Task) {
				if best >= 0 {
					second = max(second, sims[best].Capability(task.Task))
				}
				best = i
			} else {
				second = max(second, c)
			}
		}
		if share := float64(sims[best].Slots) / float64(slots); share < task.Share {
			short++
		}
		if sims[best].Capability(task.Task)-second < 0.1 {
			t.Errorf("%s: the best sim is not clearly better than the next", task.Task)
		}
	}
	if short < 2 {
		t.Errorf("%d tasks have fewer slots on their best sim than their share of the traffic, want the two specialists' tasks", short)
	}
}

func TestMixedContenders(t *testing.T) {
	cs, err := selectContenders(options{workload: "mixed", contenders: defaultContenders["mixed"], replicas: 3, redis: "127.0.0.1:7"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, c := range cs {
		keys = append(keys, c.key)
	}
	if got, want := keys, []string{"b'", "cg", "co", "c", "co×3 redis"}; !slices.Equal(got, want) {
		t.Errorf("contenders %v, want %v (no stock replicas on mixed; optimal's replicas)", got, want)
	}
	if cfg, _ := cs[len(cs)-1].config("127.0.0.1:9"); !strings.Contains(cfg, "strategy optimal\n") || !strings.Contains(cfg, "redis redis://127.0.0.1:7/0") {
		t.Errorf("replica config:\n%s", cfg)
	}
	cs, _ = selectContenders(options{workload: "wide", contenders: "c", replicas: 3, redis: "127.0.0.1:7"}, nil)
	if len(cs) != 3 || cs[1].key != "b'×3" || cs[2].key != "c×3 redis" {
		t.Errorf("wide with replicas: %v", cs)
	}
}
