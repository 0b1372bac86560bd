package caddymodule

import (
	"errors"
	"fmt"
	"math"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/modelrouter/modelrouter/engine"
	"github.com/modelrouter/modelrouter/loadstate"
)

// Handler is the model_router HTTP handler. It routes OpenAI-compatible
// inference requests to the configured backend that is best at the task and has
// room, holds a slot on it for the whole request, and proxies the request
// through Caddy's reverse proxy.
type Handler struct {
	// Strategy orders the candidate backends: greedy, balanced, fastest,
	// least_load, p2c, round_robin or latency. Default: balanced.
	Strategy string `json:"strategy,omitempty"`

	// Weights are the balanced strategy's blend of capability, predicted
	// latency, load and cost (divided by their sum). Default:
	// engine.DefaultWeights (capability .40, latency .40, load .15, cost .05).
	Weights *engine.Weights `json:"weights,omitempty"`

	// Explore is the share of requests (0..1) the predictive strategies
	// (balanced, fastest) may send to a backend with room whose speed they
	// know too little about, so that it gets data. Default: 0.05; negative:
	// never.
	Explore float64 `json:"explore,omitempty"`

	// SLOTTFT and SLOLatency are service-level objectives for every backend
	// (a backend's own override them): a backend whose recent p95 time to
	// first token, or end-to-end latency, is over its SLO has its score
	// scaled down by SLO ÷ p95 (adaptive feedback, see
	// engine.FeedbackFactor). Default: none.
	SLOTTFT    caddy.Duration `json:"slo_ttft,omitempty"`
	SLOLatency caddy.Duration `json:"slo_latency,omitempty"`

	// Priorities are the priority classes, highest first, e.g. high normal
	// low sheddable. Waiting requests of a higher class are served first;
	// within a class, first come first served (or by the optimal
	// assignment), and a class waits at most PriorityAging longer than the
	// one above it (the aging bound). Default: one class, "normal".
	Priorities []string `json:"priorities,omitempty"`

	// DefaultPriority is the class of requests that name none (for this
	// route: set it per route to give routes classes). Default: "normal" if
	// it is a class, else the middle one.
	DefaultPriority string `json:"default_priority,omitempty"`

	// PriorityHeader names the request header in which clients may name
	// their class (case-insensitive); an unknown class gets 400
	// unknown_priority. Default: none (only DefaultPriority).
	PriorityHeader string `json:"priority_header,omitempty"`

	// PriorityAging is how much earlier arrival one class is worth: a
	// request waits at most this much longer per class than a request of a
	// higher class that arrived at the same time. Default: 5s.
	PriorityAging caddy.Duration `json:"priority_aging,omitempty"`

	// Sheddable lists the classes that never wait: with no slot free they
	// get FullStatus at once. Default: the class named "sheddable", if any.
	Sheddable []string `json:"sheddable,omitempty"`

	// BatchWindow (strategy optimal only) holds slots freed while requests
	// wait for up to this long, so that the slots freed and the requests
	// arriving meanwhile are assigned together, by maximum total score,
	// rather than each slot to the best waiter when it frees. It adds up to
	// this much wait to a waiting request. With Redis the fleet-wide queue
	// assigns each slot as it frees (one script per release) and the window
	// applies to the replica's local queue only (while Redis is down).
	// Default 0: no added delay.
	BatchWindow caddy.Duration `json:"batch_window,omitempty"`

	// AssignAging (strategy optimal only) is the age term of the
	// assignment: a freed slot goes to the waiter with the highest score
	// (capability × predicted speed, at most 1) less one point per
	// AssignAging it is behind the first in line, so a better-suited
	// request overtakes one that arrived at most AssignAging × (its score
	// advantage) earlier, and none is starved. Set it near the typical
	// request's service time: larger favours capability, smaller arrival
	// order (and the tail latency). Default: 500ms (see
	// loadstate.DefaultAssignAging for how it was chosen).
	AssignAging caddy.Duration `json:"assign_aging,omitempty"`

	// ExplainHeader, when set, names a request header: a request that
	// carries it gets an X-Model-Router-Explain response header with every
	// candidate's score and predicted wait, TTFT and completion (never
	// request content). Decisions are also logged at debug level. Default:
	// off.
	ExplainHeader string `json:"explain_header,omitempty"`

	// MaxWait is how long a request may wait for a free slot when every
	// candidate is full. Default: 2s.
	MaxWait caddy.Duration `json:"max_wait,omitempty"`

	// MaxQueue is how many requests may wait at once; more are refused at once
	// with FullStatus. Default: 256.
	MaxQueue int `json:"max_queue,omitempty"`

	// MaxBody is the largest request body accepted, in bytes; larger bodies get
	// 413. Default: 4 MiB.
	MaxBody int64 `json:"max_body,omitempty"`

	// BodyTimeout bounds how long a request body may take to arrive: this
	// long to start with, and one second more for every bodyMinRate (500)
	// bytes received, the rule of Apache's mod_reqtimeout (body=20,
	// MinRate=500). A body slower than that (a client dripping bytes to
	// hold a connection) gets 408 request_timeout and the connection is
	// closed. Default: 20s.
	BodyTimeout caddy.Duration `json:"body_timeout,omitempty"`

	// FullStatus is the status for "every slot busy after MaxWait" and "queue
	// full": 503 or 429. Default: 503.
	FullStatus int `json:"full_status,omitempty"`

	// Retries is how many times a request that failed to connect, or got a 5xx
	// before any byte reached the client, is retried on the next candidate.
	// Default: 1. Set -1 for none.
	Retries int `json:"retries,omitempty"`

	// DialTimeout bounds connecting to a backend. Default: 3s.
	DialTimeout caddy.Duration `json:"dial_timeout,omitempty"`

	// ResponseHeaderTimeout bounds the wait for a backend's response headers
	// on a non-streaming request. A backend sends those only when the whole
	// generation is done, so this is the longest a non-streaming generation
	// may take; a hung backend is cut after it (504 upstream_timeout, a
	// failure against the backend). Default: 15m.
	ResponseHeaderTimeout caddy.Duration `json:"response_header_timeout,omitempty"`

	// StreamHeaderTimeout bounds the wait for a backend's response headers on
	// a streaming request; model servers start a stream's answer at once, so
	// a long silence there means a hung or overloaded backend. Default: 2m.
	StreamHeaderTimeout caddy.Duration `json:"stream_header_timeout,omitempty"`

	// StreamIdleTimeout is the longest a backend may stay silent once its
	// answer started, so a hung backend cannot hold a slot for ever; and the
	// longest one write to the client may take, so a client that stopped
	// reading cannot either. Default: 60s.
	StreamIdleTimeout caddy.Duration `json:"stream_idle_timeout,omitempty"`

	// MaxFails is how many failures in a row (connect error, 5xx, timeout) put a
	// backend in cooldown. Default: 3.
	MaxFails int `json:"max_fails,omitempty"`

	// FailCooldown is how long a failing backend is skipped before it is tried
	// again. Default: 10s.
	FailCooldown caddy.Duration `json:"fail_cooldown,omitempty"`

	// Pool names the load state this router shares: routers (and, with Redis,
	// gateway replicas) with the same pool name count the same in-flight
	// requests. Default: "default".
	Pool string `json:"pool,omitempty"`

	// Redis, when set, shares load state with every replica of the pool
	// through Redis. Default: none (an in-memory store for this replica).
	Redis *RedisConfig `json:"redis,omitempty"`

	// Backends are the model servers requests are routed to. Upstream addresses
	// come from here only, never from a request.
	Backends []BackendConfig `json:"backends,omitempty"`

	// Alerts tunes the pool's alert rules (see AlertsConfig). Default: every
	// rule on with the defaults documented there.
	Alerts *AlertsConfig `json:"alerts,omitempty"`

	// AlertWebhook, when set, is an http(s) URL that receives every alert
	// transition as a JSON POST (see alertEvent), from a bounded queue with
	// retries and backoff, never on a request's path. Default: none.
	AlertWebhook string `json:"alert_webhook,omitempty"`

	backends  []engine.Backend
	index     map[string]int // backend name → position
	models    []string       // public model names, sorted, for GET /v1/models
	modelSet  map[string]struct{}
	learned   *learnedCache
	caps      map[string]bool
	strategy  *engine.Strategy
	health    *engine.Health
	healthKey string
	proxies   []*backendProxy
	store     loadstate.Store
	storeKey  string
	sketches  *loadstate.Sketches
	learner   *loadstate.Learner
	// healthSharer shares passive health with the other replicas (the Redis
	// store); nil for a replica alone.
	healthSharer loadstate.HealthSharer
	// upstreams lists each backend's distinct upstream model names.
	upstreams [][]string
	queue     *loadstate.WaitQueue
	stopWatch func()
	leaseIDs  leaseIDs
	metrics   *metrics
	bmetrics  []*backendMetrics // per backend, same order as backends
	// failureLogs rate-limit the upstream-failure warnings, per backend.
	failureLogs  []*failureLog
	admission    *loadstate.Admission
	classes      map[string]int // priority class name (lower case) → index
	defaultClass int
	shed         []bool // shed[class]: the class never waits
	// headerValues are the X-Model-Router-Backend values, built once.
	headerValues [][]string
	logger       *zap.Logger

	// overrides are operators' runtime changes (admin API), shared by the
	// pool; view is the backends with them applied (admin_overrides.go).
	overrides loadstate.OverrideStore
	views     *viewCache
	// ops is the pool's operations state: decisions, alerts (admin_pool.go).
	ops *poolOps
}

