package caddymodule

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/modelrouter/modelrouter/caddymodule/dashboard"
	"github.com/modelrouter/modelrouter/loadstate"
)

func init() {
	caddy.RegisterModule(adminAPI{})
}

// adminAPI is the admin.api.model_router module: the model router's
// endpoints on Caddy's admin listener (never on the public one), JSON
// throughout, fleet-wide with Redis. It holds no handler: it finds each
// pool's router through the package-level pools, so it keeps working across
// config reloads.
//
//	GET    /model_router/backends[/{name}]       state, load, health, latency, score components
//	POST   /model_router/backends/{name}/drain   no new requests on any replica
//	POST   /model_router/backends/{name}/undrain
//	PATCH  /model_router/backends/{name}         {"weight","capabilities","max_inflight"} (null clears one)
//	DELETE /model_router/backends/{name}         clears weight, capabilities and max_inflight
//	GET    /model_router/replicas | queue | alerts | decisions?limit=N | history | pools
//	GET    /model_router/dashboard               the live dashboard page
//	GET    /model_router/livez | readyz          for load balancers and orchestrators
//
// Every endpoint but livez, readyz and pools takes ?pool=<name> (default:
// the only pool, else "default"). Errors are {"error":{"message","type",
// "param","code"}}, as on the public API.
type adminAPI struct{}

// CaddyModule returns the Caddy module information.
func (adminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.model_router",
		New: func() caddy.Module { return new(adminAPI) },
	}
}

const adminPrefix = "/model_router/"

// Routes implements caddy.AdminRouter.
func (a adminAPI) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{{Pattern: adminPrefix, Handler: caddy.AdminHandlerFunc(a.serve)}}
}

// adminLogger is where the audit log goes: Caddy's default logger, named.
func adminLogger() *zap.Logger { return caddy.Log().Named("model_router.admin") }

func (a adminAPI) serve(w http.ResponseWriter, r *http.Request) error {
	path := strings.TrimPrefix(r.URL.Path, adminPrefix)
	parts := strings.Split(strings.TrimSuffix(path, "/"), "/")
	var err *apiError
	switch {
	case path == "livez":
		err = onlyGet(w, r, func() *apiError { serveLivez(w); return nil })
	case path == "readyz":
		err = onlyGet(w, r, func() *apiError { serveReadyz(w, r); return nil })
	case path == "pools":
		err = onlyGet(w, r, func() *apiError { writeAdminJSON(w, http.StatusOK, poolList()); return nil })
	case path == "dashboard" || strings.HasPrefix(path, "dashboard/"):
		err = onlyGet(w, r, func() *apiError { return serveDashboard(w, r, strings.TrimPrefix(path, "dashboard")) })
	case len(parts) >= 1 && parts[0] == "backends":
		err = a.serveBackends(w, r, parts[1:])
	case len(parts) == 1:
		err = a.servePoolView(w, r, parts[0])
	default:
		err = notFound("no such model_router admin endpoint: " + r.URL.Path)
	}
	if err != nil {
		err.write(w)
	}
	return nil
}

func notFound(msg string) *apiError {
	return invalidRequest(http.StatusNotFound, "not_found", "", msg)
}

// onlyGet answers GET and HEAD with fn, anything else with 405.
func onlyGet(w http.ResponseWriter, r *http.Request, fn func() *apiError) *apiError {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return methodNotAllowed(w, r, "GET, HEAD")
	}
	return fn()
}

// methodNotAllowed is a 405 with the Allow header.
func methodNotAllowed(w http.ResponseWriter, r *http.Request, allow string) *apiError {
	w.Header().Set("Allow", allow)
	return invalidRequest(http.StatusMethodNotAllowed, "method_not_allowed", "", "use "+allow+" for "+r.URL.Path)
}

func writeAdminJSON(w http.ResponseWriter, status int, v any) {
	buf, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		serverError(http.StatusInternalServerError, "internal_error", "encoding the answer: "+err.Error()).write(w)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(append(buf, '\n'))
}

