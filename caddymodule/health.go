package caddymodule

import (
	"net/http"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/modelrouter/modelrouter/loadstate"
)

// Health endpoints for load balancers and orchestrators.
//
// Liveness (admin API, GET /model_router/livez): the process answers; 200
// always.
//
// Readiness (admin API, GET /model_router/readyz, and the opt-in public
// model_router_health handler): 200 when at least one model_router pool is
// provisioned and every pool can admit requests: without Redis always, with
// Redis when it is connected or in an outage mode that still admits
// (fail_local, fail_open); 503 when no pool is configured or a pool is in
// fail_closed with Redis unreachable (it admits nothing: send traffic to
// another replica).

func init() {
	caddy.RegisterModule(HealthHandler{})
	httpcaddyfile.RegisterHandlerDirective("model_router_health", parseHealthCaddyfile)
	// Right before reverse_proxy, so after model_router (which hands every
	// path outside /v1/ on): no `order` line is needed.
	httpcaddyfile.RegisterDirectiveOrder("model_router_health", httpcaddyfile.Before, "reverse_proxy")
}

// poolReadiness is one pool's part of the readiness answer.
type poolReadiness struct {
	Ready     bool   `json:"ready"`
	LoadState string `json:"load_state"` // memory, redis, local, closed or open
}

// readiness reports whether the gateway is ready, and why, for the named
// pool or (pool "") every pool.
func readiness(pool string) (bool, map[string]any) {
	pools := map[string]poolReadiness{}
	ready := false
	for _, p := range poolsByName() {
		if pool != "" && p.pool != pool {
			continue
		}
		h := p.router()
		if h == nil {
			continue
		}
		pr := poolReadiness{Ready: true, LoadState: "memory"}
		if rs, ok := h.store.(*loadstate.RedisStore); ok {
			pr.LoadState = rs.Mode()
			pr.Ready = pr.LoadState != loadstate.ModeClosed
		}
		if prev, seen := pools[p.pool]; seen && !prev.Ready {
			pr = prev
		}
		pools[p.pool] = pr
	}
	if len(pools) > 0 {
		ready = true
		for _, pr := range pools {
			ready = ready && pr.Ready
		}
	}
	status := "ready"
	if !ready {
		status = "not_ready"
	}
	return ready, map[string]any{"status": status, "pools": pools}
}

func serveLivez(w http.ResponseWriter) {
	writeAdminJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

func serveReadyz(w http.ResponseWriter, r *http.Request) {
	ready, body := readiness(r.URL.Query().Get("pool"))
	status := http.StatusOK
	if !ready {
		status = http.StatusServiceUnavailable
	}
	writeAdminJSON(w, status, body)
}

// HealthHandler answers readiness on the public listener, for load
// balancers that cannot reach the admin endpoint: opt in by mounting it on a
// path of your choice,
//
//	handle /healthz {
//	    model_router_health [<pool>]
//	}
//
// It answers GET and HEAD with the readiness JSON (200 ready, 503 not
// ready), and any other method with 405; it never calls the next handler.
type HealthHandler struct {
	// Pool limits the check to one pool. Default: every pool.
	Pool string `json:"pool,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (HealthHandler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.model_router_health",
		New: func() caddy.Module { return new(HealthHandler) },
	}
}

// Validate checks the pool name.
func (hh *HealthHandler) Validate() error {
	if hh.Pool != "" {
		return checkPool(hh.Pool)
	}
	return nil
}

// ServeHTTP implements caddyhttp.MiddlewareHandler.
func (hh *HealthHandler) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		invalidRequest(http.StatusMethodNotAllowed, "method_not_allowed", "", "use GET for "+r.URL.Path).write(w)
		return nil
	}
	ready, body := readiness(hh.Pool)
	status := http.StatusOK
	if !ready {
		status = http.StatusServiceUnavailable
	}
	writeAdminJSON(w, status, body)
	return nil
}

// UnmarshalCaddyfile reads `model_router_health [<pool>]`.
func (hh *HealthHandler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next()
	if d.NextArg() {
		hh.Pool = d.Val()
		if err := checkPool(hh.Pool); err != nil {
			return d.Err(err.Error())
		}
	}
	if d.NextArg() || d.NextBlock(0) {
		return d.ArgErr()
	}
	return nil
}

func parseHealthCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	hh := new(HealthHandler)
	err := hh.UnmarshalCaddyfile(h.Dispenser)
	return hh, err
}

// Interface guards
var (
	_ caddy.Validator             = (*HealthHandler)(nil)
	_ caddyhttp.MiddlewareHandler = (*HealthHandler)(nil)
	_ caddyfile.Unmarshaler       = (*HealthHandler)(nil)
)
