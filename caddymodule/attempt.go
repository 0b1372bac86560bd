package caddymodule

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/modelrouter/modelrouter/engine"
	"github.com/modelrouter/modelrouter/loadstate"
)

// Why the router itself cut an attempt short (the attempt context's cause).
var (
	errHeaderTimeout = errors.New("the backend sent no response headers in time")
	errIdleTimeout   = errors.New("the backend went silent in the middle of its answer")
	errClientStalled = errors.New("the client stopped reading the answer")
)

// proxy sends the request to the backend holding our slot. An attempt whose
// outcome is retryable (see engine.Outcome) and of which nothing reached the
// client is retried on the next candidate with room, up to Retries times;
// when no retry can happen after all, the upstream's own answer (held back
// meanwhile) is passed on, Retry-After included.
func (rt *routing) proxy(w http.ResponseWriter, r *http.Request, backend int) error {
	h := rt.h
	aw := new(attemptWriter)
	attempts := 0
	var status int
	var attemptStart time.Time
	finished := false
	defer func() {
		if !finished {
			// The proxy aborted an answer that had started reaching the
			// client (http.ErrAbortHandler, re-raised after this).
			var o engine.Outcome
			o, status = rt.outcome(aw, r, nil, true)
			rt.observeAttempt(backend, aw, o, attemptStart, nil)
		}
		rt.logFields(r, backend, attempts, aw)
		bm := h.bmetrics[backend]
		bm.request(h.metrics, rt.req.Kind, status)
		bm.duration.Observe(now().Sub(rt.start).Seconds())
	}()
	for {
		attempts++
		canRetry := attempts <= h.Retries && rt.alternativeExists(backend)
		attemptStart = now()
		aw.reset(w, h.backends[backend].Name, h.headerValues[backend], attemptStart, canRetry)
		rt.setBody(r, backend)
		err, aborted := rt.attempt(aw, r, backend)
		var o engine.Outcome
		o, status = rt.outcome(aw, r, err, aborted)
		rt.observeAttempt(backend, aw, o, attemptStart, err)

		switch {
		case o == engine.OutcomeClientGone:
			if !aw.committed() {
				w.WriteHeader(499) // for the access log; nobody reads it
			}
		case o.Retryable() && !aw.committed():
			if canRetry {
				if next := rt.retry(backend); next >= 0 {
					backend = next
					continue
				}
			}
			if aw.held {
				// No other backend could take it: the client gets the
				// upstream's own answer (and its Retry-After), not ours.
				_ = aw.release()
				break
			}
			rt.upstreamError(status, backend).write(w)
		case err != nil && !aw.wroteHeader:
			rt.upstreamError(status, backend).write(w)
		}
		finished = true
		return nil
	}
}

// retry moves the request's slot to the next candidate after backend failed
// it, without waiting. It returns the new backend, or -1 when none had room.
func (rt *routing) retry(failed int) int {
	h := rt.h
	if rt.tried == nil {
		rt.tried = loadstate.NewBackendSet(len(h.backends))
	}
	rt.tried.Add(failed)
	rt.retrying = true
	rt.lease.release()
	h.bmetrics[failed].retries.Inc()
	rt.loadPool()
	ranked, _ := h.strategy.Rank(&rt.req, &rt.pool, rt.sc.cands[:0])
	rt.sc.cands = withoutFull(ranked)
	rt.sc.try = rt.sc.try[:0]
	for _, c := range rt.sc.cands {
		rt.sc.try = append(rt.sc.try, c.Index)
	}
	ctx, cancel := context.WithTimeout(rt.ctx, time.Duration(h.MaxWait))
	defer cancel()
	w := &loadstate.Waiter{ID: rt.id, Slots: rt.slots, Settle: rt.settle}
	next, err := h.admission.TryNow(ctx, w, rt.sc.try)
	if err != nil || next < 0 {
		return -1
	}
	rt.lease.backend = next
	rt.lease.keepAlive()
	return next
}

// upstreamError is the gateway's own answer for an attempt that failed
// without an answer of the backend to pass on.
func (rt *routing) upstreamError(status, backend int) *apiError {
	name := rt.h.backends[backend].Name
	if status == http.StatusGatewayTimeout {
		return serverError(status, "upstream_timeout", "backend "+name+" did not answer in time")
	}
	return serverError(http.StatusBadGateway, "upstream_error", "backend "+name+" failed")
}

