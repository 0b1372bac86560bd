package caddymodule

import (
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/dustin/go-humanize"

	"github.com/modelrouter/modelrouter/engine"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("model_router", parseCaddyfile)
	// Before reverse_proxy, so users need no `order` line; model_router answers
	// every /v1/ request itself and hands anything else on.
	httpcaddyfile.RegisterDirectiveOrder("model_router", httpcaddyfile.Before, "reverse_proxy")
}

func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	m := new(Handler)
	err := m.UnmarshalCaddyfile(h.Dispenser)
	return m, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	model_router {
//	    strategy balanced          # one of engine.StrategyNames(): greedy | balanced | fastest | least_load | p2c | round_robin | latency
//	    weights capability=0.4 latency=0.4 load=0.15 cost=0.05   # balanced's blend
//	    explore 0.05               # share of requests sent to backends without data; 0: never
//	    slo_ttft 500ms             # p95 TTFT over it scales a backend's score down
//	    slo_latency 30s            # p95 end-to-end latency, likewise
//	    explain_header X-Model-Router-Explain   # requests carrying it get the decision explained
//	    priorities high normal low sheddable    # priority classes, highest first
//	    default_priority normal    # class of requests that name none (set per route)
//	    priority_header X-Model-Router-Priority # clients may name their class
//	    priority_aging 5s          # a class waits at most this much longer than the one above
//	    sheddable sheddable        # classes that never wait (default: the class named sheddable)
//	    max_wait 2s                # how long a request may wait for a free slot
//	    max_queue 256              # waiting requests beyond this get full_status at once
//	    max_body 4MiB              # larger request bodies get 413
//	    full_status 503            # or 429, for "every slot busy after max_wait"
//	    retries 1                  # retries on another backend before any byte reached the client; 0 or -1 for none
//	    dial_timeout 3s
//	    response_header_timeout 15m   # non-streaming: the longest a whole generation may take
//	    stream_header_timeout 2m      # streaming: the longest wait for the answer to start
//	    stream_idle_timeout 60s    # longest silence from a backend (or stuck write to the client) mid-answer
//	    max_fails 3                # failures in a row that put a backend in cooldown
//	    fail_cooldown 10s
//	    pool default               # routers (and, with redis, replicas) with the same pool share load state
//	    redis [<url>] {            # share load across gateway replicas; url: redis:// or rediss://
//	        lease 5s               # how long a dead replica's slots can stay held
//	        heartbeat 1s
//	        timeout 50ms           # budget for one Redis call on the request path
//	        on_redis_down fail_local   # fail_local | fail_closed | fail_open
//	        key_prefix mr
//	        sentinel <master_name> <addr>...   # Redis Sentinel instead of a URL
//	                               # (or: master_name <name> and sentinels <addr>...)
//	        cluster <addr>...                  # Redis Cluster seeds instead of a URL
//	        username <name>
//	        password <secret>      # e.g. {env.REDIS_PASSWORD}
//	    }
//	    alerts {                   # alert rules' thresholds (see AlertsConfig for the defaults)
//	        interval 1s
//	        fire_after 3s          # a condition must hold this long to fire
//	        resolve_after 30s      # and stay clear this long to resolve
//	        error_rate 0.25        # backend_error_rate: share of attempts failed in the last minute
//	        min_attempts 10
//	        queue_wait 1s          # queue_wait: the oldest waiting request's wait
//	        capacity_rejections 1  # capacity_rejected: refusals for capacity in the last minute
//	    }
//	    alert_webhook <url>        # every alert transition POSTed as JSON
//	    backend <name> <url> {
//	        models <public>[=<upstream>] ...   # the first is used for model "auto"
//	        capabilities <name>=<0..1> ...   # names are case-insensitive
//	        max_inflight <n>       # required, at least 1
//	        context <tokens>       # max prompt+completion tokens; 0 = no limit
//	        cost <relative price>
//	        weight <multiplier>    # greater than 0; default 1
//	        api_key <key>          # e.g. {env.FAST_KEY}; sent upstream as a bearer token
//	        ttft 200ms             # speed hints until it has data: time to first token
//	        tpot 20ms              #   and time per output token
//	        slo_ttft 500ms         # this backend's own SLOs
//	        slo_latency 30s
//	        max_tokens_inflight <n>   # bound on Σ(prompt estimate + max tokens) in flight
//	    }
//	}
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	seen := map[string]bool{}
	// Where options checked against each other were set, for their errors.
	at := map[string]string{}
	where := func() string { return fmt.Sprintf("%s:%d", d.File(), d.Line()) }
	for d.NextBlock(0) {
		key := d.Val()
		if key != "backend" {
			if seen[key] {
				return d.Errf("%s is set twice", key)
			}
			seen[key] = true
		}
		switch key {
		case "strategy":
			v, err := oneArg(d)
			if err != nil {
				return err
			}
			if err := checkStrategy(v); err != nil {
				return d.Err(err.Error())
			}
			h.Strategy = v
		case "weights":
			w, err := parseWeights(d)
			if err != nil {
				return err
			}
			h.Weights = w
		case "explore":
			v, err := floatArg(d)
			if err != nil {
				return err
			}
			if v > 1 {
				return d.Errf("explore: %v is not a share between 0 and 1", v)
			}
			if v == 0 {
				v = -1 // "explore 0" means never; 0 in JSON means the default
			}
			h.Explore = v
		case "slo_ttft":
			v, err := durationArg(d)
			if err != nil {
				return err
			}
			h.SLOTTFT = v
		case "slo_latency":
			v, err := durationArg(d)
			if err != nil {
				return err
			}
			h.SLOLatency = v
		case "priorities", "sheddable":
			names := d.RemainingArgs()
			if len(names) == 0 {
				return d.ArgErr()
			}
			if key == "priorities" {
				if err := checkPriorities(names, "", nil); err != nil {
					return d.Err(err.Error())
				}
				h.Priorities = names
			} else {
				h.Sheddable = names
			}
			at[key] = where()
		case "default_priority":
			v, err := oneArg(d)
			if err != nil {
				return err
			}
			h.DefaultPriority = v
			at[key] = where()
		case "priority_header":
			v, err := oneArg(d)
			if err != nil {
				return err
			}
			if !headerNameRE.MatchString(v) {
				return d.Errf("priority_header %q is not a header name", v)
			}
			h.PriorityHeader = v
		case "priority_aging":
			v, err := durationArg(d)
			if err != nil {
				return err
			}
			h.PriorityAging = v
		case "batch_window":
			v, err := nonNegativeDurationArg(d) // 0: the default, no window
			if err != nil {
				return err
			}
			h.BatchWindow = v
			at[key] = where()
		case "assign_aging":
			v, err := durationArg(d)
			if err != nil {
				return err
			}
			h.AssignAging = v
			at[key] = where()
		case "explain_header":
			v, err := oneArg(d)
			if err != nil {
				return err
			}
			if !headerNameRE.MatchString(v) {
				return d.Errf("explain_header %q is not a header name", v)
			}
			h.ExplainHeader = v
		case "max_wait":
			v, err := durationArg(d)
			if err != nil {
				return err
			}
			h.MaxWait = v
		case "max_queue":
			// At least 1: zero would read as "use the default". To answer
			// at once instead of waiting, set a short max_wait.
			v, err := intArg(d, 1)
			if err != nil {
				return err
			}
			h.MaxQueue = v
		case "max_body":
			v, err := oneArg(d)
			if err != nil {
				return err
			}
			size, err := humanize.ParseBytes(v)
			if err != nil || size == 0 || size > math.MaxInt64 {
				return d.Errf("max_body: %q is not a size such as 4MiB", v)
			}
			h.MaxBody = int64(size)
		case "full_status":
			v, err := intArg(d, 0)
			if err != nil {
				return err
			}
			if err := checkFullStatus(v); err != nil {
				return d.Err(err.Error())
			}
			h.FullStatus = v
		case "retries":
			v, err := intArg(d, -1)
			if err != nil {
				return err
			}
			if v == 0 {
				// In JSON 0 is the unset field and gets the default; here
				// "retries 0" can only mean none.
				v = -1
			}
			h.Retries = v
		case "dial_timeout":
			v, err := durationArg(d)
			if err != nil {
				return err
			}
			h.DialTimeout = v
		case "response_header_timeout":
			v, err := durationArg(d)
			if err != nil {
				return err
			}
			h.ResponseHeaderTimeout = v
		case "stream_header_timeout":
			v, err := durationArg(d)
			if err != nil {
				return err
			}
			h.StreamHeaderTimeout = v
		case "stream_idle_timeout":
			v, err := durationArg(d)
			if err != nil {
				return err
			}
			h.StreamIdleTimeout = v
		case "body_timeout":
			v, err := durationArg(d)
			if err != nil {
				return err
			}
			h.BodyTimeout = v
		case "max_fails":
			v, err := intArg(d, 1)
			if err != nil {
				return err
			}
			h.MaxFails = v
		case "fail_cooldown":
			v, err := durationArg(d)
			if err != nil {
				return err
			}
			h.FailCooldown = v
		case "pool":
			v, err := oneArg(d)
			if err != nil {
				return err
			}
			if err := checkPool(v); err != nil {
				return d.Err(err.Error())
			}
			h.Pool = v
		case "redis":
			r, err := parseRedis(d)
			if err != nil {
				return err
			}
			h.Redis = r
		case "backend":
			b, err := parseBackend(d)
			if err != nil {
				return err
			}
			for _, other := range h.Backends {
				if other.Name == b.Name {
					return d.Errf("backend %s is defined twice", b.Name)
				}
			}
			h.Backends = append(h.Backends, b)
		case "alerts":
			a, err := parseAlerts(d)
			if err != nil {
				return err
			}
			h.Alerts = a
		case "alert_webhook":
			v, err := oneArg(d)
			if err != nil {
				return err
			}
			if err := checkWebhookURL(v); err != nil {
				return d.Err(err.Error())
			}
			h.AlertWebhook = v
		default:
			return d.Errf("unknown model_router option %q", key)
		}
	}
	if len(h.Backends) == 0 {
		return d.Err("model_router needs at least one backend")
	}
	// Options that depend on others are checked once all are read, and
	// named by their own line.
	if err := checkPriorities(h.Priorities, h.DefaultPriority, nil); err != nil {
		return fmt.Errorf("%w, at %s", err, at["default_priority"])
	}
	if err := checkPriorities(h.Priorities, "", h.Sheddable); err != nil {
		return fmt.Errorf("%w, at %s", err, at["sheddable"])
	}
	if err := checkOptimalOnly("batch_window", h.BatchWindow, h.Strategy); err != nil {
		return fmt.Errorf("%w, at %s", err, at["batch_window"])
	}
	if err := checkBatchWindowFits(h.BatchWindow, h.MaxWait); err != nil {
		return fmt.Errorf("%w, at %s", err, at["batch_window"])
	}
	if err := checkOptimalOnly("assign_aging", h.AssignAging, h.Strategy); err != nil {
		return fmt.Errorf("%w, at %s", err, at["assign_aging"])
	}
	return nil
}