// BackendConfig is one backend model server.
type BackendConfig struct {
	// Name identifies the backend in metrics, logs, headers and shared state:
	// letters, digits, '.', '_' and '-', at most 64. Required and unique.
	Name string `json:"name"`

	// URL is the backend's base URL, http or https, without the /v1 part of
	// request paths (a path here is prepended to them). Required.
	URL string `json:"url"`

	// Models are the public model names this backend serves, each with the name
	// to send upstream when it differs. The first is used for model "auto".
	Models []ModelName `json:"models,omitempty"`

	// Capabilities rate the backend per task (chat, coding, reasoning, ...) in
	// [0,1]; a missing capability counts as 0.
	Capabilities map[string]float64 `json:"capabilities,omitempty"`

	// MaxInflight is the most requests the backend may have in flight from the
	// whole fleet of gateway replicas. Required, at least 1.
	MaxInflight int `json:"max_inflight"`

	// Context is the largest prompt+completion size in tokens the backend
	// accepts; 0 means no limit. Default: 0.
	Context int `json:"context,omitempty"`

	// Cost is the backend's relative price per request, for the cost scorer; 0
	// means unknown. Default: 0.
	Cost float64 `json:"cost,omitempty"`

	// Weight multiplies the backend's score. Default: 1.
	Weight float64 `json:"weight,omitempty"`

	// TTFT and TPOT are hints of the backend's speed: its time to first
	// token and time per output token. They are the predictions until it
	// has served requests, and the prior the learned latency model starts
	// from. Default: none (a backend without data is predicted like the
	// fleet average).
	TTFT caddy.Duration `json:"ttft,omitempty"`
	TPOT caddy.Duration `json:"tpot,omitempty"`

	// SLOTTFT and SLOLatency override the router's SLOs for this backend.
	SLOTTFT    caddy.Duration `json:"slo_ttft,omitempty"`
	SLOLatency caddy.Duration `json:"slo_latency,omitempty"`

	// MaxTokensInflight, when set, bounds the sum of (prompt-token estimate +
	// max tokens) of the requests in flight on the backend, fleet-wide, like
	// MaxInflight bounds their number. Default: 0 (no token bound).
	MaxTokensInflight int `json:"max_tokens_inflight,omitempty"`

	// APIKey, when set, is sent upstream as "Authorization: Bearer <key>";
	// placeholders such as {env.KEY} are expanded. A client's own Authorization
	// header is never forwarded upstream. Default: none.
	APIKey string `json:"api_key,omitempty"`
}

