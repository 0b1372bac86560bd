package caddymodule

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap"

	"github.com/modelrouter/modelrouter/internal/redistest"
)

// TestAlertHysteresis: an alert fires only after its condition held for
// fire_after and resolves only after it was clear for resolve_after; a blip
// either way changes nothing.
func TestAlertHysteresis(t *testing.T) {
	e := &alertEvaluator{ops: &poolOps{pool: "p"}, states: map[alertKey]*alertState{}}
	cfg := AlertsConfig{FireAfter: caddy.Duration(3 * time.Second), ResolveAfter: caddy.Duration(3 * time.Second)}
	k := alertKey{alertCoolingDown, "a"}
	st := &alertState{}
	t0 := time.Unix(1000, 0)
	steps := []struct {
		at     time.Duration
		active bool
		want   string // "" no transition, else the new state
	}{
		{0, true, ""},
		{2 * time.Second, false, ""}, // a blip: the pending time starts over
		{3 * time.Second, true, ""},
		{5 * time.Second, true, ""},
		{6 * time.Second, true, "firing"}, // held 3s
		{7 * time.Second, false, ""},
		{8 * time.Second, true, ""}, // a blip: clear time starts over
		{9 * time.Second, false, ""},
		{11 * time.Second, false, ""},
		{12 * time.Second, false, "resolved"}, // clear 3s
		{13 * time.Second, false, ""},
	}
	for _, s := range steps {
		ev, ok := e.step(st, k, s.active, cfg, t0.Add(s.at))
		got := ""
		if ok {
			got = ev.State
			if ev.Alert != alertCoolingDown || ev.Backend != "a" || ev.Pool != "p" || !ev.At.Equal(t0.Add(s.at)) {
				t.Errorf("at %v: event %+v", s.at, ev)
			}
		}
		if got != s.want {
			t.Fatalf("at %v (active %v): transition %q, want %q", s.at, s.active, got, s.want)
		}
	}
}

// webhookReceiver is a real HTTP receiver that fails its first failFirst
// POSTs with 503, then records the events.
type webhookReceiver struct {
	srv       *httptest.Server
	posts     atomic.Int64
	failFirst int64
	mu        sync.Mutex
	events    []alertEvent
}

func newWebhookReceiver(t *testing.T, failFirst int64) *webhookReceiver {
	r := &webhookReceiver{failFirst: failFirst}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		n := r.posts.Add(1)
		body, _ := io.ReadAll(req.Body)
		if req.Method != http.MethodPost || req.Header.Get("Content-Type") != "application/json" {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		if n <= r.failFirst {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		var ev alertEvent
		if err := json.Unmarshal(body, &ev); err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		r.mu.Lock()
		r.events = append(r.events, ev)
		r.mu.Unlock()
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *webhookReceiver) received() []alertEvent {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]alertEvent(nil), r.events...)
}

// has reports whether an event of that alert, backend and state arrived.
func (r *webhookReceiver) has(alert, backend, state string) bool {
	for _, ev := range r.received() {
		if ev.Alert == alert && ev.Backend == backend && ev.State == state {
			return true
		}
	}
	return false
}

// alertGauge reads model_router_alert{pool,alert,backend}.
func alertGauge(t *testing.T, pool, alert, backend string) (float64, bool) {
	t.Helper()
	ch := make(chan prometheus.Metric, 256)
	go func() { opsCollector{}.Collect(ch); close(ch) }()
	value, found := 0.0, false
	for m := range ch {
		var out dto.Metric
		if err := m.Write(&out); err != nil {
			t.Fatal(err)
		}
		got := map[string]string{}
		for _, l := range out.GetLabel() {
			got[l.GetName()] = l.GetValue()
		}
		if got["pool"] == pool && got["alert"] == alert && got["backend"] == backend {
			value, found = out.GetGauge().GetValue(), true
		}
	}
	return value, found
}

