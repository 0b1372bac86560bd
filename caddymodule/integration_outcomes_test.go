package caddymodule

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/modelrouter/modelrouter/caddymodule/sim"
	"github.com/modelrouter/modelrouter/engine"
	"github.com/modelrouter/modelrouter/loadstate"
)

// outcomeCaddyfile has backend a (a sim, preferred by greedy) and b (a plain
// upstream) serving model m; a single failure cools a backend down, so each
// attempt's outcome shows in a's health.
const outcomeCaddyfile = `
{{url "gw"}} {
	model_router {
		pool {{.Pool}}
		strategy greedy
		max_fails 1
		fail_cooldown 1m
		response_header_timeout 1s
		stream_header_timeout 1s
		stream_idle_timeout 500ms
		backend a {{url "sima"}} {
			models m
			capabilities chat=1
			max_inflight 4
		}
		backend b {{index .Up "b"}} {
			models m
			capabilities chat=0.5
			max_inflight 4
		}
	}
}

{{url "sima"}} {
	model_router_sim {
		name {{.Pool}}-a
		slots 4
		ttft 5ms
		per_token 5ms
		tokens 8
	}
}
`

// TestIntegrationOutcomeTable drives every row of the outcome table (see
// engine.Outcome) through a real Caddy and a real sim, and checks, per
// attempt: the outcome recorded, what passive health made of it, whether it
// fed the latency sketches, and whether the request was retried on b.
func TestIntegrationOutcomeTable(t *testing.T) {
	tests := []struct {
		name   string
		stream bool
		fault  string
		header []string
		cancel bool // the client goes away once the request reached a

		outcome     engine.Outcome
		state       engine.HealthState // a's health afterwards
		learns      bool               // a's latency sketch got a sample
		retried     bool               // b answered
		wantStatus  int                // what the client got
		wantBackend string
	}{
		{name: "2xx", outcome: engine.OutcomeSuccess, state: engine.StateHealthy, learns: true, wantStatus: 200, wantBackend: "a"},
		{name: "2xx stream", stream: true, outcome: engine.OutcomeSuccess, state: engine.StateHealthy, learns: true, wantStatus: 200, wantBackend: "a"},
		{name: "client gone", fault: sim.FaultHang, cancel: true, outcome: engine.OutcomeClientGone, state: engine.StateHealthy},
		{name: "429", fault: "429", header: []string{sim.RetryAfterHeader, "7"}, outcome: engine.OutcomeRateLimited,
			state: engine.StateRateLimited, retried: true, wantStatus: 200, wantBackend: "b"},
		{name: "503", fault: "503", outcome: engine.OutcomeFailed, state: engine.StateCoolingDown, retried: true, wantStatus: 200, wantBackend: "b"},
		{name: "500 on a stream", stream: true, fault: "500", outcome: engine.OutcomeFailed, state: engine.StateCoolingDown, retried: true, wantStatus: 200, wantBackend: "b"},
		{name: "408", fault: "408", outcome: engine.OutcomeFailed, state: engine.StateCoolingDown, retried: true, wantStatus: 200, wantBackend: "b"},
		{name: "header timeout", fault: sim.FaultSlowHeaders, outcome: engine.OutcomeFailed, state: engine.StateCoolingDown, retried: true, wantStatus: 200, wantBackend: "b"},
		{name: "connection dropped before any answer", fault: sim.FaultAbortMidstream, outcome: engine.OutcomeFailed, state: engine.StateCoolingDown, retried: true, wantStatus: 200, wantBackend: "b"},
		{name: "stream broken mid-way", stream: true, fault: sim.FaultAbortMidstream, outcome: engine.OutcomeBroken, state: engine.StateCoolingDown, wantStatus: 200, wantBackend: "a"},
		{name: "stream silent past the idle timeout", stream: true, fault: sim.FaultStallMidstream, outcome: engine.OutcomeBroken, state: engine.StateCoolingDown, wantStatus: 200, wantBackend: "a"},
		{name: "answer silent past the idle timeout", fault: sim.FaultStallMidstream, outcome: engine.OutcomeBroken, state: engine.StateCoolingDown, wantStatus: 200, wantBackend: "a"},
		{name: "404", fault: "404", outcome: engine.OutcomeClientError, state: engine.StateHealthy, wantStatus: 404, wantBackend: "a"},
		{name: "400", fault: "400", outcome: engine.OutcomeClientError, state: engine.StateHealthy, wantStatus: 400, wantBackend: "a"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newUpstream(t, "b", 0, false)
			g := startGateway(t, gatewayOptions{}, outcomeCaddyfile, map[string]string{"b": b.srv.URL})
			before := attemptsOf(t, "a", tt.outcome)

			body := chatBody("m")
			if tt.stream {
				body = streamBody("m")
			}
			header := append([]string{sim.FaultHeader, tt.fault}, tt.header...)
			if tt.fault == "" {
				header = nil
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := make(chan result, 1)
			go func() { done <- send(ctx, http.DefaultClient, g.url("gw")+"/v1/chat/completions", body, header...) }()
			if tt.cancel {
				eventually(t, 10*time.Second, "the request to reach a", func() bool { return g.simStats("sima").Requests == 1 })
				cancel()
			}
			res := <-done
			if !tt.cancel {
				if res.status != tt.wantStatus {
					t.Fatalf("status %d, want %d (err %v): %s", res.status, tt.wantStatus, res.err, res.body)
				}
				if got := res.header.Get(backendHeader); got != tt.wantBackend {
					t.Errorf("answered by %q, want %q", got, tt.wantBackend)
				}
			}
			g.waitIdle()

			if got := attemptsOf(t, "a", tt.outcome) - before; got != 1 {
				t.Errorf("attempts_total{backend=a,outcome=%s} grew by %v, want 1", tt.outcome, got)
			}
			if st, _ := g.health().State("a", now()); st != tt.state {
				t.Errorf("a's health is %v, want %v", st, tt.state)
			}
			samples := g.pooled().sketches.Count("a", loadstate.EndToEnd)
			if (samples > 0) != tt.learns {
				t.Errorf("a's latency sketch has %d samples; want learning = %v", samples, tt.learns)
			}
			if got := b.total.Load() > 0; got != tt.retried {
				t.Errorf("b got %d requests; want retried = %v", b.total.Load(), tt.retried)
			}
		})
	}
}

