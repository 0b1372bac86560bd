// Package modelrouter registers Model Router's production Caddy module:
// import it (or build with
// `xcaddy build --with github.com/modelrouter/modelrouter=<path to a checkout>`)
// to get the model_router handler.
//
// The simulated backend, model_router_sim (package caddymodule/sim), is a
// development tool and is not registered here: cmd/modelrouter and the tests
// import it themselves.
package modelrouter

import (
	_ "github.com/modelrouter/modelrouter/caddymodule"
)
