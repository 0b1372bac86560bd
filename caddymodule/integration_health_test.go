package caddymodule

import (
	"net/http"
	"testing"
	"time"
)

// TestIntegrationPassiveHealth: a backend that fails max_fails times in a row
// is skipped for fail_cooldown (requests go to the other backend without
// trying it), then half-open: one probe request tries it again; one more
// failure puts it straight back in cooldown, one success restores it. The
// router's clock is driven by the test.
func TestIntegrationPassiveHealth(t *testing.T) {
	const cooldown = 2 * time.Second
	clk := useFakeClock(t)
	flaky := newUpstream(t, "flaky", 0, false)
	steady := newUpstream(t, "steady", 0, false)
	g := startGateway(t, gatewayOptions{}, `
{{url "gw"}} {
	model_router {
		pool {{.Pool}}
		strategy greedy
		max_fails 2
		fail_cooldown `+cooldown.String()+`
		backend flaky {{index .Up "flaky"}} {
			models m
			capabilities chat=1
			max_inflight 4
		}
		backend steady {{index .Up "steady"}} {
			models m
			capabilities chat=0.5
			max_inflight 4
		}
	}
}
`, map[string]string{"flaky": flaky.srv.URL, "steady": steady.srv.URL})
	url := g.url("gw") + "/v1/chat/completions"

	// request sends one request and checks who answered and whom it tried.
	request := func(step string, wantBackend string, wantFlakyTries int64) {
		t.Helper()
		before := flaky.total.Load()
		resp, body := post(t, url, chatBody("m"))
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: status %d: %s", step, resp.StatusCode, body)
		}
		if got := resp.Header.Get(backendHeader); got != wantBackend {
			t.Errorf("%s: answered by %q, want %q", step, got, wantBackend)
		}
		if got := flaky.total.Load() - before; got != wantFlakyTries {
			t.Errorf("%s: flaky tried %d times, want %d", step, got, wantFlakyTries)
		}
	}

	request("healthy", "flaky", 1)

	flaky.status.Store(http.StatusInternalServerError)
	// Each failure is retried on steady, so clients still get answers.
	request("first failure", "steady", 1)
	request("second failure", "steady", 1)
	for i := 0; i < 5; i++ {
		request("cooling down", "steady", 0)
	}
	clk.advance(cooldown - time.Millisecond)
	request("end of the cooldown", "steady", 0)

	// After the cooldown flaky is tried again; it still fails, and a single
	// failure cools it down again.
	clk.advance(time.Millisecond)
	request("half-open, still failing", "steady", 1)
	request("cooling down again", "steady", 0)
	clk.advance(cooldown - time.Millisecond)
	request("still cooling down", "steady", 0)

	// After the next cooldown it is tried and succeeds, and stays in use.
	flaky.status.Store(0)
	clk.advance(time.Millisecond)
	request("recovered", "flaky", 1)
	request("healthy again", "flaky", 1)
	g.waitIdle()
}

// TestIntegrationPassiveHealthSurvivesReload: a backend in cooldown stays in
// cooldown when the config is reloaded with an unrelated change.
func TestIntegrationPassiveHealthSurvivesReload(t *testing.T) {
	flaky := newUpstream(t, "flaky", 0, false)
	steady := newUpstream(t, "steady", 0, false)
	tmpl := func(maxBody string) string {
		return `
{{url "gw"}} {
	model_router {
		pool {{.Pool}}
		strategy greedy
		max_fails 1
		fail_cooldown 30s
		max_body ` + maxBody + `
		backend flaky {{index .Up "flaky"}} {
			models m
			capabilities chat=1
			max_inflight 4
		}
		backend steady {{index .Up "steady"}} {
			models m
			capabilities chat=0.5
			max_inflight 4
		}
	}
}
`
	}
	g := startGateway(t, gatewayOptions{admin: true}, tmpl("1MiB"), map[string]string{"flaky": flaky.srv.URL, "steady": steady.srv.URL})
	url := g.url("gw") + "/v1/chat/completions"

	flaky.status.Store(http.StatusInternalServerError)
	resp, body := post(t, url, chatBody("m")) // flaky fails once: cooldown; retried on steady
	if resp.StatusCode != http.StatusOK || resp.Header.Get(backendHeader) != "steady" {
		t.Fatalf("first request: %d from %q: %s", resp.StatusCode, resp.Header.Get(backendHeader), body)
	}
	if err := g.reload(tmpl("2MiB")); err != nil {
		t.Fatal(err)
	}
	before := flaky.total.Load()
	for i := 0; i < 3; i++ {
		resp, body := post(t, url, chatBody("m"))
		if resp.StatusCode != http.StatusOK || resp.Header.Get(backendHeader) != "steady" {
			t.Fatalf("after reload: %d from %q: %s", resp.StatusCode, resp.Header.Get(backendHeader), body)
		}
	}
	if n := flaky.total.Load() - before; n != 0 {
		t.Fatalf("the backend in cooldown was tried %d times after a reload", n)
	}
}