// selectPool finds the pool a request is about: ?pool=, or the only pool, or
// the one named default.
func selectPool(r *http.Request) (*poolOps, *apiError) {
	pools := poolsByName()
	if name := r.URL.Query().Get("pool"); name != "" {
		for _, p := range pools {
			if p.pool == name {
				return p, nil
			}
		}
		return nil, invalidRequest(http.StatusNotFound, "pool_not_found", "pool", "no model_router pool is named "+strconv.Quote(name))
	}
	switch {
	case len(pools) == 0:
		return nil, serverError(http.StatusServiceUnavailable, "no_pool", "no model_router handler is configured")
	case len(pools) == 1:
		return pools[0], nil
	}
	for _, p := range pools {
		if p.pool == "default" {
			return p, nil
		}
	}
	names := make([]string, len(pools))
	for i, p := range pools {
		names[i] = p.pool
	}
	return nil, invalidRequest(http.StatusBadRequest, "pool_required", "pool", "several pools are configured ("+strings.Join(names, ", ")+"): give ?pool=<name>")
}

// servePoolView answers the read-only views of a pool.
func (a adminAPI) servePoolView(w http.ResponseWriter, r *http.Request, view string) *apiError {
	var fn func(*poolOps, *Handler) *apiError
	switch view {
	case "replicas":
		fn = func(p *poolOps, h *Handler) *apiError { return serveReplicas(w, r, p, h) }
	case "queue":
		fn = func(p *poolOps, h *Handler) *apiError { writeAdminJSON(w, http.StatusOK, queueView(p, h)); return nil }
	case "alerts":
		fn = func(p *poolOps, h *Handler) *apiError {
			writeAdminJSON(w, http.StatusOK, map[string]any{"pool": p.pool, "alerts": p.alerts.snapshot()})
			return nil
		}
	case "decisions":
		fn = func(p *poolOps, h *Handler) *apiError { return serveDecisions(w, r, p) }
	case "history":
		fn = func(p *poolOps, h *Handler) *apiError { return serveHistory(w, r, p) }
	default:
		return notFound("no such model_router admin endpoint: " + r.URL.Path)
	}
	return onlyGet(w, r, func() *apiError {
		p, err := selectPool(r)
		if err != nil {
			return err
		}
		h := p.router()
		if h == nil {
			return serverError(http.StatusServiceUnavailable, "no_pool", "the pool's router is being replaced: try again")
		}
		return fn(p, h)
	})
}

