package caddymodule

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// adminCall sends one request to the gateway's admin API and returns the
// status and body.
func (g *gateway) adminCall(method, path, body string) (int, http.Header, []byte) {
	g.t.Helper()
	req, err := http.NewRequest(method, g.admin+path, strings.NewReader(body))
	if err != nil {
		g.t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, b := do(g.t, req)
	return resp.StatusCode, resp.Header, b
}

// adminJSON GETs path from the admin API, expects 200 and decodes into v.
func (g *gateway) adminJSON(path string, v any) {
	g.t.Helper()
	status, _, body := g.adminCall(http.MethodGet, path, "")
	if status != http.StatusOK {
		g.t.Fatalf("GET %s: %d: %s", path, status, body)
	}
	if err := json.Unmarshal(body, v); err != nil {
		g.t.Fatalf("GET %s: not JSON: %v: %s", path, err, body)
	}
}

// adminBackends is the part of GET /model_router/backends the tests read.
type adminBackends struct {
	Pool      string `json:"pool"`
	Strategy  string `json:"strategy"`
	LoadState string `json:"load_state"`
	Backends  []struct {
		Name           string  `json:"name"`
		Inflight       int     `json:"inflight"`
		Capacity       int     `json:"capacity"`
		ConfiguredCap  int     `json:"configured_capacity"`
		Utilization    float64 `json:"utilization"`
		Health         string  `json:"health"`
		Drained        bool    `json:"drained"`
		Requests1m     int     `json:"requests_1m"`
		Errors1m       int     `json:"errors_1m"`
		ErrorRate1m    float64 `json:"error_rate_1m"`
		LatencySamples int     `json:"latency_samples"`
		Latency        struct {
			P50, P95, P99 float64
		} `json:"latency_seconds"`
		Score struct {
			Weight       float64            `json:"weight"`
			Capabilities map[string]float64 `json:"capabilities"`
			Load         float64            `json:"load"`
			Feedback     float64            `json:"feedback"`
			LastScore    *float64           `json:"last_score"`
		} `json:"score"`
		Override *struct {
			Drained      bool               `json:"drained"`
			Weight       *float64           `json:"weight"`
			Capabilities map[string]float64 `json:"capabilities"`
			MaxInflight  *int               `json:"max_inflight"`
		} `json:"override"`
	} `json:"backends"`
}

func (g *gateway) backendsView() adminBackends {
	g.t.Helper()
	var v adminBackends
	g.adminJSON("/model_router/backends", &v)
	return v
}

const adminTwoBackends = `
{{url "gw"}} {
	model_router {
		pool {{.Pool}}
		strategy least_load
		max_wait 5s
		backend a {{index .Up "a"}} {
			models m only-a
			capabilities chat=0.5
			max_inflight 4
		}
		backend b {{index .Up "b"}} {
			models m only-b
			capabilities chat=0.5
			max_inflight 4
		}
	}
}
`

// TestAdminBackendsView: the backends endpoint reports every backend's
// load, capacity, utilisation, health, traffic over the last minute,
// latency percentiles and score components, from the router's own state.
func TestAdminBackendsView(t *testing.T) {
	a := newUpstream(t, "a", 20*time.Millisecond, false)
	b := newUpstream(t, "b", 0, true)
	g := startGateway(t, gatewayOptions{admin: true}, adminTwoBackends, map[string]string{"a": a.srv.URL, "b": b.srv.URL})
	url := g.url("gw") + "/v1/chat/completions"

	// One request held on b: it shows in flight, with its utilisation.
	held := make(chan result, 1)
	go func() { held <- send(context.Background(), http.DefaultClient, url, chatBody("only-b")) }()
	g.waitHeld("b", 1)
	for i := 0; i < 5; i++ {
		// least_load sends these to a, the idle one.
		if resp, body := post(t, url, chatBody("m")); resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d: %s", resp.StatusCode, body)
		}
	}
	v := g.backendsView()
	if v.Pool != g.pool || v.Strategy != "least_load" || v.LoadState != "memory" || len(v.Backends) != 2 {
		t.Fatalf("pool view: %+v", v)
	}
	va, vb := v.Backends[0], v.Backends[1]
	if va.Name != "a" || vb.Name != "b" {
		t.Fatalf("backends out of config order: %s, %s", va.Name, vb.Name)
	}
	if vb.Inflight != 1 || vb.Capacity != 4 || vb.Utilization != 0.25 || vb.Score.Load != 0.25 {
		t.Errorf("b with one request held: inflight %d capacity %d utilisation %v load %v", vb.Inflight, vb.Capacity, vb.Utilization, vb.Score.Load)
	}
	if va.Requests1m != 5 || va.Errors1m != 0 || va.LatencySamples != 5 {
		t.Errorf("a served 5: requests_1m %d errors_1m %d samples %d", va.Requests1m, va.Errors1m, va.LatencySamples)
	}
	if va.Latency.P50 < 0.02 || va.Latency.P99 < va.Latency.P50 {
		t.Errorf("a's latency (each request took at least 20ms): %+v", va.Latency)
	}
	if va.Health != "ok" || va.Drained || va.Score.Weight != 1 || va.Score.Capabilities["chat"] != 0.5 || va.Score.Feedback != 1 {
		t.Errorf("a's state and score components: %+v", va)
	}
	if va.Score.LastScore == nil {
		t.Error("a has no score from the decisions that ranked it")
	}
	b.openGate()
	if r := <-held; r.err != nil || r.status != http.StatusOK {
		t.Fatalf("held request: %v %d", r.err, r.status)
	}

	// One backend alone, and an unknown one.
	var one struct {
		Name     string `json:"name"`
		Inflight int    `json:"inflight"`
	}
	g.adminJSON("/model_router/backends/a", &one)
	if one.Name != "a" {
		t.Errorf("GET backends/a: %+v", one)
	}
	status, _, body := g.adminCall(http.MethodGet, "/model_router/backends/zz", "")
	if e := parseAPIError(t, body); status != http.StatusNotFound || e.Code != "backend_not_found" {
		t.Errorf("unknown backend: %d %+v", status, e)
	}
}

