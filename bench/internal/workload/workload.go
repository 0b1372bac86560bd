// Package workload makes the benchmarks' request streams: Poisson arrivals
// fixed by a seed, which of them stream, (for the wide, heavy and mixed
// workloads) each request's output length, sent as max_tokens, and prompt
// size, sent as that many tokens' worth of text, and (mixed) each request's
// task, sent as model "auto" with the capability header. The same seed gives
// the same stream, so every contender gets the same requests.
package workload

import (
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"
)

// Spec is a workload: how long the answers and the prompts are.
type Spec struct {
	Name string
	// Output is the completion tokens per request.
	Output Dist
	// Prompt is the prompt tokens per request; nil: every request sends the
	// same short prompt (FixedPrompt).
	Prompt Dist
	// MaxTokens: each request sends its drawn output length as max_tokens,
	// and the sims are configured to generate at least Output.Max() tokens.
	// Otherwise no max_tokens is sent and the sims' tokens decide.
	MaxTokens bool
	// Tasks is the traffic's mix of tasks: each request asks for one, with
	// model "auto" and the capability header (CapabilityHeader). nil: model
	// "bench", no header.
	Tasks []TaskShare
	// Buckets are the edges of the output-length buckets of the reports:
	// bucket i holds lengths in [Buckets[i], Buckets[i+1]), the last one
	// includes its upper edge. nil: no breakdown.
	Buckets []int
}

// TaskShare is the share of the requests that ask for one task (a
// capability name).
type TaskShare struct {
	Task  string
	Share float64
}

// CapabilityHeader is the request header that names the task of a model
// "auto" request: the router picks among every backend by its score for it.
const CapabilityHeader = "X-Model-Router-Capability"

// AutoModel is the model a request with a task asks for.
const AutoModel = "auto"

// MixedTasks is the mixed workload's traffic (issue 8): 40% chat, 30%
// coding, 30% reasoning.
var MixedTasks = []TaskShare{{"chat", 0.4}, {"coding", 0.3}, {"reasoning", 0.3}}

// FixedPrompt is the fixed workload's prompt (the message content), the
// one the quality benchmark has always sent.
const FixedPrompt = "Write a haiku about load balancing."

// fixedPromptTokens is FixedPrompt's size as the sims count it (bytes ÷ 4,
// rounded up).
const fixedPromptTokens = (len(FixedPrompt) + 3) / 4

// Names lists the workloads Named knows.
var Names = []string{"fixed", "wide", "heavy", "mixed"}

// Named returns a workload by name; tokens is the fixed workload's output
// length (set on the sims, not sent).
//
//	fixed  every answer tokens long, the same short prompt    (issue 2)
//	wide   answers uniform 16–256 tokens (mean 136), prompts log-uniform 50–4000 tokens (mean ≈ 901)
//	heavy  answers log-normal, median 50, σ 1.2, within 8–1024 (mean ≈ 99, p99 ≈ 670), prompts as wide
//	mixed  sizes as wide; each request a task of MixedTasks, as model auto  (issue 8)
func Named(name string, tokens int) (Spec, error) {
	prompts := LogUniform{Lo: 50, Hi: 4000}
	switch name {
	case "fixed":
		return Spec{Name: name, Output: Constant(tokens)}, nil
	case "wide":
		return Spec{Name: name, Output: Uniform{Lo: 16, Hi: 256}, Prompt: prompts, MaxTokens: true,
			Buckets: []int{16, 64, 128, 256}}, nil
	case "heavy":
		return Spec{Name: name, Output: LogNormal{Lo: 8, Hi: 1024, Median: 50, Sigma: 1.2}, Prompt: prompts, MaxTokens: true,
			Buckets: []int{8, 32, 128, 512, 1024}}, nil
	case "mixed":
		return Spec{Name: name, Output: Uniform{Lo: 16, Hi: 256}, Prompt: prompts, MaxTokens: true, Tasks: MixedTasks}, nil
	}
	return Spec{}, fmt.Errorf("unknown workload %q: want %s", name, strings.Join(Names, ", "))
}

// MeanPrompt is the mean prompt size in tokens.
func (s Spec) MeanPrompt() float64 {
	if s.Prompt == nil {
		return float64(fixedPromptTokens)
	}
	return s.Prompt.Mean()
}

// Bucket returns the index of the output-length bucket of tokens, -1 when
// it is outside every bucket or there are none.
func (s Spec) Bucket(tokens int) int {
	n := len(s.Buckets)
	if n < 2 || tokens < s.Buckets[0] || tokens > s.Buckets[n-1] {
		return -1
	}
	for i := 1; i < n-1; i++ {
		if tokens < s.Buckets[i] {
			return i - 1
		}
	}
	return n - 2
}

// BucketLabels names the buckets, "16-64" and so on.
func (s Spec) BucketLabels() []string {
	var labels []string
	for i := 0; i+1 < len(s.Buckets); i++ {
		labels = append(labels, strconv.Itoa(s.Buckets[i])+"-"+strconv.Itoa(s.Buckets[i+1]))
	}
	return labels
}

// Arrival is one request of the workload.
type Arrival struct {
	Index  int           // position in the whole workload; picks the replica
	Offset time.Duration // from the start of its round
	Stream bool
	// Output is the answer's length in tokens: sent as max_tokens when
	// MaxTokens is set, else what the sims are configured to generate.
	Output    int
	MaxTokens bool
	// Prompt is the prompt's size in tokens; 0: FixedPrompt.
	Prompt int
	// Task is the capability the request asks for, with model "auto" and
	// CapabilityHeader; "": model "bench", no header.
	Task string
}

