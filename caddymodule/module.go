package caddymodule

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	mrand "math/rand/v2"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/modelrouter/modelrouter/engine"
	"github.com/modelrouter/modelrouter/loadstate"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.model_router",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision sets defaults and builds the router's parts.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	if h.Strategy == "" {
		h.Strategy = "balanced"
	}
	if h.MaxWait == 0 {
		h.MaxWait = caddy.Duration(defaultMaxWait)
	}
	if h.MaxQueue == 0 {
		h.MaxQueue = defaultMaxQueue
	}
	if h.MaxBody == 0 {
		h.MaxBody = defaultMaxBody
	}
	if h.BodyTimeout == 0 {
		h.BodyTimeout = caddy.Duration(defaultBodyTimeout)
	}
	if h.FullStatus == 0 {
		h.FullStatus = 503
	}
	if h.Retries == 0 {
		h.Retries = 1
	}
	if h.DialTimeout == 0 {
		h.DialTimeout = caddy.Duration(defaultDialTimeout)
	}
	if h.ResponseHeaderTimeout == 0 {
		h.ResponseHeaderTimeout = caddy.Duration(defaultResponseHeaderTimeout)
	}
	if h.StreamHeaderTimeout == 0 {
		h.StreamHeaderTimeout = caddy.Duration(defaultStreamHeaderTimeout)
	}
	if h.StreamIdleTimeout == 0 {
		h.StreamIdleTimeout = caddy.Duration(defaultStreamIdleTimeout)
	}
	if h.MaxFails == 0 {
		h.MaxFails = defaultMaxFails
	}
	if h.FailCooldown == 0 {
		h.FailCooldown = caddy.Duration(defaultFailCooldown)
	}
	if h.Pool == "" {
		h.Pool = "default"
	}
	if h.PriorityAging == 0 {
		h.PriorityAging = caddy.Duration(loadstate.DefaultAging)
	}
	if err := h.validate(); err != nil {
		return err
	}

	strategy, err := engine.NewStrategyWith(h.Strategy, engine.StrategyOptions{
		Rand:    pcgRand{r: mrand.New(mrand.NewPCG(seed(), seed()))},
		Weights: h.Weights,
		Explore: h.Explore,
	})
	if err != nil {
		return err
	}
	h.strategy = strategy
	// Passive health survives reloads like the load state does: a backend in
	// cooldown stays there when an unrelated line of the config changes.
	h.healthKey = fmt.Sprintf("%s|%d|%v", h.Pool, h.MaxFails, time.Duration(h.FailCooldown))
	hv, _, _ := healths.LoadOrNew(h.healthKey, func() (caddy.Destructor, error) {
		return pooledHealth{engine.NewHealth(h.MaxFails, time.Duration(h.FailCooldown))}, nil
	})
	h.health = hv.(pooledHealth).Health

	repl := caddy.NewReplacer()
	h.index = make(map[string]int, len(h.Backends))
	h.caps = make(map[string]bool)
	models := map[string]bool{}
	for i, bc := range h.Backends {
		// Lower case, as the capability header is matched (validate has
		// rejected names that differ only in case).
		caps, _ := normalizeCapabilities(bc.Name, bc.Capabilities)
		b := engine.Backend{
			Name:              bc.Name,
			Models:            make(map[string]string, len(bc.Models)),
			Capabilities:      caps,
			MaxInflight:       bc.MaxInflight,
			MaxTokensInflight: bc.MaxTokensInflight,
			Context:           bc.Context,
			Cost:              bc.Cost,
			Weight:            bc.Weight,
		}
		for j, m := range bc.Models {
			up := m.Upstream
			if up == "" {
				up = m.Public
			}
			b.Models[m.Public] = up
			if j == 0 {
				b.DefaultModel = up
			}
			models[m.Public] = true
		}
		for c, v := range caps {
			if v > 0 {
				h.caps[c] = true
			}
		}
		h.backends = append(h.backends, b)
		h.index[bc.Name] = i
		apiKey := repl.ReplaceAll(bc.APIKey, "")
		if bc.APIKey != "" && strings.TrimSpace(apiKey) == "" {
			// Most likely {env.X} with X unset: requests would go upstream
			// without credentials and fail there with a puzzling 401. Neither
			// the configured text nor its expansion is logged: either may
			// hold the key.
			h.logger.Warn("backend api_key is set but expands to nothing (an unset environment variable?): requests to this backend carry no Authorization header",
				zap.String("backend", bc.Name))
			apiKey = ""
		}
		proxy, err := newBackendProxy(ctx, h, bc, apiKey)
		if err != nil {
			return fmt.Errorf("backend %s: %w", bc.Name, err)
		}
		h.proxies = append(h.proxies, proxy)
	}
	h.modelSet = make(map[string]struct{}, len(models))
	for m := range models {
		h.models = append(h.models, m)
		h.modelSet[m] = struct{}{}
	}
	sort.Strings(h.models)

	if err := h.provisionStore(ctx); err != nil {
		return err
	}
	if hs, ok := h.store.(loadstate.HealthSharer); ok {
		// Other replicas' evidence feeds this pool's breakers as if it were
		// this replica's own.
		h.healthSharer = hs
		health := h.health
		hs.SetHealthSink(func(ev loadstate.HealthEvent) {
			health.Record(ev.Backend, ev.Outcome, now(), ev.Probe, ev.RetryAfter)
		})
	}
	h.learned = new(learnedCache)
	h.upstreams = make([][]string, len(h.backends))
	for i, bc := range h.Backends {
		h.learner.SetHints(bc.Name, engine.Perf{TTFTBase: time.Duration(bc.TTFT), TPOT: time.Duration(bc.TPOT)})
		seen := map[string]bool{}
		for _, up := range h.backends[i].Models {
			if !seen[up] {
				seen[up] = true
				h.upstreams[i] = append(h.upstreams[i], up)
			}
		}
		sort.Strings(h.upstreams[i])
	}
	h.setupClasses()
	if ov, ok := h.store.(loadstate.OverrideStore); ok {
		h.overrides = ov
	}
	h.views = new(viewCache)
	h.currentView()
	h.queue = loadstate.NewWaitQueueWith(loadstate.QueueOptions{
		Max: h.MaxQueue, Aging: time.Duration(h.PriorityAging), Assign: h.strategy.Assigns(), Now: now,
		AssignAging: time.Duration(h.AssignAging), BatchWindow: time.Duration(h.BatchWindow),
	})
	h.stopWatch = h.store.Watch(h.onRelease)
	h.leaseIDs.init()
	h.metrics = registerMetrics(ctx.GetMetricsRegistry(), h.logger)
	if rs, ok := h.store.(*loadstate.RedisStore); ok {
		rs.SetQueueMode(h.strategy.Assigns(), time.Duration(h.AssignAging))
	}
	h.admission = loadstate.NewAdmission(loadstate.AdmissionOptions{
		Store: h.store, Queue: h.queue, Backends: len(h.backends),
		Free: func(i int) int {
			b := &h.currentView().backends[i] // max_inflight as overridden
			return b.MaxInflight - h.store.Inflight(b.Name)
		},
		Entered: func() { h.metrics.queueDepth.Inc() },
		Left: func(waited time.Duration) {
			h.metrics.queueDepth.Dec()
			h.metrics.queueWait.Observe(waited.Seconds())
		},
	})
	for i := range h.backends {
		h.bmetrics = append(h.bmetrics, h.metrics.forBackend(h.backends[i].Name))
		h.headerValues = append(h.headerValues, []string{h.backends[i].Name})
		h.failureLogs = append(h.failureLogs, newFailureLog())
	}
	h.provisionOps()
	return nil
}

