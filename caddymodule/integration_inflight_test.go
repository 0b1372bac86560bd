package caddymodule

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// inflightCaddyfile: backend s is a quick sim, long is a sim whose streams
// last far longer than any test waits, dead refuses connections. Failures
// never cool a backend down here, so every case starts from the same state.
const inflightCaddyfile = `
{{url "gw"}} {
	model_router {
		pool {{.Pool}}
		retries -1
		max_fails 1000
		stream_idle_timeout 500ms
		max_wait 5s
		dial_timeout 1s
		response_header_timeout 1s
		backend s {{url "sim"}} {
			models m
			max_inflight 2
		}
		backend long {{url "long"}} {
			models long
			max_inflight 2
		}
		backend dead {{index .Up "dead"}} {
			models dead
			max_inflight 2
		}
		backend silent {{index .Up "silent"}} {
			models silent
			max_inflight 2
		}
	}
}

{{url "sim"}} {
	model_router_sim {
		name {{.Pool}}-s
		slots 4
		ttft 20ms
		per_token 5ms
		tokens 8
	}
}

{{url "long"}} {
	model_router_sim {
		name {{.Pool}}-long
		slots 4
		ttft 10ms
		per_token 30ms
		tokens 1000
	}
}
`

// newSilentStream starts a backend that sends the headers and one event of a
// stream, then goes silent until its client goes away.
func newSilentStream(t *testing.T) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(http.StatusOK)
		_, _ = io.WriteString(w, "data: {\"first\":true}\n\n")
		http.NewResponseController(w).Flush()
		select {
		case <-r.Context().Done():
		case <-time.After(time.Minute):
		}
	}))
	t.Cleanup(srv.Close)
	return srv
}

func streamBody(model string) string {
	return `{"model":"` + model + `","stream":true,"messages":[{"role":"user","content":"hi"}]}`
}

