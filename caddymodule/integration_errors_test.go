package caddymodule

import (
	"context"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// TestIntegrationBadRequests sends the bad requests of the error table: each
// gets its status and code in OpenAI's error shape, and none reaches a backend.
func TestIntegrationBadRequests(t *testing.T) {
	up := newUpstream(t, "only", 0, false)
	g := startGateway(t, gatewayOptions{}, `
{{url "gw"}} {
	model_router {
		pool {{.Pool}}
		max_body 1KiB
		backend only {{index .Up "only"}} {
			models m1 m2=vendor/m2
			capabilities chat=1 coding=0.5
			max_inflight 2
			context 4096
		}
	}
}
`, map[string]string{"only": up.srv.URL})

	big := `{"model":"m1","messages":[{"role":"user","content":"` + strings.Repeat("x", 2048) + `"}]}`
	tests := []struct {
		name      string
		method    string
		path      string
		body      string
		chunked   bool // send the body without a Content-Length
		header    []string
		status    int
		code      string
		param     string // "" means null
		wantAllow string
	}{
		{name: "malformed JSON", body: `{"model":"m1",`, status: 400, code: "invalid_json"},
		{name: "not an object", body: `["m1"]`, status: 400, code: "invalid_json"},
		{name: "trailing data", body: `{"model":"m1"} {"model":"m2"}`, status: 400, code: "invalid_json"},
		{name: "empty body", body: ``, status: 400, code: "invalid_json"},
		{name: "body over max_body", body: big, status: 413, code: "request_too_large"},
		{name: "body over max_body, chunked", body: big, chunked: true, status: 413, code: "request_too_large"},
		{name: "unknown model", body: chatBody("gpt-nope"), status: 404, code: "model_not_found", param: "model"},
		{name: "upstream name is not a public model", body: chatBody("vendor/m2"), status: 404, code: "model_not_found", param: "model"},
		{name: "missing model", body: `{"messages":[]}`, status: 400, code: "missing_model", param: "model"},
		{name: "empty model", body: chatBody(""), status: 400, code: "missing_model", param: "model"},
		{name: "model not a string", body: `{"model":7}`, status: 400, code: "invalid_type", param: "model"},
		{name: "duplicate model key", body: `{"model":"m1","model":"m2"}`, status: 400, code: "invalid_request_body", param: "model"},
		{name: "case-variant model key", body: `{"model":"m1","Model":"m2"}`, status: 400, code: "invalid_request_body", param: "model"},
		{name: "case-variant model key alone", body: `{"MODEL":"m1"}`, status: 400, code: "invalid_request_body", param: "model"},
		{name: "stream not a boolean", body: `{"model":"m1","stream":"yes"}`, status: 400, code: "invalid_type", param: "stream"},
		{name: "unknown capability", body: chatBody("auto"), header: []string{capabilityHeader, "juggling"}, status: 400, code: "unknown_capability", param: capabilityHeader},
		{name: "capability that is not a name", body: chatBody("m1"), header: []string{capabilityHeader, "../../etc"}, status: 400, code: "unknown_capability", param: capabilityHeader},
		{name: "wrong method", method: http.MethodGet, status: 405, code: "method_not_allowed", wantAllow: "POST"},
		{name: "wrong method on models", method: http.MethodPost, path: "/v1/models", body: chatBody("m1"), status: 405, code: "method_not_allowed", wantAllow: "GET, HEAD"},
		{name: "unknown API", path: "/v1/fine_tuning/jobs", body: chatBody("m1"), status: 404, code: "unknown_url"},
		{name: "unknown model by id", method: http.MethodGet, path: "/v1/models/gpt-nope", status: 404, code: "model_not_found", param: "model"},
		{name: "longer than every context", body: `{"model":"m1","max_tokens":5000,"messages":[{"role":"user","content":"hi"}]}`,
			status: 400, code: "context_length_exceeded", param: "messages"},
		{name: "longer than every context, auto", body: `{"model":"auto","max_completion_tokens":4096,"messages":[{"role":"user","content":"hello"}]}`,
			status: 400, code: "context_length_exceeded", param: "messages"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			method, path := tt.method, tt.path
			if method == "" {
				method = http.MethodPost
			}
			if path == "" {
				path = "/v1/chat/completions"
			}
			var body io.Reader = strings.NewReader(tt.body)
			if tt.chunked {
				body = io.MultiReader(body) // unknown length: sent chunked
			}
			if method == http.MethodGet {
				body = nil
			}
			req, err := http.NewRequest(method, g.url("gw")+path, body)
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Content-Type", "application/json")
			for i := 0; i+1 < len(tt.header); i += 2 {
				req.Header.Set(tt.header[i], tt.header[i+1])
			}
			rejected := metricValue(t, theMetrics().rejected.WithLabelValues(tt.code).(prometheus.Metric))
			resp, respBody := do(t, req)
			if n := metricValue(t, theMetrics().rejected.WithLabelValues(tt.code).(prometheus.Metric)) - rejected; n != 1 {
				t.Errorf("model_router_rejected_total{code=%q} grew by %v, want 1", tt.code, n)
			}
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tt.status, respBody)
			}
			if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q", ct)
			}
			if b := resp.Header.Get(backendHeader); b != "" {
				t.Errorf("%s %q on an answer no backend gave", backendHeader, b)
			}
			e := parseAPIError(t, respBody)
			if e.Code != tt.code {
				t.Errorf("code %q, want %q (%s)", e.Code, tt.code, e.Message)
			}
			if e.Type != "invalid_request_error" {
				t.Errorf("type %q, want invalid_request_error", e.Type)
			}
			switch {
			case tt.param == "" && e.Param != nil:
				t.Errorf("param %q, want null", *e.Param)
			case tt.param != "" && (e.Param == nil || *e.Param != tt.param):
				t.Errorf("param %v, want %q", e.Param, tt.param)
			}
			if tt.wantAllow != "" && resp.Header.Get("Allow") != tt.wantAllow {
				t.Errorf("Allow %q, want %q", resp.Header.Get("Allow"), tt.wantAllow)
			}
		})
	}
	if n := up.total.Load(); n != 0 {
		t.Errorf("the backend saw %d requests; bad requests must not reach it", n)
	}
	g.waitIdle()

	// The gateway still works after all that.
	resp, body := post(t, g.url("gw")+"/v1/chat/completions", chatBody("m2"))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("good request after bad ones: %d %s", resp.StatusCode, body)
	}
}

