package engine

import (
	"math"
	"time"
)

// Perf is what the router has learned (or was told by configuration hints)
// about how fast a backend serves one model. Its latency model is
//
//	TTFT(prompt)       = TTFTBase + TTFTPerToken × promptTokens
//	total(prompt, out) = TTFT(prompt) + TPOT × (out − 1)
//
// with the coefficients fitted online from successful attempts (see
// loadstate's learner: ridge-regularised least squares over a sliding
// window). The zero Perf is unknown.
type Perf struct {
	TTFTBase     time.Duration // time to first token of an empty prompt
	TTFTPerToken float64       // prefill time per prompt token, in nanoseconds
	TPOT         time.Duration // time per output token after the first
	// MeanService is the mean end-to-end time of the backend's recent
	// successes (all models), which paces its slots: a full backend frees
	// one about every MeanService ÷ MaxInflight. 0: unknown.
	MeanService time.Duration
	// Samples is how many successful attempts the model was learned from in
	// the window; 0 with known coefficients means configuration hints only.
	Samples int
}

// Known reports whether the perf says anything (learned or hinted).
func (p *Perf) Known() bool { return p.TTFTBase > 0 || p.TPOT > 0 || p.TTFTPerToken > 0 }

// TTFT is the predicted time to first token of a prompt of promptTokens.
func (p *Perf) TTFT(promptTokens int) time.Duration {
	return p.TTFTBase + time.Duration(p.TTFTPerToken*float64(max(promptTokens, 0)))
}

// Service is the predicted time of a whole answer of out tokens to a prompt
// of promptTokens, once the request has its slot.
func (p *Perf) Service(promptTokens, out int) time.Duration {
	return p.TTFT(promptTokens) + time.Duration(max(out-1, 0))*p.TPOT
}

// TokenCost is what the request counts against a backend's token limit
// (max_tokens_inflight): its prompt estimate plus its output tokens (see
// OutputTokens: max_tokens when set, else the model's learned mean).
func (r *Request) TokenCost() int { return max(r.PromptTokens, 0) + r.OutputTokens() }

// DefaultExpectedOutput is the output length assumed for a request that sets
// no max_tokens when nothing has been learned about its model yet.
const DefaultExpectedOutput = 256

// streamTailWeight is how much the time after the first token counts for a
// streaming request, against 1 for the time to the first token: a streaming
// client sees the answer as it is written, so the first token matters most,
// but many streaming clients (SDKs, agents) act on the whole answer, and a
// backend that writes it at a crawl is not as good as a fast one. At 0.5, a
// long stream went to a slow backend for a first token a second sooner and
// finished seconds later; those streams made the whole tail of the wide
// benchmark (bench/quality -workload wide -explain).
const streamTailWeight = 0.75

// Prediction is the predicted timeline of one request on one backend, all
// counted from now.
type Prediction struct {
	Wait  time.Duration // the expected wait for a slot; 0 when the backend has room
	TTFT  time.Duration // Wait + time to first token
	Total time.Duration // Wait + the whole answer
}

// Cost is what the predictive strategies minimise: the completion time for a
// non-streaming request; for a streaming one the time to first token plus
// three quarters of the rest (streamTailWeight).
func (p Prediction) Cost(stream bool) time.Duration {
	if stream {
		return p.TTFT + time.Duration(streamTailWeight*float64(p.Total-p.TTFT))
	}
	return p.Total
}

// OutputTokens is how many tokens the request is expected to produce: its
// max_tokens (or max_completion_tokens, max_output_tokens) when it set one,
// else ExpectedOutput (the learned mean for its model), else
// DefaultExpectedOutput.
func (r *Request) OutputTokens() int {
	switch {
	case r.MaxTokens > 0:
		return r.MaxTokens
	case r.ExpectedOutput > 0:
		return r.ExpectedOutput
	}
	return DefaultExpectedOutput
}

