package loadstate

import (
	"sort"
	"sync"
	"time"

	"github.com/DataDog/sketches-go/ddsketch"
)

// Metric says which latency a sketch holds.
type Metric uint8

const (
	// EndToEnd is the time from the request reaching the gateway to the last
	// byte of the response.
	EndToEnd Metric = iota
	// TTFT is the time to the first byte of a streamed response body.
	TTFT
	metricCount
)

// String returns the metric's name as used in stats and metric labels.
func (m Metric) String() string {
	if m == TTFT {
		return "ttft"
	}
	return "latency"
}

// sketchAccuracy is DDSketch's relative accuracy: any quantile it reports is
// within 1% of the true value, whatever the distribution's range.
const sketchAccuracy = 0.01

// Sketches keeps per-backend latency distributions over a sliding window: a
// ring of DDSketches, each covering window/buckets, where the oldest is cleared
// as time moves on. DDSketch is mergeable, so replicas can exchange their
// windows (EncodeWindow / MergeRemote) and every replica sees fleet-wide
// percentiles.
type Sketches struct {
	window  time.Duration
	buckets int
	now     func() time.Time

	mu  sync.Mutex
	per map[sketchKey]*windowed
}

type sketchKey struct {
	backend string
	metric  Metric
}

type windowed struct {
	ring      []*ddsketch.DDSketch
	ringStart []time.Time // start of the interval each ring entry covers
	cur       int
	remote    map[string]remoteSketch // replica id → its last published window

	// cached quantiles, recomputed at most once per refresh interval
	cachedAt time.Time
	cache    map[float64]time.Duration
}

type remoteSketch struct {
	sketch *ddsketch.DDSketch
	seen   time.Time
}

// NewSketches returns sketches over the given window, split in buckets
// (defaults: 1 minute in 6 buckets). now is the clock (time.Now when nil).
func NewSketches(window time.Duration, buckets int, now func() time.Time) *Sketches {
	if window <= 0 {
		window = time.Minute
	}
	if buckets <= 0 {
		buckets = 6
	}
	if now == nil {
		now = time.Now
	}
	return &Sketches{window: window, buckets: buckets, now: now, per: make(map[sketchKey]*windowed)}
}

func newSketch() *ddsketch.DDSketch {
	s, err := ddsketch.NewDefaultDDSketch(sketchAccuracy)
	if err != nil {
		panic(err) // only for an accuracy outside (0,1), which is a constant here
	}
	return s
}

func (s *Sketches) get(k sketchKey, now time.Time) *windowed {
	w := s.per[k]
	if w == nil {
		w = &windowed{ring: make([]*ddsketch.DDSketch, s.buckets), ringStart: make([]time.Time, s.buckets)}
		for i := range w.ring {
			w.ring[i] = newSketch()
		}
		w.ringStart[0] = now
		s.per[k] = w
	}
	s.rotate(w, now)
	return w
}

// rotate advances the ring to the bucket that covers now, clearing buckets that
// fell out of the window.
func (s *Sketches) rotate(w *windowed, now time.Time) {
	step := s.window / time.Duration(s.buckets)
	for steps := 0; now.Sub(w.ringStart[w.cur]) >= step && steps < s.buckets+1; steps++ {
		next := (w.cur + 1) % s.buckets
		start := w.ringStart[w.cur].Add(step)
		if now.Sub(start) >= s.window {
			// Idle for longer than the window: restart the ring at now.
			for i := range w.ring {
				w.ring[i].Clear()
				w.ringStart[i] = time.Time{}
			}
			start = now
		}
		w.ring[next].Clear()
		w.ringStart[next] = start
		w.cur = next
		w.cache = nil
	}
}

// Record adds one observation for a backend.
func (s *Sketches) Record(backend string, m Metric, d time.Duration) {
	if d < 0 {
		return
	}
	now := s.now()
	s.mu.Lock()
	w := s.get(sketchKey{backend, m}, now)
	_ = w.ring[w.cur].Add(float64(d) / float64(time.Millisecond))
	w.cache = nil
	s.mu.Unlock()
}

// cacheFor is how long computed quantiles are reused; merging the ring on every
// request would cost more than the routing decision itself.
const cacheFor = 250 * time.Millisecond

// Quantile returns the q-quantile (0..1) of a backend's metric over the window,
// merged with what other replicas published, or 0 when nothing was recorded.
func (s *Sketches) Quantile(backend string, m Metric, q float64) time.Duration {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	w := s.per[sketchKey{backend, m}]
	if w == nil {
		return 0
	}
	s.rotate(w, now)
	if w.cache != nil && now.Sub(w.cachedAt) < cacheFor {
		if v, ok := w.cache[q]; ok {
			return v
		}
	} else {
		w.cache = make(map[float64]time.Duration, 4)
		w.cachedAt = now
	}
	merged := s.mergedLocked(w, now)
	v := time.Duration(0)
	if !merged.IsEmpty() {
		ms, err := merged.GetValueAtQuantile(q)
		if err == nil {
			v = time.Duration(ms * float64(time.Millisecond))
		}
	}
	w.cache[q] = v
	return v
}

// Count returns how many observations the fleet-wide window holds.
func (s *Sketches) Count(backend string, m Metric) int {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	w := s.per[sketchKey{backend, m}]
	if w == nil {
		return 0
	}
	s.rotate(w, now)
	return int(s.mergedLocked(w, now).GetCount())
}

func (s *Sketches) localLocked(w *windowed) *ddsketch.DDSketch {
	merged := newSketch()
	for _, b := range w.ring {
		if !b.IsEmpty() {
			_ = merged.MergeWith(b)
		}
	}
	return merged
}

func (s *Sketches) mergedLocked(w *windowed, now time.Time) *ddsketch.DDSketch {
	merged := s.localLocked(w)
	for id, r := range w.remote {
		if now.Sub(r.seen) > s.window {
			delete(w.remote, id) // that replica stopped publishing
			continue
		}
		_ = merged.MergeWith(r.sketch)
	}
	return merged
}

// EncodeWindow serialises this replica's own window for a backend's metric, for
// publishing to other replicas; nil when there is nothing to share.
func (s *Sketches) EncodeWindow(backend string, m Metric) []byte {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	w := s.per[sketchKey{backend, m}]
	if w == nil {
		return nil
	}
	s.rotate(w, now)
	local := s.localLocked(w)
	if local.IsEmpty() {
		return nil
	}
	var buf []byte
	local.Encode(&buf, false)
	return buf
}

// MergeRemote replaces what replica last published for a backend's metric.
// Windows older than the sliding window are dropped.
func (s *Sketches) MergeRemote(replica, backend string, m Metric, data []byte) error {
	sk := newSketch()
	if err := sk.DecodeAndMergeWith(data); err != nil {
		return err
	}
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	w := s.get(sketchKey{backend, m}, now)
	if w.remote == nil {
		w.remote = make(map[string]remoteSketch)
	}
	w.remote[replica] = remoteSketch{sketch: sk, seen: now}
	w.cache = nil
	return nil
}

// Backends lists the backends with any recorded observation, sorted.
func (s *Sketches) Backends() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	seen := make(map[string]bool)
	for k := range s.per {
		seen[k.backend] = true
	}
	out := make([]string, 0, len(seen))
	for b := range seen {
		out = append(out, b)
	}
	sort.Strings(out)
	return out
}
