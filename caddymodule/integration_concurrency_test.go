package caddymodule

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/modelrouter/modelrouter/caddymodule/sim"
)

// loadClient is an HTTP client that keeps a connection per concurrent
// client, so that a load test measures the gateway rather than dialing.
func loadClient(conns int) *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConns = conns
	tr.MaxIdleConnsPerHost = conns
	return &http.Client{Transport: tr, Timeout: time.Minute}
}

// TestIntegrationConcurrencyCap runs many clients against two small backends
// that record their peak concurrency: under every strategy the peak never
// exceeds max_inflight, and every request is served within max_wait.
func TestIntegrationConcurrencyCap(t *testing.T) {
	const (
		clients   = 64
		perClient = 3
		maxWait   = 10 * time.Second
	)
	for _, strategy := range []string{"balanced", "greedy", "least_load", "p2c", "round_robin", "latency"} {
		t.Run(strategy, func(t *testing.T) {
			a := newUpstream(t, "a", 15*time.Millisecond, false)
			b := newUpstream(t, "b", 15*time.Millisecond, false)
			g := startGateway(t, gatewayOptions{}, `
{{url "gw"}} {
	model_router {
		pool {{.Pool}}
		strategy `+strategy+`
		max_wait `+maxWait.String()+`
		max_queue 1000
		backend a {{index .Up "a"}} {
			models shared a-only
			capabilities chat=0.9
			max_inflight 2
		}
		backend b {{index .Up "b"}} {
			models shared
			capabilities chat=0.6
			max_inflight 3
		}
	}
}
`, map[string]string{"a": a.srv.URL, "b": b.srv.URL})

			client := loadClient(clients)
			url := g.url("gw") + "/v1/chat/completions"
			type sent struct {
				model string
				result
			}
			results := make([][]sent, clients)
			var wg sync.WaitGroup
			for c := range clients {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range perClient {
						model := "shared"
						if (c+i)%4 == 0 {
							model = "a-only" // a quarter can only use the smaller backend
						}
						results[c] = append(results[c], sent{model, send(context.Background(), client, url, chatBody(model))})
					}
				}()
			}
			wg.Wait()

			var took []time.Duration
			byBackend := map[string]int{}
			for _, rs := range results {
				for _, r := range rs {
					if r.err != nil || r.status != http.StatusOK {
						t.Errorf("request failed: status %d err %v: %s", r.status, r.err, r.body)
						continue
					}
					backend := r.header.Get(backendHeader)
					byBackend[backend]++
					if r.model == "a-only" && backend != "a" {
						t.Errorf("an a-only request was served by %q", backend)
					}
					took = append(took, r.took)
				}
			}
			if pa, pb := a.peak.Load(), b.peak.Load(); pa > 2 || pb > 3 {
				t.Errorf("peak concurrency a=%d (max_inflight 2), b=%d (max_inflight 3)", pa, pb)
			}
			if a.peak.Load() < 1 || b.peak.Load() < 1 {
				t.Errorf("peaks a=%d b=%d: both backends should have been used", a.peak.Load(), b.peak.Load())
			}
			if got := a.total.Load() + b.total.Load(); got != clients*perClient {
				t.Errorf("backends saw %d requests, want %d", got, clients*perClient)
			}
			if len(took) > 0 {
				slices.Sort(took)
				if worst := took[len(took)-1]; worst > maxWait+2*time.Second {
					t.Errorf("a request took %s; none may wait more than max_wait %s", worst, maxWait)
				}
				t.Logf("%s: served %v, peaks a=%d b=%d, latency p50 %s max %s",
					strategy, byBackend, a.peak.Load(), b.peak.Load(), took[len(took)/2], took[len(took)-1])
			}
			g.waitIdle()
		})
	}
}

