// Command modelrouter is Caddy with every standard module plus Model Router's
// model_router handler and, for development, the model_router_sim simulated
// backend, so `go run ./cmd/modelrouter run --config Caddyfile.example` works
// with nothing but Go installed. xcaddy.sh builds the production module the
// xcaddy way (without the simulator).
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/modelrouter/modelrouter"
	// The simulator is a development tool: registered in this binary for
	// Caddyfile.example, the tests and the benchmarks, never by the module
	// users build with xcaddy.
	_ "github.com/modelrouter/modelrouter/caddymodule/sim"
)

func main() {
	caddycmd.Main()
}
