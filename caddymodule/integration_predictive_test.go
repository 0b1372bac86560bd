package caddymodule

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modelrouter/modelrouter/caddymodule/sim"
	"github.com/modelrouter/modelrouter/internal/redistest"
)

// predictiveCaddyfile is a fast backend (2 slots, 2ms per token) and a slow
// one (8 slots, 12ms per token) serving the same model, with speed hints and
// no exploration, so that decisions follow from the predictions alone.
const predictiveCaddyfile = `
{{url "gw"}} {
	model_router {
		pool {{.Pool}}
		strategy balanced
		explore 0
		max_wait 30s
		explain_header X-Explain-Please
		backend fast {{url "fast"}} {
			models m
			capabilities chat=1
			max_inflight 2
			ttft 10ms
			tpot 2ms
		}
		backend slow {{url "slow"}} {
			models m
			capabilities chat=1
			max_inflight 8
			ttft 40ms
			tpot 12ms
		}
	}
}

{{url "fast"}} {
	model_router_sim {
		name {{.Pool}}-fast
		slots 2
		ttft 10ms
		per_token 2ms
		tokens 1024
	}
}

{{url "slow"}} {
	model_router_sim {
		name {{.Pool}}-slow
		slots 8
		ttft 40ms
		per_token 12ms
		tokens 1024
	}
}
`

func sized(tokens int) string {
	return fmt.Sprintf(`{"model":"m","max_tokens":%d,"messages":[{"role":"user","content":"the secret prompt"}]}`, tokens)
}

// TestIntegrationLongAnswersGoToTheFastBackend: with both backends free but
// one of the fast backend's two slots taken, a long answer goes to the fast
// backend, a short one fills the slow backend (a slow slot costs it little);
// the decision is explained on request, without the prompt, and names the
// backend a long answer left out of its attempt.
func TestIntegrationLongAnswersGoToTheFastBackend(t *testing.T) {
	g := startGateway(t, gatewayOptions{}, predictiveCaddyfile, nil)
	url := g.url("gw") + "/v1/chat/completions"
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	held := make(chan result, 1)
	go func() { held <- send(ctx, http.DefaultClient, url, sized(256), sim.FaultHeader, sim.FaultHang) }()
	g.waitHeld("fast", 1)

	for _, tt := range []struct {
		tokens int
		want   string
	}{{256, "fast"}, {8, "slow"}, {200, "fast"}, {4, "slow"}} {
		resp, body := post(t, url, sized(tt.tokens), "X-Explain-Please", "1")
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%d tokens: status %d: %s", tt.tokens, resp.StatusCode, body)
		}
		if got := resp.Header.Get(backendHeader); got != tt.want {
			t.Errorf("%d tokens went to %s, want %s (%s)", tt.tokens, got, tt.want, resp.Header.Get(explainResponseHeader))
		}
		ex := resp.Header.Get(explainResponseHeader)
		for _, want := range []string{"strategy=balanced", "chosen=" + tt.want, "fast score=", "slow score=", "total="} {
			if !strings.Contains(ex, want) {
				t.Errorf("%d tokens: explanation %q lacks %q", tt.tokens, ex, want)
			}
		}
		if strings.Contains(ex, "secret") {
			t.Errorf("the explanation holds request content: %q", ex)
		}
		// A long answer holds out for the fast backend: the slow one, though
		// it has room, is left out of the attempt (taken only if the fast
		// one is refused for longer than the request's patience).
		if leftOut := strings.Contains(ex, "slow score=") && strings.Contains(ex, " left_out"); leftOut != (tt.want == "fast") {
			t.Errorf("%d tokens: slow backend left out = %v: %q", tt.tokens, leftOut, ex)
		}
	}
	// No header asked for: no explanation.
	if resp, _ := post(t, url, sized(8)); resp.Header.Get(explainResponseHeader) != "" {
		t.Error("explained without being asked")
	}
	cancel()
	<-held
	g.waitIdle()
}

// holdFast fills the fast backend's two slots with long requests that hang
// until the returned release is called (it waits for them to end; the test's
// cleanup calls it too).
func holdFast(t *testing.T, g *gateway, url string) (release func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	holders := make(chan result, 2)
	for range 2 {
		go func() { holders <- send(ctx, http.DefaultClient, url, sized(256), sim.FaultHeader, sim.FaultHang) }()
	}
	g.waitHeld("fast", 2)
	var once sync.Once
	release = func() {
		once.Do(func() {
			cancel()
			for range 2 {
				<-holders
			}
		})
	}
	t.Cleanup(release)
	return release
}

// TestIntegrationLongAnswerWaitsForTheFastBackend: with the fast backend
// full, a long answer waits for a fast slot (a second of waiting at most
// beats three on the slow backend) instead of taking a free slow one, while a
// short answer takes the slow backend at once.
func TestIntegrationLongAnswerWaitsForTheFastBackend(t *testing.T) {
	g := startGateway(t, gatewayOptions{}, predictiveCaddyfile, nil)
	url := g.url("gw") + "/v1/chat/completions"
	release := holdFast(t, g, url) // both fast slots, until we say

	short := make(chan result, 1)
	go func() { short <- send(context.Background(), http.DefaultClient, url, sized(8)) }()
	if r := <-short; r.status != 200 || r.header.Get(backendHeader) != "slow" {
		t.Fatalf("short answer: %d from %q, want the free slow backend", r.status, r.header.Get(backendHeader))
	}

	depth := metricValue(t, theMetrics().queueDepth)
	long := make(chan result, 1)
	go func() { long <- send(context.Background(), http.DefaultClient, url, sized(256)) }()
	eventually(t, drainTimeout, "the long request to wait", func() bool { return metricValue(t, theMetrics().queueDepth) == depth+1 })
	if n := g.simStats("slow").Requests; n != 1 {
		t.Fatalf("the slow backend got %d requests; the long one must wait for the fast backend", n)
	}
	release() // the fast slots free up
	if r := <-long; r.status != 200 || r.header.Get(backendHeader) != "fast" {
		t.Fatalf("long answer: %d from %q, want the fast backend", r.status, r.header.Get(backendHeader))
	}
	g.waitIdle()
}