// TestIntegrationConcurrencyNeverReachesFullSim: with max_inflight equal to
// the sim's slots, no request ever arrives at a sim whose slots are all busy,
// streaming or not.
func TestIntegrationConcurrencyNeverReachesFullSim(t *testing.T) {
	g := startGateway(t, gatewayOptions{}, `
{{url "gw"}} {
	model_router {
		pool {{.Pool}}
		max_wait 10s
		backend s1 {{url "s1"}} {
			models m
			max_inflight 2
		}
		backend s2 {{url "s2"}} {
			models m
			max_inflight 3
		}
	}
}

{{url "s1"}} {
	model_router_sim {
		name {{.Pool}}-s1
		slots 2
		ttft 10ms
		per_token 2ms
		tokens 8
	}
}

{{url "s2"}} {
	model_router_sim {
		name {{.Pool}}-s2
		slots 3
		ttft 15ms
		per_token 2ms
		tokens 8
	}
}
`, nil)
	const clients, perClient = 32, 3
	client := loadClient(clients)
	url := g.url("gw") + "/v1/chat/completions"
	var wg sync.WaitGroup
	errs := make(chan string, clients*perClient)
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perClient {
				body := chatBody("m")
				if (c+i)%2 == 0 {
					body = streamBody("m")
				}
				if r := send(context.Background(), client, url, body); r.err != nil || r.status != 200 {
					errs <- fmt.Sprintf("status %d err %v: %s", r.status, r.err, r.body)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	s1, s2 := g.simStats("s1"), g.simStats("s2")
	if s1.Requests+s2.Requests != clients*perClient {
		t.Errorf("sims saw %d requests, want %d", s1.Requests+s2.Requests, clients*perClient)
	}
	for _, st := range []sim.Stats{s1, s2} {
		if st.ReachedFull != 0 {
			t.Errorf("%d requests reached %s while all its slots were busy", st.ReachedFull, st.Name)
		}
	}
	if s1.PeakConcurrent > 2 || s2.PeakConcurrent > 3 {
		t.Errorf("peak concurrency s1=%d (max 2) s2=%d (max 3)", s1.PeakConcurrent, s2.PeakConcurrent)
	}
	t.Logf("s1 %d requests peak %d; s2 %d requests peak %d", s1.Requests, s1.PeakConcurrent, s2.Requests, s2.PeakConcurrent)
	g.waitIdle()
	for _, b := range []string{"s1", "s2"} {
		if v := inflightGauge(t, g.pool, b); v != 0 {
			t.Errorf("in-flight gauge for %s is %v after every request ended", b, v)
		}
	}
}

// TestIntegrationQueueIsFIFO: requests that wait for the same backend get it
// in the order they arrived.
func TestIntegrationQueueIsFIFO(t *testing.T) {
	const waiters = 8
	up := newUpstream(t, "one", 0, true)
	g := startGateway(t, gatewayOptions{}, `
{{url "gw"}} {
	model_router {
		pool {{.Pool}}
		max_wait 20s
		backend one {{index .Up "one"}} {
			models m
			max_inflight 1
		}
	}
}
`, map[string]string{"one": up.srv.URL})
	url := g.url("gw") + "/v1/chat/completions"
	body := func(k int) string {
		return fmt.Sprintf(`{"model":"m","user":"req-%d","messages":[{"role":"user","content":"hi"}]}`, k)
	}

	done := make(chan result, waiters+1)
	go func() { done <- send(context.Background(), http.DefaultClient, url, body(0)) }()
	eventually(t, drainTimeout, "the first request to hold the slot", func() bool { return up.cur.Load() == 1 })
	depth := metricValue(t, theMetrics().queueDepth)
	for k := 1; k <= waiters; k++ {
		go func() { done <- send(context.Background(), http.DefaultClient, url, body(k)) }()
		eventually(t, drainTimeout, fmt.Sprintf("request %d to queue", k), func() bool {
			return metricValue(t, theMetrics().queueDepth) == depth+float64(k)
		})
	}
	up.openGate()
	for range waiters + 1 {
		if r := <-done; r.err != nil || r.status != 200 {
			t.Errorf("status %d err %v: %s", r.status, r.err, r.body)
		}
	}
	bodies, _ := up.received()
	var order []string
	for _, b := range bodies {
		var v struct{ User string }
		_ = json.Unmarshal(b, &v)
		order = append(order, v.User)
	}
	for k, got := range order {
		if want := fmt.Sprintf("req-%d", k); got != want {
			t.Errorf("the backend got requests in the order %v, want req-0 … req-%d in turn", order, waiters)
			break
		}
	}
	if up.peak.Load() != 1 {
		t.Errorf("peak %d, max_inflight 1", up.peak.Load())
	}
	g.waitIdle()
}
