package workload

import (
	"encoding/json"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

func TestScheduleIsDeterministicAndComplete(t *testing.T) {
	const n, rounds, rate = 1001, 3, 50.0
	for _, name := range Names {
		t.Run(name, func(t *testing.T) {
			spec, err := Named(name, 32)
			if err != nil {
				t.Fatal(err)
			}
			a := Schedule(n, rounds, rate, 0.5, 7, spec)
			b := Schedule(n, rounds, rate, 0.5, 7, spec)
			if len(a) != rounds {
				t.Fatalf("got %d chunks, want %d", len(a), rounds)
			}
			total, streams := 0, 0
			var span time.Duration
			for r, chunk := range a {
				if chunk[0].Offset != 0 {
					t.Errorf("chunk %d starts at %v, want 0", r, chunk[0].Offset)
				}
				for i, arr := range chunk {
					if arr != b[r][i] {
						t.Fatalf("same seed, different arrival %d of chunk %d: %+v vs %+v", i, r, arr, b[r][i])
					}
					if arr.Index != total {
						t.Fatalf("arrival index %d, want %d", arr.Index, total)
					}
					if i > 0 && arr.Offset < chunk[i-1].Offset {
						t.Fatalf("offsets go backwards in chunk %d at %d", r, i)
					}
					if arr.Stream {
						streams++
					}
					total++
				}
				span += chunk[len(chunk)-1].Offset
			}
			if total != n {
				t.Errorf("%d arrivals in all, want %d", total, n)
			}
			if want := 501; streams != want { // 1001 × 0.5 rounded
				t.Errorf("%d streaming, want %d", streams, want)
			}
			// The mean gap should be near 1/rate: a loose bound, n is large.
			if got := float64(n-rounds) / span.Seconds(); math.Abs(got-rate)/rate > 0.15 {
				t.Errorf("observed rate %.1f/s, want about %.1f/s", got, rate)
			}
			c := Schedule(n, rounds, rate, 0.5, 8, spec)
			if c[0][1] == a[0][1] && c[0][2] == a[0][2] {
				t.Error("a different seed gave the same arrivals")
			}
			if spec.Prompt != nil && slices.EqualFunc(c[0][:50], a[0][:50], func(x, y Arrival) bool { return x.Output == y.Output && x.Prompt == y.Prompt }) {
				t.Error("a different seed gave the same sizes")
			}
		})
	}
}

// TestArrivalTimesDoNotDependOnTheWorkload: the sizes come from their own
// random stream, so the fixed workload keeps the arrivals it always had and
// the workloads differ only in their sizes.
func TestArrivalTimesDoNotDependOnTheWorkload(t *testing.T) {
	var times [][]time.Duration
	for _, name := range Names {
		spec, _ := Named(name, 32)
		var ts []time.Duration
		for _, a := range Arrivals(500, 40, 0.5, 3, spec) {
			ts = append(ts, a.Offset)
		}
		times = append(times, ts)
	}
	for i := 1; i < len(times); i++ {
		if !slices.Equal(times[0], times[i]) {
			t.Errorf("workload %s has other arrival times than %s", Names[i], Names[0])
		}
	}
	// The fixed workload's first arrivals as the quality benchmark always
	// drew them (seed 1, 56.44 req/s): the schedule has not moved.
	fixed, _ := Named("fixed", 32)
	a := Arrivals(3, 0.85*66.4, 0.5, 1, fixed)
	b := legacyArrivals(3, 0.85*66.4, 0.5, 1)
	for i := range a {
		if a[i].Offset != b[i].Offset || a[i].Stream != b[i].Stream || a[i].MaxTokens || a[i].Prompt != 0 {
			t.Errorf("fixed arrival %d = %+v, before %+v", i, a[i], b[i])
		}
	}
}

// legacyArrivals is the schedule's draw as the quality benchmark had it.
func legacyArrivals(n int, rate, streamFrac float64, seed uint64) []Arrival {
	rng := rand.New(rand.NewPCG(seed, 0x6d6f64656c726f75))
	streams := make([]bool, n)
	for i := range int(float64(n)*streamFrac + 0.5) {
		streams[i] = true
	}
	rng.Shuffle(n, func(i, j int) { streams[i], streams[j] = streams[j], streams[i] })
	all := make([]Arrival, n)
	var t float64
	for i := range all {
		t += rng.ExpFloat64() / rate
		all[i] = Arrival{Index: i, Offset: time.Duration(t * float64(time.Second)), Stream: streams[i]}
	}
	return all
}

// TestDistributions draws many values from each distribution: all within
// its bounds, every value of a small range reached, the sample mean near the
// exact mean (within 5 standard errors), and the exact means as computed
// independently (by a numerical sum outside Go).
func TestDistributions(t *testing.T) {
	for _, tc := range []struct {
		d        Dist
		wantMean float64 // independently computed; NaN: not checked
		lo, hi   int
	}{
		{Constant(32), 32, 32, 32},
		{Uniform{Lo: 16, Hi: 256}, 136, 16, 256},
		{LogUniform{Lo: 50, Hi: 4000}, 901.0866, 50, 4000},
		{LogNormal{Lo: 8, Hi: 1024, Median: 50, Sigma: 1.2}, 99.1512, 8, 1024},
		{LogUniform{Lo: 3, Hi: 9}, math.NaN(), 3, 9},
		{LogNormal{Lo: 2, Hi: 6, Median: 4, Sigma: 0.5}, math.NaN(), 2, 6},
	} {
		t.Run(tc.d.String(), func(t *testing.T) {
			if tc.d.Min() != tc.lo || tc.d.Max() != tc.hi {
				t.Errorf("bounds %d-%d, want %d-%d", tc.d.Min(), tc.d.Max(), tc.lo, tc.hi)
			}
			if !math.IsNaN(tc.wantMean) && math.Abs(tc.d.Mean()-tc.wantMean) > 1e-3 {
				t.Errorf("Mean() = %.4f, want %.4f", tc.d.Mean(), tc.wantMean)
			}
			rng := rand.New(rand.NewPCG(42, 1))
			const n = 200_000
			var sum, sumSq float64
			seen := map[int]bool{}
			for range n {
				k := tc.d.Draw(rng)
				if k < tc.lo || k > tc.hi {
					t.Fatalf("drew %d outside %d-%d", k, tc.lo, tc.hi)
				}
				seen[k] = true
				sum += float64(k)
				sumSq += float64(k) * float64(k)
			}
			mean := sum / n
			sd := math.Sqrt(max(sumSq/n-mean*mean, 0))
			if se := sd / math.Sqrt(n); math.Abs(mean-tc.d.Mean()) > 5*se+1e-9 {
				t.Errorf("sample mean %.3f, exact mean %.3f (standard error %.3f)", mean, tc.d.Mean(), se)
			}
			if tc.hi-tc.lo < 10 && len(seen) != tc.hi-tc.lo+1 {
				t.Errorf("drew %d distinct values, want every one of %d-%d", len(seen), tc.lo, tc.hi)
			}
		})
	}
}

// TestHeavyTail: the heavy workload's answers are mostly short with a long
// tail, the wide one's spread evenly; the quantiles are those of the
// distributions as designed.
func TestHeavyTail(t *testing.T) {
	quantiles := func(d Dist) (p50, p99 int) {
		rng := rand.New(rand.NewPCG(9, 9))
		xs := make([]int, 100_000)
		for i := range xs {
			xs[i] = d.Draw(rng)
		}
		slices.Sort(xs)
		return xs[len(xs)/2], xs[len(xs)*99/100]
	}
	heavy, _ := Named("heavy", 0)
	if p50, p99 := quantiles(heavy.Output); p50 < 50 || p50 > 60 || p99 < 620 || p99 > 720 {
		t.Errorf("heavy: p50 %d (want about 55), p99 %d (want about 670)", p50, p99)
	}
	wide, _ := Named("wide", 0)
	if p50, p99 := quantiles(wide.Output); p50 < 130 || p50 > 142 || p99 < 250 {
		t.Errorf("wide: p50 %d (want about 136), p99 %d (want about 254)", p50, p99)
	}
}

func TestBuckets(t *testing.T) {
	wide, _ := Named("wide", 0)
	for tokens, want := range map[int]int{15: -1, 16: 0, 63: 0, 64: 1, 127: 1, 128: 2, 256: 2, 257: -1} {
		if got := wide.Bucket(tokens); got != want {
			t.Errorf("Bucket(%d) = %d, want %d", tokens, got, want)
		}
	}
	if got := wide.BucketLabels(); !slices.Equal(got, []string{"16-64", "64-128", "128-256"}) {
		t.Errorf("labels %v", got)
	}
	fixed, _ := Named("fixed", 32)
	if fixed.Bucket(32) != -1 || fixed.BucketLabels() != nil {
		t.Error("the fixed workload has buckets")
	}
	if _, err := Named("narrow", 0); err == nil {
		t.Error("an unknown workload was accepted")
	}
}

// TestBody: the fixed body is the one the benchmark always sent; the others
// carry max_tokens and a prompt that is exactly Prompt tokens to the sims
// (text bytes ÷ 4) and valid JSON.
func TestBody(t *testing.T) {
	fixed := Arrival{Output: 32}
	if got, want := string(fixed.Body()), `{"model":"bench","messages":[{"role":"user","content":"Write a haiku about load balancing."}]}`; got != want {
		t.Errorf("fixed body %s", got)
	}
	fixed.Stream = true
	if got, want := string(fixed.Body()), `{"model":"bench","messages":[{"role":"user","content":"Write a haiku about load balancing."}],"stream":true}`; got != want {
		t.Errorf("fixed stream body %s", got)
	}
	for _, prompt := range []int{1, 50, 999, 4000, 5000} {
		a := Arrival{Stream: prompt%2 == 0, Output: 77, MaxTokens: true, Prompt: prompt}
		var body struct {
			Model     string `json:"model"`
			MaxTokens int    `json:"max_tokens"`
			Stream    bool   `json:"stream"`
			Messages  []struct {
				Role    string `json:"role"`
				Content string `json:"content"`
			} `json:"messages"`
		}
		if err := json.Unmarshal(a.Body(), &body); err != nil {
			t.Fatalf("prompt %d: %v", prompt, err)
		}
		if body.Model != "bench" || body.MaxTokens != 77 || body.Stream != a.Stream || len(body.Messages) != 1 {
			t.Errorf("prompt %d: body %+v", prompt, body)
			continue
		}
		if got := (len(body.Messages[0].Content) + 3) / 4; got != prompt {
			t.Errorf("prompt %d: %d bytes of content, %d tokens to the sims", prompt, len(body.Messages[0].Content), got)
		}
	}
}

// TestMixedTasks: the mixed workload gives each task exactly its share of
// the requests (40/30/30), in an order fixed by the seed, as model "auto";
// its arrival times and sizes are wide's, and the other workloads have no
// tasks.
func TestMixedTasks(t *testing.T) {
	mixed, err := Named("mixed", 0)
	if err != nil {
		t.Fatal(err)
	}
	wide, _ := Named("wide", 0)
	for _, n := range []int{1, 7, 10, 1001, 3000} {
		a := Arrivals(n, 20, 0.5, 5, mixed)
		counts := map[string]int{}
		for _, arr := range a {
			counts[arr.Task]++
		}
		total := 0
		for _, share := range MixedTasks {
			exact := float64(n) * share.Share
			if got := counts[share.Task]; math.Abs(float64(got)-exact) >= 1 {
				t.Errorf("n=%d: %d %s requests, want %.1f rounded", n, got, share.Task, exact)
			}
			total += counts[share.Task]
		}
		if total != n {
			t.Errorf("n=%d: %d requests with a known task (%v)", n, total, counts)
		}
	}
	a, b := Arrivals(1000, 20, 0.5, 5, mixed), Arrivals(1000, 20, 0.5, 5, mixed)
	w := Arrivals(1000, 20, 0.5, 5, wide)
	for i := range a {
		if a[i] != b[i] {
			t.Fatalf("same seed, different arrival %d: %+v vs %+v", i, a[i], b[i])
		}
		if a[i].Offset != w[i].Offset || a[i].Output != w[i].Output || a[i].Prompt != w[i].Prompt || a[i].Stream != w[i].Stream {
			t.Fatalf("arrival %d differs from wide's in more than its task: %+v vs %+v", i, a[i], w[i])
		}
		if w[i].Task != "" {
			t.Fatalf("wide arrival %d has task %q", i, w[i].Task)
		}
	}
	c := Arrivals(1000, 20, 0.5, 6, mixed)
	if slices.EqualFunc(a[:50], c[:50], func(x, y Arrival) bool { return x.Task == y.Task }) {
		t.Error("another seed gave the same order of tasks")
	}
	// Each task's requests are spread over the run, not bunched: the first
	// and the second half each hold about half of every task.
	firstHalf := map[string]int{}
	for _, arr := range a[:500] {
		firstHalf[arr.Task]++
	}
	for _, share := range MixedTasks {
		if got, want := float64(firstHalf[share.Task]), 500*share.Share; math.Abs(got-want) > 0.25*want {
			t.Errorf("%s: %v in the first half, want about %.0f", share.Task, got, want)
		}
	}
}

// TestMixedBody: a request with a task asks for model "auto".
func TestMixedBody(t *testing.T) {
	a := Arrival{Output: 40, MaxTokens: true, Prompt: 10, Task: "coding"}
	var body struct {
		Model     string `json:"model"`
		MaxTokens int    `json:"max_tokens"`
	}
	if err := json.Unmarshal(a.Body(), &body); err != nil {
		t.Fatal(err)
	}
	if body.Model != AutoModel || body.MaxTokens != 40 {
		t.Errorf("body %s", a.Body())
	}
}
