package loadstate

import (
	"encoding/json"
	"fmt"
	"math"
	"sort"
	"sync"
	"time"

	"github.com/modelrouter/modelrouter/engine"
)

// Learner learns, over a sliding window, what the predictive strategies need
// about each backend: its latency model per model (see engine.Perf), its mean
// service time, its recent error rate (outcomes that count against it), and
// each model's mean output length. It is fed from the attempts' outcomes:
// timings only from successes (engine.Outcome.Teaches).
//
// The latency model is fitted per (backend, model) by least squares with a
// ridge (Tikhonov) penalty toward the configured hints (Hoerl & Kennard,
// "Ridge regression", Technometrics 12(1), 1970), from sufficient statistics
// kept per time bucket so that old observations leave the window:
//
//	y = c0 + c1·promptTokens + c2·(outputTokens − 1)
//
// Every success adds the row (1, prompt, out−1) → total time; a stream also
// adds (1, prompt, 0) → time to first token, which pins c0 + c1·prompt, the
// TTFT, apart from c2, the time per output token. The fit uses the newest
// buckets that hold at least recentFitSamples successes (the whole window
// when fewer), so a change of speed is learned after about that many
// requests; error counts use the whole window. The sums add, so replicas
// exchange their windows (EncodeWindow, MergeRemote) and every replica fits
// the fleet's data.
//
// Learner is safe for concurrent use. Keys (backend and model names) come from
// configuration.
type Learner struct {
	window  time.Duration
	buckets int
	now     func() time.Time

	mu       sync.Mutex
	hints    map[string]engine.Perf // backend → configured hints
	backends map[string]*learnWindow
	models   map[string]*ringStat // model → its answers' output tokens, exponentially weighted
	remote   map[string]remoteLearn
}

// LearnSample is one attempt's outcome on a backend.
type LearnSample struct {
	Backend string
	Model   string // the model the backend served (its upstream name)
	// Requested is the public model name the client asked for ("auto"
	// included): its answers' mean length predicts the next request's
	// (MeanOutput). "" means Model.
	Requested string
	Outcome   engine.Outcome
	Stream    bool
	// Prompt is the prompt size estimate in tokens.
	Prompt int
	// Output is the answer's length in tokens: the completion tokens the
	// backend reported, or for streams the events counted; 0 when unknown.
	Output int
	// TTFT (streams) and Total are the attempt's timings.
	TTFT, Total time.Duration
}

// learnWindow is one backend's ring of buckets.
type learnWindow struct {
	ring  []learnBucket
	start []time.Time
	cur   int
}

// learnBucket holds one time bucket's statistics of one backend.
type learnBucket struct {
	Fits     map[string]*fitStats `json:"f,omitempty"` // per model
	Service  ringStat             `json:"s"`           // total time of successes, seconds
	Attempts int64                `json:"a"`           // attempts with a verdict on the backend
	Against  int64                `json:"e"`           // of which counted against it
}

// fitStats are the sufficient statistics of the least-squares fit: XᵀX (its
// six distinct entries), Xᵀy and the number of rows, with x = (1, p, o).
type fitStats struct {
	N                float64 `json:"n"`
	P, O, PP, PO, OO float64 // Σp, Σo, Σp², Σpo, Σo²
	Y, PY, OY        float64 // Σy, Σpy, Σoy
	Samples          float64 `json:"k"` // successful attempts (a stream adds two rows, one sample)
}

// ringStat is a count and a sum (for a mean).
type ringStat struct {
	N   float64 `json:"n"`
	Sum float64 `json:"x"`
}

func (r *ringStat) add(o ringStat) { r.N += o.N; r.Sum += o.Sum }

func (r *ringStat) mean() float64 {
	if r.N == 0 {
		return 0
	}
	return r.Sum / r.N
}

func (f *fitStats) addRow(p, o, y float64) {
	f.N++
	f.P += p
	f.O += o
	f.PP += p * p
	f.PO += p * o
	f.OO += o * o
	f.Y += y
	f.PY += p * y
	f.OY += o * y
}