// TestAlertBackendFailsAndRecovers: while a backend fails, its cooling-down
// and error-rate alerts fire (warn log, gauge at 1, webhook POST, delivered
// despite the receiver failing at first); once it recovers, the cooling-down
// alert resolves (gauge back to 0, webhook POST).
func TestAlertBackendFailsAndRecovers(t *testing.T) {
	hook := newWebhookReceiver(t, 2)
	a := newUpstream(t, "a", 0, false)
	a.status.Store(http.StatusInternalServerError)
	logFile := filepath.Join(t.TempDir(), "caddy.log")
	g := startGateway(t, gatewayOptions{admin: true, logFile: logFile}, `
{{url "gw"}} {
	model_router {
		pool {{.Pool}}
		max_fails 2
		fail_cooldown 300ms
		retries -1
		alert_webhook `+hook.srv.URL+`/alerts
		alerts {
			interval 20ms
			fire_after 60ms
			resolve_after 200ms
			error_rate 0.5
			min_attempts 2
		}
		backend a {{index .Up "a"}} {
			models m
			max_inflight 4
		}
	}
}
`, map[string]string{"a": a.srv.URL})
	url := g.url("gw") + "/v1/chat/completions"
	for i := 0; i < 2; i++ {
		if resp, body := post(t, url, chatBody("m")); resp.StatusCode != http.StatusInternalServerError {
			t.Fatalf("failing backend: %d %s", resp.StatusCode, body)
		}
	}
	eventually(t, 10*time.Second, "cooling-down and error-rate alerts at the webhook", func() bool {
		return hook.has(alertCoolingDown, "a", "firing") && hook.has(alertErrorRate, "a", "firing")
	})
	if v, ok := alertGauge(t, g.pool, alertCoolingDown, "a"); !ok || v != 1 {
		t.Errorf("model_router_alert{backend_cooling_down,a} = %v (present %v) while firing", v, ok)
	}
	if n := hook.posts.Load(); n < int64(len(hook.received()))+2 {
		t.Errorf("the receiver failed 2 POSTs, yet saw only %d POSTs for %d events: no retry", n, len(hook.received()))
	}
	var al struct {
		Alerts []struct{ Alert, Backend, State string } `json:"alerts"`
	}
	g.adminJSON("/model_router/alerts", &al)
	if len(al.Alerts) == 0 || al.Alerts[0].State != "firing" {
		t.Errorf("alerts endpoint does not list the firing alert first: %+v", al.Alerts)
	}

	// Recovery: the backend answers again; the next probe closes the
	// breaker, and the alert resolves after resolve_after.
	a.status.Store(0)
	eventually(t, 10*time.Second, "a probe succeeding", func() bool {
		resp, _ := post(t, url, chatBody("m"))
		return resp.StatusCode == http.StatusOK
	})
	eventually(t, 10*time.Second, "the cooling-down alert resolved at the webhook", func() bool {
		return hook.has(alertCoolingDown, "a", "resolved")
	})
	if v, _ := alertGauge(t, g.pool, alertCoolingDown, "a"); v != 0 {
		t.Errorf("model_router_alert{backend_cooling_down,a} = %v after resolving", v)
	}
	// Events of one alert arrive in order: firing before resolved.
	var states []string
	for _, ev := range hook.received() {
		if ev.Alert == alertCoolingDown {
			states = append(states, ev.State)
			if ev.Pool != g.pool || ev.Message == "" || ev.At.IsZero() {
				t.Errorf("webhook event: %+v", ev)
			}
		}
	}
	if len(states) < 2 || states[0] != "firing" || states[len(states)-1] != "resolved" {
		t.Errorf("cooling-down transitions at the webhook: %v", states)
	}
	logs, _ := os.ReadFile(logFile)
	if !strings.Contains(string(logs), `"msg":"alert firing"`) || !strings.Contains(string(logs), `"alert":"backend_cooling_down"`) {
		t.Errorf("no warn line for the firing alert in the logs:\n%s", logs)
	}
}

// TestAlertQueueAndCapacity: a request waiting longer than queue_wait fires
// queue_wait; one refused for capacity fires capacity_rejected.
func TestAlertQueueAndCapacity(t *testing.T) {
	hook := newWebhookReceiver(t, 0)
	a := newUpstream(t, "a", 0, true)
	g := startGateway(t, gatewayOptions{admin: true}, `
{{url "gw"}} {
	model_router {
		pool {{.Pool}}
		max_wait 3s
		alert_webhook `+hook.srv.URL+`
		alerts {
			interval 20ms
			fire_after 40ms
			queue_wait 200ms
		}
		backend a {{index .Up "a"}} {
			models m
			max_inflight 1
		}
	}
}
`, map[string]string{"a": a.srv.URL})
	url := g.url("gw") + "/v1/chat/completions"
	first := make(chan result, 1)
	go func() { first <- send(context.Background(), http.DefaultClient, url, chatBody("m")) }()
	g.waitHeld("a", 1)
	second := make(chan result, 1)
	go func() { second <- send(context.Background(), http.DefaultClient, url, chatBody("m")) }()
	var q struct {
		Depth  int     `json:"depth"`
		Oldest float64 `json:"oldest_wait_seconds"`
	}
	eventually(t, 10*time.Second, "the queue showing one request waiting over 200ms", func() bool {
		g.adminJSON("/model_router/queue", &q)
		return q.Depth == 1 && q.Oldest >= 0.2
	})
	eventually(t, 10*time.Second, "queue_wait firing", func() bool { return hook.has(alertQueueWait, "", "firing") })
	if r := <-second; r.status != http.StatusServiceUnavailable {
		t.Fatalf("the waiting request: %d %s", r.status, r.body)
	}
	eventually(t, 10*time.Second, "capacity_rejected firing", func() bool { return hook.has(alertCapacity, "", "firing") })
	var dec struct {
		Decisions []struct{ Outcome, Chosen string } `json:"decisions"`
	}
	g.adminJSON("/model_router/decisions?limit=1", &dec)
	if len(dec.Decisions) != 1 || dec.Decisions[0].Outcome != "capacity_exhausted" || dec.Decisions[0].Chosen != "" {
		t.Errorf("the refusal in the decisions log: %+v", dec.Decisions)
	}
	a.openGate()
	<-first
}