// TestIntegrationNoHealthyBackend: when every backend that serves a model is
// cooling down after failures and no probe is due, requests get 503
// no_healthy_backend at once (without queueing), with Retry-After; once a
// probe is due, one request tries a backend again.
func TestIntegrationNoHealthyBackend(t *testing.T) {
	clk := useFakeClock(t)
	g := startGateway(t, gatewayOptions{}, `
{{url "gw"}} {
	model_router {
		pool {{.Pool}}
		max_fails 1
		fail_cooldown 1m
		dial_timeout 1s
		backend down1 {{index .Up "down1"}} {
			models m
			max_inflight 2
		}
		backend down2 {{index .Up "down2"}} {
			models m
			max_inflight 2
		}
	}
}
`, map[string]string{"down1": closedURL(t), "down2": closedURL(t)})

	// The first request finds both down (one attempt and its retry): the
	// client gets a 502 upstream error, and both backends cool down.
	resp, body := post(t, g.url("gw")+"/v1/chat/completions", chatBody("m"))
	if resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("first request: status %d, want 502: %s", resp.StatusCode, body)
	}
	if e := parseAPIError(t, body); e.Code != "upstream_error" || e.Type != "server_error" {
		t.Errorf("first request: code %q type %q", e.Code, e.Type)
	}
	queued := metricValue(t, theMetrics().queueWait)
	for i := 0; i < 3; i++ {
		resp, body = post(t, g.url("gw")+"/v1/chat/completions", chatBody("m"))
		if resp.StatusCode != http.StatusServiceUnavailable {
			t.Fatalf("status %d, want 503: %s", resp.StatusCode, body)
		}
		if e := parseAPIError(t, body); e.Code != "no_healthy_backend" || e.Type != "server_error" {
			t.Errorf("code %q type %q", e.Code, e.Type)
		}
		if ra := resp.Header.Get("Retry-After"); ra != "1" {
			t.Errorf("Retry-After %q, want 1: the next probe is a second after the last failure", ra)
		}
	}
	if n := metricValue(t, theMetrics().queueWait) - queued; n != 0 {
		t.Errorf("%v requests waited in the queue; no_healthy_backend must not wait", n)
	}
	// A probe is due: the request tries a backend again (still down: the
	// gateway's own 502, no other backend to pass an answer from).
	clk.advance(time.Second)
	resp, body = post(t, g.url("gw")+"/v1/chat/completions", chatBody("m"))
	if resp.StatusCode != http.StatusBadGateway || parseAPIError(t, body).Code != "upstream_error" {
		t.Fatalf("probe: status %d: %s", resp.StatusCode, body)
	}
	g.waitIdle()
}

