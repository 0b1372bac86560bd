package caddymodule

import (
	"errors"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/modelrouter/modelrouter/engine"
	"github.com/modelrouter/modelrouter/loadstate"
)

// metrics are created once per process and registered on every Provision;
// Caddy hands each config its own registry, so the same collectors keep
// counting across reloads. Labels are bounded: backend names come from config,
// kinds and outcomes are fixed sets, never user strings.
type metrics struct {
	requests   *prometheus.CounterVec
	attempts   *prometheus.CounterVec
	rejected   *prometheus.CounterVec
	retries    *prometheus.CounterVec
	duration   *prometheus.HistogramVec
	ttft       *prometheus.HistogramVec
	queueDepth prometheus.Gauge
	queueWait  prometheus.Histogram
}

const namespace = "model_router"

// latencyBuckets span 5ms to ~5min: inference answers range from a cached
// embedding to a long reasoning stream.
var latencyBuckets = prometheus.ExponentialBucketsRange(0.005, 300, 20)

var theMetrics = sync.OnceValue(func() *metrics {
	return &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "requests_total",
			Help: "Routed requests by backend, API kind and status class.",
		}, []string{"backend", "kind", "status"}),
		attempts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "attempts_total",
			Help: "Proxy attempts by backend and outcome: success, client_gone, rate_limited, failed, broken, client_error. Only rate_limited, failed and broken count against a backend.",
		}, []string{"backend", "outcome"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "rejected_total",
			Help: "Requests answered by the router itself without reaching a backend, by error code.",
		}, []string{"code"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "retries_total",
			Help: "Requests retried on another backend after this backend failed.",
		}, []string{"backend"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Name: "request_duration_seconds",
			Help: "End-to-end time of routed requests, queueing included.", Buckets: latencyBuckets,
		}, []string{"backend"}),
		ttft: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Name: "time_to_first_token_seconds",
			Help: "Time from sending a streamed request to the backend to its first byte.", Buckets: latencyBuckets,
		}, []string{"backend"}),
		queueDepth: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: namespace, Name: "queue_depth",
			Help: "Requests waiting for a free slot.",
		}),
		queueWait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: namespace, Name: "queue_wait_seconds",
			Help: "Time requests waited for a free slot.", Buckets: prometheus.ExponentialBucketsRange(0.001, 60, 16),
		}),
	}
})

// statusClasses are the values of the requests_total status label.
var statusClasses = [...]string{"aborted", "499", "2xx", "3xx", "4xx", "5xx"}

func statusClassIndex(status int) int {
	switch {
	case status == 0:
		return 0
	case status == 499:
		return 1
	case status < 300:
		return 2
	case status < 400:
		return 3
	case status < 500:
		return 4
	default:
		return 5
	}
}

const kindCount = 4 // engine.KindChat .. engine.KindResponse

// backendMetrics holds one backend's series, looked up once at Provision
// rather than by label values on every request.
type backendMetrics struct {
	duration prometheus.Observer
	ttft     prometheus.Observer
	retries  prometheus.Counter
	// requests are created on first use, so that /metrics lists only the
	// kind and status combinations that happened.
	requests [kindCount][len(statusClasses)]atomic.Pointer[prometheus.Counter]
	// outcomes are created on first use, like requests.
	outcomes [engine.OutcomeCount]atomic.Pointer[prometheus.Counter]
	name     string
}

func (b *backendMetrics) outcome(m *metrics, o engine.Outcome) {
	k := int(o)
	if k >= engine.OutcomeCount {
		return
	}
	p := b.outcomes[k].Load()
	if p == nil {
		counter := m.attempts.WithLabelValues(b.name, o.String())
		p = &counter
		b.outcomes[k].Store(p)
	}
	(*p).Inc()
}

func (m *metrics) forBackend(name string) *backendMetrics {
	return &backendMetrics{
		name:     name,
		duration: m.duration.WithLabelValues(name),
		ttft:     m.ttft.WithLabelValues(name),
		retries:  m.retries.WithLabelValues(name),
	}
}

func (b *backendMetrics) request(m *metrics, kind engine.Kind, status int) {
	k, c := int(kind), statusClassIndex(status)
	if k >= kindCount {
		k = 0
	}
	p := b.requests[k][c].Load()
	if p == nil {
		counter := m.requests.WithLabelValues(b.name, kind.String(), statusClasses[c])
		p = &counter
		b.requests[k][c].Store(p)
	}
	(*p).Inc()
}

