package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// sim is one simulated backend: a model_router_sim site in the sims' Caddy.
type sim struct {
	name     string
	kind     string // fast, medium or slow: for the reader
	slots    int
	ttft     time.Duration
	perToken time.Duration
	addr     string // host:port, set when the sims start
}

// service is how long the sim takes for one request of tokens tokens, in its
// slot: the first token after ttft, each further one perToken later.
func (s sim) service(tokens int) time.Duration {
	return s.ttft + time.Duration(tokens-1)*s.perToken
}

// fleet is the heterogeneous backends of issue 2: a small fast one, a big
// slow one, a medium one and a small slow one. Slow takes 4× as long as fast
// per request; scale stretches every delay.
func fleet(scale float64) []sim {
	d := func(ms float64) time.Duration { return time.Duration(ms * scale * float64(time.Millisecond)) }
	return []sim{
		{name: "A", kind: "fast", slots: 2, ttft: d(20), perToken: d(3)},
		{name: "B", kind: "slow", slots: 12, ttft: d(80), perToken: d(12)},
		{name: "C", kind: "medium", slots: 4, ttft: d(40), perToken: d(6)},
		{name: "D", kind: "slow", slots: 2, ttft: d(80), perToken: d(12)},
	}
}

// capacity is Σ slots ÷ service time, in requests per second.
func capacity(sims []sim, tokens int) float64 {
	var c float64
	for _, s := range sims {
		c += float64(s.slots) / s.service(tokens).Seconds()
	}
	return c
}

// simsCaddyfile serves every sim as its own site in one Caddy process.
func simsCaddyfile(sims []sim, tokens int) string {
	var b strings.Builder
	b.WriteString(globalOptions)
	for _, s := range sims {
		fmt.Fprintf(&b, "\nhttp://%s {\n\tmodel_router_sim {\n\t\tname %s\n\t\tslots %d\n\t\tttft %s\n\t\tper_token %s\n\t\ttokens %d\n\t}\n}\n",
			s.addr, s.name, s.slots, s.ttft, s.perToken, tokens)
	}
	return b.String()
}

// simStats is the part of GET /sim/stats the benchmark reads.
type simStats struct {
	Requests       int64 `json:"requests"`
	ReachedFull    int64 `json:"reached_full"`
	PeakConcurrent int64 `json:"peak_concurrent"`
	Inflight       int64 `json:"inflight"`
	Queued         int64 `json:"queued"`
	Failed         int64 `json:"failed"`
	Canceled       int64 `json:"canceled"`
}

// simControl talks to the sims' /sim/ endpoints.
type simControl struct {
	client *http.Client
}

func (sc simControl) call(method string, s sim, path string) (simStats, error) {
	var st simStats
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, "http://"+s.addr+path, nil)
	if err != nil {
		return st, err
	}
	resp, err := sc.client.Do(req)
	if err != nil {
		return st, fmt.Errorf("%s sim %s%s: %w", method, s.name, path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return st, fmt.Errorf("%s sim %s%s: %w", method, s.name, path, err)
	}
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("%s sim %s%s: status %d: %s", method, s.name, path, resp.StatusCode, body)
	}
	if err := json.Unmarshal(body, &st); err != nil {
		return st, fmt.Errorf("decoding sim %s stats: %w", s.name, err)
	}
	return st, nil
}

// reset zeroes every sim's counters.
func (sc simControl) reset(sims []sim) error {
	for _, s := range sims {
		if _, err := sc.call(http.MethodPost, s, "/sim/reset"); err != nil {
			return err
		}
	}
	return nil
}

// settle waits (a few seconds at most) until no sim has a request in a slot
// or queued, and returns every sim's counters. A request still inside a sim
// after its client has its answer would be a leak somewhere.
func (sc simControl) settle(sims []sim) ([]simStats, error) {
	deadline := time.Now().Add(5 * time.Second)
	for {
		all := make([]simStats, len(sims))
		busy := 0
		for i, s := range sims {
			st, err := sc.call(http.MethodGet, s, "/sim/stats")
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