// TestIntegrationFull: with every slot busy, a request waits up to max_wait
// and then gets full_status; with the wait queue full it gets it at once.
// Both carry Retry-After. full_status 429 uses OpenAI's rate-limit type.
func TestIntegrationFull(t *testing.T) {
	for _, status := range []int{503, 429} {
		t.Run(strconv.Itoa(status), func(t *testing.T) {
			up := newUpstream(t, "busy", 0, true)
			g := startGateway(t, gatewayOptions{}, `
{{url "gw"}} {
	model_router {
		pool {{.Pool}}
		max_wait 3s
		max_queue 1
		full_status `+strconv.Itoa(status)+`
		backend busy {{index .Up "busy"}} {
			models m
			max_inflight 1
		}
	}
}
`, map[string]string{"busy": up.srv.URL})
			url := g.url("gw") + "/v1/chat/completions"

			// The first request takes the only slot and is held by the backend.
			first := make(chan result, 1)
			go func() { first <- send(context.Background(), http.DefaultClient, url, chatBody("m")) }()
			eventually(t, drainTimeout, "the first request to reach the backend", func() bool { return up.cur.Load() == 1 })

			// The second waits in the queue (its only place) until max_wait.
			depth := metricValue(t, theMetrics().queueDepth)
			second := make(chan result, 1)
			go func() { second <- send(context.Background(), http.DefaultClient, url, chatBody("m")) }()
			eventually(t, drainTimeout, "the second request to queue", func() bool {
				return metricValue(t, theMetrics().queueDepth) == depth+1
			})

			// The third finds the queue full and is answered at once: while
			// the second still waits.
			waited := metricValue(t, theMetrics().queueWait)
			resp, body := post(t, url, chatBody("m"))
			checkFull(t, "queue full", status, resp.StatusCode, resp.Header, body)
			if n := metricValue(t, theMetrics().queueWait) - waited; n != 0 {
				t.Errorf("queue full: %v requests left the queue before the answer; want it at once", n)
			}

			r := <-second
			if r.err != nil {
				t.Fatalf("max_wait passed: %v", r.err)
			}
			checkFull(t, "max_wait passed", status, r.status, r.header, r.body)
			if r.took < 3*time.Second {
				t.Errorf("max_wait passed: answered after %s, before max_wait", r.took)
			}

			up.openGate()
			if r := <-first; r.err != nil || r.status != http.StatusOK {
				t.Errorf("the request holding the slot ended with %d %v", r.status, r.err)
			}
			if n := up.total.Load(); n != 1 {
				t.Errorf("backend saw %d requests, want 1: refused ones must not reach it", n)
			}
			g.waitIdle()
		})
	}
}

func checkFull(t *testing.T, what string, want, status int, header http.Header, body []byte) {
	t.Helper()
	if status != want {
		t.Fatalf("%s: status %d, want %d: %s", what, status, want, body)
	}
	e := parseAPIError(t, body)
	if e.Code != "capacity_exhausted" {
		t.Errorf("%s: code %q", what, e.Code)
	}
	wantType := "server_error"
	if want == http.StatusTooManyRequests {
		wantType = "rate_limit_error"
	}
	if e.Type != wantType {
		t.Errorf("%s: type %q, want %q", what, e.Type, wantType)
	}
	ra, err := strconv.Atoi(header.Get("Retry-After"))
	if err != nil || ra < 1 || ra > 60 {
		t.Errorf("%s: Retry-After %q, want a small whole number of seconds", what, header.Get("Retry-After"))
	}
}
