package caddymodule

import (
	"fmt"
	"net/url"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"

	"github.com/modelrouter/modelrouter/engine"
	"github.com/modelrouter/modelrouter/loadstate"
)

// Alert rules. Each is evaluated per pool (and per backend where it names
// one) by one goroutine per pool, with hysteresis: an alert fires once its
// condition has held for FireAfter and resolves once it has been clear for
// ResolveAfter. Every transition is logged (warn when firing, info when
// resolved), changes model_router_alert{pool,alert,backend} and, with
// alert_webhook, is POSTed as JSON.
const (
	// alertRedisDegraded: the pool's Redis store is not deciding from Redis
	// (unreachable, or not trusted yet after a recovery): local mode.
	alertRedisDegraded = "redis_degraded"
	// alertCoolingDown: a backend's breaker is open or half-open.
	alertCoolingDown = "backend_cooling_down"
	// alertErrorRate: a backend's error rate over the last minute is above
	// error_rate (with at least min_attempts attempts).
	alertErrorRate = "backend_error_rate"
	// alertLatencySLO / alertTTFTSLO: a backend's p99 end-to-end latency /
	// time to first token over the last minute is above its slo_latency /
	// slo_ttft (only for backends with such an SLO).
	alertLatencySLO = "latency_slo"
	alertTTFTSLO    = "ttft_slo"
	// alertCapacity: requests were refused for capacity (capacity_exhausted)
	// in the last minute, at least capacity_rejections of them.
	alertCapacity = "capacity_rejected"
	// alertQueueWait: the oldest waiting request has waited longer than
	// queue_wait.
	alertQueueWait = "queue_wait"
)

// Alert defaults.
const (
	defaultAlertInterval      = time.Second
	defaultAlertFireAfter     = 3 * time.Second
	defaultAlertResolveAfter  = 30 * time.Second
	defaultAlertErrorRate     = 0.25
	defaultAlertMinAttempts   = 10
	defaultAlertQueueWait     = time.Second
	defaultCapacityRejections = 1
)

// AlertsConfig tunes the alert rules of a pool. Every field is optional.
type AlertsConfig struct {
	// Interval is how often the rules are evaluated. Default: 1s.
	Interval caddy.Duration `json:"interval,omitempty"`
	// FireAfter is how long a condition must hold before its alert fires.
	// Default: 3s.
	FireAfter caddy.Duration `json:"fire_after,omitempty"`
	// ResolveAfter is how long a firing alert's condition must stay clear
	// before it resolves. Default: 30s.
	ResolveAfter caddy.Duration `json:"resolve_after,omitempty"`
	// ErrorRate is the share (0..1] of a backend's attempts over the last
	// minute that count against it (failed, broken, rate-limited) above
	// which backend_error_rate fires. Default: 0.25.
	ErrorRate float64 `json:"error_rate,omitempty"`
	// MinAttempts is how many attempts a backend needs in the last minute
	// before its error rate is judged. Default: 10.
	MinAttempts int `json:"min_attempts,omitempty"`
	// QueueWait is the oldest waiting request's wait above which queue_wait
	// fires. Default: 1s.
	QueueWait caddy.Duration `json:"queue_wait,omitempty"`
	// CapacityRejections is how many requests refused for capacity in the
	// last minute make capacity_rejected fire. Default: 1.
	CapacityRejections int `json:"capacity_rejections,omitempty"`
}

// withDefaults returns the config with every zero field at its default; a
// nil config is all defaults.
func (c *AlertsConfig) withDefaults() AlertsConfig {
	var out AlertsConfig
	if c != nil {
		out = *c
	}
	if out.Interval == 0 {
		out.Interval = caddy.Duration(defaultAlertInterval)
	}
	if out.FireAfter == 0 {
		out.FireAfter = caddy.Duration(defaultAlertFireAfter)
	}
	if out.ResolveAfter == 0 {
		out.ResolveAfter = caddy.Duration(defaultAlertResolveAfter)
	}
	if out.ErrorRate == 0 {
		out.ErrorRate = defaultAlertErrorRate
	}
	if out.MinAttempts == 0 {
		out.MinAttempts = defaultAlertMinAttempts
	}
	if out.QueueWait == 0 {
		out.QueueWait = caddy.Duration(defaultAlertQueueWait)
	}
	if out.CapacityRejections == 0 {
		out.CapacityRejections = defaultCapacityRejections
	}
	return out
}

