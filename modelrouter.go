// Package modelrouter registers Model Router's Caddy modules: import it (or
// build with `xcaddy build --with github.com/modelrouter/modelrouter`) to get
// the model_router handler and the model_router_sim simulated backend.
package modelrouter

import (
	_ "github.com/modelrouter/modelrouter/caddymodule"
	_ "github.com/modelrouter/modelrouter/caddymodule/sim"
)