// TestAdminDrain: a drained backend gets no new request while its requests
// in flight finish; undrain brings it back. The drain survives a reload.
func TestAdminDrain(t *testing.T) {
	a := newUpstream(t, "a", 0, true)
	b := newUpstream(t, "b", 0, false)
	up := map[string]string{"a": a.srv.URL, "b": b.srv.URL}
	g := startGateway(t, gatewayOptions{admin: true}, adminTwoBackends, up)
	url := g.url("gw") + "/v1/chat/completions"

	held := make(chan result, 1)
	go func() { held <- send(context.Background(), http.DefaultClient, url, chatBody("only-a")) }()
	g.waitHeld("a", 1)
	// The slot is taken before the request reaches a: count a's requests
	// only once it has.
	eventually(t, 10*time.Second, "the held request to reach a", func() bool { return a.cur.Load() == 1 })

	status, _, body := g.adminCall(http.MethodPost, "/model_router/backends/a/drain", "")
	if status != http.StatusOK {
		t.Fatalf("drain: %d: %s", status, body)
	}
	var drained struct {
		Health  string `json:"health"`
		Drained bool   `json:"drained"`
	}
	if err := json.Unmarshal(body, &drained); err != nil || !drained.Drained || drained.Health != "draining" {
		t.Fatalf("drain answer: %v %s", err, body)
	}
	before := a.total.Load()
	for i := 0; i < 8; i++ {
		resp, body := post(t, url, chatBody("m"))
		if resp.StatusCode != http.StatusOK || resp.Header.Get(backendHeader) != "b" {
			t.Fatalf("request %d while a drains: %d from %q: %s", i, resp.StatusCode, resp.Header.Get(backendHeader), body)
		}
	}
	if n := a.total.Load(); n != before {
		t.Fatalf("a got %d new requests while drained", n-before)
	}
	// The request a held when the drain began finishes normally.
	a.openGate()
	if r := <-held; r.err != nil || r.status != http.StatusOK || r.header.Get(backendHeader) != "a" {
		t.Fatalf("in-flight request on the drained backend: %v %d %q", r.err, r.status, r.header.Get(backendHeader))
	}

	// A reload keeps the drain (it is in the pool's store, by backend name).
	if err := g.reload(adminTwoBackends); err != nil {
		t.Fatal(err)
	}
	if v := g.backendsView(); !v.Backends[0].Drained {
		t.Fatal("the drain did not survive a reload")
	}
	resp, _ := post(t, url, chatBody("m"))
	if resp.Header.Get(backendHeader) != "b" {
		t.Fatalf("after the reload a drained a still got a request")
	}

	if status, _, body := g.adminCall(http.MethodPost, "/model_router/backends/a/undrain", ""); status != http.StatusOK {
		t.Fatalf("undrain: %d: %s", status, body)
	}
	eventually(t, 5*time.Second, "a served again after undrain", func() bool {
		resp, _ := post(t, url, chatBody("m"))
		return resp.Header.Get(backendHeader) == "a"
	})
	if v := g.backendsView(); v.Backends[0].Drained || v.Backends[0].Override != nil {
		t.Errorf("after undrain: drained %v override %+v", v.Backends[0].Drained, v.Backends[0].Override)
	}
}

