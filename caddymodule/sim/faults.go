package sim

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"
)

// FaultHeader names the request header that applies a fault mode to that one
// request, overriding (without using up) any fault armed with POST /sim/fault.
const FaultHeader = "X-Sim-Fault"

// Fault modes besides an HTTP status code.
const (
	// FaultHang never answers; the request ends when the client goes away.
	FaultHang = "hang"
	// FaultAbortMidstream sends a few stream events and then aborts the
	// connection; a non-streaming request is aborted before anything is
	// written.
	FaultAbortMidstream = "abort_midstream"
	// FaultSlowHeaders holds back the response headers for slowHeadersDelay,
	// in its slot, and then answers normally.
	FaultSlowHeaders = "slow_headers"
	// FaultStallMidstream starts the answer (a few stream events, or the
	// headers and part of a JSON body) and then goes silent without ending
	// it, until the client goes away.
	FaultStallMidstream = "stall_midstream"
)

// RetryAfterHeader names the request header that makes a status fault's
// answer carry Retry-After with its value (seconds), e.g. to try how a
// gateway handles a rate-limited backend.
const RetryAfterHeader = "X-Sim-Retry-After"

// slowHeadersDelay is how long slow_headers holds back the headers: longer
// than any sensible gateway response-header timeout.
const slowHeadersDelay = 10 * time.Second

// abortAfterEvents is how many token events abort_midstream sends first.
const abortAfterEvents = 3

// fault is one parsed fault mode. The zero value is no fault.
type fault struct {
	mode   string
	status int // set when mode is a status code
}

// parseFault accepts "hang", "abort_midstream", "stall_midstream",
// "slow_headers" or an error status code 400–599 ("500", "503", "429", ...).
func parseFault(mode string) (fault, error) {
	switch mode {
	case FaultHang, FaultAbortMidstream, FaultStallMidstream, FaultSlowHeaders:
		return fault{mode: mode}, nil
	}
	status, err := strconv.Atoi(mode)
	if err != nil || status < 400 || status > 599 {
		return fault{}, fmt.Errorf("unknown fault mode %q: want %s, %s, %s, %s or a status code 400-599",
			mode, FaultHang, FaultAbortMidstream, FaultStallMidstream, FaultSlowHeaders)
	}
	return fault{mode: mode, status: status}, nil
}

// armedFault is the fault set with POST /sim/fault, guarded by simState.mu.
type armedFault struct {
	fault fault
	// remaining is how many more requests get the fault; 0 with a fault set
	// means until cleared.
	remaining int
}

// FaultRequest is the JSON body of POST /sim/fault and its answer.
type FaultRequest struct {
	// Mode is a fault mode; "" clears the armed fault.
	Mode string `json:"mode"`
	// Count is how many of the next inference requests get the fault; 0
	// means every one until cleared. In answers it is how many remain.
	Count int `json:"count"`
}

// arm sets the fault for the next count inference requests (0: until
// cleared); the zero fault clears it.
func (s *simState) arm(f fault, count int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if f.mode == "" {
		count = 0
	}
	s.fault = armedFault{fault: f, remaining: count}
}

// armed reports the armed fault.
func (s *simState) armed() FaultRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return FaultRequest{Mode: s.fault.fault.mode, Count: s.fault.remaining}
}

// takeFault returns the fault for the next inference request and uses it up.
func (s *simState) takeFault() fault {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.fault.fault
	if s.fault.remaining > 0 {
		s.fault.remaining--
		if s.fault.remaining == 0 {
			s.fault = armedFault{}
		}
	}
	return f
}

// faultFor picks the fault for an inference request: the configured
// fail_status first, then the request's X-Sim-Fault header, then the armed
// fault.
func (h *Handler) faultFor(r *http.Request) (fault, error) {
	if h.FailStatus != 0 {
		return fault{mode: strconv.Itoa(h.FailStatus), status: h.FailStatus}, nil
	}
	if mode := r.Header.Get(FaultHeader); mode != "" {
		f, err := parseFault(mode)
		if err != nil {
			return fault{}, fmt.Errorf("reading %s header: %w", FaultHeader, err)
		}
		return f, nil
	}
	return h.state.takeFault(), nil
}

// serveFault answers POST /sim/fault, which arms a fault, and GET /sim/fault,
// which shows the armed one.
func (h *Handler) serveFault(w http.ResponseWriter, r *http.Request) {
	if !allowMethods(w, r, http.MethodGet, http.MethodHead, http.MethodPost) {
		return
	}
	if r.Method == http.MethodPost {
		var req FaultRequest
		dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			writeError(w, http.StatusBadRequest, fmt.Errorf("decoding fault request: %w", err), "")
			return
		}
		var f fault
		if req.Mode != "" {
			var err error
			if f, err = parseFault(req.Mode); err != nil {
				writeError(w, http.StatusBadRequest, err, "mode")
				return
			}
		}
		if req.Count < 0 {
			writeError(w, http.StatusBadRequest, fmt.Errorf("count must not be negative, got %d", req.Count), "count")
			return
		}
		h.state.arm(f, req.Count)
	}
	writeJSON(w, http.StatusOK, h.state.armed())
}
