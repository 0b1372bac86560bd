package sim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Handler is a simulated OpenAI-compatible model server. It answers
//
//	POST /v1/chat/completions, /v1/completions, /v1/responses, /v1/embeddings
//	GET  /v1/models
//	GET  /sim/stats    the counters (see Stats)
//	POST /sim/reset    zeroes the counters
//	GET  /sim/fault    the armed fault
//	POST /sim/fault    arms a fault: {"mode": "503", "count": 2} (see FaultRequest)
//	GET  /sim/config   the timing in force (see Config)
//	POST /sim/config   changes it at run time: {"slowdown": 3} (see ConfigRequest)
//
// and 404 for anything else: it is a terminal handler and never calls the
// next one. Inference requests take one of Slots slots, waiting in a FIFO
// queue while all are busy, and take TTFT (plus PrefillPerToken for each
// prompt token) to the first token and PerToken for each further one; an
// embedding takes the time to the first token. POST /sim/config changes these
// delays for the requests that arrive after it. The sim's answers, errors
// included, are what it is there to produce, so ServeHTTP writes them all
// itself and returns nil rather than a caddyhttp.Error.
type Handler struct {
	// Name identifies the sim: it is the first word of every completion
	// ("[name] token token ..."), the model in /v1/models, and the key of
	// the counters and faults, which sims sharing a name share.
	// Default: "sim".
	Name string `json:"name,omitempty"`

	// Slots is how many requests are served concurrently; more wait in a
	// FIFO queue. Default: 4.
	Slots int `json:"slots,omitempty"`

	// TTFT is the time to first token, spent in the slot; 0 means none.
	// Default: 20ms.
	TTFT *caddy.Duration `json:"ttft,omitempty"`

	// PerToken is the time per generated token after the first; 0 means
	// none. A completion of n tokens takes TTFT + (n-1)*PerToken.
	// Default: 2ms.
	PerToken *caddy.Duration `json:"per_token,omitempty"`

	// PrefillPerToken is the extra time to the first token for each prompt
	// token: the first token comes TTFT + promptTokens × PrefillPerToken
	// after the request got its slot. The prompt's tokens are estimated as
	// the bytes of its text ÷ 4, rounded up: the strings of "messages" (the
	// "content" and "text" values), "prompt", "input" and "instructions",
	// and 4 bytes per token id in token arrays (the same count the sim
	// reports as usage.prompt_tokens). The router estimates from the bytes of
	// the whole JSON values ÷ 4, so it counts a few more tokens for the JSON
	// around the text. Default: 0 (the prompt does not matter).
	PrefillPerToken *caddy.Duration `json:"prefill_per_token,omitempty"`

	// Tokens is how many completion tokens are generated; a request's
	// max_tokens (or max_completion_tokens, max_output_tokens) may lower it,
	// never raise it. Default: 16.
	Tokens int `json:"tokens,omitempty"`

	// MaxQueue is how many requests may wait for a slot; more are answered
	// 503 at once. 0 means no queue: a request that finds every slot busy
	// gets 503. Default: 1000.
	MaxQueue *int `json:"max_queue,omitempty"`

	// FailStatus, if set, answers every /v1/ request with this status
	// (400-599) and an OpenAI error body, for fault injection. The /sim/
	// endpoints still work. Default: 0 (off).
	FailStatus int `json:"fail_status,omitempty"`

	ttft, perToken, prefill time.Duration // as configured; see timing
	state                   *simState
	slots                   *slotPool
	logger                  *zap.Logger

	// wait sleeps for d or until ctx is done; tests replace it to control
	// time. slowHeaders is the slow_headers fault's delay.
	wait        func(ctx context.Context, d time.Duration) error
	slowHeaders time.Duration
}

// Defaults, applied in Provision to unset fields.
const (
	defaultName     = "sim"
	defaultSlots    = 4
	defaultTTFT     = 20 * time.Millisecond
	defaultPerToken = 2 * time.Millisecond
	defaultTokens   = 16
	defaultMaxQueue = 1000
)

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.model_router_sim",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision fills in defaults and attaches the sim to its named state.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	if h.Name == "" {
		h.Name = defaultName
	}
	if h.Slots == 0 {
		h.Slots = defaultSlots
	}
	h.ttft = durationOr(h.TTFT, defaultTTFT)
	h.perToken = durationOr(h.PerToken, defaultPerToken)
	h.prefill = durationOr(h.PrefillPerToken, 0)
	if h.Tokens == 0 {
		h.Tokens = defaultTokens
	}
	maxQueue := defaultMaxQueue
	if h.MaxQueue != nil {
		maxQueue = *h.MaxQueue
	}
	h.state = stateFor(h.Name)
	h.slots = newSlotPool(h.Slots, maxQueue)
	if h.wait == nil {
		h.wait = sleep
	}
	if h.slowHeaders == 0 {
		h.slowHeaders = slowHeadersDelay
	}
	return nil
}

