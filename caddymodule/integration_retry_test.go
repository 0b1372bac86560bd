package caddymodule

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// retryCaddyfile has backend a preferred (greedy, better at chat) and b as the
// fallback. a is either a sim (with optional settings) or a URL from Up.
func retryCaddyfile(retries, aURL, simSettings string) string {
	return fmt.Sprintf(`
{{url "gw"}} {
	model_router {
		pool {{.Pool}}
		strategy greedy
		max_fails 100
		dial_timeout 1s
		%s
		backend a %s {
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
		ttft 10ms
		per_token 20ms
		tokens 8
		%s
	}
}
`, retries, aURL, simSettings)
}

func retriesOf(t *testing.T, backend string) float64 {
	return metricValue(t, theMetrics().retries.WithLabelValues(backend).(prometheus.Metric))
}

func TestIntegrationRetries(t *testing.T) {
	tests := []struct {
		name        string
		retries     string // the retries line, "" for the default (1)
		aClosed     bool   // a is a closed port rather than the sim
		simSettings string
		header      []string
		bStatus     int // b's answer; 0 means 200

		wantStatus  int
		wantBackend string // X-Model-Router-Backend; "" for none
		wantCode    string // the router's own error code, when it answers
		wantRetries float64
		wantB       int64 // requests b saw
		wantSimA    int64 // requests the sim a saw
	}{
		{
			name: "connect refused, retried on b", aClosed: true,
			wantStatus: 200, wantBackend: "b", wantRetries: 1, wantB: 1,
		},
		{
			name: "500 from a, retried on b", simSettings: "fail_status 500",
			wantStatus: 200, wantBackend: "b", wantRetries: 1, wantB: 1, wantSimA: 1,
		},
		{
			name: "503 fault from a, retried on b", header: []string{"X-Sim-Fault", "503"},
			wantStatus: 200, wantBackend: "b", wantRetries: 1, wantB: 1, wantSimA: 1,
		},
		{
			// a reads the whole body, then drops the connection before answering:
			// the retry must still carry the body (b checks it below).
			name: "a aborts before answering, retried on b", header: []string{"X-Sim-Fault", "abort_midstream"},
			wantStatus: 200, wantBackend: "b", wantRetries: 1, wantB: 1, wantSimA: 1,
		},
		{
			name: "both fail: the client gets b's answer once", simSettings: "fail_status 500", bStatus: 502,
			wantStatus: 502, wantBackend: "b", wantRetries: 1, wantB: 1, wantSimA: 1,
		},
		{
			name: "no retries: connect refused", retries: "retries -1", aClosed: true,
			wantStatus: 502, wantCode: "upstream_error",
		},
		{
			name: "no retries: 500", retries: "retries -1", simSettings: "fail_status 500",
			wantStatus: 500, wantBackend: "a", wantSimA: 1,
		},
		{
			name: "4xx is not retried", header: []string{"X-Sim-Fault", "404"},
			wantStatus: 404, wantBackend: "a", wantSimA: 1,
		},
		{
			name: "408 is retried", header: []string{"X-Sim-Fault", "408"},
			wantStatus: 200, wantBackend: "b", wantRetries: 1, wantB: 1, wantSimA: 1,
		},
		{
			name: "429 is retried", header: []string{"X-Sim-Fault", "429"},
			wantStatus: 200, wantBackend: "b", wantRetries: 1, wantB: 1, wantSimA: 1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newUpstream(t, "b", 0, false)
			b.status.Store(int32(tt.bStatus))
			aURL := `{{url "sima"}}`
			if tt.aClosed {
				aURL = `{{index .Up "a"}}`
			}
			g := startGateway(t, gatewayOptions{}, retryCaddyfile(tt.retries, aURL, tt.simSettings),
				map[string]string{"a": closedURL(t), "b": b.srv.URL})
			retriesBefore := retriesOf(t, "a")

			body := chatBody("m")
			resp, got := post(t, g.url("gw")+"/v1/chat/completions", body, tt.header...)
			if resp.StatusCode != tt.wantStatus {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tt.wantStatus, got)
			}
			if h := resp.Header.Get(backendHeader); h != tt.wantBackend {
				t.Errorf("%s = %q, want %q", backendHeader, h, tt.wantBackend)
			}
			if tt.wantCode != "" {
				if e := parseAPIError(t, got); e.Code != tt.wantCode {
					t.Errorf("code %q, want %q", e.Code, tt.wantCode)
				}
			}
			if tt.wantStatus == 200 && !strings.Contains(string(got), "answer from b") {
				t.Errorf("answer %s is not b's", got)
			}
			if r := retriesOf(t, "a") - retriesBefore; r != tt.wantRetries {
				t.Errorf("%v retries counted, want %v", r, tt.wantRetries)
			}
			if n := b.total.Load(); n != tt.wantB {
				t.Errorf("b saw %d requests, want %d", n, tt.wantB)
			}
			if !tt.aClosed {
				if n := g.simStats("sima").Requests; n != tt.wantSimA {
					t.Errorf("a saw %d requests, want %d", n, tt.wantSimA)
				}
			}
			if tt.wantB > 0 {
				bodies, _ := b.received()
				if string(bodies[0]) != body {
					t.Errorf("the retry sent %q, want the client's body %q", bodies[0], body)
				}
			}
			g.waitIdle()
		})
	}
}

// TestIntegrationNoRetryAfterResponseStarted: a stream that breaks after it
// reached the client is not retried (the client would get two answers glued
// together); the client sees a broken stream instead.
func TestIntegrationNoRetryAfterResponseStarted(t *testing.T) {
	b := newUpstream(t, "b", 0, false)
	g := startGateway(t, gatewayOptions{}, retryCaddyfile("", `{{url "sima"}}`, ""), map[string]string{"b": b.srv.URL})
	retriesBefore := retriesOf(t, "a")
	g.armSimFault("sima", "abort_midstream", 1)

	req, err := http.NewRequestWithContext(context.Background(), http.MethodPost, g.url("gw")+"/v1/chat/completions",
		strings.NewReader(`{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("the stream must start before it breaks: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get(backendHeader) != "a" {
		t.Fatalf("status %d from %q, want 200 from a", resp.StatusCode, resp.Header.Get(backendHeader))
	}
	got, err := io.ReadAll(resp.Body)
	if err == nil {
		t.Errorf("the broken stream read to a clean end: %s", got)
	}
	text := string(got)
	if n := strings.Count(text, "["+g.pool+"-a]"); n != 1 {
		t.Errorf("the stream names a %d times, want once: %s", n, text)
	}
	if strings.Contains(text, "[DONE]") || strings.Contains(text, "answer from b") {
		t.Errorf("the broken stream was completed by someone: %s", text)
	}
	if n := b.total.Load(); n != 0 {
		t.Errorf("b saw %d requests; a started stream must not be retried", n)
	}
	if r := retriesOf(t, "a") - retriesBefore; r != 0 {
		t.Errorf("%v retries counted, want 0", r)
	}
	g.waitIdle()

	// a is not broken for the next request.
	resp2, body := post(t, g.url("gw")+"/v1/chat/completions", chatBody("m"))
	if resp2.StatusCode != 200 || resp2.Header.Get(backendHeader) != "a" {
		t.Errorf("next request: %d from %q: %s", resp2.StatusCode, resp2.Header.Get(backendHeader), body)
	}
}
