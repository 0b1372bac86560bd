package loadstate

import (
	"math"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/modelrouter/modelrouter/engine"
)

// stepClock is a clock the test moves.
type stepClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *stepClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *stepClock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// synth is a backend with a known latency model: TTFT = base + perTok·prompt,
// then tpot per further token.
type synth struct {
	base, tpot time.Duration
	perTok     time.Duration
}

func (s synth) sample(rnd *rand.Rand, stream bool) LearnSample {
	prompt := 50 + rnd.IntN(4000)
	out := 16 + rnd.IntN(240)
	ttft := s.base + time.Duration(prompt)*s.perTok
	return LearnSample{Backend: "b", Model: "m", Outcome: engine.OutcomeSuccess, Stream: stream,
		Prompt: prompt, Output: out, TTFT: ttft, Total: ttft + time.Duration(out-1)*s.tpot}
}

func near(got, want time.Duration, rel float64) bool {
	return math.Abs(float64(got-want)) <= rel*float64(want)
}

// TestLearnerFitsKnownModel: from exact timings of a backend with a known
// TTFT(prompt) and TPOT, the fit recovers the model, from streams (which show
// the first token), from non-streams alone, and from a mix.
func TestLearnerFitsKnownModel(t *testing.T) {
	truth := synth{base: 40 * time.Millisecond, perTok: 100 * time.Microsecond, tpot: 12 * time.Millisecond}
	for _, tt := range []struct {
		name   string
		stream func(i int) bool
	}{
		{"streams", func(int) bool { return true }},
		{"non-streams", func(int) bool { return false }},
		{"half and half", func(i int) bool { return i%2 == 0 }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			l := NewLearner(0, 0, nil)
			rnd := rand.New(rand.NewPCG(1, 2))
			for i := range 200 {
				l.Record(truth.sample(rnd, tt.stream(i)))
			}
			got := l.Backend("b", "m")
			p := got.Perf
			if !near(p.TTFTBase, truth.base, 0.05) || !near(time.Duration(p.TTFTPerToken), truth.perTok, 0.05) || !near(p.TPOT, truth.tpot, 0.02) {
				t.Fatalf("fit %+v, want base %v, %v per prompt token, TPOT %v", p, truth.base, truth.perTok, truth.tpot)
			}
			if p.Samples != 200 || got.Attempts != 200 || got.Errors != 0 {
				t.Errorf("samples %d attempts %d errors %d, want 200 200 0", p.Samples, got.Attempts, got.Errors)
			}
			// Predicted against a fresh request: within a few percent.
			req := engine.Request{PromptTokens: 2000, MaxTokens: 200}
			b := engine.Backend{MaxInflight: 4}
			ld := engine.Load{Perf: p}
			want := truth.base + 2000*truth.perTok + 199*truth.tpot
			if pred := engine.Predict(&req, &b, &ld, nil); !near(pred.Total, want, 0.03) {
				t.Errorf("predicted %v for a request that takes %v", pred.Total, want)
			}
		})
	}
}

// TestLearnerHints: with no data the hints are the prediction; a few samples
// move the fit toward the data; many make it the data's.
func TestLearnerHints(t *testing.T) {
	l := NewLearner(0, 0, nil)
	hint := engine.Perf{TTFTBase: 200 * time.Millisecond, TPOT: 20 * time.Millisecond}
	l.SetHints("b", hint)
	if got := l.Backend("b", "m").Perf; got.TTFTBase != hint.TTFTBase || got.TPOT != hint.TPOT || got.Samples != 0 {
		t.Fatalf("no data: %+v, want the hints", got)
	}
	truth := synth{base: 50 * time.Millisecond, tpot: 5 * time.Millisecond}
	rnd := rand.New(rand.NewPCG(3, 4))
	l.Record(truth.sample(rnd, true))
	few := l.Backend("b", "m").Perf
	if !(few.TPOT < hint.TPOT && few.TPOT > truth.tpot) {
		t.Errorf("one sample: TPOT %v, want between the data's %v and the hint's %v", few.TPOT, truth.tpot, hint.TPOT)
	}
	for range 300 {
		l.Record(truth.sample(rnd, true))
	}
	if many := l.Backend("b", "m").Perf; !near(many.TPOT, truth.tpot, 0.02) || !near(many.TTFTBase, truth.base, 0.1) {
		t.Errorf("many samples: %+v, want the data's base %v TPOT %v", many, truth.base, truth.tpot)
	}
}

