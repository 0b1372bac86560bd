// Package sim is a simulated OpenAI-compatible model server, packaged as the
// Caddy HTTP handler http.handlers.model_router_sim (Caddyfile directive
// model_router_sim). It exists to test and benchmark the gateway without GPUs:
// each sim serves a fixed number of requests at once (slots) with the rest in a
// FIFO queue, takes a configurable time to the first token (growing with the
// prompt when prefill_per_token is set) and per further token, streams
// Server-Sent Events like OpenAI does, and can be told to fail in the ways real
// backends fail (error statuses, hangs, aborted streams, slow headers) or to
// slow down at run time.
//
// Counters, injected faults and run-time timing changes live in package-level
// state keyed by the sim's name, so several sims in one process stay apart and
// a config reload does not reset them; GET /sim/stats reads the counters, POST
// /sim/reset zeroes them (and only them), POST /sim/fault arms a fault and
// POST /sim/config changes the delays ({"slowdown":3}, {"reset":true}).
package sim
