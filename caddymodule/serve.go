package caddymodule

import (
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/modelrouter/modelrouter/engine"
)

const (
	backendHeader    = "X-Model-Router-Backend"
	capabilityHeader = "X-Model-Router-Capability"
	// explainResponseHeader carries the explanation of a routing decision.
	explainResponseHeader = "X-Model-Router-Explain"
)

// clock, when set, replaces time.Now for the router's decisions (passive
// health, latency windows, queue waits): tests drive time with it. It is an
// atomic so that a test may set it while handlers of an earlier test finish.
var clock atomic.Pointer[func() time.Time]

// now is the router's clock: time.Now unless a test set clock.
func now() time.Time {
	if f := clock.Load(); f != nil {
		return (*f)()
	}
	return time.Now()
}

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
			h.reject(w, invalidRequest(http.StatusMethodNotAllowed, "method_not_allowed", "", "use POST for "+path))
			return nil
		}
		return h.route(w, r, kind)
	}
	if path == "/v1/models" || strings.HasPrefix(path, "/v1/models/") {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			h.reject(w, invalidRequest(http.StatusMethodNotAllowed, "method_not_allowed", "", "use GET for "+path))
			return nil
		}
		h.serveModels(w, strings.TrimPrefix(strings.TrimPrefix(path, "/v1/models"), "/"))
		return nil
	}
	if path == "/v1" || strings.HasPrefix(path, "/v1/") {
		h.reject(w, invalidRequest(http.StatusNotFound, "unknown_url", "", "the model router does not serve "+r.Method+" "+path))
		return nil
	}
	return next.ServeHTTP(w, r)
}

func (h *Handler) route(w http.ResponseWriter, r *http.Request, kind engine.Kind) error {
	start := now()
	body, apiErr := h.readBody(w, r)
	if apiErr != nil {
		h.reject(w, apiErr)
		return nil
	}
	c, apiErr := classify(body, kind)
	if apiErr == nil {
		apiErr = h.checkModel(r, &c.req)
	}
	class := h.defaultClass
	if apiErr == nil {
		class, apiErr = h.priorityClass(r)
	}
	if apiErr != nil {
		h.reject(w, apiErr)
		return nil
	}

	sc := scratchPool.Get().(*scratch)
	defer scratchPool.Put(sc)
	rt := &routing{h: h, ctx: r.Context(), req: c.req, c: c, body: body, start: start, sc: sc, id: h.leaseIDs.next(), class: class}
	rt.lease = lease{h: h, id: rt.id, backend: -1}
	defer rt.lease.release()

	explainHeader := h.ExplainHeader != "" && r.Header.Get(h.ExplainHeader) != ""
	debug := h.logger.Core().Enabled(zapcore.DebugLevel)
	rt.explain = explainHeader || debug
	backend, apiErr := rt.acquire()
	if apiErr == nil && rt.explain {
		text := rt.explanation(backend)
		if explainHeader {
			w.Header().Set(explainResponseHeader, text)
		}
		if c := h.logger.Check(zapcore.DebugLevel, "routing decision"); c != nil {
			c.Write(zap.String("model", rt.req.Model), zap.String("explain", text))
		}
	}
	if apiErr != nil {
		rt.recordRefusal(apiErr.Code)
		if apiErr.Status == 499 {
			w.WriteHeader(499) // the client left while waiting; nobody reads a body
			return nil
		}
		h.reject(w, apiErr)
		return nil
	}
	return rt.proxy(w, r, backend)
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

// priorityClass is the request's priority class: the one it names in the
// priority header, if clients may name one, else the route's default.
func (h *Handler) priorityClass(r *http.Request) (int, *apiError) {
	if h.PriorityHeader == "" {
		return h.defaultClass, nil
	}
	name := r.Header.Get(h.PriorityHeader)
	if name == "" {
		return h.defaultClass, nil
	}
	if i, ok := h.classes[strings.ToLower(strings.TrimSpace(name))]; ok {
		return i, nil
	}
	return 0, invalidRequest(http.StatusBadRequest, "unknown_priority", h.PriorityHeader, "no such priority class")
}

// reject answers a request the router refuses itself, and counts it in
// model_router_rejected_total by its code (a fixed set: never user input).
func (h *Handler) reject(w http.ResponseWriter, e *apiError) {
	h.metrics.rejected.WithLabelValues(e.Code).Inc()
	e.write(w)
}
