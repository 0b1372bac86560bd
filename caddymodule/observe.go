package caddymodule

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
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
	rt.recordAttempt(backend, o)
	name := h.backends[backend].Name
	t := now()
	var retryAfter time.Duration
	if o == engine.OutcomeRateLimited {
		retryAfter = aw.retryAfter()
	}
	if h.health.Record(name, o, t, rt.lease.probe, retryAfter) && h.healthSharer != nil {
		// News for the other replicas' breakers, sent with the next release.
		h.healthSharer.ShareHealth(loadstate.HealthEvent{Backend: name, Outcome: o, Probe: rt.lease.probe, RetryAfter: retryAfter})
	}
	rt.lease.probe = false
	bm := h.bmetrics[backend]
	bm.outcome(h.metrics, o)
	sample := loadstate.LearnSample{Backend: name, Model: h.backends[backend].UpstreamModel(rt.req.Model), Requested: rt.req.Model,
		Outcome: o, Stream: rt.req.Stream, Prompt: rt.req.PromptTokens, Total: t.Sub(attemptStart)}
	if o.Teaches() {
		sample.Output = aw.outputTokens(rt.req.Stream)
		if rt.req.Stream {
			sample.TTFT = aw.firstByte
		}
	}
	h.learner.Record(sample)
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

// explanation describes the decision that sent the request to backend: the
// strategy, then every candidate it ranked, best first, with its score, its
// load and the request's predicted wait, time to first token and completion
// on it ("full" marks a backend the request waited for, "waiting" counts the
// requests in line for it ahead of this one); how long it waited and, when it
// waited for a better backend, how long it was willing to. A predictive
// strategy's explanation ends with the eligible backends it left out of the
// attempt ("left_out": with room but much slower than those it held out for,
// or full and not worth waiting for), with their predictions. Never request
// content; backend names come from configuration.
//
//	strategy=balanced chosen=big; big score=0.7 inflight=1/8 wait=0s ttft=90ms total=2.1s; fast left_out inflight=2/2 waiting=9 full wait=2.2s ttft=2.3s total=2.6s
//	strategy=balanced chosen=fast; fast score=0.9 inflight=1/2 wait=0s ttft=10ms total=520ms; slow score=0.4 left_out inflight=0/8 wait=0s ttft=40ms total=3.1s
func (rt *routing) explanation(backend int) string {
	h := rt.h
	var b strings.Builder
	b.WriteString("strategy=")
	b.WriteString(h.strategy.Name())
	b.WriteString(" chosen=")
	b.WriteString(h.backends[backend].Name)
	if rt.alone {
		b.WriteString(" probe=1")
	}
	if rt.wait > 0 {
		fmt.Fprintf(&b, " waited=%s", rt.wait.Round(time.Millisecond))
	}
	if rt.firstPatience > 0 {
		fmt.Fprintf(&b, " patience=%s", rt.firstPatience.Round(time.Millisecond))
	}
	listed := make([]bool, len(rt.pool.Backends))
	// The backend chosen is never "left out", even when the slot came to a
	// request waiting in the fleet's line from a call that offered none.
	listed[backend] = true
	for _, c := range rt.decision {
		listed[c.Index] = true
		rt.explainCandidate(&b, c.Index, c.Score, "", c.Full, c.Predicted)
	}
	if !h.strategy.Predictive() {
		return b.String()
	}
	// The backends that could serve the request but were left out of the
	// attempt, with what the request was predicted to take on them: ranked
	// with room but much slower than those it held out for, or full and not
	// worth waiting for.
	for _, c := range rt.rest {
		listed[c.Index] = true
		rt.explainCandidate(&b, c.Index, c.Score, " left_out", c.Full, c.Predicted)
	}
	fallback := engine.PoolPerf(&rt.pool)
	for i := range rt.pool.Backends {
		if listed[i] || rt.pool.Backends[i].MaxInflight <= 0 || !h.strategy.Eligible(&rt.req, &rt.pool, i) {
			continue
		}
		l := &rt.pool.Loads[i]
		rt.explainCandidate(&b, i, -1, " left_out", !l.Fits(&rt.pool.Backends[i], &rt.req), engine.Predict(&rt.req, &rt.pool.Backends[i], l, &fallback))
	}
	return b.String()
}

// explainCandidate writes one backend of an explanation: its score (none
// when negative), mark, load, requests waiting ahead for it, and the
// request's predicted timeline on it.
func (rt *routing) explainCandidate(b *strings.Builder, i int, score float64, mark string, full bool, p engine.Prediction) {
	l := &rt.pool.Loads[i]
	b.WriteString("; ")
	b.WriteString(rt.pool.Backends[i].Name)
	if score >= 0 {
		fmt.Fprintf(b, " score=%.3f", score)
	}
	b.WriteString(mark)
	fmt.Fprintf(b, " inflight=%d/%d", l.Inflight, rt.pool.Backends[i].MaxInflight)
	if l.Waiting > 0 {
		fmt.Fprintf(b, " waiting=%d", l.Waiting)
	}
	if full {
		b.WriteString(" full")
	}
	if p.Total > 0 {
		fmt.Fprintf(b, " wait=%s ttft=%s total=%s", p.Wait.Round(time.Millisecond), p.TTFT.Round(time.Millisecond), p.Total.Round(time.Millisecond))
	}
}