func (c *AlertsConfig) validate() error {
	if c == nil {
		return nil
	}
	if c.Interval < 0 || c.FireAfter < 0 || c.ResolveAfter < 0 || c.QueueWait < 0 {
		return fmt.Errorf("alerts: durations must not be negative")
	}
	if c.ErrorRate < 0 || c.ErrorRate > 1 || c.ErrorRate != c.ErrorRate {
		return fmt.Errorf("alerts: error_rate must be a share in (0,1], not %v", c.ErrorRate)
	}
	if c.MinAttempts < 0 || c.CapacityRejections < 0 {
		return fmt.Errorf("alerts: min_attempts and capacity_rejections must not be negative")
	}
	return nil
}

// checkWebhookURL accepts an absolute http or https URL.
func checkWebhookURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("alert_webhook %q must be an absolute http:// or https:// URL", raw)
	}
	return nil
}

// parseAlerts reads the alerts block:
//
//	alerts {
//	    interval 1s            # how often the rules are evaluated
//	    fire_after 3s          # a condition must hold this long to fire
//	    resolve_after 30s      # and stay clear this long to resolve
//	    error_rate 0.25        # backend_error_rate above this share of attempts (last minute)
//	    min_attempts 10        #   once the backend had this many attempts
//	    queue_wait 1s          # queue_wait when the oldest waiter waited longer
//	    capacity_rejections 1  # capacity_rejected at this many refusals in the last minute
//	}
func parseAlerts(d *caddyfile.Dispenser) (*AlertsConfig, error) {
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	c := new(AlertsConfig)
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		key := d.Val()
		if seen[key] {
			return nil, d.Errf("alerts: %s is set twice", key)
		}
		seen[key] = true
		var err error
		switch key {
		case "interval":
			c.Interval, err = durationArg(d)
		case "fire_after":
			c.FireAfter, err = durationArg(d)
		case "resolve_after":
			c.ResolveAfter, err = durationArg(d)
		case "queue_wait":
			c.QueueWait, err = durationArg(d)
		case "error_rate":
			c.ErrorRate, err = floatArg(d)
			if err == nil && (c.ErrorRate <= 0 || c.ErrorRate > 1) {
				err = d.Errf("alerts: error_rate must be a share in (0,1], not %v", c.ErrorRate)
			}
		case "min_attempts":
			c.MinAttempts, err = intArg(d, 1)
		case "capacity_rejections":
			c.CapacityRejections, err = intArg(d, 1)
		default:
			return nil, d.Errf("alerts: unknown option %q", key)
		}
		if err != nil {
			return nil, err
		}
	}
	return c, nil
}

// alertKey identifies one alert: a rule and, for per-backend rules, the
// backend ("" for the pool-wide ones).
type alertKey struct{ alert, backend string }

// alertState is one alert's state.
type alertState struct {
	firing       bool
	pendingSince time.Time // condition true since, while not firing
	clearSince   time.Time // condition false since, while firing
	since        time.Time // last transition
	value        float64   // the condition's value at the last evaluation
	threshold    float64
	message      string
	seen         bool // evaluated in the latest round (the rule applies)
}

// alertEvaluator evaluates a pool's rules.
type alertEvaluator struct {
	ops    *poolOps
	logger *zap.Logger
	hook   *webhook

	mu     sync.Mutex
	states map[alertKey]*alertState
}

func newAlertEvaluator(ops *poolOps, logger *zap.Logger) *alertEvaluator {
	return &alertEvaluator{ops: ops, logger: logger, states: map[alertKey]*alertState{},
		hook: newWebhook(logger)}
}

// run evaluates the rules every interval and samples the dashboard's history,
// until the pool's last router is gone.
func (p *poolOps) run() {
	defer close(p.done)
	hookDone := make(chan struct{})
	go func() {
		defer close(hookDone)
		p.alerts.hook.run(p.stop)
	}()
	defer func() { <-hookDone }()
	interval := defaultAlertInterval
	if h := p.router(); h != nil {
		interval = time.Duration(h.Alerts.withDefaults().Interval)
	}
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-ticker.C:
		}
		h := p.router()
		if h == nil {
			continue
		}
		cfg := h.Alerts.withDefaults()
		if d := time.Duration(cfg.Interval); d != interval {
			interval = d
			ticker.Reset(d)
		}
		t := now()
		p.alerts.evaluate(h, cfg, t)
		p.history.sample(h, t)
	}
}

// observation is one rule's condition for one key at one evaluation.
type observation struct {
	key       alertKey
	active    bool
	value     float64
	threshold float64
	message   string
}

