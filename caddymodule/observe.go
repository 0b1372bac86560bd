package caddymodule

import (
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/time/rate"

	"github.com/modelrouter/modelrouter/engine"
	"github.com/modelrouter/modelrouter/loadstate"
)

// failureLogEvery is how often, at most, an upstream failure is logged at
// warn level per backend; the failures in between are counted in the next
// line's "suppressed" field.
const failureLogEvery = 10 * time.Second

// failureLog rate-limits one backend's upstream-failure warnings.
type failureLog struct {
	every      rate.Sometimes
	suppressed atomic.Int64
}

func newFailureLog() *failureLog {
	return &failureLog{every: rate.Sometimes{Interval: failureLogEvery}}
}

// observeAttempt learns from one attempt's outcome, and only from what it is
// evidence of (see engine.Outcome): passive health, the latency sketches and
// TTFT (successes only), the per-outcome metric, and a rate-limited warning
// with the reason of an upstream failure.
func (rt *routing) observeAttempt(backend int, aw *attemptWriter, o engine.Outcome, attemptStart time.Time, err error) {
	h := rt.h
	name := h.backends[backend].Name
	t := now()
	var retryAfter time.Duration
	if o == engine.OutcomeRateLimited {
		retryAfter = aw.retryAfter()
	}
	h.health.Record(name, o, t, rt.lease.probe, retryAfter)
	rt.lease.probe = false
	bm := h.bmetrics[backend]
	bm.outcome(h.metrics, o)
	if o.Teaches() {
		h.sketches.Record(name, loadstate.EndToEnd, t.Sub(attemptStart))
		if rt.req.Stream && aw.firstByte >= 0 {
			h.sketches.Record(name, loadstate.TTFT, aw.firstByte)
			bm.ttft.Observe(aw.firstByte.Seconds())
		}
		return
	}
	if o.AgainstBackend() {
		rt.logFailure(backend, aw, o, err)
	}
}

// logFailure warns about an upstream failure with its reason (connection
// refused, timeout, status, ...), at most once per failureLogEvery per
// backend. Never the request or the answer's content.
func (rt *routing) logFailure(backend int, aw *attemptWriter, o engine.Outcome, err error) {
	fl := rt.h.failureLogs[backend]
	fl.suppressed.Add(1)
	fl.every.Do(func() {
		var reason string
		switch cause := aw.stopCause(); {
		case cause != nil:
			reason = cause.Error()
		case err != nil:
			reason = err.Error()
		case aw.status != 0:
			reason = "status " + strconv.Itoa(aw.status)
		default:
			reason = "the answer broke off"
		}
		if c := rt.h.logger.Check(zapcore.WarnLevel, "upstream failed"); c != nil {
			c.Write(zap.String("backend", rt.h.backends[backend].Name), zap.String("outcome", o.String()),
				zap.String("reason", reason), zap.Int64("failures_since_last_warning", fl.suppressed.Swap(0)))
		}
	})
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