func parseBackend(d *caddyfile.Dispenser) (BackendConfig, error) {
	var b BackendConfig
	args := d.RemainingArgs()
	if len(args) != 2 {
		return b, d.Errf("backend needs a name and a URL: backend <name> <url> { ... }")
	}
	b.Name, b.URL = args[0], args[1]
	if err := checkBackendName(b.Name); err != nil {
		return b, d.Err(err.Error())
	}
	if err := checkBackendURL(b.Name, b.URL); err != nil {
		return b, d.Err(err.Error())
	}
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		key := d.Val()
		if seen[key] {
			return b, d.Errf("backend %s: %s is set twice", b.Name, key)
		}
		seen[key] = true
		switch key {
		case "models":
			names := d.RemainingArgs()
			if len(names) == 0 {
				return b, d.ArgErr()
			}
			for _, n := range names {
				public, upstream, _ := strings.Cut(n, "=")
				if public == "" || (strings.Contains(n, "=") && upstream == "") {
					return b, d.Errf("backend %s: model %q must be <public> or <public>=<upstream>", b.Name, n)
				}
				b.Models = append(b.Models, ModelName{Public: public, Upstream: upstream})
			}
			if err := checkModels(b.Name, b.Models); err != nil {
				return b, d.Err(err.Error())
			}
		case "capabilities":
			pairs := d.RemainingArgs()
			if len(pairs) == 0 {
				return b, d.ArgErr()
			}
			b.Capabilities = make(map[string]float64, len(pairs))
			for _, p := range pairs {
				name, val, ok := strings.Cut(p, "=")
				if !ok {
					return b, d.Errf("backend %s: capability %q must be <name>=<score>", b.Name, p)
				}
				f, err := strconv.ParseFloat(val, 64)
				if err != nil {
					return b, d.Errf("backend %s: capability %s score %q must be a number in [0,1]", b.Name, name, val)
				}
				if err := checkCapability(b.Name, name, f); err != nil {
					return b, d.Err(err.Error())
				}
				// Stored in lower case, as requests are matched.
				key := capabilityKey(name)
				if _, dup := b.Capabilities[key]; dup {
					return b, d.Err(errCapabilityTwice(b.Name, name).Error())
				}
				b.Capabilities[key] = f
			}
		case "max_inflight":
			v, err := intArg(d, 1)
			if err != nil {
				return b, err
			}
			b.MaxInflight = v
		case "context":
			v, err := intArg(d, 0)
			if err != nil {
				return b, err
			}
			b.Context = v
		case "cost":
			v, err := floatArg(d)
			if err != nil {
				return b, err
			}
			b.Cost = v
		case "weight":
			v, err := floatArg(d)
			if err != nil {
				return b, err
			}
			if v == 0 {
				// 0 is the unset field, which means 1: refuse it rather
				// than give a backend meant to get nothing the full weight.
				return b, d.Errf("backend %s: weight must be greater than 0 (0 would mean the default, 1)", b.Name)
			}
			b.Weight = v
		case "api_key":
			v, err := oneArg(d)
			if err != nil {
				return b, err
			}
			b.APIKey = v
		case "ttft", "tpot", "slo_ttft", "slo_latency":
			v, err := durationArg(d)
			if err != nil {
				return b, err
			}
			*map[string]*caddy.Duration{"ttft": &b.TTFT, "tpot": &b.TPOT, "slo_ttft": &b.SLOTTFT, "slo_latency": &b.SLOLatency}[key] = v
		case "max_tokens_inflight":
			v, err := intArg(d, 1)
			if err != nil {
				return b, err
			}
			b.MaxTokensInflight = v
		default:
			return b, d.Errf("backend %s: unknown option %q", b.Name, key)
		}
	}
	if b.MaxInflight == 0 {
		return b, d.Errf("backend %s: max_inflight is required", b.Name)
	}
	if len(b.Models) == 0 {
		return b, d.Errf("backend %s: models is required", b.Name)
	}
	if err := b.validate(); err != nil {
		return b, d.Err(err.Error())
	}
	return b, nil
}