// observe computes every rule's condition for the handler's pool.
func (e *alertEvaluator) observe(h *Handler, cfg AlertsConfig, t time.Time) []observation {
	var obs []observation
	if rs, ok := h.store.(*loadstate.RedisStore); ok {
		mode := rs.Mode()
		obs = append(obs, observation{key: alertKey{alertRedisDegraded, ""}, active: mode != loadstate.ModeRedis,
			value: boolFloat(mode != loadstate.ModeRedis), threshold: 0,
			message: "load state mode " + mode})
	}
	rejected := e.ops.capacityRejects.lastMinute(t)
	obs = append(obs, observation{key: alertKey{alertCapacity, ""}, active: rejected >= int64(cfg.CapacityRejections),
		value: float64(rejected), threshold: float64(cfg.CapacityRejections),
		message: strconv.FormatInt(rejected, 10) + " requests refused for capacity in the last minute"})
	oldest := h.admission.OldestWait(time.Now())
	obs = append(obs, observation{key: alertKey{alertQueueWait, ""}, active: oldest > time.Duration(cfg.QueueWait),
		value: oldest.Seconds(), threshold: time.Duration(cfg.QueueWait).Seconds(),
		message: "the oldest waiting request has waited " + oldest.Round(time.Millisecond).String()})
	for i := range h.backends {
		name := h.backends[i].Name
		state, until := h.health.State(name, t)
		cooling := state == engine.StateCoolingDown || state == engine.StateHalfOpen
		msg := "breaker " + state.String()
		if !until.IsZero() {
			msg += " until " + until.UTC().Format(time.RFC3339)
		}
		obs = append(obs, observation{key: alertKey{alertCoolingDown, name}, active: cooling, value: boolFloat(cooling), message: msg})

		attempts, errs := backendAttempts(h, i)
		rate := 0.0
		if attempts > 0 {
			rate = float64(errs) / float64(attempts)
		}
		obs = append(obs, observation{key: alertKey{alertErrorRate, name},
			active: attempts >= cfg.MinAttempts && rate > cfg.ErrorRate, value: rate, threshold: cfg.ErrorRate,
			message: fmt.Sprintf("%d of %d attempts failed in the last minute", errs, attempts)})

		sloLatency, sloTTFT := backendSLOs(h, i)
		if sloLatency > 0 {
			p99 := h.sketches.Quantile(name, loadstate.EndToEnd, 0.99)
			obs = append(obs, observation{key: alertKey{alertLatencySLO, name}, active: p99 > sloLatency,
				value: p99.Seconds(), threshold: sloLatency.Seconds(),
				message: "p99 latency " + p99.Round(time.Millisecond).String() + " (SLO " + sloLatency.String() + ")"})
		}
		if sloTTFT > 0 {
			p99 := h.sketches.Quantile(name, loadstate.TTFT, 0.99)
			obs = append(obs, observation{key: alertKey{alertTTFTSLO, name}, active: p99 > sloTTFT,
				value: p99.Seconds(), threshold: sloTTFT.Seconds(),
				message: "p99 time to first token " + p99.Round(time.Millisecond).String() + " (SLO " + sloTTFT.String() + ")"})
		}
	}
	return obs
}

// backendAttempts returns a backend's attempts with a verdict, and those that
// counted against it, over the learner's window (the last minute,
// fleet-wide with Redis).
func backendAttempts(h *Handler, i int) (attempts, errs int) {
	if len(h.upstreams[i]) == 0 {
		return 0, 0
	}
	lb := h.learner.Backend(h.backends[i].Name, h.upstreams[i][0])
	return lb.Attempts, lb.Errors
}

// backendSLOs returns a backend's SLOs: its own, else the router's.
func backendSLOs(h *Handler, i int) (latency, ttft time.Duration) {
	bc := &h.Backends[i]
	latency, ttft = time.Duration(h.SLOLatency), time.Duration(h.SLOTTFT)
	if bc.SLOLatency > 0 {
		latency = time.Duration(bc.SLOLatency)
	}
	if bc.SLOTTFT > 0 {
		ttft = time.Duration(bc.SLOTTFT)
	}
	return latency, ttft
}