func (f *fitStats) add(g *fitStats) {
	f.N += g.N
	f.P += g.P
	f.O += g.O
	f.PP += g.PP
	f.PO += g.PO
	f.OO += g.OO
	f.Y += g.Y
	f.PY += g.PY
	f.OY += g.OY
	f.Samples += g.Samples
}

// remoteLearn is what another replica last published.
type remoteLearn struct {
	backends map[string]*learnBucket // its window, summed
	models   map[string]ringStat
	seen     time.Time
}

// NewLearner returns a learner over the given window, split in buckets
// (defaults: 1 minute in 6 buckets, like the latency sketches). now is the
// clock (time.Now when nil).
func NewLearner(window time.Duration, buckets int, now func() time.Time) *Learner {
	if window <= 0 {
		window = time.Minute
	}
	if buckets <= 0 {
		buckets = 6
	}
	if now == nil {
		now = time.Now
	}
	return &Learner{window: window, buckets: buckets, now: now, hints: map[string]engine.Perf{},
		backends: map[string]*learnWindow{}, models: map[string]*ringStat{}, remote: map[string]remoteLearn{}}
}

// SetHints sets a backend's configured hints (TTFTBase, TPOT; zero fields:
// none): the prior the fit is pulled toward while data is scarce, and the
// prediction before there is any.
func (l *Learner) SetHints(backend string, p engine.Perf) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.hints[backend] = engine.Perf{TTFTBase: p.TTFTBase, TTFTPerToken: p.TTFTPerToken, TPOT: p.TPOT}
}

// window returns a backend's ring, rotated to now.
func (l *Learner) windowLocked(backend string, now time.Time) *learnWindow {
	w := l.backends[backend]
	if w == nil {
		w = &learnWindow{ring: make([]learnBucket, l.buckets), start: make([]time.Time, l.buckets)}
		w.start[0] = now
		l.backends[backend] = w
	}
	step := l.window / time.Duration(l.buckets)
	for steps := 0; now.Sub(w.start[w.cur]) >= step && steps <= l.buckets; steps++ {
		next := (w.cur + 1) % l.buckets
		start := w.start[w.cur].Add(step)
		if now.Sub(start) >= l.window {
			for i := range w.ring {
				w.ring[i] = learnBucket{}
				w.start[i] = time.Time{}
			}
			start = now
		}
		w.ring[next] = learnBucket{}
		w.start[next] = start
		w.cur = next
	}
	return w
}

// modelStatLocked is the output-length statistic of a model.
func (l *Learner) modelStatLocked(model string) *ringStat {
	r := l.models[model]
	if r == nil {
		r = new(ringStat)
		l.models[model] = r
	}
	return r
}

// Record learns from one attempt.
func (l *Learner) Record(s LearnSample) {
	if s.Outcome == engine.OutcomeClientGone || s.Outcome == engine.OutcomeClientError {
		return // no verdict on the backend either way
	}
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	w := l.windowLocked(s.Backend, now)
	b := &w.ring[w.cur]
	b.Attempts++
	if s.Outcome.AgainstBackend() {
		b.Against++
	}
	if !s.Outcome.Teaches() || s.Total <= 0 {
		return
	}
	b.Service.N++
	b.Service.Sum += s.Total.Seconds()
	if s.Output <= 0 {
		return // no output length: no row for the fit
	}
	if b.Fits == nil {
		b.Fits = make(map[string]*fitStats, 2)
	}
	f := b.Fits[s.Model]
	if f == nil {
		f = new(fitStats)
		b.Fits[s.Model] = f
	}
	p, o := float64(max(s.Prompt, 0)), float64(s.Output-1)
	f.addRow(p, o, s.Total.Seconds())
	if s.Stream && s.TTFT > 0 && s.TTFT <= s.Total {
		f.addRow(p, 0, s.TTFT.Seconds())
	}
	f.Samples++
	// An exponentially weighted mean over about the last outputHalfLife
	// answers keeps the model's typical output length current without a
	// ring per model.
	requested := s.Requested
	if requested == "" {
		requested = s.Model
	}
	ms := l.modelStatLocked(requested)
	ms.N = ms.N*outputDecay + 1
	ms.Sum = ms.Sum*outputDecay + float64(s.Output)
}