// serveBackends answers /model_router/backends[/{name}[/drain|/undrain]].
func (a adminAPI) serveBackends(w http.ResponseWriter, r *http.Request, rest []string) *apiError {
	if len(rest) > 2 || (len(rest) == 2 && rest[1] != "drain" && rest[1] != "undrain") {
		return notFound("no such model_router admin endpoint: " + r.URL.Path)
	}
	// Methods first: a wrong method is a 405 whatever the pool or backend.
	switch {
	case len(rest) == 0 && r.Method != http.MethodGet && r.Method != http.MethodHead:
		return methodNotAllowed(w, r, "GET, HEAD")
	case len(rest) == 1 && !oneOf(r.Method, http.MethodGet, http.MethodHead, http.MethodPatch, http.MethodDelete):
		return methodNotAllowed(w, r, "GET, HEAD, PATCH, DELETE")
	case len(rest) == 2 && r.Method != http.MethodPost:
		return methodNotAllowed(w, r, "POST")
	}
	p, err := selectPool(r)
	if err != nil {
		return err
	}
	h := p.router()
	if h == nil {
		return serverError(http.StatusServiceUnavailable, "no_pool", "the pool's router is being replaced: try again")
	}
	if len(rest) == 0 {
		writeAdminJSON(w, http.StatusOK, backendsView(p, h))
		return nil
	}
	name := rest[0]
	i, ok := h.index[name]
	if !ok {
		return invalidRequest(http.StatusNotFound, "backend_not_found", "name", "pool "+p.pool+" has no backend named "+strconv.Quote(name))
	}
	if r.Method == http.MethodGet || r.Method == http.MethodHead {
		writeAdminJSON(w, http.StatusOK, backendView1(h, i, h.currentView(), now()))
		return nil
	}
	if h.overrides == nil {
		return serverError(http.StatusNotImplemented, "overrides_unsupported", "this pool's load store keeps no overrides")
	}
	var action string
	var update func(loadstate.Override) (loadstate.Override, error)
	switch {
	case len(rest) == 2:
		action = rest[1]
		drain := action == "drain"
		update = func(o loadstate.Override) (loadstate.Override, error) { o.Drained = drain; return o, nil }
	case r.Method == http.MethodPatch:
		action = "patch"
		body, rerr := io.ReadAll(http.MaxBytesReader(w, r.Body, maxPatchBody))
		if rerr != nil {
			var mbe *http.MaxBytesError
			if errors.As(rerr, &mbe) {
				return invalidRequest(http.StatusRequestEntityTooLarge, "request_too_large", "", "the body is over 64KiB")
			}
			return invalidRequest(http.StatusBadRequest, "invalid_body", "", "reading the body: "+rerr.Error())
		}
		patch, perr := parseOverridePatch(name, body)
		if perr != nil {
			return invalidRequest(http.StatusBadRequest, "invalid_override", "", perr.Error())
		}
		update = func(o loadstate.Override) (loadstate.Override, error) { return patch.apply(o), nil }
	default: // DELETE
		action = "clear"
		update = func(o loadstate.Override) (loadstate.Override, error) {
			return loadstate.Override{Drained: o.Drained}, nil
		}
	}
	var before loadstate.Override
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	after, uerr := h.overrides.UpdateOverride(ctx, name, func(o loadstate.Override) (loadstate.Override, error) {
		before = o
		next, err := update(o)
		if !next.IsZero() {
			next.UpdatedAt = time.Now().UTC()
		}
		return next, err
	})
	if uerr != nil {
		return serverError(http.StatusServiceUnavailable, "load_state_unavailable", "storing the override: "+uerr.Error())
	}
	// The audit log: who changed what, from what to what.
	adminLogger().Info("backend override changed",
		zap.String("pool", p.pool), zap.String("backend", name), zap.String("action", action),
		zap.Any("before", overrideJSON(before)), zap.Any("after", overrideJSON(after)),
		zap.String("remote_addr", r.RemoteAddr))
	writeAdminJSON(w, http.StatusOK, backendView1(h, i, h.currentView(), now()))
	return nil
}

func oneOf(s string, set ...string) bool {
	for _, x := range set {
		if s == x {
			return true
		}
	}
	return false
}

// overrideView is an override as the API shows it.
type overrideView struct {
	Drained      bool               `json:"drained"`
	Weight       *float64           `json:"weight,omitempty"`
	Capabilities map[string]float64 `json:"capabilities,omitempty"`
	MaxInflight  *int               `json:"max_inflight,omitempty"`
	UpdatedAt    *time.Time         `json:"updated_at,omitempty"`
}

func overrideJSON(o loadstate.Override) overrideView {
	v := overrideView{Drained: o.Drained, Capabilities: o.Capabilities}
	if o.Weight > 0 {
		w := o.Weight
		v.Weight = &w
	}
	if o.MaxInflight > 0 {
		n := o.MaxInflight
		v.MaxInflight = &n
	}
	if !o.UpdatedAt.IsZero() {
		t := o.UpdatedAt
		v.UpdatedAt = &t
	}
	return v
}

// quantiles are latency percentiles in seconds (0: no data yet).
type quantiles struct {
	P50 float64 `json:"p50"`
	P95 float64 `json:"p95"`
	P99 float64 `json:"p99"`
}

func sketchQuantiles(s *loadstate.Sketches, backend string, m loadstate.Metric) quantiles {
	return quantiles{
		P50: s.Quantile(backend, m, 0.50).Seconds(),
		P95: s.Quantile(backend, m, 0.95).Seconds(),
		P99: s.Quantile(backend, m, 0.99).Seconds(),
	}
}

