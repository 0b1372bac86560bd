// Package engine decides where an inference request should go. It holds the
// request and backend model, the filters that drop backends that cannot serve a
// request, the scorers that rate the rest in [0,1], and the strategies that weigh
// the scores and order the candidates.
//
// The package is pure and deterministic: it imports only the standard library,
// never reads the wall clock or the global random source, and does no I/O. The
// caller passes in the live load (from loadstate) and the time; randomness and
// counters are injected. That is why most of the gateway's behaviour is tested
// here, table-driven.
package engine
