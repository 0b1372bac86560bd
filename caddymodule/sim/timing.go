package sim

import (
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// maxSlowdown bounds the slowdown factor of POST /sim/config, so that scaled
// delays cannot overflow a time.Duration.
const maxSlowdown = 1000

// timing is how fast a sim serves one request: its delays as configured or
// as changed at run time with POST /sim/config. A request takes the timing in
// force when it arrives and keeps it to its end.
type timing struct {
	ttft     time.Duration // time to the first token of an empty prompt
	perToken time.Duration // time per further token
	prefill  time.Duration // extra time to the first token per prompt token
	slowdown float64       // multiplies every delay; 1 is the configured speed
}

// scale multiplies d by the slowdown.
func (t timing) scale(d time.Duration) time.Duration {
	if t.slowdown == 1 {
		return d
	}
	return time.Duration(float64(d) * t.slowdown)
}

// firstToken is the time to the first token of a prompt of promptTokens:
// (ttft + promptTokens × prefill) × slowdown.
func (t timing) firstToken(promptTokens int) time.Duration {
	return t.scale(t.ttft + time.Duration(max(promptTokens, 0))*t.prefill)
}

// nextToken is the time from one token to the next: per_token × slowdown.
func (t timing) nextToken() time.Duration { return t.scale(t.perToken) }

// timingOverride holds the changes made with POST /sim/config, guarded by
// simState.mu. A nil field (a zero slowdown) follows the sim's configuration.
type timingOverride struct {
	ttft, perToken, prefill *time.Duration
	slowdown                float64
}

// timing returns the timing a request arriving now gets: the configured
// delays with the run-time changes of the sim's shared state over them.
func (h *Handler) timing() timing {
	t, _ := h.currentTiming()
	return t
}

// currentTiming returns the timing in force and the changes it is made of.
func (h *Handler) currentTiming() (timing, timingOverride) {
	t := timing{ttft: h.ttft, perToken: h.perToken, prefill: h.prefill, slowdown: 1}
	h.state.mu.Lock()
	o := h.state.timing
	h.state.mu.Unlock()
	if o.ttft != nil {
		t.ttft = *o.ttft
	}
	if o.perToken != nil {
		t.perToken = *o.perToken
	}
	if o.prefill != nil {
		t.prefill = *o.prefill
	}
	if o.slowdown > 0 {
		t.slowdown = o.slowdown
	}
	return t, o
}

// ConfigRequest is the JSON body of POST /sim/config. Durations are strings
// ("80ms", "1.5s") or integer nanoseconds; a field left out keeps its value.
type ConfigRequest struct {
	// Reset first drops every earlier change, so the sim returns to its
	// configured delays; the other fields of the same request then apply.
	Reset bool `json:"reset,omitempty"`
	// TTFT, PerToken and PrefillPerToken replace the configured delays; none
	// may be negative.
	TTFT            *caddy.Duration `json:"ttft,omitempty"`
	PerToken        *caddy.Duration `json:"per_token,omitempty"`
	PrefillPerToken *caddy.Duration `json:"prefill_per_token,omitempty"`
	// Slowdown multiplies every delay (of the three above): 3 makes the sim
	// three times slower, 1 is its own speed. It must be more than 0 and at
	// most 1000.
	Slowdown *float64 `json:"slowdown,omitempty"`
}

// Config is the answer of GET and POST /sim/config: the timing a request
// arriving now gets.
type Config struct {
	TTFT            string  `json:"ttft"`
	PerToken        string  `json:"per_token"`
	PrefillPerToken string  `json:"prefill_per_token"`
	Slowdown        float64 `json:"slowdown"`
	// Changed lists the fields set with POST /sim/config rather than taken
	// from the sim's configuration, in the order above.
	Changed []string `json:"changed"`
}

// configAnswer describes the timing in force.
func (h *Handler) configAnswer() Config {
	t, o := h.currentTiming()
	c := Config{TTFT: t.ttft.String(), PerToken: t.perToken.String(), PrefillPerToken: t.prefill.String(),
		Slowdown: t.slowdown, Changed: []string{}}
	for _, f := range []struct {
		name string
		set  bool
	}{{"ttft", o.ttft != nil}, {"per_token", o.perToken != nil}, {"prefill_per_token", o.prefill != nil}, {"slowdown", o.slowdown > 0}} {
		if f.set {
			c.Changed = append(c.Changed, f.name)
		}
	}
	return c
}

// applyConfig checks req and, if it is valid, changes the shared timing; requests
// that arrive afterwards get it. The error names the offending parameter.
func (s *simState) applyConfig(req ConfigRequest) (param string, err error) {
	for _, d := range []struct {
		name string
		v    *caddy.Duration
	}{{"ttft", req.TTFT}, {"per_token", req.PerToken}, {"prefill_per_token", req.PrefillPerToken}} {
		if d.v != nil && *d.v < 0 {
			return d.name, fmt.Errorf("%s must not be negative, got %s", d.name, time.Duration(*d.v))
		}
	}
	if v := req.Slowdown; v != nil && (math.IsNaN(*v) || *v <= 0 || *v > maxSlowdown) {
		return "slowdown", fmt.Errorf("slowdown must be more than 0 and at most %d, got %v", maxSlowdown, *v)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if req.Reset {
		s.timing = timingOverride{}
	}
	set := func(dst **time.Duration, v *caddy.Duration) {
		if v != nil {
			d := time.Duration(*v)
			*dst = &d
		}
	}
	set(&s.timing.ttft, req.TTFT)
	set(&s.timing.perToken, req.PerToken)
	set(&s.timing.prefill, req.PrefillPerToken)
	if req.Slowdown != nil {
		s.timing.slowdown = *req.Slowdown
	}
	return "", nil
}

// serveConfig answers GET /sim/config, which shows the timing in force, and
// POST /sim/config, which changes it (see ConfigRequest).
func (h *Handler) serveConfig(w http.ResponseWriter, r *http.Request) {
	if !allowMethods(w, r, http.MethodGet, http.MethodHead, http.MethodPost) {
		return
	}
	if r.Method == http.MethodPost {
		var req ConfigRequest
		dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			writeError(w, http.StatusBadRequest, fmt.Errorf("decoding config request: %w", err), "")
			return
		}
		if param, err := h.state.applyConfig(req); err != nil {
			writeError(w, http.StatusBadRequest, err, param)
			return
		}
	}
	writeJSON(w, http.StatusOK, h.configAnswer())
}