// TestLearnerOnlyLearnsFromEvidence: client-side outcomes are ignored; the
// outcomes against a backend make its error rate; only successes feed the
// latency model.
func TestLearnerOnlyLearnsFromEvidence(t *testing.T) {
	l := NewLearner(0, 0, nil)
	quick := LearnSample{Backend: "b", Model: "m", Prompt: 10, Output: 1, Total: time.Millisecond}
	for _, o := range []engine.Outcome{engine.OutcomeRateLimited, engine.OutcomeFailed, engine.OutcomeBroken, engine.OutcomeClientGone, engine.OutcomeClientError} {
		s := quick
		s.Outcome = o
		l.Record(s)
	}
	got := l.Backend("b", "m")
	if got.Attempts != 3 || got.Errors != 3 {
		t.Errorf("attempts %d errors %d, want 3 and 3 (client outcomes are no verdict)", got.Attempts, got.Errors)
	}
	if got.Perf.Known() || got.Perf.MeanService != 0 {
		t.Errorf("failures taught the latency model: %+v", got.Perf)
	}
	ok := quick
	ok.Outcome = engine.OutcomeSuccess
	l.Record(ok)
	if got := l.Backend("b", "m"); got.Attempts != 4 || got.Errors != 3 || got.Perf.MeanService != time.Millisecond {
		t.Errorf("after a success: %+v", got)
	}
}

// TestLearnerWindowForgets: observations leave the window, the error rate
// decays back to zero and a slowed-down backend's new speed takes over.
func TestLearnerWindowForgets(t *testing.T) {
	clk := &stepClock{t: time.Unix(1_700_000_000, 0)}
	l := NewLearner(time.Minute, 6, clk.now)
	rnd := rand.New(rand.NewPCG(5, 6))
	slow := synth{base: 100 * time.Millisecond, tpot: 30 * time.Millisecond}
	for range 50 {
		l.Record(slow.sample(rnd, true))
		s := slow.sample(rnd, false)
		s.Outcome = engine.OutcomeFailed
		l.Record(s)
	}
	if got := l.Backend("b", "m"); got.Errors != 50 || !near(got.Perf.TPOT, slow.tpot, 0.02) {
		t.Fatalf("before: %+v", got)
	}
	fast := synth{base: 20 * time.Millisecond, tpot: 3 * time.Millisecond}
	for range 7 { // a little over the window, in bucket steps
		clk.add(10 * time.Second)
		for range 20 {
			l.Record(fast.sample(rnd, true))
		}
	}
	got := l.Backend("b", "m")
	if got.Errors != 0 {
		t.Errorf("errors %d a window later, want 0", got.Errors)
	}
	if !near(got.Perf.TPOT, fast.tpot, 0.02) {
		t.Errorf("TPOT %v a window later, want the new %v", got.Perf.TPOT, fast.tpot)
	}
	clk.add(2 * time.Minute)
	if got := l.Backend("b", "m"); got.Attempts != 0 || got.Perf.Samples != 0 {
		t.Errorf("after an idle window: %+v, want nothing", got)
	}
}

// TestLearnerFollowsChangeQuickly: a backend that was slow for most of the
// window and fast for the last 10 s (one bucket of 20 samples) is predicted
// at its new speed, not the window's average (the fit uses the newest
// buckets holding recentFitSamples), both ways; with fewer new samples the
// older buckets still count.
func TestLearnerFollowsChangeQuickly(t *testing.T) {
	slow := synth{base: 100 * time.Millisecond, tpot: 30 * time.Millisecond}
	fast := synth{base: 20 * time.Millisecond, tpot: 3 * time.Millisecond}
	for _, tt := range []struct {
		name       string
		before, to synth
	}{
		{"recovers", slow, fast},
		{"slows down", fast, slow},
	} {
		t.Run(tt.name, func(t *testing.T) {
			clk := &stepClock{t: time.Unix(1_700_000_000, 0)}
			l := NewLearner(time.Minute, 6, clk.now)
			rnd := rand.New(rand.NewPCG(7, 8))
			for range 5 { // 50 s of the old speed
				for range 20 {
					l.Record(tt.before.sample(rnd, true))
				}
				clk.add(10 * time.Second)
			}
			for range 20 { // then 10 s of the new one, as much data per second
				l.Record(tt.to.sample(rnd, true))
			}
			got := l.Backend("b", "m")
			// The whole window's fit would be (5·old + new)/6.
			if !near(got.Perf.TPOT, tt.to.tpot, 0.02) {
				t.Fatalf("TPOT %v after 20 samples at %v (before: %v)", got.Perf.TPOT, tt.to.tpot, tt.before.tpot)
			}
			if got.Attempts != 120 {
				t.Errorf("attempts %d, want 120: error counts keep the whole window", got.Attempts)
			}
			// A new bucket with 5 samples of yet another speed: the fit
			// takes the bucket before too (20 + 5 samples).
			clk.add(10 * time.Second)
			for range 5 {
				l.Record(tt.before.sample(rnd, true))
			}
			mixed := l.Backend("b", "m").Perf.TPOT
			lo, hi := min(tt.before.tpot, tt.to.tpot), max(tt.before.tpot, tt.to.tpot)
			if mixed <= lo || mixed >= hi || mixed.Seconds() == got.Perf.TPOT.Seconds() {
				t.Errorf("TPOT %v from 20 samples at %v and 5 at %v: want between", mixed, tt.to.tpot, tt.before.tpot)
			}
		})
	}
}

