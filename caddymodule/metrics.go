package caddymodule

import (
	"errors"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// metrics are created once per process and registered on every Provision;
// Caddy hands each config its own registry, so the same collectors keep
// counting across reloads. Labels are bounded: backend names come from config,
// kinds and outcomes are fixed sets, never user strings.
type metrics struct {
	requests   *prometheus.CounterVec
	rejected   *prometheus.CounterVec
	retries    *prometheus.CounterVec
	duration   *prometheus.HistogramVec
	ttft       *prometheus.HistogramVec
	inflight   *prometheus.GaugeVec
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
		inflight: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: namespace, Name: "inflight_requests",
			Help: "Requests in flight per backend, fleet-wide as last seen by this replica.",
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

func registerMetrics(reg prometheus.Registerer, logger *zap.Logger) *metrics {
	m := theMetrics()
	if reg == nil {
		return m
	}
	for _, c := range []prometheus.Collector{m.requests, m.rejected, m.retries, m.duration, m.ttft, m.inflight, m.queueDepth, m.queueWait} {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				logger.Warn("registering metric", zap.Error(err))
			}
		}
	}
	return m
}