// attempt runs one proxy attempt on backend, under a context of its own that
// the router cancels (with a cause) when the backend sends no headers within
// the response header timeout, or goes silent for StreamIdleTimeout once it
// started answering, or the client stops reading for as long: a hung backend
// or a stuck client must not hold a slot for ever.
//
// The proxy aborts an answer that breaks after its headers by panicking with
// http.ErrAbortHandler. While the answer is held back (nothing reached the
// client), that panic is taken here and reported as aborted, so the request
// can still be retried; otherwise it propagates, as net/http expects.
func (rt *routing) attempt(aw *attemptWriter, r *http.Request, backend int) (err error, aborted bool) {
	ctx, cancel := context.WithCancelCause(r.Context())
	defer cancel(nil)
	sig := new(attemptSignals)
	aw.sig = sig
	stop := func(c error) {
		if sig.stop(c) {
			cancel(c)
		}
	}
	aw.watchIdle(time.Duration(rt.h.StreamIdleTimeout), stop)
	defer aw.stopIdle()
	if d := rt.h.headerTimeout(&rt.req); d > 0 {
		t := time.AfterFunc(d, func() {
			if !sig.gotHeader.Load() {
				stop(errHeaderTimeout)
			}
		})
		defer t.Stop()
	}
	defer func() {
		if p := recover(); p != nil {
			if p != http.ErrAbortHandler || aw.committed() {
				panic(p)
			}
			aborted = true
		}
	}()
	return rt.h.proxies[backend].rp.ServeHTTP(aw, r.WithContext(ctx), noNext), false
}

// outcome classifies the attempt that just ended (see engine.Outcome), and
// returns the status to log and, for a failure without an answer, to answer
// with. err is what the proxy returned; aborted says it aborted the answer.
func (rt *routing) outcome(aw *attemptWriter, r *http.Request, err error, aborted bool) (engine.Outcome, int) {
	cause := aw.stopCause()
	switch {
	case cause == errClientStalled:
		return engine.OutcomeClientGone, 499
	case r.Context().Err() != nil && (err != nil || aborted || !aw.wroteHeader):
		// The client left before the answer was complete: not the
		// backend's fault. A client that hangs up once the whole answer
		// is through is a success, and is recorded as one: for a stream,
		// once its terminal event reached the client, even if the
		// backend had not closed the response yet.
		if aw.streamEnded && !aw.writeFailed {
			return engine.StatusOutcome(aw.status), aw.status
		}
		return engine.OutcomeClientGone, 499
	case aw.held:
		// A retryable answer held back: judged by its status, whatever
		// happened to its body.
		return engine.StatusOutcome(aw.status), aw.status
	case cause == errIdleTimeout:
		return engine.OutcomeBroken, aw.status
	case !aw.wroteHeader && (err != nil || aborted):
		if cause == errHeaderTimeout {
			return engine.OutcomeFailed, http.StatusGatewayTimeout
		}
		return engine.OutcomeFailed, errorStatus(err)
	case aborted || err != nil:
		// The answer started and did not finish.
		if aw.writeFailed {
			return engine.OutcomeClientGone, aw.status
		}
		return engine.OutcomeBroken, aw.status
	}
	return engine.StatusOutcome(aw.status), aw.status
}

// alternativeExists reports whether another backend could take a retry.
func (rt *routing) alternativeExists(current int) bool {
	for i := range rt.h.backends {
		if i != current && !rt.tried.Has(i) && rt.h.strategy.Eligible(&rt.req, &rt.pool, i) &&
			rt.pool.Loads[i].Fits(&rt.h.backends[i], &rt.req) {
			return true
		}
	}
	return false
}

func errorStatus(err error) int {
	var he caddyhttp.HandlerError
	if errors.As(err, &he) && he.StatusCode != 0 && he.StatusCode != 499 {
		return he.StatusCode
	}
	return http.StatusBadGateway
}

// headerTimeout is how long an attempt of req waits for response headers.
func (h *Handler) headerTimeout(req *engine.Request) time.Duration {
	if req.Stream {
		return time.Duration(h.StreamHeaderTimeout)
	}
	return time.Duration(h.ResponseHeaderTimeout)
}