// Predict returns the predicted timeline of req on backend b with live state
// l. A backend whose Perf is unknown is predicted with fallback (the pool's
// average, see PoolPerf); with neither, Predict returns zeros.
//
// The expected wait for a slot on a full backend (or one whose free slots
// requests waiting ahead are due) follows from its service rate: it frees a
// slot about every MeanService ÷ MaxInflight, and the request is behind
// every request in flight over capacity and its share of the requests
// waiting ahead of it (Queued: one that waits for any of k backends counts
// 1/k here; Waiting when unknown), at least one release:
//
//	wait = (Inflight − MaxInflight + Queued + 1) × MeanService ÷ MaxInflight
//
// (MeanService unknown: this request's own service time stands in for it.)
func Predict(req *Request, b *Backend, l *Load, fallback *Perf) Prediction {
	perf := &l.Perf
	if !perf.Known() {
		perf = fallback
	}
	if perf == nil || !perf.Known() {
		return Prediction{}
	}
	ttft := perf.TTFT(req.PromptTokens)
	service := perf.Service(req.PromptTokens, req.OutputTokens())
	var wait time.Duration
	if b.MaxInflight > 0 && !l.Fits(b, req) {
		// Releases it needs: one for each request in flight over capacity
		// and each waiting ahead of it, plus its own (at least one: a free
		// slot a waiter is due is not this request's).
		queued := l.Queued
		if queued <= 0 {
			queued = float64(max(l.Waiting, 0))
		}
		ahead := max(float64(l.Inflight-b.MaxInflight)+queued+1, 1)
		pace := l.Perf.MeanService
		if pace <= 0 {
			pace = service
		}
		wait = time.Duration(ahead * float64(pace) / float64(b.MaxInflight))
	}
	return Prediction{Wait: wait, TTFT: wait + ttft, Total: wait + service}
}

// PoolPerf is the average Perf of the backends of p that have learned one
// (Samples > 0), weighted by samples: what a backend without data of its own
// is predicted with. The zero Perf when none has.
func PoolPerf(p *Pool) Perf {
	var base, perTok, tpot, svc, n float64
	for i := range p.Loads {
		pf := &p.Loads[i].Perf
		if pf.Samples <= 0 || !pf.Known() {
			continue
		}
		w := float64(pf.Samples)
		base += w * float64(pf.TTFTBase)
		perTok += w * pf.TTFTPerToken
		tpot += w * float64(pf.TPOT)
		svc += w * float64(pf.MeanService)
		n += w
	}
	if n == 0 {
		return Perf{}
	}
	return Perf{
		TTFTBase:     time.Duration(base / n),
		TTFTPerToken: perTok / n,
		TPOT:         time.Duration(tpot / n),
		MeanService:  time.Duration(svc / n),
	}
}

// Feedback bounds, see FeedbackFactor.
const (
	// MinFeedback is the least a backend's score is multiplied by, so that
	// a struggling backend still gets the odd request and can show it
	// recovered.
	MinFeedback = 0.05
	// feedbackMinAttempts is how many attempts an error rate must rest on
	// before it counts: two failures out of two are a blip, not a rate.
	feedbackMinAttempts = 5
)

// FeedbackFactor is the adaptive-feedback multiplier of a backend's score, in
// [MinFeedback, 1]: its recent error rate (attempts whose outcome counts
// against it, out of attempts with a verdict, over a sliding window) and its
// recent latency against an SLO (0: none set) modulate it, and it returns to
// 1 as the window forgets the bad period:
//
//	f = (1 − errorRate)² × min(1, slo ÷ latency)
//
// The square makes a 10% error rate cost 19% of the score and 50% cost 75%.
// An error rate over fewer than 5 attempts counts as 0.
func FeedbackFactor(errors, attempts int, latency, slo time.Duration) float64 {
	f := 1.0
	if attempts >= feedbackMinAttempts && errors > 0 {
		ok := 1 - math.Min(float64(errors)/float64(attempts), 1)
		f = ok * ok
	}
	return math.Max(f*SLOFactor(latency, slo), MinFeedback)
}

// SLOFactor is min(1, slo ÷ latency): how far a backend's recent latency
// (a p95) is over its SLO; 1 when either is unknown (0).
func SLOFactor(latency, slo time.Duration) float64 {
	if slo > 0 && latency > slo {
		return float64(slo) / float64(latency)
	}
	return 1
}

// feedback is a load's multiplier: its Feedback, where 0 (unset) means 1.
func feedback(l *Load) float64 {
	if l.Feedback > 0 {
		return math.Min(l.Feedback, 1)
	}
	return 1
}