// TestIntegrationRateLimitedBackendIsSkipped: of two equal backends, one
// answers every request 429 with Retry-After: 7. Every one of 20 sequential
// requests is served by the healthy one (the rate-limited backend is tried at
// most once, then skipped for its Retry-After), and its quick 429s never
// count as good latency.
func TestIntegrationRateLimitedBackendIsSkipped(t *testing.T) {
	g := startGateway(t, gatewayOptions{}, `
{{url "gw"}} {
	model_router {
		pool {{.Pool}}
		strategy balanced
		backend limited {{url "limited"}} {
			models m
			capabilities chat=1
			max_inflight 4
		}
		backend healthy {{url "healthy"}} {
			models m
			capabilities chat=1
			max_inflight 4
		}
	}
}

{{url "limited"}} {
	model_router_sim {
		name {{.Pool}}-limited
		slots 4
		ttft 1ms
		per_token 1ms
		fail_status 429
	}
}

{{url "healthy"}} {
	model_router_sim {
		name {{.Pool}}-healthy
		slots 4
		ttft 20ms
		per_token 5ms
	}
}
`, nil)
	start := now()
	for i := range 20 {
		resp, body := post(t, g.url("gw")+"/v1/chat/completions", chatBody("m"), sim.RetryAfterHeader, "7")
		if resp.StatusCode != http.StatusOK || resp.Header.Get(backendHeader) != "healthy" {
			t.Fatalf("request %d: status %d from %q: %s", i, resp.StatusCode, resp.Header.Get(backendHeader), body)
		}
	}
	if n := g.simStats("limited").Requests; n > 1 {
		t.Errorf("the rate-limited backend got %d requests, want at most 1 (then skipped for its Retry-After)", n)
	}
	if n := g.simStats("healthy").Served; n != 20 {
		t.Errorf("the healthy backend served %d, want 20", n)
	}
	if n := g.pooled().sketches.Count("limited", loadstate.EndToEnd); n != 0 {
		t.Errorf("the rate-limited backend's 429s fed %d latency samples", n)
	}
	// The 429 came between start and end: it is skipped until 7s after it,
	// however long the requests took on a busy machine.
	end := now()
	if st, until := g.health().State("limited", end); st != engine.StateRateLimited || until.Before(start.Add(7*time.Second)) || until.After(end.Add(7*time.Second)) {
		t.Errorf("limited is %v until %v after the first request, want rate_limited until 7s after its 429 (between %v and %v)", st, until.Sub(start), 7*time.Second, end.Add(7*time.Second).Sub(start))
	}
}