// TestLearnerShared: two replicas' windows merge into one fit, and a replica
// that stops publishing is forgotten.
func TestLearnerShared(t *testing.T) {
	clk := &stepClock{t: time.Unix(1_700_000_000, 0)}
	a, b := NewLearner(time.Minute, 6, clk.now), NewLearner(time.Minute, 6, clk.now)
	truth := synth{base: 30 * time.Millisecond, perTok: 20 * time.Microsecond, tpot: 8 * time.Millisecond}
	rnd := rand.New(rand.NewPCG(7, 8))
	for i := range 100 {
		if i%2 == 0 {
			a.Record(truth.sample(rnd, true))
		} else {
			s := truth.sample(rnd, false)
			if i%10 == 1 {
				s.Outcome = engine.OutcomeFailed
			}
			b.Record(s)
		}
	}
	if err := a.MergeRemote("replica-b", b.EncodeWindow()); err != nil {
		t.Fatal(err)
	}
	got := a.Backend("b", "m")
	if got.Attempts != 100 || got.Errors != 10 || got.Perf.Samples != 90 {
		t.Errorf("merged: attempts %d errors %d samples %d, want 100 10 90", got.Attempts, got.Errors, got.Perf.Samples)
	}
	if !near(got.Perf.TPOT, truth.tpot, 0.02) {
		t.Errorf("merged TPOT %v, want %v", got.Perf.TPOT, truth.tpot)
	}
	if a.MeanOutput("m") == 0 {
		t.Error("no mean output after merging")
	}
	if err := a.MergeRemote("replica-c", []byte("not json")); err == nil {
		t.Error("garbage merged")
	}
	clk.add(2 * time.Minute)
	if got := a.Backend("b", "m"); got.Attempts != 0 {
		t.Errorf("a silent replica's window still counts: %+v", got)
	}
}

// TestLearnerMeanOutput follows a model's output lengths.
func TestLearnerMeanOutput(t *testing.T) {
	l := NewLearner(0, 0, nil)
	if l.MeanOutput("m") != 0 {
		t.Fatal("mean output of an unknown model")
	}
	s := LearnSample{Backend: "b", Model: "m", Outcome: engine.OutcomeSuccess, Output: 100, Total: time.Second}
	for range 200 {
		l.Record(s)
	}
	if got := l.MeanOutput("m"); got != 100 {
		t.Fatalf("mean output %d, want 100", got)
	}
	s.Output = 20
	for range 400 {
		l.Record(s)
	}
	if got := l.MeanOutput("m"); got < 20 || got > 22 {
		t.Fatalf("mean output %d after a shift to 20, want it followed", got)
	}
}

func TestSolve3(t *testing.T) {
	// x + 2y + 3z = 14; 2x + y + z = 7; 3x + y + 2z = 11 → (1, 2, 3)... check
	got, ok := solve3([3][4]float64{{1, 2, 3, 14}, {2, 1, 1, 7}, {3, 1, 2, 11}})
	want := [3]float64{1, 2, 3}
	if !ok {
		t.Fatal("singular")
	}
	for i := range got {
		if math.Abs(got[i]-want[i]) > 1e-9 {
			t.Fatalf("solve3 = %v, want %v", got, want)
		}
	}
	if _, ok := solve3([3][4]float64{{1, 2, 3, 1}, {2, 4, 6, 2}, {1, 1, 1, 1}}); ok {
		t.Error("a singular system solved")
	}
}