// Cleanup releases what Provision built. Requests still in flight on this
// (old) config keep running: the store they hold slots in is shared through a
// UsagePool and outlives this handler until its last user is gone.
func (h *Handler) Cleanup() error {
	if h.stopWatch != nil {
		// Requests still waiting under this (old) config go on being woken
		// by releases until they are gone, at most MaxWait from now.
		stop, queue := h.stopWatch, h.queue
		deadline := time.Now().Add(time.Duration(h.MaxWait) + time.Second)
		go func() {
			for queue.Len() > 0 && time.Now().Before(deadline) {
				time.Sleep(50 * time.Millisecond)
			}
			stop()
		}()
	}
	for _, p := range h.proxies {
		p.cleanup()
	}
	h.releaseOps()
	h.releaseStore()
	if h.healthKey != "" {
		_, _ = healths.Delete(h.healthKey)
	}
	return nil
}

// setupClasses indexes the priority classes (highest first), the default
// class and the classes that never wait.
func (h *Handler) setupClasses() {
	names := h.Priorities
	if len(names) == 0 {
		names = []string{defaultPriorityClass}
	}
	h.classes = make(map[string]int, len(names))
	for i, c := range names {
		h.classes[strings.ToLower(c)] = i
	}
	def := h.DefaultPriority
	if def == "" {
		def = defaultPriorityClass
	}
	if i, ok := h.classes[strings.ToLower(def)]; ok {
		h.defaultClass = i
	} else {
		h.defaultClass = len(names) / 2
	}
	h.shed = make([]bool, len(names))
	shed := h.Sheddable
	if len(shed) == 0 {
		shed = []string{"sheddable"}
	}
	for _, c := range shed {
		if i, ok := h.classes[strings.ToLower(c)]; ok {
			h.shed[i] = true
		}
	}
}

// healths holds passive-health state by pool and settings, across reloads.
var healths = caddy.NewUsagePool()

type pooledHealth struct{ *engine.Health }

func (pooledHealth) Destruct() error { return nil }

// onRelease wakes the oldest waiter that can use the backend a slot was just
// released on.
func (h *Handler) onRelease(backend string) {
	if i, ok := h.index[backend]; ok {
		h.queue.Notify(i)
	}
}

// leaseIDs makes lease ids: a random per-process prefix and a counter, unique
// across replicas without a random read per request. Ids never come from clients.
type leaseIDs struct {
	prefix string
}

var processLeasePrefix = sync.OnceValue(func() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
})

func (l *leaseIDs) init() { l.prefix = processLeasePrefix() + "-" }

func (l *leaseIDs) next() string {
	return l.prefix + strconv.FormatUint(leaseCounter.Add(1), 36)
}

// leaseCounter is process-wide so ids stay unique across config reloads.
var leaseCounter atomic.Uint64

func seed() uint64 {
	var b [8]byte
	_, _ = rand.Read(b[:])
	var v uint64
	for _, x := range b {
		v = v<<8 | uint64(x)
	}
	return v
}

// pcgRand adapts math/rand/v2 to engine.Rand; the strategy serialises access.
type pcgRand struct{ r *mrand.Rand }

func (p pcgRand) Intn(n int) int { return p.r.IntN(n) }

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