// TestIntegrationHalfOpenProbe: the only backend of a model fails max_fails
// times in a row and then recovers at once. Requests are not refused for the
// whole cooldown: while no probe is due they get 503 no_healthy_backend with
// Retry-After = the time to the next probe; then one probe at a time goes
// through, and its success closes the breaker.
func TestIntegrationHalfOpenProbe(t *testing.T) {
	clk := useFakeClock(t)
	g := startGateway(t, gatewayOptions{}, `
{{url "gw"}} {
	model_router {
		pool {{.Pool}}
		max_fails 3
		fail_cooldown 10s
		backend only {{url "only"}} {
			models m
			max_inflight 4
		}
	}
}

{{url "only"}} {
	model_router_sim {
		name {{.Pool}}-only
		slots 4
		ttft 1ms
		per_token 1ms
	}
}
`, nil)
	url := g.url("gw") + "/v1/chat/completions"
	g.armSimFault("only", "503", 3)
	for i := range 3 {
		resp, body := post(t, url, chatBody("m"))
		// No other backend could take a retry: the client gets the
		// upstream's own 503, not a gateway-made 502.
		if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get(backendHeader) != "only" {
			t.Fatalf("failure %d: status %d from %q: %s", i, resp.StatusCode, resp.Header.Get(backendHeader), body)
		}
		if !strings.Contains(string(body), "simulated failure") {
			t.Errorf("failure %d: not the upstream's own answer: %s", i, body)
		}
	}
	if st, _ := g.health().State("only", now()); st != engine.StateCoolingDown {
		t.Fatalf("after 3 failures: %v, want cooling_down", st)
	}

	// No probe due yet: refused, told when to come back.
	resp, body := post(t, url, chatBody("m"))
	if resp.StatusCode != http.StatusServiceUnavailable || parseAPIError(t, body).Code != "no_healthy_backend" {
		t.Fatalf("before the probe is due: status %d: %s", resp.StatusCode, body)
	}
	if ra := resp.Header.Get("Retry-After"); ra != "1" {
		t.Errorf("Retry-After %q, want 1 (the next probe, a second after the last failure)", ra)
	}
	if n := g.simStats("only").Requests; n != 3 {
		t.Fatalf("the backend got %d requests, want 3", n)
	}

	// A probe is due: one request at a time goes through. Hold it.
	clk.advance(time.Second)
	g.armSimFault("only", sim.FaultHang, 1)
	ctx, cancel := context.WithCancel(context.Background())
	probe := make(chan result, 1)
	go func() { probe <- send(ctx, http.DefaultClient, url, chatBody("m")) }()
	eventually(t, 10*time.Second, "the probe to reach the backend", func() bool { return g.simStats("only").Requests == 4 })
	resp, body = post(t, url, chatBody("m"))
	if resp.StatusCode != http.StatusServiceUnavailable || parseAPIError(t, body).Code != "no_healthy_backend" {
		t.Fatalf("while the probe is in flight: status %d: %s", resp.StatusCode, body)
	}
	if resp.Header.Get("Retry-After") == "" {
		t.Error("no Retry-After while the probe is in flight")
	}
	// The probe's client gives up: no verdict, the next request may probe.
	cancel()
	<-probe
	g.waitIdle()

	resp, body = post(t, url, chatBody("m"))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("the next probe: status %d: %s", resp.StatusCode, body)
	}
	if st, _ := g.health().State("only", now()); st != engine.StateHealthy {
		t.Fatalf("after a successful probe: %v, want ok", st)
	}
	for i := range 3 {
		if resp, body := post(t, url, chatBody("m")); resp.StatusCode != http.StatusOK {
			t.Fatalf("request %d after recovery: status %d: %s", i, resp.StatusCode, body)
		}
	}
	// 10s of cooldown never passed on the router's clock.
	if n := g.simStats("only").Requests; n != 8 {
		t.Errorf("the backend got %d requests, want 8", n)
	}
}