// ModelName maps a public model name to the upstream's name for it.
type ModelName struct {
	// Public is the name clients send.
	Public string `json:"public"`
	// Upstream is the name sent to the backend. Default: Public.
	Upstream string `json:"upstream,omitempty"`
}

// nameRE limits backend, pool and capability names: they become metric labels,
// response headers and parts of Redis keys.
var nameRE = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

// headerNameRE is an HTTP header field name (RFC 9110 token), at most 64.
var headerNameRE = regexp.MustCompile("^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}$")

const (
	defaultMaxWait               = 2 * time.Second
	defaultMaxQueue              = 256
	defaultMaxBody               = 4 << 20
	defaultBodyTimeout           = 20 * time.Second
	defaultDialTimeout           = 3 * time.Second
	defaultResponseHeaderTimeout = 15 * time.Minute
	defaultStreamHeaderTimeout   = 2 * time.Minute
	defaultStreamIdleTimeout     = 60 * time.Second
	defaultMaxFails              = 3
	defaultFailCooldown          = 10 * time.Second
)

// validate rejects what Provision cannot fix with a default. Each rule lives
// in one check* helper below, which the Caddyfile parser calls too, so that a
// Caddyfile error names its line and JSON gets the same words.
func (h *Handler) validate() error {
	if err := checkStrategy(h.Strategy); err != nil {
		return err
	}
	for _, d := range []struct {
		name string
		v    caddy.Duration
	}{
		{"max_wait", h.MaxWait},
		{"body_timeout", h.BodyTimeout},
		{"dial_timeout", h.DialTimeout},
		{"response_header_timeout", h.ResponseHeaderTimeout},
		{"stream_header_timeout", h.StreamHeaderTimeout},
		{"stream_idle_timeout", h.StreamIdleTimeout},
		{"fail_cooldown", h.FailCooldown},
	} {
		if d.v < 0 {
			return fmt.Errorf("%s must not be negative", d.name)
		}
	}
	if h.MaxQueue < 0 {
		return fmt.Errorf("max_queue must not be negative")
	}
	if h.MaxBody < 0 {
		return fmt.Errorf("max_body must not be negative")
	}
	if h.Weights != nil {
		if err := h.Weights.Validate(); err != nil {
			return err
		}
	}
	if h.Explore > 1 || h.Explore != h.Explore {
		return fmt.Errorf("explore must be a share of at most 1, not %v", h.Explore)
	}
	if h.SLOTTFT < 0 || h.SLOLatency < 0 {
		return fmt.Errorf("slo_ttft and slo_latency must not be negative")
	}
	if h.ExplainHeader != "" && !headerNameRE.MatchString(h.ExplainHeader) {
		return fmt.Errorf("explain_header %q is not a header name", h.ExplainHeader)
	}
	if h.PriorityHeader != "" && !headerNameRE.MatchString(h.PriorityHeader) {
		return fmt.Errorf("priority_header %q is not a header name", h.PriorityHeader)
	}
	if h.PriorityAging < 0 {
		return fmt.Errorf("priority_aging must not be negative")
	}
	if err := checkPriorities(h.Priorities, h.DefaultPriority, h.Sheddable); err != nil {
		return err
	}
	if err := checkOptimalOnly("batch_window", h.BatchWindow, h.Strategy); err != nil {
		return err
	}
	if err := checkBatchWindowFits(h.BatchWindow, h.MaxWait); err != nil {
		return err
	}
	if err := checkOptimalOnly("assign_aging", h.AssignAging, h.Strategy); err != nil {
		return err
	}
	if err := checkFullStatus(h.FullStatus); err != nil {
		return err
	}
	if h.Retries < -1 {
		return fmt.Errorf("retries must be -1 (none) or more, not %d", h.Retries)
	}
	if h.MaxFails < 0 {
		return fmt.Errorf("max_fails must not be negative")
	}
	if err := checkPool(h.Pool); err != nil {
		return err
	}
	if len(h.Backends) == 0 {
		return fmt.Errorf("at least one backend is required")
	}
	if h.Redis != nil {
		if err := h.Redis.validate(); err != nil {
			return err
		}
	}
	if err := h.Alerts.validate(); err != nil {
		return err
	}
	if h.AlertWebhook != "" {
		if err := checkWebhookURL(h.AlertWebhook); err != nil {
			return err
		}
	}
	seen := map[string]bool{}
	for _, b := range h.Backends {
		if err := b.validate(); err != nil {
			return err
		}
		if seen[b.Name] {
			return fmt.Errorf("backend %s is defined twice", b.Name)
		}
		seen[b.Name] = true
	}
	return nil
}

