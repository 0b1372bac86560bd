package caddymodule

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/modelrouter/modelrouter/engine"
	"github.com/modelrouter/modelrouter/loadstate"
)

const (
	backendHeader    = "X-Model-Router-Backend"
	capabilityHeader = "X-Model-Router-Capability"
)

// now is the clock, replaceable in tests.
var now = time.Now

// renewTimeout bounds one lease renewal of a long request.
const renewTimeout = 2 * time.Second

// waitPoll is how often a waiting request re-checks for room without a wake-up:
// the safety net for wake-ups lost between a failed acquire and joining the queue,
// and for slots freed by other replicas when their notices are late.
const waitPoll = 100 * time.Millisecond

var kinds = map[string]engine.Kind{
	"/v1/chat/completions": engine.KindChat,
	"/v1/completions":      engine.KindCompletion,
	"/v1/embeddings":       engine.KindEmbedding,
	"/v1/responses":        engine.KindResponse,
}

// ServeHTTP routes OpenAI API requests; other paths go to the next handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	path := r.URL.Path
	if kind, ok := kinds[path]; ok {
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", http.MethodPost)
			invalidRequest(http.StatusMethodNotAllowed, "method_not_allowed", "", "use POST for "+path).write(w)
			return nil
		}
		return h.route(w, r, kind)
	}
	if path == "/v1/models" || strings.HasPrefix(path, "/v1/models/") {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			invalidRequest(http.StatusMethodNotAllowed, "method_not_allowed", "", "use GET for "+path).write(w)
			return nil
		}
		h.serveModels(w, strings.TrimPrefix(strings.TrimPrefix(path, "/v1/models"), "/"))
		return nil
	}
	if path == "/v1" || strings.HasPrefix(path, "/v1/") {
		invalidRequest(http.StatusNotFound, "unknown_url", "", "the model router does not serve "+r.Method+" "+path).write(w)
		return nil
	}
	return next.ServeHTTP(w, r)
}

// scratch holds per-request buffers, reused across requests.
type scratch struct {
	loads []engine.Load
	cands []engine.Candidate
	slots []loadstate.Slot
	idx   []int
}

var scratchPool = sync.Pool{New: func() any { return new(scratch) }}

// routing is the state of one routed request.
type routing struct {
	h     *Handler
	req   engine.Request
	c     classified
	body  []byte
	id    string
	start time.Time
	sc    *scratch
	pool  engine.Pool
	tried loadstate.BackendSet
	wait  time.Duration
	lease lease
}

// lease is a held slot; release is idempotent.
type lease struct {
	h       *Handler
	id      string
	backend int // -1 when none is held
	renew   *time.Timer
	done    *atomic.Bool // set on release, so an in-flight renewal does not re-arm
}

func (l *lease) release() {
	if l.backend < 0 {
		return
	}
	if l.renew != nil {
		l.done.Store(true)
		l.renew.Stop()
		l.renew, l.done = nil, nil
	}
	name := l.h.backends[l.backend].Name
	// Detached from the request: a client that went away still gets its slot
	// released. Stores never block in Release (shared ones apply it in the
	// background), so no timeout is needed here.
	err := l.h.store.Release(context.Background(), l.id, name)
	if err != nil {
		if c := l.h.logger.Check(zapcore.WarnLevel, "releasing slot"); c != nil {
			c.Write(zap.String("backend", name), zap.Error(err))
		}
	}
	l.backend = -1
}

// keepAlive renews the lease at a third of its lifetime for as long as the
// request runs, so a long stream is not mistaken for an abandoned slot.
func (l *lease) keepAlive() {
	ttl := l.h.store.LeaseTTL()
	if ttl <= 0 || l.backend < 0 {
		return
	}
	backend, id, store := l.h.backends[l.backend].Name, l.id, l.h.store
	done := new(atomic.Bool)
	var timer *time.Timer
	// Armed only after timer is assigned, so the callback always sees it.
	timer = time.AfterFunc(time.Duration(1<<62), func() {
		if done.Load() {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), renewTimeout)
		_ = store.Renew(ctx, id, backend)
		cancel()
		if !done.Load() {
			timer.Reset(ttl / 3)
		}
	})
	timer.Reset(ttl / 3)
	l.renew, l.done = timer, done
}