// TestIntegrationUpstreamAnswerWhenRetryCannotHappen: a retry was planned (b
// had room when the attempt on a started) but b filled up meanwhile: the
// client gets a's own answer, status, body and Retry-After, not a
// gateway-made 502.
func TestIntegrationUpstreamAnswerWhenRetryCannotHappen(t *testing.T) {
	for _, status := range []int{http.StatusServiceUnavailable, http.StatusTooManyRequests} {
		t.Run(http.StatusText(status), func(t *testing.T) {
			release := make(chan struct{})
			arrived := make(chan struct{}, 1)
			a := newUpstream(t, "a", 0, false)
			a.srv.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				_, _ = io.Copy(io.Discard, r.Body)
				arrived <- struct{}{}
				<-release
				w.Header().Set("Content-Type", "application/json")
				w.Header().Set("Retry-After", "3")
				w.WriteHeader(status)
				_, _ = io.WriteString(w, `{"error":{"message":"from a","type":"server_error","param":null,"code":"a_says_no"}}`)
			})
			b := newUpstream(t, "b", 0, true)
			g := startGateway(t, gatewayOptions{}, `
{{url "gw"}} {
	model_router {
		pool {{.Pool}}
		strategy greedy
		max_wait 100ms
		backend a {{index .Up "a"}} {
			models m
			capabilities chat=1
			max_inflight 1
		}
		backend b {{index .Up "b"}} {
			models m
			capabilities chat=0.5
			max_inflight 1
		}
	}
}
`, map[string]string{"a": a.srv.URL, "b": b.srv.URL})
			url := g.url("gw") + "/v1/chat/completions"
			first := make(chan result, 1)
			go func() { first <- send(context.Background(), http.DefaultClient, url, chatBody("m")) }()
			<-arrived // on a, with b free: a retry is possible
			second := make(chan result, 1)
			go func() { second <- send(context.Background(), http.DefaultClient, url, chatBody("m")) }()
			eventually(t, 10*time.Second, "b to be taken", func() bool { return b.cur.Load() == 1 })
			close(release)
			res := <-first
			if res.status != status || res.header.Get("Retry-After") != "3" || res.header.Get(backendHeader) != "a" {
				t.Fatalf("status %d, Retry-After %q, backend %q, want %d, 3, a: %s",
					res.status, res.header.Get("Retry-After"), res.header.Get(backendHeader), status, res.body)
			}
			if e := parseAPIError(t, res.body); e.Code != "a_says_no" {
				t.Errorf("not a's own answer: %s", res.body)
			}
			b.openGate()
			if res := <-second; res.status != 200 {
				t.Errorf("second request: %d %s", res.status, res.body)
			}
			g.waitIdle()
		})
	}
}

// TestIntegrationUpstreamFailureIsLogged: the reason of an upstream failure
// (here: connection refused) is logged at warn level, once per interval per
// backend however many requests fail, and never with the request's content.
func TestIntegrationUpstreamFailureIsLogged(t *testing.T) {
	logFile := filepath.Join(t.TempDir(), "caddy.log")
	g := startGateway(t, gatewayOptions{logFile: logFile}, `
{{url "gw"}} {
	model_router {
		pool {{.Pool}}
		retries -1
		max_fails 100
		backend down {{index .Up "down"}} {
			models m
			max_inflight 4
		}
	}
}
`, map[string]string{"down": closedURL(t)})
	const secret = "the-prompt-must-never-be-logged"
	body := `{"model":"m","messages":[{"role":"user","content":"` + secret + `"}]}`
	for i := range 5 {
		if resp, got := post(t, g.url("gw")+"/v1/chat/completions", body); resp.StatusCode != http.StatusBadGateway {
			t.Fatalf("request %d: status %d: %s", i, resp.StatusCode, got)
		}
	}
	type entry struct {
		Level, Msg, Backend, Outcome, Reason string
	}
	var warnings []entry
	data, err := os.ReadFile(logFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		var e entry
		if json.Unmarshal([]byte(line), &e) == nil && e.Msg == "upstream failed" {
			warnings = append(warnings, e)
		}
	}
	if len(warnings) != 1 {
		t.Fatalf("%d 'upstream failed' lines for 5 failures in a row, want 1 (rate-limited):\n%s", len(warnings), data)
	}
	if w := warnings[0]; w.Level != "warn" || w.Backend != "down" || w.Outcome != "failed" || !strings.Contains(w.Reason, "connection refused") {
		t.Errorf("warning %+v: want level warn, backend down, outcome failed and the reason", w)
	}
	if strings.Contains(string(data), secret) {
		t.Errorf("the log holds the request's content:\n%s", data)
	}
}