// parseWeights reads "weights capability=<w> latency=<w> load=<w> cost=<w>";
// names left out weigh 0.
func parseWeights(d *caddyfile.Dispenser) (*engine.Weights, error) {
	args := d.RemainingArgs()
	if len(args) == 0 {
		return nil, d.ArgErr()
	}
	w := new(engine.Weights)
	fields := map[string]*float64{"capability": &w.Capability, "latency": &w.Latency, "load": &w.Load, "cost": &w.Cost}
	seen := map[string]bool{}
	for _, a := range args {
		name, val, ok := strings.Cut(a, "=")
		f, known := fields[name]
		if !ok || !known {
			return nil, d.Errf("weights: %q must be <name>=<weight> with name capability, latency, load or cost", a)
		}
		if seen[name] {
			return nil, d.Errf("weights: %s is set twice", name)
		}
		seen[name] = true
		v, err := strconv.ParseFloat(val, 64)
		if err != nil || v < 0 || math.IsNaN(v) || math.IsInf(v, 0) {
			return nil, d.Errf("weights: %s=%q must be a non-negative number", name, val)
		}
		*f = v
	}
	if err := w.Validate(); err != nil {
		return nil, d.Errf("weights: %v", err)
	}
	return w, nil
}

func oneArg(d *caddyfile.Dispenser) (string, error) {
	args := d.RemainingArgs()
	if len(args) != 1 {
		return "", d.ArgErr()
	}
	return args[0], nil
}

