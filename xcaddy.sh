#!/usr/bin/env bash
# Builds Caddy with Model Router's modules the xcaddy way, then checks that the
# binary lists them. Installs xcaddy with `go install` when it is missing.
# Usage: ./xcaddy.sh [output path]   (default: ./bin/caddy-xcaddy)
set -euo pipefail
cd "$(dirname "$0")"
out=${1:-bin/caddy-xcaddy}
caddy_version=$(go list -m -f '{{.Version}}' github.com/caddyserver/caddy/v2)

if ! command -v xcaddy >/dev/null 2>&1; then
	gobin=$(go env GOBIN)
	[ -n "$gobin" ] || gobin="$(go env GOPATH)/bin"
	export PATH="$gobin:$PATH"
	if ! command -v xcaddy >/dev/null 2>&1; then
		echo "installing xcaddy"
		go install github.com/caddyserver/xcaddy/cmd/xcaddy@latest
	fi
fi

mkdir -p "$(dirname "$out")"
# --with this checkout, so the build uses the working tree (a replace directive).
# The explicit zero version lets `go get` resolve it through the replace alone,
# without asking a module proxy for a module that is not published.
xcaddy build "$caddy_version" \
	--output "$out" \
	--with github.com/modelrouter/modelrouter@v0.0.0-00010101000000-000000000000=.

modules=$("$out" list-modules)
for m in http.handlers.model_router http.handlers.model_router_sim; do
	if ! grep -qx "$m" <<<"$modules"; then
		echo "xcaddy.sh: $out does not list $m" >&2
		exit 1
	fi
done
"$out" validate --config Caddyfile.example --adapter caddyfile >/dev/null 2>&1 || {
	echo "xcaddy.sh: $out cannot validate Caddyfile.example" >&2
	"$out" validate --config Caddyfile.example --adapter caddyfile
	exit 1
}
echo "built $out ($caddy_version) with model_router and model_router_sim"