// TestAlertRedisDegraded: the pool's Redis going away fires redis_degraded;
// its return resolves it; readiness follows the outage mode.
func TestAlertRedisDegraded(t *testing.T) {
	srv := redistest.Start(t)
	hook := newWebhookReceiver(t, 0)
	a := newUpstream(t, "a", 0, false)
	g := startGateway(t, gatewayOptions{admin: true}, `
{{url "gw"}} {
	model_router {
		pool {{.Pool}}
		redis `+srv.URL()+` {
			lease 1s
			heartbeat 100ms
			timeout 50ms
		}
		alert_webhook `+hook.srv.URL+`
		alerts {
			interval 20ms
			fire_after 40ms
			resolve_after 100ms
		}
		backend a {{index .Up "a"}} {
			models m
			max_inflight 2
		}
	}
}
`, map[string]string{"a": a.srv.URL})
	var ready map[string]any
	g.adminJSON("/model_router/readyz", &ready)
	if ready["status"] != "ready" {
		t.Fatalf("readyz with Redis up: %v", ready)
	}
	srv.Stop()
	post(t, g.url("gw")+"/v1/chat/completions", chatBody("m")) // notices the outage
	eventually(t, 10*time.Second, "redis_degraded firing", func() bool { return hook.has(alertRedisDegraded, "", "firing") })
	// fail_local still admits: ready.
	g.adminJSON("/model_router/readyz", &ready)
	if ready["status"] != "ready" {
		t.Errorf("readyz in fail_local during an outage: %v", ready)
	}
	srv.Restart()
	eventually(t, 20*time.Second, "redis_degraded resolved", func() bool { return hook.has(alertRedisDegraded, "", "resolved") })
}

// TestWebhookBoundedQueue: a receiver that never answers in time does not
// block enqueueing; transitions beyond the queue are dropped and counted.
func TestWebhookBoundedQueue(t *testing.T) {
	w := newWebhook(zap.NewNop())
	for i := 0; i < webhookQueue+10; i++ {
		w.enqueue("http://127.0.0.1:1/", alertEvent{Alert: "x"})
	}
	if d := w.dropped.Load(); d != 10 {
		t.Errorf("dropped %d, want 10", d)
	}
}

// TestAlertsConfigValidateJSON: a JSON config gets the Caddyfile's rules.
func TestAlertsConfigValidateJSON(t *testing.T) {
	base := func() *Handler {
		return &Handler{Strategy: "balanced", FullStatus: 503, Pool: "p",
			Backends: []BackendConfig{{Name: "a", URL: "http://127.0.0.1:1", Models: []ModelName{{Public: "m"}}, MaxInflight: 1}}}
	}
	if err := base().validate(); err != nil {
		t.Fatalf("the base config: %v", err)
	}
	for _, tc := range []struct {
		name string
		mod  func(h *Handler)
		want string
	}{
		{"negative interval", func(h *Handler) { h.Alerts = &AlertsConfig{Interval: -1} }, "must not be negative"},
		{"error rate over 1", func(h *Handler) { h.Alerts = &AlertsConfig{ErrorRate: 2} }, "share in (0,1]"},
		{"negative min_attempts", func(h *Handler) { h.Alerts = &AlertsConfig{MinAttempts: -1} }, "must not be negative"},
		{"webhook not http", func(h *Handler) { h.AlertWebhook = "file:///etc/passwd" }, "http:// or https://"},
	} {
		h := base()
		tc.mod(h)
		if err := h.validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error with %q", tc.name, err, tc.want)
		}
	}
}