func intArg(d *caddyfile.Dispenser, least int) (int, error) {
	key := d.Val()
	v, err := oneArg(d)
	if err != nil {
		return 0, err
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return 0, d.Errf("%s: %q is not a whole number", key, v)
	}
	if n < least {
		return 0, d.Errf("%s must be at least %d, not %d", key, least, n)
	}
	return n, nil
}

func floatArg(d *caddyfile.Dispenser) (float64, error) {
	key := d.Val()
	v, err := oneArg(d)
	if err != nil {
		return 0, err
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || f < 0 || math.IsNaN(f) || math.IsInf(f, 0) {
		return 0, d.Errf("%s: %q must be a non-negative number", key, v)
	}
	return f, nil
}

func durationArg(d *caddyfile.Dispenser) (caddy.Duration, error) {
	return durationArgFrom(d, false)
}

// nonNegativeDurationArg reads the one argument of the current option as a
// duration of zero or more: for options whose default, 0, may be written out.
func nonNegativeDurationArg(d *caddyfile.Dispenser) (caddy.Duration, error) {
	return durationArgFrom(d, true)
}

// durationArgFrom reads the one argument of the current option as a
// duration, positive or (zero) also 0.
func durationArgFrom(d *caddyfile.Dispenser, zero bool) (caddy.Duration, error) {
	key := d.Val()
	v, err := oneArg(d)
	if err != nil {
		return 0, err
	}
	dur, err := caddy.ParseDuration(v)
	switch {
	case zero && (err != nil || dur < 0):
		return 0, d.Errf("%s: %q must be a duration of 0 or more such as 5ms", key, v)
	case !zero && (err != nil || dur <= 0):
		return 0, d.Errf("%s: %q must be a positive duration such as 2s", key, v)
	}
	return caddy.Duration(dur), nil
}

// Interface guards
var _ caddyfile.Unmarshaler = (*Handler)(nil)