func registerMetrics(reg prometheus.Registerer, logger *zap.Logger) *metrics {
	m := theMetrics()
	if reg == nil {
		return m
	}
	for _, c := range []prometheus.Collector{m.requests, m.attempts, m.rejected, m.retries, m.duration, m.ttft, m.queueDepth, m.queueWait, storeCollector{}, opsCollector{}} {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				logger.Warn("registering metric", zap.Error(err))
			}
		}
	}
	return m
}

// storeCollector reports the load stores at scrape time: every backend's
// in-flight count (read then, so it can never be left stale by racing
// updates), and for Redis stores whether the replica is on Redis or degraded
// to local state (the alert), how many replicas it sees, and its Redis command
// counts by purpose.
type storeCollector struct{}

var (
	inflightDesc = prometheus.NewDesc(namespace+"_inflight_requests",
		"Requests in flight per backend: fleet-wide as last seen by this replica with Redis, this replica's own without.",
		[]string{"pool", "backend"}, nil)
	storeModeDesc = prometheus.NewDesc(namespace+"_load_state_mode",
		"1 for the mode the pool's load state is in: redis, local (Redis unreachable, admitting this replica's share), closed or open.",
		[]string{"pool", "mode"}, nil)
	storeDegradedDesc = prometheus.NewDesc(namespace+"_load_state_degraded",
		"1 while the pool's shared load state (Redis) is unreachable and this replica decides alone: the alert.",
		[]string{"pool"}, nil)
	replicasDesc = prometheus.NewDesc(namespace+"_live_replicas",
		"Gateway replicas of the pool that heartbeat into Redis.", []string{"pool"}, nil)
	redisCallsDesc = prometheus.NewDesc(namespace+"_redis_calls_total",
		"Redis round trips by purpose: acquire (the one per request), release (batched), renew, heartbeat, sketch_sync, resync, snapshot; also errors, trips to local mode, freed-slot notices received over pub/sub (wakeup_received), acquires decided locally while Redis was down (local_decision), acquires retried with the same lease after a lost reply (in_doubt_retry), heartbeats that found leases missing (lost_leases) and passive-health news received from other replicas (health_received).",
		[]string{"pool", "kind"}, nil)
)

func (storeCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- inflightDesc
	ch <- storeModeDesc
	ch <- storeDegradedDesc
	ch <- replicasDesc
	ch <- redisCallsDesc
}

func (storeCollector) Collect(ch chan<- prometheus.Metric) {
	seen := map[string]bool{} // two stores of one pool (other key prefixes) would collide
	stores.Range(func(_, v any) bool {
		ps, ok := v.(*pooledStore)
		if !ok || seen[ps.pool] {
			return true
		}
		for _, b := range ps.backendNames() {
			ch <- prometheus.MustNewConstMetric(inflightDesc, prometheus.GaugeValue, float64(ps.store.Inflight(b)), ps.pool, b)
		}
		seen[ps.pool] = true
		rs, ok := ps.store.(*loadstate.RedisStore)
		if !ok {
			return true
		}
		st := rs.Stats()
		for _, m := range []string{loadstate.ModeRedis, loadstate.ModeLocal, loadstate.ModeClosed, loadstate.ModeOpen} {
			ch <- prometheus.MustNewConstMetric(storeModeDesc, prometheus.GaugeValue, boolFloat(st.Mode == m), ps.pool, m)
		}
		ch <- prometheus.MustNewConstMetric(storeDegradedDesc, prometheus.GaugeValue, boolFloat(st.Mode != loadstate.ModeRedis), ps.pool)
		ch <- prometheus.MustNewConstMetric(replicasDesc, prometheus.GaugeValue, float64(rs.LiveReplicas()), ps.pool)
		for kind, n := range map[string]uint64{
			"acquire": st.HotPathCalls, "release": st.Releases, "renew": st.Renewals,
			"heartbeat": st.Heartbeats, "sketch_sync": st.SketchSyncs, "resync": st.Resyncs,
			"snapshot": st.Snapshots, "error": st.Errors, "trip": st.Trips,
			"wakeup_received": st.Wakeups, "local_decision": st.LocalDecisions,
			"in_doubt_retry": st.InDoubtRetries, "lost_leases": st.LostLeases,
			"health_received": st.HealthReceived,
		} {
			ch <- prometheus.MustNewConstMetric(redisCallsDesc, prometheus.CounterValue, float64(n), ps.pool, kind)
		}
		return true
	})
}

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
