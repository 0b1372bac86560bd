package caddymodule

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"
)

// newPacedBackend starts a backend whose pace each request sets with headers:
// X-Test-Headers-After delays the response headers; X-Test-Events and
// X-Test-Gap make the body a stream of that many events that far apart
// (flushed one by one); X-Test-Then-Hang stops sending after the events
// without ending the response, until the client goes away.
func newPacedBackend(t *testing.T) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		wait := func(d time.Duration) bool {
			select {
			case <-time.After(d):
				return true
			case <-r.Context().Done():
				return false
			}
		}
		headersAfter, _ := time.ParseDuration(r.Header.Get("X-Test-Headers-After"))
		events, _ := strconv.Atoi(r.Header.Get("X-Test-Events"))
		gap, _ := time.ParseDuration(r.Header.Get("X-Test-Gap"))
		if !wait(headersAfter) {
			return
		}
		if events == 0 {
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, `{"object":"chat.completion","choices":[]}`)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(http.StatusOK)
		rc := http.NewResponseController(w)
		_ = rc.Flush()
		for i := range events {
			if i > 0 && !wait(gap) {
				return
			}
			_, _ = fmt.Fprintf(w, "data: {\"event\":%d}\n\n", i)
			_ = rc.Flush()
		}
		if r.Header.Get("X-Test-Then-Hang") != "" {
			wait(time.Minute)
			return
		}
		_, _ = io.WriteString(w, "data: [DONE]\n\n")
	}))
	t.Cleanup(srv.Close)
	return srv
}

// TestIntegrationTimeouts checks response_header_timeout and
// stream_idle_timeout against a backend with a set pace: each bounds what its
// documentation says, and neither cuts off a backend that keeps its pace.
func TestIntegrationTimeouts(t *testing.T) {
	backend := newPacedBackend(t)
	g := startGateway(t, gatewayOptions{}, `
{{url "gw"}} {
	model_router {
		pool {{.Pool}}
		retries -1
		max_fails 1000
		response_header_timeout 3s
		stream_idle_timeout 600ms
		backend paced {{index .Up "paced"}} {
			models m
			max_inflight 4
		}
	}
}
`, map[string]string{"paced": backend.URL})
	url := g.url("gw") + "/v1/chat/completions"

	tests := []struct {
		name string
		// idleBefore leaves the gateway's connection to the backend idle
		// this long after a first request, before the one under test.
		idleBefore time.Duration
		header     []string
		status     int
		code       string
		complete   bool // the body ends normally ([DONE] for streams)
	}{
		{
			name:   "answer within response_header_timeout, after longer than stream_idle_timeout",
			header: []string{"X-Test-Headers-After", "1200ms"},
			status: 200, complete: true,
		},
		{
			name:   "headers later than response_header_timeout",
			header: []string{"X-Test-Headers-After", "5s"},
			status: 504, code: "upstream_timeout",
		},
		{
			name:   "steady stream lasting longer than stream_idle_timeout",
			header: []string{"X-Test-Events", "6", "X-Test-Gap", "300ms"},
			status: 200, complete: true,
		},
		{
			name:   "stream with a first event later than stream_idle_timeout but within response_header_timeout",
			header: []string{"X-Test-Headers-After", "900ms", "X-Test-Events", "3", "X-Test-Gap", "100ms"},
			status: 200, complete: true,
		},
		{
			name:   "stream silent for longer than stream_idle_timeout",
			header: []string{"X-Test-Events", "2", "X-Test-Gap", "10ms", "X-Test-Then-Hang", "1"},
			status: 200, complete: false,
		},
		{
			// The timeouts count from the request, not from when the pooled
			// connection to the backend last carried one.
			name:       "reused keep-alive connection gets the whole timeout",
			idleBefore: 400 * time.Millisecond,
			header:     []string{"X-Test-Headers-After", "400ms"},
			status:     200, complete: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.idleBefore > 0 {
				if resp, body := post(t, url, chatBody("m")); resp.StatusCode != 200 {
					t.Fatalf("warm-up request: %d %s", resp.StatusCode, body)
				}
				time.Sleep(tt.idleBefore)
			}
			start := time.Now()
			req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(streamBody("m")))
			for i := 0; i+1 < len(tt.header); i += 2 {
				req.Header.Set(tt.header[i], tt.header[i+1])
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatalf("request: %v", err)
			}
			body, readErr := io.ReadAll(resp.Body)
			resp.Body.Close()
			took := time.Since(start)
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d after %s, want %d: %s", resp.StatusCode, took, tt.status, body)
			}
			if tt.code != "" {
				if e := parseAPIError(t, body); e.Code != tt.code {
					t.Errorf("code %q, want %q", e.Code, tt.code)
				}
			}
			if tt.status == 200 {
				complete := readErr == nil
				if strings.Contains(resp.Header.Get("Content-Type"), "event-stream") {
					complete = complete && strings.Contains(string(body), "[DONE]")
				}
				if complete != tt.complete {
					t.Errorf("complete = %v (read error %v) after %s, want %v: %s", complete, readErr, took, tt.complete, body)
				}
			}
			if took > 20*time.Second {
				t.Errorf("took %s", took)
			}
			g.waitIdle()
		})
	}
}
