// Package caddymodule is the Caddy glue of Model Router: the model_router HTTP
// handler and its Caddyfile directive, the wiring to Caddy's reverse proxy, the
// Prometheus metrics and the OpenAI-shaped error answers. It parses, provisions
// and delegates: ranking lives in engine, load and latency state in loadstate.
package caddymodule
