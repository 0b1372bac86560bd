package engine

// Outcome is how one proxy attempt on one backend ended. It is the single
// table that passive health, retries, adaptive feedback and the latency model
// read, so that only true evidence about a backend teaches the router:
//
//	outcome        against the backend   feeds latency   retried elsewhere (before the first byte)
//	Success        no (a success)        yes             –
//	ClientGone     no                    no              no
//	RateLimited    yes (skip it for its Retry-After)     no   yes
//	Failed         yes                   no              yes
//	Broken         yes                   no              no (output started)
//	ClientError    no (the client's fault)               no   no
type Outcome uint8

const (
	// OutcomeSuccess: the backend answered with a 1xx-3xx status and the
	// whole answer reached the client.
	OutcomeSuccess Outcome = iota
	// OutcomeClientGone: the client went away, cancelled, or stopped reading,
	// before the answer was complete. Says nothing about the backend.
	OutcomeClientGone
	// OutcomeRateLimited: the backend answered 429.
	OutcomeRateLimited
	// OutcomeFailed: the backend answered 5xx or 408, refused or dropped the
	// connection, or sent no response headers in time.
	OutcomeFailed
	// OutcomeBroken: the answer had started and the backend broke the stream
	// or stayed silent past the idle timeout.
	OutcomeBroken
	// OutcomeClientError: the backend answered 4xx other than 408 and 429:
	// the request was at fault, not the backend.
	OutcomeClientError

	// OutcomeCount is the number of outcomes.
	OutcomeCount = iota
)

var outcomeNames = [OutcomeCount]string{"success", "client_gone", "rate_limited", "failed", "broken", "client_error"}

// String returns the outcome's name, a bounded metric label.
func (o Outcome) String() string {
	if int(o) < len(outcomeNames) {
		return outcomeNames[o]
	}
	return "unknown"
}

// OutcomeNames lists every outcome's name, in Outcome order.
func OutcomeNames() []string { return outcomeNames[:] }

// AgainstBackend reports whether the outcome is evidence that the backend is
// unhealthy or overloaded (passive health and error-rate feedback count it).
func (o Outcome) AgainstBackend() bool {
	return o == OutcomeRateLimited || o == OutcomeFailed || o == OutcomeBroken
}

// Teaches reports whether the attempt's timings may feed the latency model:
// only completed successes say how fast the backend really is (a quick 429 or
// 500 would otherwise look like a fast backend).
func (o Outcome) Teaches() bool { return o == OutcomeSuccess }

// Retryable reports whether the request may be retried on another backend,
// provided nothing of the answer reached the client yet.
func (o Outcome) Retryable() bool { return o == OutcomeRateLimited || o == OutcomeFailed }

// StatusOutcome classifies a complete upstream answer by its status code:
// 429 rate-limited; 408 and 5xx failed; other 4xx the client's error;
// anything else a success.
func StatusOutcome(status int) Outcome {
	switch {
	case status == 429: // Too Many Requests
		return OutcomeRateLimited
	case status == 408 || status >= 500: // Request Timeout, server errors
		return OutcomeFailed
	case status >= 400:
		return OutcomeClientError
	}
	return OutcomeSuccess
}