func (h *Handler) route(w http.ResponseWriter, r *http.Request, kind engine.Kind) error {
	start := now()
	body, apiErr := h.readBody(r)
	if apiErr != nil {
		h.metrics.rejected.WithLabelValues(apiErr.Code).Inc()
		apiErr.write(w)
		return nil
	}
	c, apiErr := classify(body, kind)
	if apiErr == nil {
		apiErr = h.checkModel(r, &c.req)
	}
	if apiErr != nil {
		h.metrics.rejected.WithLabelValues(apiErr.Code).Inc()
		apiErr.write(w)
		return nil
	}

	sc := scratchPool.Get().(*scratch)
	defer scratchPool.Put(sc)
	rt := &routing{h: h, req: c.req, c: c, body: body, start: start, sc: sc, id: h.leaseIDs.next()}
	rt.lease = lease{h: h, id: rt.id, backend: -1}
	defer rt.lease.release()

	backend, apiErr := rt.acquire(r.Context())
	if apiErr != nil {
		if apiErr.Status == 499 {
			w.WriteHeader(499) // the client left while waiting; nobody reads a body
			return nil
		}
		h.metrics.rejected.WithLabelValues(apiErr.Code).Inc()
		apiErr.write(w)
		return nil
	}
	return rt.proxy(w, r, backend)
}

// readBody reads the whole body, at most MaxBody bytes, once: it is needed to
// classify the request and is replayed on a retry.
func (h *Handler) readBody(r *http.Request) ([]byte, *apiError) {
	if r.ContentLength > h.MaxBody {
		return nil, invalidRequest(http.StatusRequestEntityTooLarge, "request_too_large", "", "the request body is larger than the gateway accepts")
	}
	if r.ContentLength > 0 {
		// The usual case: one exact allocation, then a check that the body
		// really ends where the client said it would.
		body := make([]byte, r.ContentLength)
		if _, err := io.ReadFull(r.Body, body); err != nil {
			return nil, invalidRequest(http.StatusBadRequest, "invalid_body", "", "reading the request body failed")
		}
		var probe [1]byte
		if n, _ := r.Body.Read(probe[:]); n > 0 {
			return nil, invalidRequest(http.StatusBadRequest, "invalid_body", "", "the request body is longer than its Content-Length")
		}
		return body, nil
	}
	var buf bytes.Buffer
	n, err := buf.ReadFrom(io.LimitReader(r.Body, h.MaxBody+1))
	if err != nil {
		return nil, invalidRequest(http.StatusBadRequest, "invalid_body", "", "reading the request body failed")
	}
	if n > h.MaxBody {
		return nil, invalidRequest(http.StatusRequestEntityTooLarge, "request_too_large", "", "the request body is larger than the gateway accepts")
	}
	return buf.Bytes(), nil
}

// checkModel applies what the client asked for beyond the body: the model must
// be configured, and a capability (header) must be one some backend declares.
func (h *Handler) checkModel(r *http.Request, req *engine.Request) *apiError {
	if capName := r.Header.Get(capabilityHeader); capName != "" {
		capName = strings.ToLower(strings.TrimSpace(capName))
		if !nameRE.MatchString(capName) || !h.caps[capName] {
			return invalidRequest(http.StatusBadRequest, "unknown_capability", capabilityHeader, "no backend declares that capability")
		}
		req.Capability = capName
	}
	if req.Model == engine.AutoModel {
		if req.Capability == "" && !h.caps[engine.DefaultCapability] {
			return invalidRequest(http.StatusBadRequest, "unknown_capability", capabilityHeader, "model auto needs the "+capabilityHeader+" header: no backend declares the default capability chat")
		}
		return nil
	}
	if _, ok := h.modelSet[req.Model]; !ok {
		return invalidRequest(http.StatusNotFound, "model_not_found", "model", "the model does not exist or is not served by this gateway")
	}
	return nil
}

