package sim

import (
	"net/http"
	"sync"
)

// states holds each sim's counters and armed fault, keyed by the sim's name.
// It is package-level on purpose: a config reload provisions new handlers, and
// a test that reloads the gateway's config must still read the counts from
// before. Entries are never deleted; there is one per sim name ever
// configured, which is a handful in any process that runs sims.
var states = struct {
	sync.Mutex
	byName map[string]*simState
}{byName: make(map[string]*simState)}

// stateFor returns the shared state of the sim called name, creating it on
// first use.
func stateFor(name string) *simState {
	states.Lock()
	defer states.Unlock()
	st, ok := states.byName[name]
	if !ok {
		st = &simState{name: name}
		states.byName[name] = st
	}
	return st
}

// Stats is the JSON answer of GET /sim/stats.
type Stats struct {
	Name string `json:"name"`
	// Requests counts inference requests that arrived (POST /v1/...).
	Requests int64 `json:"requests"`
	// ReachedFull counts requests that arrived while every slot was busy,
	// whether they then waited or were turned away with 503.
	ReachedFull int64 `json:"reached_full"`
	// PeakInflight is the most requests ever inside slots at once.
	PeakInflight int64 `json:"peak_inflight"`
	// PeakConcurrent is the most requests ever being handled at once,
	// queued ones included: the number a gateway's max_inflight must bound.
	PeakConcurrent int64 `json:"peak_concurrent"`
	// Inflight and Queued are the requests in slots and waiting for one now.
	Inflight int64 `json:"inflight"`
	Queued   int64 `json:"queued"`
	// Served counts complete successful answers; Failed counts error answers
	// and aborted ones; Canceled counts requests whose client went away first.
	Served   int64 `json:"served"`
	Failed   int64 `json:"failed"`
	Canceled int64 `json:"canceled"`
}

// outcome is how a request ended, for the counters.
type outcome uint8

const (
	outcomeServed outcome = iota
	outcomeFailed
	outcomeCanceled
)

// simState is one sim name's counters, armed fault and run-time timing
// changes. Reset zeroes the counters only: the timing changes stay until a
// POST /sim/config with "reset" (a benchmark resets counters between rounds
// without undoing the slowdown it set).
type simState struct {
	name string

	mu         sync.Mutex
	stats      Stats
	concurrent int64
	fault      armedFault
	timing     timingOverride
}

// Snapshot returns a copy of the counters.
func (s *simState) Snapshot() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stats
	st.Name = s.name
	return st
}

// Reset zeroes the counters, and nothing else. Requests still being handled keep their place
// in inflight and queued, and the peaks restart from those current values, so
// the gauges never go negative when those requests finish.
func (s *simState) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stats = Stats{
		Inflight:       s.stats.Inflight,
		Queued:         s.stats.Queued,
		PeakInflight:   s.stats.Inflight,
		PeakConcurrent: s.concurrent,
	}
}

func (s *simState) arrive() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stats.Requests++
	s.concurrent++
	s.stats.PeakConcurrent = max(s.stats.PeakConcurrent, s.concurrent)
}

func (s *simState) leave(o outcome) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.concurrent--
	switch o {
	case outcomeServed:
		s.stats.Served++
	case outcomeFailed:
		s.stats.Failed++
	case outcomeCanceled:
		s.stats.Canceled++
	}
}

// foundFull records a request that arrived while every slot was busy and,
// if queued, now waits for one.
func (s *simState) foundFull(queued bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stats.ReachedFull++
	if queued {
		s.stats.Queued++
	}
}

func (s *simState) leaveQueue() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stats.Queued--
}

func (s *simState) enterSlot() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stats.Inflight++
	s.stats.PeakInflight = max(s.stats.PeakInflight, s.stats.Inflight)
}

func (s *simState) leaveSlot() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stats.Inflight--
}

// serveStats answers GET /sim/stats.
func (h *Handler) serveStats(w http.ResponseWriter, r *http.Request) {
	if !allowMethods(w, r, http.MethodGet, http.MethodHead) {
		return
	}
	writeJSON(w, http.StatusOK, h.state.Snapshot())
}

// serveReset answers POST /sim/reset with the zeroed counters.
func (h *Handler) serveReset(w http.ResponseWriter, r *http.Request) {
	if !allowMethods(w, r, http.MethodPost) {
		return
	}
	h.state.Reset()
	writeJSON(w, http.StatusOK, h.state.Snapshot())
}