// outputHalfLife is the half-life, in answers, of a model's mean output
// length; outputDecay the weight an answer loses with each newer one.
const outputHalfLife = 64

var outputDecay = math.Exp2(-1.0 / outputHalfLife)

// summedLocked is a backend's whole window, remote replicas included.
func (l *Learner) summedLocked(backend string, now time.Time) (sum learnBucket) {
	if w := l.backends[backend]; w != nil {
		l.windowLocked(backend, now)
		sum = w.recent()
	}
	for id, r := range l.remote {
		if now.Sub(r.seen) > l.window {
			delete(l.remote, id)
			continue
		}
		if b := r.backends[backend]; b != nil {
			mergeBucket(&sum, b)
		}
	}
	return sum
}

// recentFitSamples is how many successes the fit wants: it uses the most
// recent buckets that hold at least this many (all of the window when they
// do not), so that a backend that slows down or recovers is re-learned as
// soon as about this many requests have seen its new speed, rather than
// over the whole window, while a backend with little traffic is still
// fitted from all it has.
const recentFitSamples = 20

// recent sums a window's buckets, newest first: error counts over the whole
// window; the timings (each model's fit, the service time) over the newest
// buckets that hold at least recentFitSamples of them.
func (w *learnWindow) recent() (sum learnBucket) {
	n := len(w.ring)
	for k := range n {
		b := &w.ring[(w.cur-k+n)%n]
		sum.Attempts += b.Attempts
		sum.Against += b.Against
		if sum.Service.N < recentFitSamples {
			sum.Service.add(b.Service)
		}
		for m, f := range b.Fits {
			if sum.Fits == nil {
				sum.Fits = make(map[string]*fitStats, len(b.Fits))
			}
			g := sum.Fits[m]
			if g == nil {
				g = new(fitStats)
				sum.Fits[m] = g
			}
			if g.Samples < recentFitSamples {
				g.add(f)
			}
		}
	}
	return sum
}

func mergeBucket(dst, src *learnBucket) {
	dst.Attempts += src.Attempts
	dst.Against += src.Against
	dst.Service.add(src.Service)
	for m, f := range src.Fits {
		if dst.Fits == nil {
			dst.Fits = make(map[string]*fitStats, len(src.Fits))
		}
		g := dst.Fits[m]
		if g == nil {
			g = new(fitStats)
			dst.Fits[m] = g
		}
		g.add(f)
	}
}

// Backend is what the learner knows of one backend, for one model.
type Backend struct {
	Perf     engine.Perf // the fitted (or hinted) latency model
	Attempts int         // attempts with a verdict in the window
	Errors   int         // of which counted against the backend
}

// Backend returns what is known of backend for model, fleet-wide.
func (l *Learner) Backend(backend, model string) Backend {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	sum := l.summedLocked(backend, now)
	out := Backend{Attempts: int(sum.Attempts), Errors: int(sum.Against)}
	hint := l.hints[backend]
	out.Perf = fit(sum.Fits[model], hint)
	out.Perf.MeanService = time.Duration(sum.Service.mean() * float64(time.Second))
	return out
}

// MeanOutput is the recent mean output length of the answers to requests for
// a (public) model, fleet-wide; 0 when unknown.
func (l *Learner) MeanOutput(model string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	var sum ringStat
	if r := l.models[model]; r != nil {
		sum.add(*r)
	}
	now := l.now()
	for _, r := range l.remote {
		if now.Sub(r.seen) <= l.window {
			sum.add(r.models[model])
		}
	}
	if sum.N < 1 {
		return 0
	}
	return int(math.Round(sum.mean()))
}

// ridgeSamples is the weight of the prior in the fit, in samples: with fewer
// observations than this the hints (or zero) still count for much.
const ridgeSamples = 2

// Typical feature scales, so that the prior weighs alike on each coefficient:
// a prompt of about 1000 tokens, an answer of about 100.
const (
	promptScale = 1000.0
	outputScale = 100.0
)