// TestIntegrationSheddableDoesNotWaitForABetterBackend: with the fast
// backend full, a long answer of a class that does not wait takes the slow
// backend's free slot instead of waiting for the fast one: it was refused
// with 503 capacity_exhausted while 8 slow slots were free.
func TestIntegrationSheddableDoesNotWaitForABetterBackend(t *testing.T) {
	file := strings.Replace(predictiveCaddyfile, "explore 0", "explore 0\n\t\tpriorities normal sheddable\n\t\tpriority_header X-Priority", 1)
	g := startGateway(t, gatewayOptions{}, file, nil)
	url := g.url("gw") + "/v1/chat/completions"
	release := holdFast(t, g, url)
	r := send(context.Background(), http.DefaultClient, url, sized(256), "X-Priority", "sheddable")
	if r.status != 200 || r.header.Get(backendHeader) != "slow" {
		t.Errorf("sheddable long answer with the slow backend free: %d from %q: %s", r.status, r.header.Get(backendHeader), r.body)
	}
	release()
	g.waitIdle()
}

// TestIntegrationFleetGrantExplanation: with Redis, a long answer that waits
// in the fleet's line for the fast backend and is handed a slot there is
// explained with fast chosen, never as "left out" of its own decision.
func TestIntegrationFleetGrantExplanation(t *testing.T) {
	file := strings.Replace(predictiveCaddyfile, "pool {{.Pool}}", "pool {{.Pool}}\n\t\tredis "+redistest.Start(t).URL(), 1)
	g := startGateway(t, gatewayOptions{}, file, nil)
	url := g.url("gw") + "/v1/chat/completions"
	release := holdFast(t, g, url)
	depth := metricValue(t, theMetrics().queueDepth)
	long := make(chan result, 1)
	go func() {
		long <- send(context.Background(), http.DefaultClient, url, sized(256), "X-Explain-Please", "1")
	}()
	eventually(t, drainTimeout, "the long request to wait", func() bool { return metricValue(t, theMetrics().queueDepth) == depth+1 })
	release()
	r := <-long
	ex := r.header.Get(explainResponseHeader)
	if r.status != 200 || r.header.Get(backendHeader) != "fast" || !strings.Contains(ex, "chosen=fast") || strings.Contains(ex, "fast left_out") {
		t.Errorf("%d from %q, explained %q; want fast, chosen and not left out", r.status, r.header.Get(backendHeader), ex)
	}
	g.waitIdle()
}

// TestIntegrationPatienceRunsOut: a request waiting for a better backend that
// stays full takes the free backend once waiting no longer pays, well before
// max_wait.
func TestIntegrationPatienceRunsOut(t *testing.T) {
	g := startGateway(t, gatewayOptions{}, predictiveCaddyfile, nil)
	url := g.url("gw") + "/v1/chat/completions"
	release := holdFast(t, g, url)
	// The fast backend never frees: the long request ends up on the slow one,
	// not with a 503 after max_wait (30s).
	r := send(context.Background(), http.DefaultClient, url, sized(256))
	if r.status != 200 || r.header.Get(backendHeader) != "slow" {
		t.Fatalf("status %d from %q, want 200 from the slow backend", r.status, r.header.Get(backendHeader))
	}
	release()
	g.waitIdle()
}

// TestIntegrationLearnsFromSuccesses: the router's latency model comes from
// what it observes: after serving answers of known length, the fitted time
// per output token is the sim's, not the (wrong) hint it started from.
func TestIntegrationLearnsFromSuccesses(t *testing.T) {
	g := startGateway(t, gatewayOptions{}, `
{{url "gw"}} {
	model_router {
		pool {{.Pool}}
		backend only {{url "only"}} {
			models m
			max_inflight 4
			tpot 40ms
		}
	}
}

{{url "only"}} {
	model_router_sim {
		name {{.Pool}}-only
		slots 4
		ttft 10ms
		per_token 5ms
		tokens 1024
	}
}
`, nil)
	url := g.url("gw") + "/v1/chat/completions"
	if got := g.pooled().learner.Backend("only", "m").Perf.TPOT; got != 40*time.Millisecond {
		t.Fatalf("before any request: TPOT %v, want the hint", got)
	}
	for i := range 20 {
		body := sized(16 + 4*i)
		if i%2 == 0 {
			body = strings.Replace(body, `"max_tokens"`, `"stream":true,"max_tokens"`, 1)
		}
		if resp, got := post(t, url, body); resp.StatusCode != 200 {
			t.Fatalf("request %d: %d %s", i, resp.StatusCode, got)
		}
	}
	lb := g.pooled().learner.Backend("only", "m")
	if lb.Perf.Samples != 20 || lb.Attempts != 20 || lb.Errors != 0 {
		t.Fatalf("learned from %d of %d attempts (%d errors), want 20", lb.Perf.Samples, lb.Attempts, lb.Errors)
	}
	// The sim spends 5ms per token (timers on a loaded machine only add);
	// the hint said 40ms.
	if tpot := lb.Perf.TPOT; tpot < 5*time.Millisecond || tpot > 20*time.Millisecond {
		t.Errorf("learned TPOT %v for a sim at 5ms per token, hinted 40ms", tpot)
	}
	if n := g.pooled().learner.MeanOutput("m"); n < 16 || n > 92 {
		t.Errorf("mean output %d, want within the answers' 16..92", n)
	}
}
