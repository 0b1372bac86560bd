package caddymodule

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/modelrouter/modelrouter/loadstate"
)

// proxy sends the request to the backend holding our slot, retrying once on
// the next candidate when the backend failed before any byte reached the
// client.
func (rt *routing) proxy(w http.ResponseWriter, r *http.Request, backend int) error {
	h := rt.h
	aw := new(attemptWriter)
	attempts := 0
	var status int
	defer func() {
		// Runs on panics too (the proxy aborts broken streams with
		// http.ErrAbortHandler, which must propagate).
		rt.logFields(r, backend, attempts, aw)
		rt.recordTTFT(backend, aw)
		bm := h.bmetrics[backend]
		bm.request(h.metrics, rt.req.Kind, status)
		bm.duration.Observe(now().Sub(rt.start).Seconds())
	}()
	for {
		attempts++
		name := h.backends[backend].Name
		canRetry := attempts <= h.Retries && rt.alternativeExists(backend)
		attemptStart := now()
		aw.reset(w, name, h.headerValues[backend], attemptStart, canRetry)
		rt.setBody(r, backend)
		status = 0
		err := rt.attempt(aw, r, backend)
		status = aw.status
		if err != nil && !aw.wroteHeader {
			status = errorStatus(err)
		}
		failed := status >= 500 || (err != nil && !aw.committed())
		if status == 499 || ((err != nil || failed) && errors.Is(r.Context().Err(), context.Canceled)) {
			// The client left before the answer was complete: not the
			// backend's fault. (A client that hangs up once the whole
			// answer is through is a success, and is recorded as one.)
			return nil
		}
		if failed {
			h.health.Fail(name, now())
		} else {
			h.health.Succeed(name)
			rt.record(backend, attemptStart)
		}
		if failed && !aw.committed() && canRetry {
			if rt.tried == nil {
				rt.tried = loadstate.NewBackendSet(len(h.backends))
			}
			rt.tried.Add(backend)
			rt.lease.release()
			h.bmetrics[backend].retries.Inc()
			rt.loadPool()
			ranked, _ := h.strategy.Rank(&rt.req, &rt.pool, rt.sc.cands[:0])
			rt.sc.cands = ranked
			next, apiErr := rt.tryAcquire(r.Context(), ranked, nil)
			if next >= 0 {
				backend = next
				continue
			}
			if apiErr == nil {
				apiErr = serverError(http.StatusBadGateway, "upstream_error", "backend "+name+" failed and no other backend had room to retry")
			}
			status = apiErr.Status
			apiErr.write(w)
			return nil
		}
		if err != nil && !aw.wroteHeader {
			e := serverError(status, "upstream_error", "backend "+name+" failed")
			if status == http.StatusGatewayTimeout {
				e.Code = "upstream_timeout"
				e.Message = "backend " + name + " did not answer in time"
			}
			e.write(w)
			return nil
		}
		if err != nil {
			if c := h.logger.Check(zapcore.DebugLevel, "proxying after the response started"); c != nil {
				c.Write(zap.String("backend", name), zap.Error(err))
			}
		}
		return nil
	}
}

// attempt runs one proxy attempt on backend. The upstream request gets a
// context of its own, cancelled when the backend stays silent for
// StreamIdleTimeout after its response started, so that a hung backend cannot
// hold a slot forever; the proxy then aborts the response (the client sees a
// broken stream) and the slot is released.
func (rt *routing) attempt(aw *attemptWriter, r *http.Request, backend int) error {
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	aw.watchIdle(time.Duration(rt.h.StreamIdleTimeout), cancel)
	defer aw.stopIdle()
	return rt.h.proxies[backend].rp.ServeHTTP(aw, r.WithContext(ctx), noNext)
}

// alternativeExists reports whether another backend could take a retry.
func (rt *routing) alternativeExists(current int) bool {
	for i := range rt.h.backends {
		if i != current && !rt.tried.Has(i) && rt.h.strategy.Eligible(&rt.req, &rt.pool, i) &&
			rt.pool.Loads[i].Inflight < rt.h.backends[i].MaxInflight {
			return true
		}
	}
	return false
}

func errorStatus(err error) int {
	var he caddyhttp.HandlerError
	if errors.As(err, &he) && he.StatusCode != 0 {
		return he.StatusCode
	}
	return http.StatusBadGateway
}
