package caddymodule

// Helpers for the integration tests: a real Caddy started in-process from a
// Caddyfile, real HTTP backends that record what they see, and access to the
// router's load store so that tests can check that every slot came back.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"text/template"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/modelrouter/modelrouter/caddymodule/sim" // model_router_sim, and its stats type
	"github.com/modelrouter/modelrouter/engine"
	"github.com/modelrouter/modelrouter/loadstate"
)

// caddyMu serialises the tests that run Caddy: Caddy is a process-wide
// singleton, so two of them at once would replace each other's config.
var caddyMu sync.Mutex

// drainTimeout is how long a test waits for every slot to come back after its
// requests ended. Releases run as handlers unwind, which on a loaded machine
// under -race can take a while; a leak never comes back at all.
const drainTimeout = 10 * time.Second

// poolSeq makes pool (and sim) names unique per test, so that no test sees
// another's load state or sim counters, both of which live at package level.
var poolSeq atomic.Int64

// gateway is a running Caddy with a model_router site.
type gateway struct {
	t     *testing.T
	pool  string
	ports map[string]int
	admin string // admin endpoint base URL; "" when the admin API is off
	data  caddyfileData
	opts  gatewayOptions
	// storage is Caddy's storage directory, inside the test's temp dir.
	storage string
}

// caddyfileData is what a test's Caddyfile template sees.
type caddyfileData struct {
	// Pool is a pool name unique to the test; also a good prefix for sim names.
	Pool string
	// Up holds the URLs of the test's own backends by name.
	Up map[string]string
}

type gatewayOptions struct {
	// admin enables Caddy's admin API on a free port (for reload tests).
	admin bool
	// gracePeriod bounds how long a reload or stop waits for requests on the
	// old config. Default: 5s.
	gracePeriod time.Duration
	// logFile, when set, receives Caddy's logs (warn and above, JSON)
	// instead of stderr.
	logFile string
}

// startGateway renders the Caddyfile template, adapts it and runs it in a
// real Caddy, stopped when the test ends. In the template, {{port "x"}} is a
// free port named x (the same number every time within one config) and
// {{url "x"}} is http://127.0.0.1:<port "x">; a global options block that binds
// to 127.0.0.1 only and writes nothing outside the test's temp dir is
// prepended. Start it after the test's backends so that it stops before them.
func startGateway(t *testing.T, opts gatewayOptions, tmpl string, up map[string]string) *gateway {
	t.Helper()
	caddyMu.Lock()
	t.Cleanup(caddyMu.Unlock)

	if opts.gracePeriod == 0 {
		opts.gracePeriod = 5 * time.Second
	}
	g := &gateway{
		t:       t,
		pool:    fmt.Sprintf("it%d", poolSeq.Add(1)),
		opts:    opts,
		storage: t.TempDir(),
	}
	g.data = caddyfileData{Pool: g.pool, Up: up}
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		g.ports = map[string]int{}
		g.admin = ""
		if opts.admin {
			g.ports["admin"] = freePort(t)
			g.admin = "http://localhost:" + strconv.Itoa(g.ports["admin"])
		}
		cfgJSON := g.adapt(g.globalOptions() + g.render(tmpl))
		lastErr = caddy.Load(cfgJSON, true)
		if lastErr == nil {
			t.Cleanup(func() {
				if err := caddy.Stop(); err != nil {
					t.Errorf("stopping caddy: %v", err)
				}
			})
			return g
		}
		if !errors.Is(lastErr, syscall.EADDRINUSE) && !strings.Contains(lastErr.Error(), "address already in use") {
			break
		}
		// Another process took one of the ports between our probe and Caddy's bind.
	}
	t.Fatalf("starting caddy: %v", lastErr)
	return nil
}

// globalOptions is the global options block every test config starts with.
func (g *gateway) globalOptions() string {
	admin := "off"
	if g.opts.admin {
		admin = "localhost:" + strconv.Itoa(g.ports["admin"])
	}
	output := ""
	if g.opts.logFile != "" {
		output = "\n\t\toutput file " + g.opts.logFile + "\n\t\tformat json"
	}
	return fmt.Sprintf(`{
	admin %s
	persist_config off
	auto_https off
	default_bind 127.0.0.1
	grace_period %s
	storage file_system %s
	log {
		level WARN%s
	}
}
`, admin, g.opts.gracePeriod, g.storage, output)
}