func (b *BackendConfig) validate() error {
	if err := checkBackendName(b.Name); err != nil {
		return err
	}
	if err := checkBackendURL(b.Name, b.URL); err != nil {
		return err
	}
	if b.MaxInflight < 1 {
		return fmt.Errorf("backend %s: max_inflight must be at least 1", b.Name)
	}
	if b.Context < 0 {
		return fmt.Errorf("backend %s: context must not be negative", b.Name)
	}
	if b.Cost < 0 {
		return fmt.Errorf("backend %s: cost must not be negative", b.Name)
	}
	if b.Weight < 0 {
		return fmt.Errorf("backend %s: weight must not be negative", b.Name)
	}
	if b.TTFT < 0 || b.TPOT < 0 || b.SLOTTFT < 0 || b.SLOLatency < 0 {
		return fmt.Errorf("backend %s: ttft, tpot, slo_ttft and slo_latency must not be negative", b.Name)
	}
	if b.MaxTokensInflight < 0 {
		return fmt.Errorf("backend %s: max_tokens_inflight must not be negative", b.Name)
	}
	if len(b.Models) == 0 {
		return fmt.Errorf("backend %s: at least one model is required", b.Name)
	}
	if err := checkModels(b.Name, b.Models); err != nil {
		return err
	}
	_, err := normalizeCapabilities(b.Name, b.Capabilities)
	return err
}