// TestAdminOverrides: PATCH is validated like the configuration; a valid
// one applies at once (max_inflight bounds the backend, weight and
// capabilities show in the score components), and DELETE clears it.
func TestAdminOverrides(t *testing.T) {
	a := newUpstream(t, "a", 0, true)
	b := newUpstream(t, "b", 0, false)
	g := startGateway(t, gatewayOptions{admin: true}, adminTwoBackends, map[string]string{"a": a.srv.URL, "b": b.srv.URL})
	url := g.url("gw") + "/v1/chat/completions"
	path := "/model_router/backends/a"

	bad := []struct{ name, body, want string }{
		{"not JSON", `{weight`, "JSON object"},
		{"not an object", `[1]`, "JSON object"},
		{"two objects", `{"weight":1} {}`, "one JSON object"},
		{"empty", `{}`, "nothing to change"},
		{"unknown field", `{"weigth":2}`, `unknown field "weigth"`},
		{"weight zero", `{"weight":0}`, "greater than 0"},
		{"weight negative", `{"weight":-1}`, "greater than 0"},
		{"weight a string", `{"weight":"2"}`, "must be a number"},
		{"score over 1", `{"capabilities":{"chat":1.5}}`, "must be a number in [0,1]"},
		{"score negative", `{"capabilities":{"chat":-0.1}}`, "must be a number in [0,1]"},
		{"bad capability name", `{"capabilities":{"a b":0.5}}`, "capability name"},
		{"capability twice", `{"capabilities":{"Chat":0.5,"chat":0.6}}`, "listed twice"},
		{"no capability", `{"capabilities":{}}`, "at least one"},
		{"max_inflight zero", `{"max_inflight":0}`, "at least 1"},
		{"max_inflight fraction", `{"max_inflight":1.5}`, "whole number"},
		{"max_inflight huge", `{"max_inflight":1e12}`, "whole number"},
	}
	for _, tc := range bad {
		status, _, body := g.adminCall(http.MethodPatch, path, tc.body)
		e := parseAPIError(t, body)
		if status != http.StatusBadRequest || e.Code != "invalid_override" || !strings.Contains(e.Message, tc.want) {
			t.Errorf("%s: %d %+v, want 400 invalid_override with %q", tc.name, status, e, tc.want)
		}
	}
	if v := g.backendsView(); v.Backends[0].Override != nil {
		t.Fatalf("a rejected PATCH left an override: %+v", v.Backends[0].Override)
	}
	status, _, body := g.adminCall(http.MethodPatch, "/model_router/backends/nope", `{"weight":2}`)
	if e := parseAPIError(t, body); status != http.StatusNotFound || e.Code != "backend_not_found" {
		t.Errorf("PATCH of an unknown backend: %d %+v", status, e)
	}
	status, _, body = g.adminCall(http.MethodPatch, path, `{"weight":`+strings.Repeat(" ", 70<<10)+`2}`)
	if e := parseAPIError(t, body); status != http.StatusRequestEntityTooLarge {
		t.Errorf("oversized PATCH: %d %+v", status, e)
	}

	status, _, body = g.adminCall(http.MethodPatch, path, `{"weight":2.5,"capabilities":{"Coding":0.9},"max_inflight":1}`)
	if status != http.StatusOK {
		t.Fatalf("valid PATCH: %d: %s", status, body)
	}
	v := g.backendsView()
	va := v.Backends[0]
	if va.Capacity != 1 || va.ConfiguredCap != 4 || va.Score.Weight != 2.5 ||
		va.Score.Capabilities["coding"] != 0.9 || va.Score.Capabilities["chat"] != 0.5 {
		t.Errorf("after PATCH: capacity %d (configured %d) weight %v capabilities %v", va.Capacity, va.ConfiguredCap, va.Score.Weight, va.Score.Capabilities)
	}
	if o := va.Override; o == nil || o.Weight == nil || *o.Weight != 2.5 || o.MaxInflight == nil || *o.MaxInflight != 1 || o.Drained {
		t.Errorf("override shown: %+v", o)
	}

	// max_inflight 1 bounds a at once: with one request held on it, the
	// others go to b (least_load would otherwise share them).
	held := make(chan result, 1)
	go func() {
		held <- send(context.Background(), http.DefaultClient, url, chatBody("only-a"))
	}()
	eventually(t, 5*time.Second, "one request on a", func() bool { return a.cur.Load() == 1 })
	var wg sync.WaitGroup
	results := make(chan result, 6)
	for i := 0; i < 6; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results <- send(context.Background(), http.DefaultClient, url, chatBody("m"))
		}()
	}
	wg.Wait()
	close(results)
	for r := range results {
		if r.err != nil || r.status != http.StatusOK || r.header.Get(backendHeader) != "b" {
			t.Errorf("with a at its overridden max_inflight 1: %v %d from %q", r.err, r.status, r.header.Get(backendHeader))
		}
	}
	if p := a.peak.Load(); p != 1 {
		t.Errorf("a's peak concurrency %d over its overridden max_inflight 1", p)
	}
	a.openGate()
	<-held

	// null clears one field; DELETE clears them all (a drain stays).
	if status, _, body := g.adminCall(http.MethodPatch, path, `{"weight":null}`); status != http.StatusOK {
		t.Fatalf("PATCH null: %d %s", status, body)
	}
	if va := g.backendsView().Backends[0]; va.Score.Weight != 1 || va.Capacity != 1 {
		t.Errorf("after weight null: weight %v capacity %d", va.Score.Weight, va.Capacity)
	}
	g.adminCall(http.MethodPost, path+"/drain", "")
	if status, _, body := g.adminCall(http.MethodDelete, path, ""); status != http.StatusOK {
		t.Fatalf("DELETE: %d %s", status, body)
	}
	va = g.backendsView().Backends[0]
	if va.Capacity != 4 || va.Score.Weight != 1 || va.Score.Capabilities["coding"] != 0 || !va.Drained {
		t.Errorf("after DELETE: capacity %d weight %v capabilities %v drained %v", va.Capacity, va.Score.Weight, va.Score.Capabilities, va.Drained)
	}
}

