// Command modelrouter is Caddy with every standard module plus Model Router's
// modules, so `go run ./cmd/modelrouter run --config Caddyfile.example` works
// with nothing but Go installed. xcaddy.sh builds the same binary the xcaddy way.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/modelrouter/modelrouter"
)

func main() {
	caddycmd.Main()
}
