package caddymodule

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
)

// orderUpstream answers every request at once, except one whose "user" is
// "hold" (it stays until its client leaves), and records the order of the
// "user" fields it saw.
type orderUpstream struct {
	srv   *httptest.Server
	mu    sync.Mutex
	order []string
	held  chan struct{}
}

func newOrderUpstream(t *testing.T) *orderUpstream {
	u := &orderUpstream{held: make(chan struct{}, 1)}
	u.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body struct{ User string }
		raw, _ := io.ReadAll(r.Body)
		_ = json.Unmarshal(raw, &body)
		if body.User == "hold" {
			u.held <- struct{}{}
			<-r.Context().Done()
			return
		}
		u.mu.Lock()
		u.order = append(u.order, body.User)
		u.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"object":"chat.completion","choices":[]}`)
	}))
	t.Cleanup(u.srv.Close)
	return u
}

func userBody(user string) string {
	return `{"model":"m","user":"` + user + `","messages":[{"role":"user","content":"hi"}]}`
}

// TestIntegrationPriorities: with the only slot taken, waiting requests are
// served by class (a high request that arrived later goes first), a
// sheddable request gets full_status at once instead of waiting, and an
// unknown class is the client's error.
func TestIntegrationPriorities(t *testing.T) {
	up := newOrderUpstream(t)
	g := startGateway(t, gatewayOptions{}, `
{{url "gw"}} {
	model_router {
		pool {{.Pool}}
		max_wait 30s
		priorities high normal low sheddable
		priority_header X-Priority
		backend only {{index .Up "only"}} {
			models m
			max_inflight 1
		}
	}
}
`, map[string]string{"only": up.srv.URL})
	url := g.url("gw") + "/v1/chat/completions"
	ctx, release := context.WithCancel(context.Background())
	holder := make(chan result, 1)
	go func() { holder <- send(ctx, http.DefaultClient, url, userBody("hold")) }()
	<-up.held

	depth := metricValue(t, theMetrics().queueDepth)
	results := make(chan result, 3)
	for _, tt := range []struct{ user, class string }{{"low", "low"}, {"normal", ""}, {"high", "HIGH"}} {
		go func() {
			results <- send(context.Background(), http.DefaultClient, url, userBody(tt.user), "X-Priority", tt.class)
		}()
		want := depth + 1
		eventually(t, drainTimeout, tt.user+" to wait", func() bool { return metricValue(t, theMetrics().queueDepth) == want })
		depth = want
	}
	// Sheddable: refused at once, not queued.
	resp, body := post(t, url, userBody("shed"), "X-Priority", "sheddable")
	if resp.StatusCode != http.StatusServiceUnavailable || parseAPIError(t, body).Code != "capacity_exhausted" || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("sheddable: %d %s, want 503 capacity_exhausted with Retry-After", resp.StatusCode, body)
	}
	resp, body = post(t, url, userBody("x"), "X-Priority", "urgent")
	if resp.StatusCode != http.StatusBadRequest || parseAPIError(t, body).Code != "unknown_priority" {
		t.Fatalf("unknown class: %d %s", resp.StatusCode, body)
	}
	release()
	<-holder
	for range 3 {
		if r := <-results; r.status != 200 {
			t.Fatalf("a waiter got %d: %s", r.status, r.body)
		}
	}
	up.mu.Lock()
	defer up.mu.Unlock()
	if got := up.order; len(got) != 3 || got[0] != "high" || got[1] != "normal" || got[2] != "low" {
		t.Fatalf("served in the order %v, want high, normal, low", got)
	}
	g.waitIdle()
}