// loadPool fills the pool with the backends' live state.
func (rt *routing) loadPool() {
	h := rt.h
	n := len(h.backends)
	if cap(rt.sc.loads) < n {
		rt.sc.loads = make([]engine.Load, n)
	}
	loads := rt.sc.loads[:n]
	t := now()
	lat := h.latency.get(h, t)
	for i := range h.backends {
		name := h.backends[i].Name
		loads[i] = engine.Load{
			Inflight:    h.store.Inflight(name),
			LatencyP95:  lat[i].e2e,
			TTFTP95:     lat[i].ttft,
			CoolingDown: h.health.CoolingDown(name, t),
			Draining:    false,
		}
		if rt.tried != nil && rt.tried.Has(i) {
			// A backend that already failed this request is out for its retry.
			loads[i].CoolingDown = true
		}
	}
	rt.pool = engine.Pool{Backends: h.backends, Loads: loads}
}

// acquire takes a slot on the best candidate with room, waiting in the queue
// (bounded by MaxQueue and MaxWait) when every candidate is full.
func (rt *routing) acquire(ctx context.Context) (int, *apiError) {
	h := rt.h
	rt.loadPool()
	ranked, eligible := h.strategy.Rank(&rt.req, &rt.pool, rt.sc.cands[:0])
	rt.sc.cands = ranked
	if eligible == 0 {
		return -1, serverError(http.StatusServiceUnavailable, "no_healthy_backend", "no healthy backend can serve this request")
	}
	// Newcomers leave alone the backends someone is already waiting for.
	var skip func(int) bool
	if h.queue.Len() > 0 {
		skip = h.queue.Claimed
	}
	if i, apiErr := rt.tryAcquire(ctx, ranked, skip); i >= 0 || apiErr != nil {
		return i, apiErr
	}

	wants := loadstate.NewBackendSet(len(h.backends))
	for i := range h.backends {
		if h.strategy.Eligible(&rt.req, &rt.pool, i) {
			wants.Add(i)
		}
	}
	ticket, err := h.queue.Enter(wants)
	if err != nil {
		return -1, rt.full("every backend that can serve this request is busy and the wait queue is full")
	}
	waitStart := now()
	h.metrics.queueDepth.Inc()
	defer func() {
		h.queue.Leave(ticket)
		h.metrics.queueDepth.Dec()
		rt.wait = now().Sub(waitStart)
		h.metrics.queueWait.Observe(rt.wait.Seconds())
		if rt.lease.backend >= 0 {
			// Room this waiter did not take (two slots freed, one wake)
			// must not sit idle behind it until the next release.
			h.wakeForRoom()
		}
	}()
	timer := time.NewTimer(time.Duration(h.MaxWait))
	defer timer.Stop()
	poll := time.NewTicker(waitPoll)
	defer poll.Stop()
	// A waiter that looks for room on its own (on joining, on a poll) leaves
	// backends that an older waiter wants to that waiter. A waiter woken by
	// a release does not: the queue picked it, oldest first, for that slot,
	// and an older waiter with a wake of its own has a slot of its own.
	claimedAhead := func(i int) bool { return h.queue.ClaimedAhead(ticket, i) }
	skip = claimedAhead
	woken := false
	for {
		rt.loadPool()
		ranked, eligible := h.strategy.Rank(&rt.req, &rt.pool, rt.sc.cands[:0])
		rt.sc.cands = ranked
		if eligible == 0 {
			return -1, serverError(http.StatusServiceUnavailable, "no_healthy_backend", "no healthy backend can serve this request")
		}
		if woken {
			// A release just happened, maybe on another replica, which this
			// replica's view of the counts may not show yet: let the store,
			// which decides atomically, check the full ones too.
			ranked = rt.appendFull(ranked, wants)
			rt.sc.cands = ranked
		}
		i, apiErr := rt.tryAcquire(ctx, ranked, skip)
		h.queue.Consumed(ticket)
		if i >= 0 || apiErr != nil {
			return i, apiErr
		}
		select {
		case <-ticket.C():
			skip, woken = nil, true
		case <-poll.C:
			// Polls trust the local view: no store round trip unless it
			// shows room.
			skip, woken = claimedAhead, false
		case <-timer.C:
			return -1, rt.full("every backend that can serve this request stayed busy for the longest wait allowed")
		case <-ctx.Done():
			return -1, &apiError{Status: 499, Code: "client_closed_request"}
		}
	}
}