// render fills in the template with this gateway's ports, picking free ones
// for names not seen before.
func (g *gateway) render(tmpl string) string {
	g.t.Helper()
	port := func(name string) int {
		p, ok := g.ports[name]
		if !ok {
			// Two probes may hand out the same free port: no port twice
			// in one config (Caddy would see one site defined twice).
			taken := map[int]bool{}
			for _, q := range g.ports {
				taken[q] = true
			}
			for p = freePort(g.t); taken[p]; p = freePort(g.t) {
			}
			g.ports[name] = p
		}
		return p
	}
	funcs := template.FuncMap{
		"port": port,
		"url":  func(name string) string { return "http://127.0.0.1:" + strconv.Itoa(port(name)) },
	}
	tp, err := template.New("Caddyfile").Funcs(funcs).Option("missingkey=error").Parse(tmpl)
	if err != nil {
		g.t.Fatalf("parsing Caddyfile template: %v", err)
	}
	var buf bytes.Buffer
	if err := tp.Execute(&buf, g.data); err != nil {
		g.t.Fatalf("rendering Caddyfile template: %v", err)
	}
	return buf.String()
}

func (g *gateway) adapt(caddyfile string) []byte {
	g.t.Helper()
	cfgJSON, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), map[string]any{"filename": "Caddyfile"})
	if err != nil {
		g.t.Fatalf("adapting Caddyfile: %v\n%s", err, caddyfile)
	}
	for _, w := range warnings {
		if !strings.Contains(w.Message, "not formatted") {
			g.t.Logf("adapt warning: %s", w.String())
		}
	}
	return cfgJSON
}

// url returns the base URL of the named port, e.g. g.url("gw").
func (g *gateway) url(name string) string {
	p, ok := g.ports[name]
	if !ok {
		g.t.Fatalf("no port named %q in the config", name)
	}
	return "http://127.0.0.1:" + strconv.Itoa(p)
}

// reload posts a new Caddyfile (same ports, same pool) to the admin API's
// /load, as an operator would.
func (g *gateway) reload(tmpl string) error {
	g.t.Helper()
	if g.admin == "" {
		g.t.Fatal("reload needs the admin API")
	}
	body := g.globalOptions() + g.render(tmpl)
	req, err := http.NewRequest(http.MethodPost, g.admin+"/load", strings.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "text/caddyfile")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("posting /load: %w", err)
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("posting /load: %s: %s", resp.Status, msg)
	}
	// The old servers close their idle keep-alive connections: a test's next
	// POST must not pick one of those (Go does not resend a POST).
	http.DefaultClient.CloseIdleConnections()
	// On Linux each config binds its own SO_REUSEPORT socket, and /load may
	// return before the old one is closed (Caddy only waits for the old
	// servers' shutdowns to start): a connection the kernel queued on the
	// old socket is then reset. Wait until the new socket is the only one.
	for name, port := range g.ports {
		eventually(g.t, 10*time.Second, "the old config's socket on port "+name+" to close", func() bool {
			return tcpListeners(g.t, port) <= 1
		})
	}
	return nil
}

// tcpListeners counts the listening TCP sockets (IPv4 and IPv6) on port, from
// /proc/net/tcp{,6}.
func tcpListeners(t *testing.T, port int) int {
	t.Helper()
	want := fmt.Sprintf(":%04X", port)
	n := 0
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		data, err := os.ReadFile(f)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				continue // no IPv6 here
			}
			t.Fatalf("reading %s: %v", f, err)
		}
		for _, line := range strings.Split(string(data), "\n")[1:] {
			fields := strings.Fields(line)
			// sl local_address rem_address st ...; st 0A is LISTEN.
			if len(fields) > 3 && strings.HasSuffix(fields[1], want) && fields[3] == "0A" {
				n++
			}
		}
	}
	return n
}