// TestAdminEndpoints: the other views answer JSON, methods are checked,
// errors have one shape, and nothing of it is on the public listener.
func TestAdminEndpoints(t *testing.T) {
	a := newUpstream(t, "a", 0, false)
	b := newUpstream(t, "b", 0, false)
	g := startGateway(t, gatewayOptions{admin: true}, adminTwoBackends+`
{{url "pub"}} {
	handle /healthz {
		model_router_health
	}
	respond 404
}
`, map[string]string{"a": a.srv.URL, "b": b.srv.URL})
	url := g.url("gw") + "/v1/chat/completions"
	for i := 0; i < 3; i++ {
		post(t, url, chatBody("m"))
	}
	post(t, url, chatBody("nope")) // refused before routing: not a decision

	var dec struct {
		Pool      string `json:"pool"`
		Decisions []struct {
			Model      string `json:"model"`
			Strategy   string `json:"strategy"`
			Chosen     string `json:"chosen"`
			Outcome    string `json:"outcome"`
			Ranked     int    `json:"ranked"`
			Candidates []struct {
				Backend  string  `json:"backend"`
				Score    float64 `json:"score"`
				Capacity int     `json:"capacity"`
			} `json:"candidates"`
		} `json:"decisions"`
	}
	g.adminJSON("/model_router/decisions?limit=2", &dec)
	if len(dec.Decisions) != 2 {
		t.Fatalf("limit=2 gave %d decisions", len(dec.Decisions))
	}
	for _, d := range dec.Decisions {
		if d.Model != "m" || d.Strategy != "least_load" || d.Outcome != "success" || (d.Chosen != "a" && d.Chosen != "b") ||
			d.Ranked != 2 || len(d.Candidates) != 2 || d.Candidates[0].Backend != d.Chosen || d.Candidates[0].Capacity != 4 {
			t.Errorf("decision: %+v", d)
		}
	}
	g.adminJSON("/model_router/decisions", &dec)
	if len(dec.Decisions) != 3 {
		t.Errorf("decisions: %d, want the 3 routed requests", len(dec.Decisions))
	}

	var q struct {
		Depth      int            `json:"depth"`
		Max        int            `json:"max"`
		ByPriority []any          `json:"by_priority"`
		ByBackend  map[string]int `json:"waiting_by_backend"`
	}
	g.adminJSON("/model_router/queue", &q)
	if q.Depth != 0 || q.Max != 256 || len(q.ByPriority) != 1 || len(q.ByBackend) != 2 {
		t.Errorf("queue: %+v", q)
	}
	var reps struct {
		Replicas []struct {
			ID   string `json:"id"`
			Self bool   `json:"self"`
		} `json:"replicas"`
	}
	g.adminJSON("/model_router/replicas", &reps)
	if len(reps.Replicas) != 1 || !reps.Replicas[0].Self {
		t.Errorf("replicas without Redis: %+v", reps)
	}
	var al struct {
		Alerts []struct {
			Alert, Backend, State string
		} `json:"alerts"`
	}
	g.adminJSON("/model_router/alerts", &al)
	eventually(t, 5*time.Second, "the rules evaluated", func() bool {
		g.adminJSON("/model_router/alerts", &al)
		return len(al.Alerts) > 0
	})
	for _, x := range al.Alerts {
		if x.State != "ok" {
			t.Errorf("alert %s/%s is %s on a healthy pool", x.Alert, x.Backend, x.State)
		}
	}
	var pools struct{ Pools []string }
	g.adminJSON("/model_router/pools", &pools)
	if len(pools.Pools) != 1 || pools.Pools[0] != g.pool {
		t.Errorf("pools: %v", pools.Pools)
	}
	var live, ready map[string]any
	g.adminJSON("/model_router/livez", &live)
	g.adminJSON("/model_router/readyz", &ready)
	if live["status"] != "ok" || ready["status"] != "ready" {
		t.Errorf("livez %v readyz %v", live, ready)
	}
	resp, body := do(t, mustRequest(t, http.MethodGet, g.url("pub")+"/healthz"))
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"ready"`) {
		t.Errorf("public /healthz: %d %s", resp.StatusCode, body)
	}
	resp, body = do(t, mustRequest(t, http.MethodPost, g.url("pub")+"/healthz"))
	if e := parseAPIError(t, body); resp.StatusCode != http.StatusMethodNotAllowed || e.Code != "method_not_allowed" {
		t.Errorf("POST /healthz: %d %+v", resp.StatusCode, e)
	}

	// Errors, all in one shape.
	for _, tc := range []struct {
		method, path string
		status       int
		code, allow  string
	}{
		{http.MethodPost, "/model_router/backends", 405, "method_not_allowed", "GET, HEAD"},
		{http.MethodPut, "/model_router/backends/a", 405, "method_not_allowed", "GET, HEAD, PATCH, DELETE"},
		{http.MethodGet, "/model_router/backends/a/drain", 405, "method_not_allowed", "POST"},
		{http.MethodDelete, "/model_router/queue", 405, "method_not_allowed", "GET, HEAD"},
		{http.MethodGet, "/model_router/backends/a/explode", 404, "not_found", ""},
		{http.MethodGet, "/model_router/nothing", 404, "not_found", ""},
		{http.MethodGet, "/model_router/backends?pool=nope", 404, "pool_not_found", ""},
		{http.MethodGet, "/model_router/decisions?limit=0", 400, "invalid_limit", ""},
		{http.MethodGet, "/model_router/decisions?limit=x", 400, "invalid_limit", ""},
		{http.MethodGet, "/model_router/history?since=yesterday", 400, "invalid_since", ""},
		{http.MethodGet, "/model_router/dashboard/secret.txt", 404, "not_found", ""},
	} {
		status, header, body := g.adminCall(tc.method, tc.path, "")
		e := parseAPIError(t, body)
		if status != tc.status || e.Code != tc.code || header.Get("Allow") != tc.allow {
			t.Errorf("%s %s: %d %q Allow %q, want %d %q Allow %q", tc.method, tc.path, status, e.Code, header.Get("Allow"), tc.status, tc.code, tc.allow)
		}
	}

	// Nothing on the public listeners.
	for _, base := range []string{g.url("gw"), g.url("pub")} {
		for _, path := range []string{"/model_router/backends/a/drain", "/model_router/backends", "/model_router/dashboard"} {
			resp, body := do(t, mustRequest(t, http.MethodPost, base+path))
			if strings.Contains(string(body), "drained") || strings.Contains(string(body), "Model Router") {
				t.Errorf("public %s answers the admin API at %s: %d %s", base, path, resp.StatusCode, body)
			}
		}
	}
	if v := g.backendsView(); v.Backends[0].Drained {
		t.Error("a public request drained a backend")
	}
}

func mustRequest(t *testing.T, method, url string) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	return req
}
