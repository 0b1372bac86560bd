// Package simfleet describes the benchmarks' simulated backends
// (model_router_sim sites, all in one Caddy process), their capacity for a
// workload, and talks to their /sim/ endpoints: counters, reset, run-time
// timing changes.
package simfleet

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/modelrouter/modelrouter/bench/internal/workload"
)

// GlobalOptions keeps every Caddy on loopback, without an admin endpoint and
// without writing an autosaved config.
const GlobalOptions = `{
	admin off
	persist_config off
	auto_https off
	default_bind 127.0.0.1
}
`

// Sim is one simulated backend.
type Sim struct {
	Name     string
	Kind     string // fast, medium or slow: for the reader
	Slots    int
	TTFT     time.Duration
	PerToken time.Duration
	Prefill  time.Duration // per prompt token, added to the time to first token
	Tokens   int           // the sim's tokens: the answer's length unless max_tokens is lower
	Addr     string        // host:port, set when the sims start
	// Capabilities are the scores the router's config declares for the
	// backend, by task (the mixed workload); nil: the benchmarks' one
	// capability, the same for every sim.
	Capabilities map[string]float64
}

// Capability is the score the sim's backend declares for task, 0 when it
// declares none.
func (s Sim) Capability(task string) float64 { return s.Capabilities[task] }

// Service is how long the sim takes, in its slot, for a request with a
// prompt of prompt tokens and an answer of out tokens: the first token after
// TTFT + prompt × Prefill, each further one PerToken later. Being linear, it
// is also the mean service time for the mean prompt and the mean answer.
func (s Sim) Service(prompt, out float64) time.Duration {
	return s.TTFT + time.Duration(prompt*float64(s.Prefill)) + time.Duration((out-1)*float64(s.PerToken))
}

// MeanService is the sim's mean service time over the workload.
func (s Sim) MeanService(w workload.Spec) time.Duration {
	return s.Service(w.MeanPrompt(), w.Output.Mean())
}

// Rate is how many requests of the workload the sim serves per second with
// every slot busy: slots ÷ mean service time.
func (s Sim) Rate(w workload.Spec) float64 {
	return float64(s.Slots) / s.MeanService(w).Seconds()
}

// Capacity is Σ slots ÷ mean service time over the sims, in requests per
// second: what they serve if each gets its share of every kind of request.
func Capacity(sims []Sim, w workload.Spec) float64 {
	var c float64
	for _, s := range sims {
		c += s.Rate(w)
	}
	return c
}

// Caddyfile serves every sim as its own site in one Caddy process.
func Caddyfile(sims []Sim) string {
	var b strings.Builder
	b.WriteString(GlobalOptions)
	for _, s := range sims {
		fmt.Fprintf(&b, "\nhttp://%s {\n\tmodel_router_sim {\n\t\tname %s\n\t\tslots %d\n\t\tttft %s\n\t\tper_token %s\n",
			s.Addr, s.Name, s.Slots, s.TTFT, s.PerToken)
		if s.Prefill > 0 {
			fmt.Fprintf(&b, "\t\tprefill_per_token %s\n", s.Prefill)
		}
		fmt.Fprintf(&b, "\t\ttokens %d\n\t}\n}\n", s.Tokens)
	}
	return b.String()
}

// Names returns the sims' names.
func Names(sims []Sim) []string {
	names := make([]string, len(sims))
	for i, s := range sims {
		names[i] = s.Name
	}
	return names
}

// Stats is the part of GET /sim/stats the benchmarks read.
type Stats struct {
	Requests       int64 `json:"requests"`
	ReachedFull    int64 `json:"reached_full"`
	PeakConcurrent int64 `json:"peak_concurrent"`
	Inflight       int64 `json:"inflight"`
	Queued         int64 `json:"queued"`
	Failed         int64 `json:"failed"`
	Canceled       int64 `json:"canceled"`
}

// Control talks to the sims' /sim/ endpoints.
type Control struct {
	Client *http.Client
}

func (c Control) call(method string, s Sim, path string, body []byte, into any) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, "http://"+s.Addr+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.Client.Do(req)
	if err != nil {
		return fmt.Errorf("%s sim %s%s: %w", method, s.Name, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("%s sim %s%s: %w", method, s.Name, path, err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s sim %s%s: status %d: %s", method, s.Name, path, resp.StatusCode, data)
	}
	if err := json.Unmarshal(data, into); err != nil {
		return fmt.Errorf("decoding sim %s%s: %w", s.Name, path, err)
	}
	return nil
}

// Reset zeroes every sim's counters.
func (c Control) Reset(sims []Sim) error {
	for _, s := range sims {
		var st Stats
		if err := c.call(http.MethodPost, s, "/sim/reset", nil, &st); err != nil {
			return err
		}
	}
	return nil
}

// Stats reads one sim's counters.
func (c Control) Stats(s Sim) (Stats, error) {
	var st Stats
	err := c.call(http.MethodGet, s, "/sim/stats", nil, &st)
	return st, err
}

// SetConfig changes a sim's timing at run time with POST /sim/config (for
// example `{"slowdown":3}`) and returns the timing now in force.
func (c Control) SetConfig(s Sim, body string) (map[string]any, error) {
	var cfg map[string]any
	err := c.call(http.MethodPost, s, "/sim/config", []byte(body), &cfg)
	return cfg, err
}

// Settle waits (a few seconds at most) until no sim has a request in a slot
// or queued, and returns every sim's counters. A request still inside a sim
// after its client has its answer would be a leak somewhere.
func (c Control) Settle(sims []Sim) ([]Stats, error) {
	deadline := time.Now().Add(5 * time.Second)
	for {
		all := make([]Stats, len(sims))
		busy := 0
		for i, s := range sims {
			st, err := c.Stats(s)
			if err != nil {
				return nil, err
			}
			all[i] = st
			busy += int(st.Inflight + st.Queued)
		}
		if busy == 0 {
			return all, nil
		}
		if time.Now().After(deadline) {
			return all, fmt.Errorf("sims still hold %d requests 5s after the last answer", busy)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