// backendState is one backend in GET /model_router/backends.
type backendState struct {
	Name           string        `json:"name"`
	Models         []string      `json:"models"`
	Inflight       int           `json:"inflight"`
	Capacity       int           `json:"capacity"`
	ConfiguredCap  int           `json:"configured_capacity"`
	TokensInflight *int          `json:"tokens_inflight,omitempty"`
	TokenCapacity  *int          `json:"token_capacity,omitempty"`
	Utilization    float64       `json:"utilization"`
	Waiting        int           `json:"waiting"`
	Health         string        `json:"health"` // ok, cooling_down, half_open, rate_limited, draining
	HealthUntil    *string       `json:"health_until,omitempty"`
	Breaker        string        `json:"breaker"` // the passive-health state alone, draining aside
	Drained        bool          `json:"drained"`
	Requests1m     int           `json:"requests_1m"`
	Errors1m       int           `json:"errors_1m"`
	ErrorRate1m    float64       `json:"error_rate_1m"`
	Latency        quantiles     `json:"latency_seconds"`
	TTFT           quantiles     `json:"ttft_seconds"`
	LatencySamples int           `json:"latency_samples"`
	Score          scoreView     `json:"score"`
	Override       *overrideView `json:"override,omitempty"`
}

// scoreView is what goes into a backend's score now: its effective weight
// and capabilities (configuration and overrides), load, cost, adaptive
// feedback and learned speed, and its score in the latest decision that
// ranked it.
type scoreView struct {
	Weight       float64            `json:"weight"`
	Capabilities map[string]float64 `json:"capabilities"`
	Load         float64            `json:"load"`
	Cost         float64            `json:"cost"`
	Feedback     float64            `json:"feedback"`
	TTFTBase     float64            `json:"ttft_base_seconds"`
	TPOT         float64            `json:"tpot_seconds"`
	LastScore    *float64           `json:"last_score,omitempty"`
	LastScoreAt  *time.Time         `json:"last_score_at,omitempty"`
}

func backendsView(p *poolOps, h *Handler) map[string]any {
	t := now()
	view := h.currentView()
	last := lastScores(p)
	out := make([]backendState, len(view.backends))
	for i := range view.backends {
		out[i] = backendView1(h, i, view, t)
		if s, ok := last[view.backends[i].Name]; ok {
			score, at := s.score, s.at
			out[i].Score.LastScore, out[i].Score.LastScoreAt = &score, &at
		}
	}
	mode := "memory"
	if rs, ok := h.store.(*loadstate.RedisStore); ok {
		mode = rs.Mode()
	}
	return map[string]any{"pool": p.pool, "strategy": h.strategy.Name(), "load_state": mode, "backends": out}
}

func backendView1(h *Handler, i int, view *backendView, t time.Time) backendState {
	b := &view.backends[i]
	name := b.Name
	st := backendState{
		Name:           name,
		Inflight:       h.store.Inflight(name),
		Capacity:       b.MaxInflight,
		ConfiguredCap:  h.backends[i].MaxInflight,
		Waiting:        h.admission.WaitingFor(i),
		Drained:        view.drained[i],
		Latency:        sketchQuantiles(h.sketches, name, loadstate.EndToEnd),
		TTFT:           sketchQuantiles(h.sketches, name, loadstate.TTFT),
		LatencySamples: h.sketches.Count(name, loadstate.EndToEnd),
	}
	for m := range b.Models {
		st.Models = append(st.Models, m)
	}
	sort.Strings(st.Models)
	if b.MaxInflight > 0 {
		st.Utilization = float64(st.Inflight) / float64(b.MaxInflight)
	}
	if b.MaxTokensInflight > 0 {
		tok, capTok := h.store.Tokens(name), b.MaxTokensInflight
		st.TokensInflight, st.TokenCapacity = &tok, &capTok
	}
	state, until := h.health.State(name, t)
	st.Breaker = state.String()
	st.Health = st.Breaker
	if !until.IsZero() {
		u := until.UTC().Format(time.RFC3339Nano)
		st.HealthUntil = &u
	}
	if st.Drained {
		st.Health = "draining"
	}
	st.Requests1m, st.Errors1m = backendAttempts(h, i)
	if st.Requests1m > 0 {
		st.ErrorRate1m = float64(st.Errors1m) / float64(st.Requests1m)
	}
	learned := h.learned.get(h, t)
	st.Score = scoreView{
		Weight:       effectiveWeight(b.Weight),
		Capabilities: b.Capabilities,
		Cost:         b.Cost,
		Feedback:     learned.backends[i].feedback,
	}
	if st.Score.Capabilities == nil {
		st.Score.Capabilities = map[string]float64{}
	}
	if b.MaxInflight > 0 {
		st.Score.Load = min(float64(max(st.Inflight, 0))/float64(b.MaxInflight), 1)
	}
	if len(h.upstreams[i]) > 0 {
		perf := learned.backends[i].perf[h.upstreams[i][0]]
		st.Score.TTFTBase, st.Score.TPOT = perf.TTFTBase.Seconds(), perf.TPOT.Seconds()
	}
	if o := view.overrides[i]; !o.IsZero() {
		ov := overrideJSON(o)
		st.Override = &ov
	}
	return st
}