// Arrivals draws n Poisson arrivals at rate per second from seed, a fraction
// streamFrac of them streaming (exactly rounded, shuffled), each with an
// output length and prompt size drawn from spec. The arrival times and
// streaming flags come from one random stream and the sizes from another, so
// a workload's schedule does not depend on its sizes: every workload with
// the same seed, rate and n has the same arrival times. With spec.Tasks, each
// request's task comes from a third stream (see drawTasks).
func Arrivals(n int, rate, streamFrac float64, seed uint64, spec Spec) []Arrival {
	rng := rand.New(rand.NewPCG(seed, 0x6d6f64656c726f75)) // fixed stream: the seed alone decides
	streams := make([]bool, n)
	for i := range int(float64(n)*streamFrac + 0.5) {
		streams[i] = true
	}
	rng.Shuffle(n, func(i, j int) { streams[i], streams[j] = streams[j], streams[i] })
	sizes := rand.New(rand.NewPCG(seed, 0x73697a6573)) // "sizes"
	// "tasks": a stream of its own, so a mix changes no time or size.
	tasks := drawTasks(n, spec.Tasks, rand.New(rand.NewPCG(seed, 0x7461736b73)))

	all := make([]Arrival, n)
	var t float64
	for i := range all {
		t += rng.ExpFloat64() / rate
		a := Arrival{Index: i, Offset: time.Duration(t * float64(time.Second)), Stream: streams[i], MaxTokens: spec.MaxTokens}
		a.Output = spec.Output.Draw(sizes)
		if spec.Prompt != nil {
			a.Prompt = spec.Prompt.Draw(sizes)
		}
		if tasks != nil {
			a.Task = tasks[i]
		}
		all[i] = a
	}
	return all
}

// drawTasks gives n requests their tasks: each task exactly its share of n
// (largest remainders get the requests left over by rounding down), in an
// order shuffled by rng, so every run has the mix it asks for and only the
// order depends on the seed. nil when there are no tasks.
func drawTasks(n int, shares []TaskShare, rng *rand.Rand) []string {
	if len(shares) == 0 {
		return nil
	}
	var total float64
	for _, s := range shares {
		total += s.Share
	}
	counts := make([]int, len(shares))
	rest := make([]float64, len(shares))
	left := n
	for i, s := range shares {
		exact := float64(n) * s.Share / total
		counts[i] = int(exact)
		rest[i] = exact - float64(counts[i])
		left -= counts[i]
	}
	for ; left > 0; left-- {
		best := 0
		for i := range rest {
			if rest[i] > rest[best] {
				best = i
			}
		}
		counts[best]++
		rest[best] = -1
	}
	tasks := make([]string, 0, n)
	for i, s := range shares {
		for range counts[i] {
			tasks = append(tasks, s.Task)
		}
	}
	rng.Shuffle(n, func(i, j int) { tasks[i], tasks[j] = tasks[j], tasks[i] })
	return tasks
}

// Schedule is Arrivals cut into rounds consecutive chunks, each with offsets
// from its own start. Every contender gets the same chunks.
func Schedule(n, rounds int, rate, streamFrac float64, seed uint64, spec Spec) [][]Arrival {
	all := Arrivals(n, rate, streamFrac, seed, spec)
	chunks := make([][]Arrival, 0, rounds)
	for r := range rounds {
		lo, hi := r*n/rounds, (r+1)*n/rounds
		if lo == hi {
			continue
		}
		chunk := append([]Arrival(nil), all[lo:hi]...)
		base := chunk[0].Offset
		for i := range chunk {
			chunk[i].Offset -= base
		}
		chunks = append(chunks, chunk)
	}
	return chunks
}

// fillerWords make up prompt text: plain ASCII that JSON needs no escapes
// for, so its bytes are the bytes the sims and the router count.
const fillerWords = "the quick brown fox jumps over the lazy dog while routers weigh queues "

// filler is the text prompts are cut from, long enough for the largest
// prompt of the workloads here (4000 tokens).
var filler = strings.Repeat(fillerWords, 4*4096/len(fillerWords)+1)

// promptText returns tokens × 4 bytes of text: tokens prompt tokens to the
// sims (bytes ÷ 4).
func promptText(tokens int) string {
	n := 4 * tokens
	if n <= len(filler) {
		return filler[:n]
	}
	return strings.Repeat(fillerWords, n/len(fillerWords)+1)[:n]
}

// Body is the request's JSON body for POST /v1/chat/completions: model
// "bench", or "auto" for a request with a task.
func (a Arrival) Body() []byte {
	prompt := FixedPrompt
	if a.Prompt > 0 {
		prompt = promptText(a.Prompt)
	}
	var b strings.Builder
	b.Grow(len(prompt) + 128)
	model := "bench"
	if a.Task != "" {
		model = AutoModel
	}
	b.WriteString(`{"model":"`)
	b.WriteString(model)
	b.WriteString(`","messages":[{"role":"user","content":"`)
	b.WriteString(prompt)
	b.WriteString(`"}]`)
	if a.MaxTokens {
		b.WriteString(`,"max_tokens":`)
		b.WriteString(strconv.Itoa(a.Output))
	}
	if a.Stream {
		b.WriteString(`,"stream":true`)
	}
	b.WriteString("}")
	return []byte(b.String())
}