func durationOr(d *caddy.Duration, def time.Duration) time.Duration {
	if d == nil {
		return def
	}
	return time.Duration(*d)
}

// Validate rejects settings that cannot work.
func (h *Handler) Validate() error {
	switch {
	case h.Slots < 1:
		return fmt.Errorf("slots must be at least 1, got %d", h.Slots)
	case h.ttft < 0:
		return fmt.Errorf("ttft must not be negative, got %s", h.ttft)
	case h.perToken < 0:
		return fmt.Errorf("per_token must not be negative, got %s", h.perToken)
	case h.prefill < 0:
		return fmt.Errorf("prefill_per_token must not be negative, got %s", h.prefill)
	case h.Tokens < 1:
		return fmt.Errorf("tokens must be at least 1, got %d", h.Tokens)
	case h.MaxQueue != nil && *h.MaxQueue < 0:
		return fmt.Errorf("max_queue must not be negative, got %d", *h.MaxQueue)
	case h.FailStatus != 0 && (h.FailStatus < 400 || h.FailStatus > 599):
		return fmt.Errorf("fail_status must be between 400 and 599, got %d", h.FailStatus)
	}
	return nil
}

// ServeHTTP answers the OpenAI and /sim/ endpoints; see Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	w.Header().Set("X-Sim-Name", h.Name)
	switch r.URL.Path {
	case "/v1/chat/completions":
		h.serveInference(w, r, kindChat)
	case "/v1/completions":
		h.serveInference(w, r, kindCompletion)
	case "/v1/responses":
		h.serveInference(w, r, kindResponse)
	case "/v1/embeddings":
		h.serveInference(w, r, kindEmbedding)
	case "/v1/models":
		h.serveModels(w, r)
	case "/sim/stats":
		h.serveStats(w, r)
	case "/sim/reset":
		h.serveReset(w, r)
	case "/sim/fault":
		h.serveFault(w, r)
	case "/sim/config":
		h.serveConfig(w, r)
	default:
		writeError(w, http.StatusNotFound, fmt.Errorf("no such endpoint: %s %s", r.Method, r.URL.Path), "")
	}
	return nil
}

func (h *Handler) serveModels(w http.ResponseWriter, r *http.Request) {
	if !allowMethods(w, r, http.MethodGet, http.MethodHead) {
		return
	}
	if h.FailStatus != 0 {
		writeError(w, h.FailStatus, fmt.Errorf("simulated failure (fail_status %d)", h.FailStatus), "")
		return
	}
	writeJSON(w, http.StatusOK, modelList{Object: "list", Data: []model{
		{ID: h.Name, Object: "model", OwnedBy: "model-router-sim"},
	}})
}

// lease is one inference request's place in the counters and, once it has
// one, its slot.
type lease struct {
	state *simState
	slot  func() // gives the slot back; nil until one is held
	once  sync.Once
}

// finish records how the request ended and gives its slot back. Call it
// before writing the last bytes: a client that has read the whole answer may
// send its next request at once, and that one must not find this one still
// counted (a gateway bounding concurrency would seem to exceed its bound).
// Calls after the first do nothing.
func (l *lease) finish(o outcome) {
	l.once.Do(func() {
		if l.slot != nil {
			l.slot()
		}
		l.state.leave(o)
	})
}