// checkStrategy rejects a strategy the engine does not know.
func checkStrategy(name string) error {
	if names := engine.StrategyNames(); !slices.Contains(names, name) {
		return fmt.Errorf("unknown strategy %q (valid: %s)", name, strings.Join(names, ", "))
	}
	return nil
}

// checkFullStatus allows the two statuses clients know to retry later.
func checkFullStatus(status int) error {
	if status != 503 && status != 429 {
		return fmt.Errorf("full_status must be 503 or 429, not %d", status)
	}
	return nil
}

func checkPool(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("pool %q: use letters, digits, '.', '_' or '-' (at most 64)", name)
	}
	return nil
}

func checkBackendName(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("backend name %q: use letters, digits, '.', '_' or '-' (at most 64)", name)
	}
	return nil
}

// checkBackendURL accepts an absolute http or https base URL that names a host
// and, when it has one, a port in 1-65535: anything else would only fail
// when the first request is dialled.
func checkBackendURL(backend, raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err // "invalid port ... after host" and the like, without repeating the URL
		}
		return fmt.Errorf("backend %s: url %q: %v", backend, raw, err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("backend %s: url %q must be an absolute http:// or https:// URL", backend, raw)
	}
	if u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return fmt.Errorf("backend %s: url %q must not carry a query, fragment or credentials", backend, raw)
	}
	if u.Hostname() == "" {
		return fmt.Errorf("backend %s: url %q names no host", backend, raw)
	}
	if port := u.Port(); port != "" || strings.HasSuffix(u.Host, ":") {
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("backend %s: url %q: port %q must be a number from 1 to 65535", backend, raw, port)
		}
	}
	// Request paths already start with /v1, so a base URL ending in /v1 (as
	// OpenAI SDKs' base_url does) would send /v1/v1/... upstream.
	if strings.HasSuffix(strings.TrimRight(u.Path, "/"), "/v1") {
		return fmt.Errorf("backend %s: url %q ends in /v1, which every request path already starts with: write the base URL without it", backend, raw)
	}
	return nil
}

