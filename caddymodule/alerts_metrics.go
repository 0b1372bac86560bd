package caddymodule

import "github.com/prometheus/client_golang/prometheus"

// alertCollector reports every alert the pools' rules evaluate, at scrape
// time: model_router_alert{pool,alert,backend} is 1 while it fires, 0
// otherwise. Labels are bounded: rule names are fixed, backends come from
// the configuration.
type alertCollector struct{}

var alertDesc = prometheus.NewDesc(namespace+"_alert",
	"1 while the alert fires (after its condition held for fire_after, until it was clear for resolve_after), 0 otherwise. backend is empty for pool-wide alerts.",
	[]string{"pool", "alert", "backend"}, nil)

func (alertCollector) Describe(ch chan<- *prometheus.Desc) { ch <- alertDesc }

func (alertCollector) Collect(ch chan<- prometheus.Metric) {
	seen := map[string]bool{}
	for _, p := range poolsByName() {
		if seen[p.pool] {
			continue // two stores of one pool name would collide
		}
		seen[p.pool] = true
		for _, a := range p.alerts.snapshot() {
			ch <- prometheus.MustNewConstMetric(alertDesc, prometheus.GaugeValue, boolFloat(a.State == "firing"), p.pool, a.Alert, a.Backend)
		}
	}
}