// effectiveWeight is the weight the strategies apply (0 means 1).
func effectiveWeight(w float64) float64 {
	if w <= 0 {
		return 1
	}
	return w
}

type lastScore struct {
	score float64
	at    time.Time
}

// lastScores returns each backend's score in the latest decision that
// ranked it.
func lastScores(p *poolOps) map[string]lastScore {
	out := map[string]lastScore{}
	for _, d := range p.decisions.last(decisionRingSize) {
		for k := 0; k < d.n; k++ {
			c := d.cands[k]
			if _, ok := out[c.backend]; !ok {
				out[c.backend] = lastScore{score: c.score, at: d.at}
			}
		}
	}
	return out
}

// replicaView is one gateway replica of the pool.
type replicaView struct {
	ID       string     `json:"id"`
	Addr     string     `json:"addr,omitempty"`
	Version  string     `json:"version,omitempty"`
	LastBeat *time.Time `json:"last_beat,omitempty"`
	Self     bool       `json:"self"`
}

func serveReplicas(w http.ResponseWriter, r *http.Request, p *poolOps, h *Handler) *apiError {
	out := map[string]any{"pool": p.pool}
	reg, ok := h.store.(loadstate.ReplicaRegistry)
	if !ok {
		out["load_state"] = "memory"
		out["replicas"] = []replicaView{{ID: "local", Addr: replicaAddr(), Version: version(), Self: true}}
		writeAdminJSON(w, http.StatusOK, out)
		return nil
	}
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	list, err := reg.Replicas(ctx)
	if err != nil {
		return serverError(http.StatusServiceUnavailable, "load_state_unavailable", err.Error())
	}
	views := make([]replicaView, len(list))
	for i, rep := range list {
		beat := rep.LastBeat.UTC()
		views[i] = replicaView{ID: rep.ID, Addr: rep.Addr, Version: rep.Version, LastBeat: &beat, Self: rep.Self}
	}
	if rs, ok := h.store.(*loadstate.RedisStore); ok {
		out["load_state"] = rs.Mode()
	}
	out["live_replicas"] = reg.LiveReplicas()
	out["replicas"] = views
	writeAdminJSON(w, http.StatusOK, out)
	return nil
}

// queueView is GET /model_router/queue: this replica's waiting requests,
// in its local queue or the fleet-wide one, by priority class (highest
// first) and by the backends they can use.
func queueView(p *poolOps, h *Handler) map[string]any {
	t := time.Now()
	names := h.Priorities
	if len(names) == 0 {
		names = []string{defaultPriorityClass}
	}
	classes := h.admission.ByClass(len(names), t)
	by := make([]map[string]any, len(classes))
	for i, c := range classes {
		by[i] = map[string]any{"priority": names[i], "depth": c.Depth, "oldest_wait_seconds": c.Oldest.Seconds()}
	}
	per := map[string]int{}
	for i := range h.backends {
		per[h.backends[i].Name] = h.admission.WaitingFor(i)
	}
	return map[string]any{
		"pool":                p.pool,
		"depth":               h.admission.Waiting(),
		"max":                 h.MaxQueue,
		"max_wait_seconds":    time.Duration(h.MaxWait).Seconds(),
		"oldest_wait_seconds": h.admission.OldestWait(t).Seconds(),
		"by_priority":         by,
		"waiting_by_backend":  per,
	}
}