// checkModels rejects empty, reserved and repeated public model names.
func checkModels(backend string, models []ModelName) error {
	seen := make(map[string]bool, len(models))
	for _, m := range models {
		if m.Public == "" || m.Public == engine.AutoModel {
			return fmt.Errorf("backend %s: model name %q is not allowed", backend, m.Public)
		}
		if seen[m.Public] {
			return fmt.Errorf("backend %s: model %s is listed twice", backend, m.Public)
		}
		seen[m.Public] = true
	}
	return nil
}

// capabilityKey is the form a capability name is compared in: lower case, as
// the X-Model-Router-Capability header is matched, so that "Coding" in a
// config is chosen by a request asking for "CODING".
func capabilityKey(name string) string { return strings.ToLower(name) }

// checkCapability checks one capability's name and score.
func checkCapability(backend, name string, score float64) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("backend %s: capability name %q: use letters, digits, '.', '_' or '-' (at most 64)", backend, name)
	}
	if score < 0 || score > 1 || math.IsNaN(score) {
		return fmt.Errorf("backend %s: capability %s score %s must be a number in [0,1]", backend, name, strconv.FormatFloat(score, 'g', -1, 64))
	}
	return nil
}

func errCapabilityTwice(backend, name string) error {
	return fmt.Errorf("backend %s: capability %s is listed twice (names are case-insensitive)", backend, capabilityKey(name))
}

// normalizeCapabilities checks a backend's capabilities and returns them keyed
// by capabilityKey; two names that differ only in case are an error.
func normalizeCapabilities(backend string, caps map[string]float64) (map[string]float64, error) {
	if caps == nil {
		return nil, nil
	}
	out := make(map[string]float64, len(caps))
	for name, score := range caps {
		if err := checkCapability(backend, name, score); err != nil {
			return nil, err
		}
		key := capabilityKey(name)
		if _, dup := out[key]; dup {
			return nil, errCapabilityTwice(backend, name)
		}
		out[key] = score
	}
	return out, nil
}

// checkPriorities validates the priority classes: names like backend names,
// each once (case-insensitive), and a default and sheddable classes among
// them.
func checkPriorities(classes []string, def string, shed []string) error {
	seen := map[string]bool{}
	for _, c := range classes {
		if !nameRE.MatchString(c) {
			return fmt.Errorf("priority class %q: use letters, digits, '.', '_' or '-' (at most 64)", c)
		}
		k := strings.ToLower(c)
		if seen[k] {
			return fmt.Errorf("priority class %s is listed twice", c)
		}
		seen[k] = true
	}
	if len(classes) == 0 {
		seen[defaultPriorityClass] = true
	}
	if def != "" && !seen[strings.ToLower(def)] {
		return fmt.Errorf("default_priority %q is not one of the priorities", def)
	}
	for _, c := range shed {
		if !seen[strings.ToLower(c)] {
			return fmt.Errorf("sheddable class %q is not one of the priorities", c)
		}
	}
	return nil
}

// checkBatchWindowFits: a batch window at least as long as max_wait would
// hold freed slots until the requests waiting for them time out.
func checkBatchWindowFits(w, maxWait caddy.Duration) error {
	if maxWait <= 0 {
		maxWait = caddy.Duration(defaultMaxWait)
	}
	if w > 0 && w >= maxWait {
		return fmt.Errorf("batch_window %s must be shorter than max_wait %s (a few milliseconds is typical)", time.Duration(w), time.Duration(maxWait))
	}
	return nil
}

// checkOptimalOnly: an option of the optimal strategy's assignment
// (batch_window, assign_aging) only means something to that strategy, and
// is not negative.
func checkOptimalOnly(name string, w caddy.Duration, strategy string) error {
	if w < 0 {
		return fmt.Errorf("%s must not be negative", name)
	}
	if w > 0 && strategy != engine.StrategyOptimal {
		if strategy == "" {
			strategy = engine.DefaultStrategy
		}
		return fmt.Errorf("%s applies to strategy optimal only (strategy is %q)", name, strategy)
	}
	return nil
}

// defaultPriorityClass is the one class there is when none are configured.
const defaultPriorityClass = "normal"
