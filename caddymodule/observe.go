package caddymodule

import (
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/modelrouter/modelrouter/loadstate"
)

// record feeds a successful attempt's end-to-end latency into the sketches.
func (rt *routing) record(backend int, attemptStart time.Time) {
	rt.h.sketches.Record(rt.h.backends[backend].Name, loadstate.EndToEnd, now().Sub(attemptStart))
}

// recordTTFT feeds a stream's time to first token into the sketches and
// metrics. It runs however the request ended: a client that hangs up right
// after the last event still got its first token when it got it.
func (rt *routing) recordTTFT(backend int, aw *attemptWriter) {
	if !rt.req.Stream || aw.firstByte < 0 || !aw.committed() || aw.status >= 500 {
		return
	}
	rt.h.sketches.Record(rt.h.backends[backend].Name, loadstate.TTFT, aw.firstByte)
	rt.h.bmetrics[backend].ttft.Observe(aw.firstByte.Seconds())
}

// logFields adds routing facts to Caddy's access log entry.
func (rt *routing) logFields(r *http.Request, backend, attempts int, aw *attemptWriter) {
	extra, ok := r.Context().Value(caddyhttp.ExtraLogFieldsCtxKey).(*caddyhttp.ExtraLogFields)
	if !ok {
		return
	}
	extra.Add(zap.String("model_router_backend", rt.h.backends[backend].Name))
	extra.Add(zap.Int("model_router_attempts", attempts))
	extra.Add(zap.Duration("model_router_queue_wait", rt.wait))
	if aw.firstByte >= 0 {
		extra.Add(zap.Duration("model_router_ttft", aw.firstByte))
	}
}
