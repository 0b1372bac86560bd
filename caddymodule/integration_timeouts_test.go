package caddymodule

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modelrouter/modelrouter/engine"
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

// TestIntegrationTimeouts checks response_header_timeout (non-streaming),
// stream_header_timeout and stream_idle_timeout against a backend with a set
// pace: each bounds what its documentation says, and none cuts off a backend
// that keeps its pace.
func TestIntegrationTimeouts(t *testing.T) {
	backend := newPacedBackend(t)
	g := startGateway(t, gatewayOptions{}, `
{{url "gw"}} {
	model_router {
		pool {{.Pool}}
		retries -1
		max_fails 1000
		response_header_timeout 3s
		stream_header_timeout 1500ms
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
		stream     bool
		header     []string
		status     int
		code       string
		complete   bool // the body ends normally ([DONE] for streams)
	}{
		{
			name:   "non-streaming answer within response_header_timeout, later than stream_header_timeout",
			header: []string{"X-Test-Headers-After", "2s"},
			status: 200, complete: true,
		},
		{
			name:   "non-streaming answer later than response_header_timeout",
			header: []string{"X-Test-Headers-After", "5s"},
			status: 504, code: "upstream_timeout",
		},
		{
			name: "stream starting later than stream_header_timeout", stream: true,
			header: []string{"X-Test-Headers-After", "2500ms", "X-Test-Events", "2", "X-Test-Gap", "10ms"},
			status: 504, code: "upstream_timeout",
		},
		{
			name: "steady stream lasting longer than stream_idle_timeout", stream: true,
			header: []string{"X-Test-Events", "6", "X-Test-Gap", "300ms"},
			status: 200, complete: true,
		},
		{
			name: "stream with a first event later than stream_idle_timeout but within stream_header_timeout", stream: true,
			header: []string{"X-Test-Headers-After", "900ms", "X-Test-Events", "3", "X-Test-Gap", "100ms"},
			status: 200, complete: true,
		},
		{
			name: "stream silent for longer than stream_idle_timeout", stream: true,
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
			reqBody := chatBody("m")
			if tt.stream {
				reqBody = streamBody("m")
			}
			req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(reqBody))
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
			g.waitIdle()
		})
	}
}

// TestIntegrationClientStopsReading: clients that send a streaming request
// and then stop reading must not hold their slots for ever. A write to the
// client that makes no progress for stream_idle_timeout ends the request and
// frees the slot; the backend is not blamed (outcome client_gone). Raw
// sockets: Go's client would read.
func TestIntegrationClientStopsReading(t *testing.T) {
	event := "data: " + strings.Repeat("x", 32<<10) + "\n\n"
	var arrived, ended atomic.Int64
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if !strings.Contains(string(body), `"stream":true`) {
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, `{"object":"chat.completion","choices":[]}`)
			return
		}
		arrived.Add(1)
		defer ended.Add(1)
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(http.StatusOK)
		rc := http.NewResponseController(w)
		for range 4096 { // 128 MiB: far more than any socket buffers hold
			if _, err := io.WriteString(w, event); err != nil {
				return
			}
			if rc.Flush() != nil {
				return
			}
		}
	}))
	t.Cleanup(backend.Close)
	g := startGateway(t, gatewayOptions{}, `
{{url "gw"}} {
	model_router {
		pool {{.Pool}}
		max_wait 30s
		stream_idle_timeout 500ms
		backend big {{index .Up "big"}} {
			models m
			max_inflight 2
		}
	}
}
`, map[string]string{"big": backend.URL})
	gone := attemptsOf(t, "big", engine.OutcomeClientGone)
	broken := attemptsOf(t, "big", engine.OutcomeBroken)

	body := streamBody("m")
	for range 2 {
		addr := strings.TrimPrefix(g.url("gw"), "http://")
		conn, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		fmt.Fprintf(conn, "POST /v1/chat/completions HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", addr, len(body), body)
		// ... and never read.
	}
	eventually(t, drainTimeout, "both streams to start", func() bool { return arrived.Load() == 2 })
	// Both clients are still connected; their slots come back anyway, and
	// the backend's requests are ended.
	g.waitIdle()
	eventually(t, drainTimeout, "the backend's requests to end", func() bool { return ended.Load() == 2 })
	resp, got := post(t, g.url("gw")+"/v1/chat/completions", chatBody("m"))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("a reading client after the stuck ones: %d %.200s", resp.StatusCode, got)
	}
	if n := attemptsOf(t, "big", engine.OutcomeClientGone) - gone; n != 2 {
		t.Errorf("client_gone outcomes grew by %v, want 2", n)
	}
	if n := attemptsOf(t, "big", engine.OutcomeBroken) - broken; n != 0 {
		t.Errorf("the backend was blamed for %v stuck clients", n)
	}
	if st, _ := g.health().State("big", now()); st != engine.StateHealthy {
		t.Errorf("the backend is %v after clients stopped reading", st)
	}
}