// decisionView is one entry of GET /model_router/decisions.
type decisionView struct {
	Seq       uint64          `json:"seq"`
	At        time.Time       `json:"at"`
	Model     string          `json:"model"`
	Strategy  string          `json:"strategy"`
	Chosen    string          `json:"chosen,omitempty"`
	Outcome   string          `json:"outcome"`
	QueueWait float64         `json:"queue_wait_seconds"`
	Probe     bool            `json:"probe,omitempty"`
	Retry     bool            `json:"retry,omitempty"`
	Ranked    int             `json:"ranked"`
	Cands     []candidateView `json:"candidates"`
}

type candidateView struct {
	Backend  string  `json:"backend"`
	Score    float64 `json:"score"`
	Full     bool    `json:"full,omitempty"`
	Inflight int     `json:"inflight"`
	Capacity int     `json:"capacity"`
	Wait     float64 `json:"predicted_wait_seconds"`
	TTFT     float64 `json:"predicted_ttft_seconds"`
	Total    float64 `json:"predicted_total_seconds"`
}

const defaultDecisionLimit = 50

func serveDecisions(w http.ResponseWriter, r *http.Request, p *poolOps) *apiError {
	limit := defaultDecisionLimit
	if s := r.URL.Query().Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > decisionRingSize {
			return invalidRequest(http.StatusBadRequest, "invalid_limit", "limit", "limit must be a whole number from 1 to "+strconv.Itoa(decisionRingSize))
		}
		limit = n
	}
	list := p.decisions.last(limit)
	out := make([]decisionView, len(list))
	for i, d := range list {
		v := decisionView{Seq: d.seq, At: d.at, Model: d.model, Strategy: d.strategy, Chosen: d.chosen,
			Outcome: d.outcome, QueueWait: d.queueWait.Seconds(), Probe: d.probe, Retry: d.retry, Ranked: d.ranked,
			Cands: make([]candidateView, d.n)}
		for k := 0; k < d.n; k++ {
			c := d.cands[k]
			v.Cands[k] = candidateView{Backend: c.backend, Score: c.score, Full: c.full, Inflight: int(c.inflight),
				Capacity: int(c.capacity), Wait: c.wait.Seconds(), TTFT: c.ttft.Seconds(), Total: c.total.Seconds()}
		}
		out[i] = v
	}
	writeAdminJSON(w, http.StatusOK, map[string]any{"pool": p.pool, "decisions": out})
	return nil
}

func serveHistory(w http.ResponseWriter, r *http.Request, p *poolOps) *apiError {
	var since time.Time
	if s := r.URL.Query().Get("since"); s != "" {
		t, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			return invalidRequest(http.StatusBadRequest, "invalid_since", "since", "since must be an RFC 3339 time")
		}
		since = t
	}
	writeAdminJSON(w, http.StatusOK, map[string]any{"pool": p.pool, "interval_seconds": historyEvery.Seconds(), "samples": p.history.since(since)})
	return nil
}

// poolList is GET /model_router/pools.
func poolList() map[string]any {
	var names []string
	seen := map[string]bool{}
	for _, p := range poolsByName() {
		if !seen[p.pool] {
			seen[p.pool] = true
			names = append(names, p.pool)
		}
	}
	if names == nil {
		names = []string{}
	}
	return map[string]any{"pools": names}
}

// serveDashboard serves the dashboard page and its assets, embedded.
func serveDashboard(w http.ResponseWriter, r *http.Request, rest string) *apiError {
	name := strings.TrimPrefix(rest, "/")
	if name == "" {
		name = "index.html"
	}
	data, ctype, ok := dashboard.Asset(name)
	if !ok {
		return notFound("no such dashboard file: " + name)
	}
	w.Header().Set("Content-Type", ctype)
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	// The page is the admin listener's own: no framing by other sites, and
	// nothing loaded from elsewhere.
	w.Header().Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self'; frame-ancestors 'none'")
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		_, _ = w.Write(data)
	}
	return nil
}

// Interface guards
var (
	_ caddy.Module      = (*adminAPI)(nil)
	_ caddy.AdminRouter = (*adminAPI)(nil)
)