// serveInference answers one inference request of kind k.
func (h *Handler) serveInference(w http.ResponseWriter, r *http.Request, k kind) {
	if !allowMethods(w, r, http.MethodPost) {
		return
	}
	ctx := r.Context()
	// The request keeps the timing in force when it arrives, so a change
	// with POST /sim/config applies to the requests that arrive after it.
	tm := h.timing()
	h.state.arrive()
	l := &lease{state: h.state}
	defer func() {
		// Every path finishes explicitly; this catches any that does not.
		o := outcomeFailed
		if ctx.Err() != nil {
			o = outcomeCanceled
		}
		l.finish(o)
	}()
	fail := func(status int, err error, param string) {
		l.finish(outcomeFailed)
		writeError(w, status, err, param)
	}

	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxRequestBody))
	if err != nil {
		if maxErr := (*http.MaxBytesError)(nil); errors.As(err, &maxErr) {
			fail(http.StatusRequestEntityTooLarge, fmt.Errorf("request body larger than %d bytes", maxErr.Limit), "")
			return
		}
		if ctx.Err() != nil {
			l.finish(outcomeCanceled)
			return
		}
		fail(http.StatusBadRequest, fmt.Errorf("reading request body: %w", err), "")
		return
	}
	req, err := parseRequest(k, body)
	if err != nil {
		var param string
		if reqErr := (*requestError)(nil); errors.As(err, &reqErr) {
			param = reqErr.param
		}
		fail(http.StatusBadRequest, err, param)
		return
	}
	f, err := h.faultFor(r)
	if err != nil {
		fail(http.StatusBadRequest, err, "")
		return
	}
	if f.mode != "" {
		if ce := h.logger.Check(zapcore.DebugLevel, "injecting fault"); ce != nil {
			ce.Write(zap.String("sim", h.Name), zap.String("mode", f.mode), zap.String("path", r.URL.Path))
		}
	}
	switch {
	case f.status != 0:
		if ra := r.Header.Get(RetryAfterHeader); ra != "" {
			if n, err := strconv.Atoi(ra); err == nil && n >= 0 {
				w.Header().Set("Retry-After", strconv.Itoa(n))
			}
		}
		fail(f.status, fmt.Errorf("simulated failure (fault %s)", f.mode), "")
		return
	case f.mode == FaultHang:
		// A hung request holds no slot, so exactly the faulted requests
		// misbehave and the rest are served as usual.
		<-ctx.Done()
		l.finish(outcomeCanceled)
		return
	}

	release, full, err := h.slots.Acquire(ctx, h.state.foundFull)
	if full && !errors.Is(err, errQueueFull) {
		h.state.leaveQueue()
	}
	switch {
	case errors.Is(err, errQueueFull):
		fail(http.StatusServiceUnavailable, fmt.Errorf("sim %s is overloaded: %w", h.Name, err), "")
		return
	case err != nil:
		l.finish(outcomeCanceled)
		return
	}
	h.state.enterSlot()
	l.slot = func() {
		// Leave the counter before giving the slot back, so inflight
		// never shows more than Slots requests.
		h.state.leaveSlot()
		release()
	}

	if f.mode == FaultSlowHeaders {
		if h.wait(ctx, h.slowHeaders) != nil {
			l.finish(outcomeCanceled)
			return
		}
	}
	brk := noBreak
	switch f.mode {
	case FaultAbortMidstream:
		brk = abortMidstream
	case FaultStallMidstream:
		brk = stallMidstream
	}

	switch {
	case k == kindEmbedding:
		h.serveEmbeddings(w, r, l, req, tm, brk)
	case req.Stream:
		h.serveStream(w, r, l, k, req, tm, brk)
	default:
		h.serveCompletion(w, r, l, k, req, tm, brk)
	}
}

// midstreamBreak is how a faulted answer breaks once it started.
type midstreamBreak uint8

const (
	noBreak        midstreamBreak = iota
	abortMidstream                // the connection is dropped
	stallMidstream                // the answer stops without ending, until the client goes
)

// breakAnswer ends a started answer as brk says: an abort panics (the
// connection drops), a stall starts the JSON answer w has not written yet (if
// any), flushes it and waits for the client to leave.
func (h *Handler) breakAnswer(w http.ResponseWriter, r *http.Request, l *lease, brk midstreamBreak, started bool) {
	if brk == abortMidstream {
		l.finish(outcomeFailed)
		panic(http.ErrAbortHandler)
	}
	if !started {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		_, _ = io.WriteString(w, `{"id":"stalled","object":`)
	}
	_ = http.NewResponseController(w).Flush()
	<-r.Context().Done()
	l.finish(outcomeFailed)
}

// serveCompletion answers a non-streaming chat, text or responses request
// after the whole generation time.
func (h *Handler) serveCompletion(w http.ResponseWriter, r *http.Request, l *lease, k kind, req *inferenceRequest, tm timing, brk midstreamBreak) {
	c := h.newCompletion(req, idPrefix(k))
	d := tm.firstToken(c.promptTokens)
	if brk == noBreak {
		d += time.Duration(len(c.pieces)-1) * tm.nextToken()
	}
	if h.wait(r.Context(), d) != nil {
		l.finish(outcomeCanceled)
		return
	}
	if brk != noBreak {
		h.breakAnswer(w, r, l, brk, false)
		return
	}
	var answer any
	switch k {
	case kindChat:
		answer = c.chatCompletion()
	case kindCompletion:
		text := c.textCompletion(textChoice{Text: c.content(), FinishReason: &c.finishReason})
		text.Usage = c.usage()
		answer = text
	case kindResponse:
		answer = c.response(true)
	}
	l.finish(outcomeServed)
	writeJSON(w, http.StatusOK, answer)
}

// serveEmbeddings answers an embeddings request after the time to the first
// token of its input.
func (h *Handler) serveEmbeddings(w http.ResponseWriter, r *http.Request, l *lease, req *inferenceRequest, tm timing, brk midstreamBreak) {
	if h.wait(r.Context(), tm.firstToken(req.promptTokens())) != nil {
		l.finish(outcomeCanceled)
		return
	}
	if brk != noBreak {
		h.breakAnswer(w, r, l, brk, false)
		return
	}
	answer := h.newEmbeddings(req)
	l.finish(outcomeServed)
	writeJSON(w, http.StatusOK, answer)
}

func idPrefix(k kind) string {
	switch k {
	case kindChat:
		return "chatcmpl-"
	case kindResponse:
		return "resp_"
	}
	return "cmpl-"
}

// sleep waits for d or until ctx is done, whichever comes first.
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Interface guards
var (
	_ caddy.Module                = (*Handler)(nil)
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