// TestIntegrationInflightReleased checks that every way a request can end
// gives its slot back: the store's in-flight counts return to zero (and so
// does the in-flight gauge).
func TestIntegrationInflightReleased(t *testing.T) {
	silent := newSilentStream(t)
	g := startGateway(t, gatewayOptions{}, inflightCaddyfile, map[string]string{"dead": closedURL(t), "silent": silent.URL})
	url := g.url("gw") + "/v1/chat/completions"

	checkIdle := func(t *testing.T) {
		t.Helper()
		g.waitIdle()
		for _, b := range []string{"s", "long", "dead", "silent"} {
			if v := inflightGauge(t, g.pool, b); v != 0 {
				t.Errorf("in-flight gauge for %s is %v after every request ended", b, v)
			}
		}
	}

	plain := []struct {
		name   string
		body   string
		header []string
		status int
		code   string
	}{
		{name: "success", body: chatBody("m"), status: 200},
		{name: "success, streamed", body: streamBody("m"), status: 200},
		{name: "upstream 500", body: chatBody("m"), header: []string{"X-Sim-Fault", "500"}, status: 500},
		{name: "upstream 500 on a stream", body: streamBody("m"), header: []string{"X-Sim-Fault", "503"}, status: 503},
		{name: "upstream refuses connections", body: chatBody("dead"), status: 502, code: "upstream_error"},
		{name: "upstream too slow to answer", body: chatBody("m"), header: []string{"X-Sim-Fault", "slow_headers"}, status: 504, code: "upstream_timeout"},
	}
	for _, tt := range plain {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := post(t, url, tt.body, tt.header...)
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tt.status, body)
			}
			if tt.status == 200 && tt.body == streamBody("m") && !strings.Contains(string(body), "[DONE]") {
				t.Errorf("stream did not end with [DONE]: %s", body)
			}
			if tt.code != "" {
				if e := parseAPIError(t, body); e.Code != tt.code {
					t.Errorf("code %q, want %q", e.Code, tt.code)
				}
			}
			checkIdle(t)
		})
	}

	t.Run("client cancels while the backend is slow", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		done := make(chan result, 1)
		go func() { done <- send(ctx, http.DefaultClient, url, chatBody("m"), "X-Sim-Fault", "hang") }()
		g.waitHeld("s", 1)
		cancel()
		if r := <-done; !errors.Is(r.err, context.Canceled) {
			t.Errorf("client: status %d err %v, want canceled", r.status, r.err)
		}
		checkIdle(t)
		eventually(t, drainTimeout, "the sim to see the request canceled", func() bool { return g.simStats("sim").Canceled >= 1 })
	})

	t.Run("client cancels while waiting for a slot", func(t *testing.T) {
		holdCtx, release := context.WithCancel(context.Background())
		defer release()
		held := make(chan result, 2)
		for range 2 {
			go func() { held <- send(holdCtx, http.DefaultClient, url, chatBody("m"), "X-Sim-Fault", "hang") }()
		}
		g.waitHeld("s", 2)

		depth := metricValue(t, theMetrics().queueDepth)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		waiting := make(chan result, 1)
		go func() { waiting <- send(ctx, http.DefaultClient, url, chatBody("m")) }()
		eventually(t, drainTimeout, "the third request to queue", func() bool {
			return metricValue(t, theMetrics().queueDepth) == depth+1
		})
		cancel()
		if r := <-waiting; !errors.Is(r.err, context.Canceled) {
			t.Errorf("waiting client: status %d err %v, want canceled", r.status, r.err)
		}
		eventually(t, drainTimeout, "the queue to empty", func() bool { return metricValue(t, theMetrics().queueDepth) == depth })
		if n := g.inflight()["s"]; n != 2 {
			t.Errorf("s holds %d slots after a waiter left, want the 2 still held", n)
		}
		release()
		for range 2 {
			<-held
		}
		checkIdle(t)
	})

	t.Run("upstream aborts mid-stream", func(t *testing.T) {
		req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(streamBody("m")))
		req.Header.Set("X-Sim-Fault", "abort_midstream")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("the stream must start before it breaks: %v", err)
		}
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || err == nil {
			t.Errorf("status %d, read err %v, want 200 and a broken stream: %s", resp.StatusCode, err, got)
		}
		checkIdle(t)
	})

	t.Run("upstream goes silent mid-stream", func(t *testing.T) {
		resp, err := http.Post(url, "application/json", strings.NewReader(streamBody("silent")))
		if err != nil {
			t.Fatalf("the stream must start before it stalls: %v", err)
		}
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(got), "first") || err == nil {
			t.Errorf("status %d, read err %v, body %q: want 200, the first event, then a broken stream", resp.StatusCode, err, got)
		}
		checkIdle(t)
	})

	// A client that goes away in the middle of a long stream: the slot is
	// released long before the stream would have ended (1000 tokens × 30ms).
	for _, how := range []string{"cancels its context", "closes the body"} {
		t.Run("client "+how+" mid-stream", func(t *testing.T) {
			served := g.simStats("long").Served
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(streamBody("long")))
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != 200 {
				t.Fatalf("status %d", resp.StatusCode)
			}
			// Read a few events so the stream is well under way.
			sc := bufio.NewScanner(resp.Body)
			for events := 0; events < 3 && sc.Scan(); {
				if strings.HasPrefix(sc.Text(), "data: ") {
					events++
				}
			}
			if n := g.inflight()["long"]; n != 1 {
				t.Errorf("long holds %d slots mid-stream, want 1", n)
			}
			if how == "closes the body" {
				resp.Body.Close()
			} else {
				cancel()
				resp.Body.Close()
			}
			checkIdle(t)
			if g.simStats("long").Served != served {
				t.Errorf("the slot came back because the stream ended, not because the client left")
			}
		})
	}
	eventually(t, drainTimeout, "the long sim to see both clients go", func() bool { return g.simStats("long").Canceled >= 2 })
}