// wakeForRoom wakes, for every backend the local view shows with room, the
// oldest waiter that can use it and has no wake pending.
func (h *Handler) wakeForRoom() {
	if h.queue.Len() == 0 {
		return
	}
	for i := range h.backends {
		if h.store.Inflight(h.backends[i].Name) < h.backends[i].MaxInflight {
			h.queue.Notify(i)
		}
	}
}

// appendFull adds to ranked the backends in wants that it lacks (those the
// view shows full), after the ranked ones.
func (rt *routing) appendFull(ranked []engine.Candidate, wants loadstate.BackendSet) []engine.Candidate {
	for i := range rt.h.backends {
		if !wants.Has(i) {
			continue
		}
		in := false
		for _, c := range ranked {
			if c.Index == i {
				in = true
				break
			}
		}
		if !in && !rt.pool.Loads[i].CoolingDown {
			ranked = append(ranked, engine.Candidate{Index: i})
		}
	}
	return ranked
}

func (rt *routing) full(msg string) *apiError {
	e := serverError(rt.h.FullStatus, "capacity_exhausted", msg)
	if rt.h.FullStatus == http.StatusTooManyRequests {
		e.Type = "rate_limit_error" // what OpenAI's clients expect with a 429
	}
	e.RetryAfter = time.Second
	return e
}

// tryAcquire asks the store for a slot on the first ranked candidate with
// room, in one call. It returns the backend index, or -1 when none had room.
// Candidates for which skip reports true are left to requests that waited
// longer.
func (rt *routing) tryAcquire(ctx context.Context, ranked []engine.Candidate, skip func(int) bool) (int, *apiError) {
	h := rt.h
	slots, idx := rt.sc.slots[:0], rt.sc.idx[:0]
	for _, c := range ranked {
		if skip != nil && skip(c.Index) {
			continue
		}
		b := &h.backends[c.Index]
		slots = append(slots, loadstate.Slot{Backend: b.Name, Capacity: b.MaxInflight})
		idx = append(idx, c.Index)
	}
	rt.sc.slots, rt.sc.idx = slots, idx
	if len(slots) == 0 {
		return -1, nil
	}
	i, err := h.store.Acquire(ctx, rt.id, slots)
	if err != nil {
		if ctx.Err() != nil {
			return -1, &apiError{Status: 499, Code: "client_closed_request"}
		}
		if c := h.logger.Check(zapcore.WarnLevel, "acquiring slot"); c != nil {
			c.Write(zap.Error(err))
		}
		// The acquire may have run on the server before the error: release the
		// id on every candidate so no slot is left behind.
		for _, s := range slots {
			_ = h.store.Release(context.WithoutCancel(ctx), rt.id, s.Backend)
		}
		return -1, serverError(http.StatusServiceUnavailable, "load_state_unavailable", "the gateway cannot reach its shared load state")
	}
	if i < 0 {
		return -1, nil
	}
	b := idx[i]
	rt.lease.backend = b
	rt.lease.keepAlive()
	return b, nil
}

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

// setBody gives the request a fresh copy of the buffered body for this
// attempt, with the model renamed to what this backend expects.
func (rt *routing) setBody(r *http.Request, backend int) {
	body := rt.body
	if up := rt.h.backends[backend].UpstreamModel(rt.req.Model); up != "" && up != rt.req.Model && rt.c.modelStart >= 0 {
		body = rewriteModel(rt.body, &rt.c, up)
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
	r.ContentLength = int64(len(body))
	r.Header.Del("Transfer-Encoding")
	r.TransferEncoding = nil
}

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

func errorStatus(err error) int {
	var he caddyhttp.HandlerError
	if errors.As(err, &he) && he.StatusCode != 0 {
		return he.StatusCode
	}
	return http.StatusBadGateway
}