// pooled returns the load store and sketches of the test's pool, as the
// handler sees them, without taking a reference on them.
func (g *gateway) pooled() *pooledStore {
	g.t.Helper()
	var ps *pooledStore
	stores.Range(func(_, value any) bool {
		if p := value.(*pooledStore); p.pool == g.pool {
			ps = p
			return false
		}
		return true
	})
	if ps == nil {
		g.t.Fatalf("no load store for pool %s", g.pool)
	}
	return ps
}

func (g *gateway) store() loadstate.Store { return g.pooled().store }

// inflight returns the store's authoritative in-flight counts.
func (g *gateway) inflight() map[string]int {
	g.t.Helper()
	snap, err := g.store().Snapshot(context.Background())
	if err != nil {
		g.t.Fatalf("snapshot: %v", err)
	}
	return snap
}

// waitInflight polls until cond holds for the in-flight counts, failing the
// test after drainTimeout.
func (g *gateway) waitInflight(what string, cond func(map[string]int) bool) {
	g.t.Helper()
	deadline := time.Now().Add(drainTimeout)
	for {
		snap := g.inflight()
		if cond(snap) {
			return
		}
		if time.Now().After(deadline) {
			g.t.Fatalf("%s: in-flight counts still %v after %s", what, snap, drainTimeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitIdle waits until no slot is held on any backend of the pool.
func (g *gateway) waitIdle() {
	g.t.Helper()
	g.waitInflight("waiting for every slot to be released", func(m map[string]int) bool { return len(m) == 0 })
}

// waitHeld waits until backend holds n slots.
func (g *gateway) waitHeld(backend string, n int) {
	g.t.Helper()
	g.waitInflight(fmt.Sprintf("waiting for %d slot(s) on %s", n, backend), func(m map[string]int) bool { return m[backend] == n })
}

// simStats reads GET /sim/stats of the sim on the named port.
func (g *gateway) simStats(port string) sim.Stats {
	g.t.Helper()
	resp, err := http.Get(g.url(port) + "/sim/stats")
	if err != nil {
		g.t.Fatalf("reading sim stats: %v", err)
	}
	defer resp.Body.Close()
	var st sim.Stats
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		g.t.Fatalf("decoding sim stats: %v", err)
	}
	return st
}

// armSimFault arms a fault on the sim on the named port for its next count
// requests, with POST /sim/fault.
func (g *gateway) armSimFault(port, mode string, count int) {
	g.t.Helper()
	body := fmt.Sprintf(`{"mode":%q,"count":%d}`, mode, count)
	resp, err := http.Post(g.url(port)+"/sim/fault", "application/json", strings.NewReader(body))
	if err != nil {
		g.t.Fatalf("arming sim fault: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		g.t.Fatalf("arming sim fault: %s", resp.Status)
	}
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("finding a free port: %v", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// closedURL returns the URL of a port nothing listens on: connecting is refused.
//
// The port stays bound (a socket bound to it that never listens, closed
// when the test ends), so connections to it are refused, and no other
// server of a test running in parallel can be handed the same port: a
// port merely closed after use could be, and then it would answer.
func closedURL(t *testing.T) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatalf("socket: %v", err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatalf("bind: %v", err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatalf("getsockname: %v", err)
	}
	return "http://127.0.0.1:" + strconv.Itoa(sa.(*syscall.SockaddrInet4).Port)
}

// upstream is a real HTTP backend that echoes what it received and records
// its concurrency. Its answers are OpenAI chat completions whose content is
// the backend's name.
type upstream struct {
	name string
	srv  *httptest.Server

	delay  atomic.Int64 // nanoseconds to hold each request before answering
	status atomic.Int32 // status to answer; 0 means 200
	gate   chan struct{}

	cur, peak, total atomic.Int64

	mu     sync.Mutex
	bodies [][]byte
	heads  []http.Header
}

// newUpstream starts a backend called name, closed when the test ends. When
// gated, every request waits until openGate (or until its client goes away).
func newUpstream(t *testing.T, name string, delay time.Duration, gated bool) *upstream {
	t.Helper()
	u := &upstream{name: name}
	u.delay.Store(int64(delay))
	if gated {
		u.gate = make(chan struct{})
	}
	u.srv = httptest.NewServer(http.HandlerFunc(u.serve))
	t.Cleanup(func() {
		u.openGate()
		u.srv.Close()
	})
	return u
}

var gateMu sync.Mutex

// openGate lets gated requests through; idempotent.
func (u *upstream) openGate() {
	if u.gate == nil {
		return
	}
	gateMu.Lock()
	defer gateMu.Unlock()
	select {
	case <-u.gate:
	default:
		close(u.gate)
	}
}

func (u *upstream) serve(w http.ResponseWriter, r *http.Request) {
	u.total.Add(1)
	n := u.cur.Add(1)
	for {
		p := u.peak.Load()
		if n <= p || u.peak.CompareAndSwap(p, n) {
			break
		}
	}
	body, _ := io.ReadAll(r.Body)
	u.mu.Lock()
	u.bodies = append(u.bodies, body)
	u.heads = append(u.heads, r.Header.Clone())
	u.mu.Unlock()

	if u.gate != nil {
		select {
		case <-u.gate:
		case <-r.Context().Done():
		}
	}
	if d := time.Duration(u.delay.Load()); d > 0 {
		select {
		case <-time.After(d):
		case <-r.Context().Done():
		}
	}
	var req struct {
		Model string `json:"model"`
	}
	_ = json.Unmarshal(body, &req)
	status := int(u.status.Load())
	if status == 0 {
		status = http.StatusOK
	}
	answer, _ := json.Marshal(map[string]any{
		"id": "chatcmpl-" + u.name, "object": "chat.completion", "created": 1, "model": req.Model,
		"choices": []any{map[string]any{
			"index": 0, "finish_reason": "stop",
			"message": map[string]any{"role": "assistant", "content": "answer from " + u.name},
		}},
	})
	// Leave the count before the answer goes out: a gateway may reuse the slot
	// as soon as it has read the answer, and must not seem to exceed its bound.
	u.cur.Add(-1)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set(backendHeader, "spoofed-by-upstream")
	w.WriteHeader(status)
	_, _ = w.Write(answer)
}

// received returns the bodies and headers of the requests that reached it.
func (u *upstream) received() ([][]byte, []http.Header) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([][]byte(nil), u.bodies...), append([]http.Header(nil), u.heads...)
}

// chatBody is a minimal chat completions request body.
func chatBody(model string) string {
	return `{"model":` + strconv.Quote(model) + `,"messages":[{"role":"user","content":"hello there"}]}`
}

// post sends a POST with a JSON body and returns the response with its body read.
func post(t *testing.T, url, body string, header ...string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	return do(t, req)
}

func do(t *testing.T, req *http.Request) (*http.Response, []byte) {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", req.Method, req.URL, err)
	}
	return resp, b
}

// openAIError is the OpenAI error shape every router error must have.
type openAIError struct {
	Message string
	Type    string
	Param   *string
	Code    string
}

// parseAPIError checks that body is {"error":{"message","type","param","code"}}
// with all four keys present and returns it.
func parseAPIError(t *testing.T, body []byte) openAIError {
	t.Helper()
	var outer map[string]json.RawMessage
	if err := json.Unmarshal(body, &outer); err != nil {
		t.Fatalf("error body is not JSON: %v: %s", err, body)
	}
	raw, ok := outer["error"]
	if !ok || len(outer) != 1 {
		t.Fatalf("error body must be {\"error\":{...}}, got %s", body)
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		t.Fatalf("\"error\" is not an object: %s", body)
	}
	for _, k := range []string{"message", "type", "param", "code"} {
		if _, ok := fields[k]; !ok {
			t.Errorf("error body lacks %q: %s", k, body)
		}
	}
	var e struct {
		Message string  `json:"message"`
		Type    string  `json:"type"`
		Param   *string `json:"param"`
		Code    string  `json:"code"`
	}
	if err := json.Unmarshal(raw, &e); err != nil {
		t.Fatalf("decoding error fields: %v: %s", err, body)
	}
	if e.Message == "" || e.Type == "" || e.Code == "" {
		t.Errorf("error body has an empty message, type or code: %s", body)
	}
	return openAIError(e)
}

// metricValue reads a counter's value, a gauge's value or a histogram's
// sample count from one of the router's collectors.
func metricValue(t *testing.T, m prometheus.Metric) float64 {
	t.Helper()
	var out dto.Metric
	if err := m.Write(&out); err != nil {
		t.Fatalf("reading metric: %v", err)
	}
	switch {
	case out.Counter != nil:
		return out.Counter.GetValue()
	case out.Gauge != nil:
		return out.Gauge.GetValue()
	case out.Histogram != nil:
		return float64(out.Histogram.GetSampleCount())
	}
	t.Fatalf("unsupported metric type: %v", &out)
	return 0
}

// eventually polls cond until it holds, failing after timeout.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// result is one request's outcome, for requests sent from goroutines (which
// must not call t.Fatal).
type result struct {
	status int
	header http.Header
	body   []byte
	err    error
	took   time.Duration
}

// send posts body to url with the client and reads the whole answer.
func send(ctx context.Context, client *http.Client, url, body string, header ...string) result {
	start := time.Now()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		return result{err: err}
	}
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := client.Do(req)
	if err != nil {
		return result{err: err, took: time.Since(start)}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return result{status: resp.StatusCode, header: resp.Header, body: b, err: err, took: time.Since(start)}
}

// storeMetric scrapes one series of the store collector, as Prometheus would,
// and reports whether it exists.
func storeMetric(t *testing.T, desc *prometheus.Desc, labels map[string]string) (float64, bool) {
	t.Helper()
	ch := make(chan prometheus.Metric, 512)
	go func() { storeCollector{}.Collect(ch); close(ch) }()
	value, found := 0.0, false
	for m := range ch {
		if m.Desc() != desc {
			continue
		}
		var out dto.Metric
		if err := m.Write(&out); err != nil {
			t.Fatalf("reading metric: %v", err)
		}
		match := true
		got := map[string]string{}
		for _, l := range out.GetLabel() {
			got[l.GetName()] = l.GetValue()
		}
		for k, v := range labels {
			if got[k] != v {
				match = false
			}
		}
		if !match {
			continue
		}
		found = true
		switch {
		case out.Gauge != nil:
			value = out.Gauge.GetValue()
		case out.Counter != nil:
			value = out.Counter.GetValue()
		}
	}
	return value, found
}

// inflightGauge reads model_router_inflight_requests{pool,backend}; a missing
// series fails the test.
func inflightGauge(t *testing.T, pool, backend string) float64 {
	t.Helper()
	v, ok := storeMetric(t, inflightDesc, map[string]string{"pool": pool, "backend": backend})
	if !ok {
		t.Fatalf("no in-flight series for pool %s backend %s", pool, backend)
	}
	return v
}

// fakeClock drives the router's clock (now) in a test: it starts at the real
// time and moves only when the test advances it. Install it before starting
// the gateway, so that it is removed after the gateway stopped.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func useFakeClock(t *testing.T) *fakeClock {
	t.Helper()
	c := &fakeClock{t: time.Now()}
	fn := c.now
	clock.Store(&fn)
	t.Cleanup(func() { clock.Store(nil) })
	return c
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// health returns the passive-health state of the test's pool, as the handler
// sees it.
func (g *gateway) health() *engine.Health {
	g.t.Helper()
	var h *engine.Health
	healths.Range(func(key, value any) bool {
		if k, _ := key.(string); strings.HasPrefix(k, g.pool+"|") {
			h = value.(pooledHealth).Health
			return false
		}
		return true
	})
	if h == nil {
		g.t.Fatalf("no passive-health state for pool %s", g.pool)
	}
	return h
}

// attemptsOf reads model_router_attempts_total{backend,outcome}.
func attemptsOf(t *testing.T, backend string, o engine.Outcome) float64 {
	t.Helper()
	return metricValue(t, theMetrics().attempts.WithLabelValues(backend, o.String()).(prometheus.Metric))
}