// fit solves the ridge-regularised normal equations for one model's
// statistics, pulled toward hint; with no statistics it returns the hint.
// Coefficients come out in seconds and are clamped at 0 (a negative time per
// token is an artefact of too little spread in the data).
func fit(f *fitStats, hint engine.Perf) engine.Perf {
	if f == nil || f.N == 0 {
		return hint
	}
	prior := [3]float64{hint.TTFTBase.Seconds(), hint.TTFTPerToken / 1e9, hint.TPOT.Seconds()}
	scale := [3]float64{1, promptScale * promptScale, outputScale * outputScale}
	var lam [3]float64
	for i := range lam {
		// A hinted coefficient is pulled toward its hint with the weight
		// of ridgeSamples observations; an unhinted one only enough to
		// keep the system solvable (no spread in prompt sizes, say)
		// without biasing it.
		w := 1e-6
		if prior[i] > 0 {
			w = ridgeSamples
		}
		lam[i] = w * scale[i]
	}
	a := [3][4]float64{
		{f.N + lam[0], f.P, f.O, f.Y + lam[0]*prior[0]},
		{f.P, f.PP + lam[1], f.PO, f.PY + lam[1]*prior[1]},
		{f.O, f.PO, f.OO + lam[2], f.OY + lam[2]*prior[2]},
	}
	c, ok := solve3(a)
	if !ok {
		return hint
	}
	for i := range c {
		if c[i] < 0 || math.IsNaN(c[i]) {
			c[i] = 0
		}
	}
	return engine.Perf{
		TTFTBase:     time.Duration(c[0] * float64(time.Second)),
		TTFTPerToken: c[1] * 1e9,
		TPOT:         time.Duration(c[2] * float64(time.Second)),
		Samples:      int(f.Samples),
	}
}

// solve3 solves a 3×3 linear system given as an augmented matrix, by Gaussian
// elimination with partial pivoting.
func solve3(a [3][4]float64) ([3]float64, bool) {
	for col := 0; col < 3; col++ {
		piv := col
		for r := col + 1; r < 3; r++ {
			if math.Abs(a[r][col]) > math.Abs(a[piv][col]) {
				piv = r
			}
		}
		if math.Abs(a[piv][col]) < 1e-12 {
			return [3]float64{}, false
		}
		a[col], a[piv] = a[piv], a[col]
		for r := 0; r < 3; r++ {
			if r == col {
				continue
			}
			k := a[r][col] / a[col][col]
			for c := col; c < 4; c++ {
				a[r][c] -= k * a[col][c]
			}
		}
	}
	return [3]float64{a[0][3] / a[0][0], a[1][3] / a[1][1], a[2][3] / a[2][2]}, true
}

// learnWire is the encoded form of a replica's window.
type learnWire struct {
	Backends map[string]*learnBucket `json:"b,omitempty"`
	Models   map[string]ringStat     `json:"m,omitempty"`
}

// EncodeWindow serialises this replica's own window (every backend summed
// over its buckets, and the models' output lengths) for the other replicas;
// nil when there is nothing to share.
func (l *Learner) EncodeWindow() []byte {
	now := l.now()
	l.mu.Lock()
	wire := learnWire{Backends: map[string]*learnBucket{}, Models: map[string]ringStat{}}
	for name, w := range l.backends {
		l.windowLocked(name, now)
		sum := w.recent()
		if sum.Attempts > 0 || sum.Service.N > 0 {
			wire.Backends[name] = &sum
		}
	}
	for m, r := range l.models {
		wire.Models[m] = *r
	}
	l.mu.Unlock()
	if len(wire.Backends) == 0 && len(wire.Models) == 0 {
		return nil
	}
	b, _ := json.Marshal(wire)
	return b
}

// MergeRemote replaces what replica last published. Windows not refreshed
// within the sliding window are dropped.
func (l *Learner) MergeRemote(replica string, data []byte) error {
	var wire learnWire
	if err := json.Unmarshal(data, &wire); err != nil {
		return fmt.Errorf("decoding the learned window of replica %s: %w", replica, err)
	}
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.remote[replica] = remoteLearn{backends: wire.Backends, models: wire.Models, seen: now}
	return nil
}

// Backends lists the backends with anything learned, sorted.
func (l *Learner) Backends() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]string, 0, len(l.backends))
	for b := range l.backends {
		out = append(out, b)
	}
	sort.Strings(out)
	return out
}
