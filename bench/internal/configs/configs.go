// Package configs writes the contenders' Caddy configs: stock Caddy's
// reverse_proxy over the sims, and model_router over them.
package configs

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/modelrouter/modelrouter/bench/internal/simfleet"
)

// Stock is stock Caddy's reverse_proxy with least_conn over the sims,
// as JSON: the Caddyfile has only a handler-wide max_requests (passive health
// unhealthy_request_count), while upstreams in JSON each take their own. With
// capped, each upstream gets max_requests = its sim's slots, and a request
// finding them all full retries every 10ms for up to tryDuration.
func Stock(listen string, sims []simfleet.Sim, capped bool, tryDuration time.Duration) string {
	type upstream struct {
		Dial        string `json:"dial"`
		MaxRequests int    `json:"max_requests,omitempty"`
	}
	ups := make([]upstream, len(sims))
	for i, s := range sims {
		ups[i] = upstream{Dial: s.Addr}
		if capped {
			ups[i].MaxRequests = s.Slots
		}
	}
	lb := map[string]any{"selection_policy": map[string]string{"policy": "least_conn"}}
	if capped {
		lb["try_duration"] = tryDuration.String()
		lb["try_interval"] = "10ms"
	}
	cfg := map[string]any{
		"admin": map[string]any{"disabled": true, "config": map[string]bool{"persist": false}},
		"apps": map[string]any{"http": map[string]any{"servers": map[string]any{"bench": map[string]any{
			"listen":          []string{listen},
			"automatic_https": map[string]bool{"disable": true},
			"routes": []any{map[string]any{"handle": []any{map[string]any{
				"handler":        "reverse_proxy",
				"upstreams":      ups,
				"load_balancing": lb,
			}}}},
		}}}},
	}
	data, err := json.MarshalIndent(cfg, "", "\t")
	if err != nil {
		panic(err) // plain maps and strings always encode
	}
	return string(data)
}

// RouterOptions are the model_router settings a benchmark varies.
type RouterOptions struct {
	Strategy string
	MaxWait  time.Duration
	// Redis, if set, is a host:port: the router shares its state in pool
	// "bench" on that Redis.
	Redis string
	// ExplainHeader, if set, is the router's explain_header: requests that
	// carry it get the decision explained in a response header.
	ExplainHeader string
	// AssignAging, if set, is the router's assign_aging (strategy optimal
	// only; ignored with another strategy): its age term takes one point of
	// score per AssignAging a waiter is behind the first in line. 0: the
	// router's default (500ms).
	AssignAging time.Duration
}

// Router is model_router over the sims, every backend serving model "bench".
// A sim with Capabilities declares them (requests with model "auto" and the
// capability header then choose by them); the others all declare chat=0.8,
// so only load and latency tell them apart. Backends get no speed hints: the
// router learns them.
func Router(listen string, sims []simfleet.Sim, o RouterOptions) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s\nhttp://%s {\n\tmodel_router {\n\t\tstrategy %s\n\t\tmax_wait %s\n\t\tmax_queue 10000\n",
		simfleet.GlobalOptions, listen, o.Strategy, o.MaxWait)
	if o.Redis != "" {
		fmt.Fprintf(&b, "\t\tpool bench\n\t\tredis redis://%s/0\n", o.Redis)
	}
	if o.ExplainHeader != "" {
		fmt.Fprintf(&b, "\t\texplain_header %s\n", o.ExplainHeader)
	}
	if o.AssignAging > 0 && o.Strategy == "optimal" {
		fmt.Fprintf(&b, "\t\tassign_aging %s\n", o.AssignAging)
	}
	for _, s := range sims {
		fmt.Fprintf(&b, "\t\tbackend %s http://%s {\n\t\t\tmodels bench\n\t\t\tcapabilities %s\n\t\t\tmax_inflight %d\n\t\t}\n",
			s.Name, s.Addr, capabilities(s), s.Slots)
	}
	b.WriteString("\t}\n}\n")
	return b.String()
}

// capabilities is a sim's capabilities line: its own, by name, or chat=0.8.
func capabilities(s simfleet.Sim) string {
	if len(s.Capabilities) == 0 {
		return "chat=0.8"
	}
	var parts []string
	for _, task := range slices.Sorted(maps.Keys(s.Capabilities)) {
		parts = append(parts, task+"="+strconv.FormatFloat(s.Capabilities[task], 'g', -1, 64))
	}
	return strings.Join(parts, " ")
}
