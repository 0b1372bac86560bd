package engine

import "time"

// Kind is the OpenAI API a request was sent to.
type Kind uint8

const (
	KindChat       Kind = iota // POST /v1/chat/completions
	KindCompletion             // POST /v1/completions
	KindEmbedding              // POST /v1/embeddings
	KindResponse               // POST /v1/responses
)

// String returns the short name of the API kind, used as a bounded metric label.
func (k Kind) String() string {
	switch k {
	case KindChat:
		return "chat"
	case KindCompletion:
		return "completion"
	case KindEmbedding:
		return "embedding"
	case KindResponse:
		return "response"
	}
	return "unknown"
}

// AutoModel is the public model name that lets the router choose among every
// backend by capability.
const AutoModel = "auto"

// DefaultCapability is the capability assumed when a request names none.
const DefaultCapability = "chat"

// Request is what the router knows about one inference request after the body
// has been classified. It never holds the prompt itself.
type Request struct {
	Kind         Kind
	Model        string // public model name as the client sent it; AutoModel for "any"
	Capability   string // capability to score by; DefaultCapability when empty
	PromptTokens int    // estimate of the prompt size in tokens
	MaxTokens    int    // completion tokens asked for; 0 when the client set none
	Stream       bool
	// ExpectedOutput is the learned mean output length of the model's
	// answers, used when MaxTokens is 0; 0 when nothing is known (see
	// OutputTokens).
	ExpectedOutput int
}

// WantedCapability returns the capability the request should be scored by.
func (r *Request) WantedCapability() string {
	if r.Capability == "" {
		return DefaultCapability
	}
	return r.Capability
}

// Backend is one configured model server. Backends come from configuration only.
type Backend struct {
	Name string
	// Models maps the public model name to the name the upstream expects.
	Models map[string]string
	// DefaultModel is the upstream name used for AutoModel requests: the first
	// model in the backend's configuration.
	DefaultModel string
	// Capabilities maps a capability (chat, coding, ...) to how good the backend
	// is at it, in [0,1]. A capability that is absent scores 0.
	Capabilities map[string]float64
	// MaxInflight is the most requests this backend may have in flight, fleet-wide.
	MaxInflight int
	// MaxTokensInflight, when positive, bounds the sum of the token costs
	// (see Request.TokenCost) of the requests in flight on it, fleet-wide.
	MaxTokensInflight int
	// Context is the largest prompt+completion token count it accepts; 0 = no limit.
	Context int
	// Cost is a relative price per request; 0 = unknown (scored as neutral).
	Cost float64
	// Weight multiplies the backend's total score; 0 is treated as 1.
	Weight float64
}

// Serves reports whether the backend serves the public model name. Every
// backend serves AutoModel.
func (b *Backend) Serves(model string) bool {
	if model == AutoModel {
		return true
	}
	_, ok := b.Models[model]
	return ok
}

// UpstreamModel returns the model name to send upstream for a public name:
// for AutoModel it is DefaultModel; "" when the backend does not serve it.
func (b *Backend) UpstreamModel(model string) string {
	if model == AutoModel {
		return b.DefaultModel
	}
	return b.Models[model]
}

// Load is the live state of one backend at the moment of a decision.
type Load struct {
	Inflight    int           // requests in flight fleet-wide (as last seen)
	LatencyP95  time.Duration // recent end-to-end p95; 0 = not yet known
	TTFTP95     time.Duration // recent time-to-first-token p95 (streams); 0 = not known
	CoolingDown bool          // passive health put it aside for now
	Draining    bool          // an operator asked for no new requests

	// Perf is what is known of the backend's speed for the request's model.
	Perf Perf
	// Waiting is how many requests wait for a slot on this backend ahead
	// of the one being ranked (all of them for a newcomer).
	Waiting int
	// Queued is how many of those Waiting requests can be expected to take
	// this backend's slots rather than another's: a request that waits for
	// any of k backends counts 1/k on each. It paces the predicted wait
	// (see Predict); 0 with Waiting > 0 means unknown, and Waiting is used.
	Queued float64
	// TokensInflight is the sum of the token costs of the requests in
	// flight fleet-wide (as last seen), when the backend has a token limit.
	TokensInflight int
	// Feedback multiplies the backend's score (see FeedbackFactor), in
	// (0,1]; 0 means 1 (no feedback).
	Feedback float64
}

// HasRoom reports whether one more request fits under the backend's limit on
// requests in flight, after the requests waiting ahead of it (Waiting) have
// taken theirs: a free slot that a waiting request is due is not room for a
// newcomer. See Fits for the token limit.
func (l *Load) HasRoom(b *Backend) bool { return l.Inflight+max(l.Waiting, 0) < b.MaxInflight }

// Fits reports whether req fits on the backend now: a free slot and, with a
// token limit, room for its token cost. A request whose cost alone exceeds
// the token limit fits only a backend with no tokens in flight, so that it
// is served one at a time rather than never.
func (l *Load) Fits(b *Backend, req *Request) bool {
	if !l.HasRoom(b) {
		return false
	}
	if b.MaxTokensInflight <= 0 || l.TokensInflight <= 0 {
		return true
	}
	return l.TokensInflight+req.TokenCost() <= b.MaxTokensInflight
}

// Pool is the set of backends a decision is made over; Loads[i] is the live
// state of Backends[i].
type Pool struct {
	Backends []Backend
	Loads    []Load
}

// Candidate is a backend the request may go to, with its blended score.
type Candidate struct {
	Index int     // index into Pool.Backends
	Score float64 // weighted score; higher is better
	// Full marks a backend without room that a predictive strategy ranks
	// ahead of every backend with room: the request is predicted to finish
	// sooner by waiting for it (see Strategy.Rank).
	Full bool
	// Predicted is the request's predicted timeline on this backend
	// (predictive strategies only; zero when unknown).
	Predicted Prediction
}
