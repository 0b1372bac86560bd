package caddymodule

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// reloadCaddyfile is the config under load; the versions differ in strategy,
// wait and in a model only the later one serves. The pool and the backends'
// capacities stay: in-flight requests of the old config must count against the
// new config's caps.
func reloadCaddyfile(version int) string {
	strategy, maxWait, extra := "balanced", "10s", ""
	if version%2 == 1 {
		strategy, maxWait, extra = "least_load", "9s", " v"+fmt.Sprint(version)
	}
	return `
{{url "gw"}} {
	model_router {
		pool {{.Pool}}
		strategy ` + strategy + `
		max_wait ` + maxWait + `
		max_queue 1000
		backend a {{index .Up "a"}} {
			models m` + extra + `
			capabilities chat=0.9
			max_inflight 3
		}
		backend b {{index .Up "b"}} {
			models m
			capabilities chat=0.6
			max_inflight 2
		}
	}
}
`
}

// TestIntegrationReloadUnderLoad reloads the config through the admin API
// while many requests run and wait: every request ends with 200 or a clean
// OpenAI error, the backends never see more than max_inflight at once across
// the reloads, and every slot is released at the end.
func TestIntegrationReloadUnderLoad(t *testing.T) {
	const clients = 40
	a := newUpstream(t, "a", 20*time.Millisecond, false)
	b := newUpstream(t, "b", 20*time.Millisecond, false)
	g := startGateway(t, gatewayOptions{admin: true, gracePeriod: 20 * time.Second}, reloadCaddyfile(0),
		map[string]string{"a": a.srv.URL, "b": b.srv.URL})
	url := g.url("gw") + "/v1/chat/completions"

	// A fresh connection per request: an idle keep-alive connection that the
	// old server closes at a reload would fail a POST in the client's own
	// transport, which says nothing about the gateway.
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.DisableKeepAlives = true
	client := &http.Client{Transport: tr, Timeout: time.Minute}

	// At the moment of a reload Go's http.Server drops a request it has read
	// on a connection the old server accepted but had not started serving
	// (the server shuts down instead of calling the handler): the client sees
	// EOF, and the gateway never saw the request. Clients retry those, as the
	// OpenAI clients do. Each request carries an id so that a retry of a
	// request that did reach a backend — a connection broken by the gateway —
	// shows up as a duplicate and fails the test.
	var stop atomic.Bool
	var ok, clean, redials, seq atomic.Int64
	failures := make(chan string, 100)
	var wg sync.WaitGroup
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				body := fmt.Sprintf(`{"model":"m","user":"r-%d","messages":[{"role":"user","content":"hi"}]}`, seq.Add(1))
				r := send(context.Background(), client, url, body)
				for try := 0; try < 3 && r.err != nil && r.status == 0; try++ {
					redials.Add(1)
					r = send(context.Background(), client, url, body)
				}
				switch {
				case r.err == nil && r.status == http.StatusOK:
					ok.Add(1)
				case r.err == nil && (r.status == 503 || r.status == 429) && isAPIError(r.body):
					clean.Add(1)
				default:
					select {
					case failures <- fmt.Sprintf("status %d err %v: %s", r.status, r.err, r.body):
					default:
					}
				}
			}
		}()
	}

	// Reload three times while the backends are full and requests wait.
	for v := 1; v <= 3; v++ {
		eventually(t, drainTimeout, fmt.Sprintf("requests in flight before reload %d", v), func() bool {
			snap := g.inflight()
			return snap["a"]+snap["b"] > 0
		})
		if err := g.reload(reloadCaddyfile(v)); err != nil {
			stop.Store(true)
			wg.Wait()
			t.Fatalf("reload %d: %v", v, err)
		}
	}
	// Keep the load on until requests are answered under the last config.
	answered := ok.Load()
	eventually(t, drainTimeout, "answers after the last reload", func() bool { return ok.Load() >= answered+clients })
	stop.Store(true)
	wg.Wait()
	close(failures)
	for f := range failures {
		t.Errorf("request failed across a reload: %s", f)
	}

	t.Logf("%d answered, %d refused cleanly, %d resent after a dropped connection; peaks a=%d b=%d",
		ok.Load(), clean.Load(), redials.Load(), a.peak.Load(), b.peak.Load())
	seen := map[string]int{}
	for _, u := range []*upstream{a, b} {
		bodies, _ := u.received()
		for _, body := range bodies {
			var v struct{ User string }
			_ = json.Unmarshal(body, &v)
			seen[v.User]++
		}
	}
	for id, n := range seen {
		if n > 1 {
			t.Errorf("request %s reached the backends %d times: its connection broke after the gateway proxied it", id, n)
		}
	}
	if ok.Load() < clients {
		t.Errorf("only %d requests succeeded", ok.Load())
	}
	if pa, pb := a.peak.Load(), b.peak.Load(); pa > 3 || pb > 2 {
		t.Errorf("peak concurrency across reloads a=%d (max_inflight 3), b=%d (max_inflight 2)", pa, pb)
	}
	g.waitIdle()

	// The last config is the one running.
	resp, body := get(t, g.url("gw")+"/v1/models")
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"v3"`) {
		t.Errorf("models after the reloads: %d %s; want v3 listed", resp.StatusCode, body)
	}
	// Old configs gave their reference to the shared store back.
	eventually(t, drainTimeout, "one reference to the pool's store", func() bool {
		n, _ := stores.References("memory:" + g.pool)
		return n == 1
	})
}

func isAPIError(body []byte) bool {
	var e struct {
		Error *struct {
			Message string `json:"message"`
			Code    string `json:"code"`
		} `json:"error"`
	}
	return json.Unmarshal(body, &e) == nil && e.Error != nil && e.Error.Message != "" && e.Error.Code != ""
}
