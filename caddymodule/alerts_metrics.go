package caddymodule

import "github.com/prometheus/client_golang/prometheus"

// opsCollector reports, at scrape time, every alert the pools' rules
// evaluate and every backend's effective capacity and drain state (the
// configuration with the operators' overrides), so that dashboards can show
// utilisation. Labels are bounded: rule names are fixed, backends come from
// the configuration.
type opsCollector struct{}

var (
	alertDesc = prometheus.NewDesc(namespace+"_alert",
		"1 while the alert fires (after its condition held for fire_after, until it was clear for resolve_after), 0 otherwise. backend is empty for pool-wide alerts.",
		[]string{"pool", "alert", "backend"}, nil)
	capacityDesc = prometheus.NewDesc(namespace+"_backend_capacity",
		"A backend's max_inflight as applied now: the configuration's, or an operator's override.",
		[]string{"pool", "backend"}, nil)
	drainedDesc = prometheus.NewDesc(namespace+"_backend_drained",
		"1 while an operator drains the backend (no new requests on any replica).",
		[]string{"pool", "backend"}, nil)
)

func (opsCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- alertDesc
	ch <- capacityDesc
	ch <- drainedDesc
}

func (opsCollector) Collect(ch chan<- prometheus.Metric) {
	seen := map[string]bool{}
	for _, p := range poolsByName() {
		if seen[p.pool] {
			continue // two stores of one pool name would collide
		}
		seen[p.pool] = true
		for _, a := range p.alerts.snapshot() {
			ch <- prometheus.MustNewConstMetric(alertDesc, prometheus.GaugeValue, boolFloat(a.State == "firing"), p.pool, a.Alert, a.Backend)
		}
		h := p.router()
		if h == nil {
			continue
		}
		view := h.currentView()
		for i := range view.backends {
			name := view.backends[i].Name
			ch <- prometheus.MustNewConstMetric(capacityDesc, prometheus.GaugeValue, float64(view.backends[i].MaxInflight), p.pool, name)
			ch <- prometheus.MustNewConstMetric(drainedDesc, prometheus.GaugeValue, boolFloat(view.drained[i]), p.pool, name)
		}
	}
}