// evaluate runs one round of the rules and applies the hysteresis.
func (e *alertEvaluator) evaluate(h *Handler, cfg AlertsConfig, t time.Time) {
	obs := e.observe(h, cfg, t)
	var events []alertEvent
	e.mu.Lock()
	for _, st := range e.states {
		st.seen = false
	}
	for _, o := range obs {
		st := e.states[o.key]
		if st == nil {
			st = &alertState{since: t}
			e.states[o.key] = st
		}
		st.seen = true
		st.value, st.threshold, st.message = o.value, o.threshold, o.message
		if ev, ok := e.step(st, o.key, o.active, cfg, t); ok {
			events = append(events, ev)
		}
	}
	// Rules that no longer apply (a backend gone from the config, Redis
	// removed, an SLO dropped): resolved at once, and forgotten.
	for k, st := range e.states {
		if st.seen {
			continue
		}
		if st.firing {
			st.firing, st.since = false, t
			st.message = "no longer evaluated (removed from the configuration)"
			events = append(events, e.event(k, st, "resolved"))
		}
		delete(e.states, k)
	}
	e.mu.Unlock()
	for _, ev := range events {
		e.announce(h, ev)
	}
}

// step applies one observation to an alert's state and reports a transition.
func (e *alertEvaluator) step(st *alertState, k alertKey, active bool, cfg AlertsConfig, t time.Time) (alertEvent, bool) {
	switch {
	case active && !st.firing:
		if st.pendingSince.IsZero() {
			st.pendingSince = t
		}
		if t.Sub(st.pendingSince) >= time.Duration(cfg.FireAfter) {
			st.firing, st.since, st.pendingSince, st.clearSince = true, t, time.Time{}, time.Time{}
			return e.event(k, st, "firing"), true
		}
	case !active && !st.firing:
		st.pendingSince = time.Time{}
	case !active && st.firing:
		if st.clearSince.IsZero() {
			st.clearSince = t
		}
		if t.Sub(st.clearSince) >= time.Duration(cfg.ResolveAfter) {
			st.firing, st.since, st.clearSince = false, t, time.Time{}
			return e.event(k, st, "resolved"), true
		}
	case active && st.firing:
		st.clearSince = time.Time{}
	}
	return alertEvent{}, false
}

// alertEvent is one transition, as logged and sent to the webhook.
type alertEvent struct {
	Alert     string    `json:"alert"`
	Backend   string    `json:"backend,omitempty"`
	Pool      string    `json:"pool"`
	State     string    `json:"state"` // firing or resolved
	Value     float64   `json:"value"`
	Threshold float64   `json:"threshold"`
	Message   string    `json:"message"`
	At        time.Time `json:"at"`
}

func (e *alertEvaluator) event(k alertKey, st *alertState, state string) alertEvent {
	return alertEvent{Alert: k.alert, Backend: k.backend, Pool: e.ops.pool, State: state,
		Value: st.value, Threshold: st.threshold, Message: st.message, At: st.since}
}

// announce logs a transition and queues it for the webhook.
func (e *alertEvaluator) announce(h *Handler, ev alertEvent) {
	fields := []zap.Field{zap.String("alert", ev.Alert), zap.String("pool", ev.Pool),
		zap.Float64("value", ev.Value), zap.Float64("threshold", ev.Threshold), zap.String("message", ev.Message)}
	if ev.Backend != "" {
		fields = append(fields, zap.String("backend", ev.Backend))
	}
	if ev.State == "firing" {
		e.logger.Warn("alert firing", fields...)
	} else {
		e.logger.Info("alert resolved", fields...)
	}
	if h.AlertWebhook != "" {
		e.hook.enqueue(h.AlertWebhook, ev)
	}
}

// alertView is one alert as the admin API shows it.
type alertView struct {
	Alert     string     `json:"alert"`
	Backend   string     `json:"backend,omitempty"`
	State     string     `json:"state"` // firing, pending (condition true, not yet for fire_after) or ok
	Since     time.Time  `json:"since"`
	Value     float64    `json:"value"`
	Threshold float64    `json:"threshold"`
	Message   string     `json:"message"`
	Pending   *time.Time `json:"pending_since,omitempty"`
}

// snapshot returns every alert the rules evaluate, firing first.
func (e *alertEvaluator) snapshot() []alertView {
	e.mu.Lock()
	out := make([]alertView, 0, len(e.states))
	for k, st := range e.states {
		v := alertView{Alert: k.alert, Backend: k.backend, Since: st.since, Value: st.value,
			Threshold: st.threshold, Message: st.message, State: "ok"}
		switch {
		case st.firing:
			v.State = "firing"
		case !st.pendingSince.IsZero():
			v.State = "pending"
			p := st.pendingSince
			v.Pending = &p
		}
		out = append(out, v)
	}
	e.mu.Unlock()
	rank := map[string]int{"firing": 0, "pending": 1, "ok": 2}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if rank[a.State] != rank[b.State] {
			return rank[a.State] < rank[b.State]
		}
		if a.Alert != b.Alert {
			return a.Alert < b.Alert
		}
		return a.Backend < b.Backend
	})
	return out
}
