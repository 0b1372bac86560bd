#!/usr/bin/env bash
# Builds Caddy with Model Router the xcaddy way, as users do, from this checkout:
#  1. the production build (the module users get): it must list
#     http.handlers.model_router and must NOT list the simulator,
#     http.handlers.model_router_sim;
#  2. a development build that adds the simulator package
#     (github.com/modelrouter/modelrouter/caddymodule/sim), which must validate
#     Caddyfile.example (the example runs its backends on the simulator).
# xcaddy itself is pinned (XCADDY_VERSION below) and installed with
# `go install` into bin/tools/ when that version is not there yet.
# Usage: ./xcaddy.sh [output path]   (default: ./bin/caddy-xcaddy; the
#        development build goes beside it, with a -dev suffix)
set -euo pipefail
cd "$(dirname "$0")"
out=${1:-bin/caddy-xcaddy}
dev_out="$out-dev"
caddy_version=$(go list -m -f '{{.Version}}' github.com/caddyserver/caddy/v2)

# The one place the xcaddy version is pinned (.ci/run runs this script).
XCADDY_VERSION=v0.4.5
tools="$PWD/bin/tools"
xcaddy="$tools/xcaddy-$XCADDY_VERSION"
if [ ! -x "$xcaddy" ]; then
	echo "installing xcaddy $XCADDY_VERSION into $tools"
	mkdir -p "$tools"
	GOBIN="$tools" go install "github.com/caddyserver/xcaddy/cmd/xcaddy@$XCADDY_VERSION"
	mv "$tools/xcaddy" "$xcaddy"
fi

# This module is not published: --with <module>@<zero version>=. builds the
# working tree (a replace directive), and the explicit zero version lets
# `go get` resolve it through the replace alone, without asking a module
# proxy for it.
module=github.com/modelrouter/modelrouter
with_module="$module@v0.0.0-00010101000000-000000000000=."

mkdir -p "$(dirname "$out")"
"$xcaddy" build "$caddy_version" --output "$out" --with "$with_module"

modules=$("$out" list-modules)
if ! grep -qx http.handlers.model_router <<<"$modules"; then
	echo "xcaddy.sh: $out does not list http.handlers.model_router" >&2
	exit 1
fi
if grep -qx http.handlers.model_router_sim <<<"$modules"; then
	echo "xcaddy.sh: $out lists http.handlers.model_router_sim: the simulator must not be in the production module" >&2
	exit 1
fi

# The simulator is a package of the same (replaced) module: xcaddy does not
# `go get` a package under a path that a --replace covers, so this adds it
# without a version and without asking the proxy.
"$xcaddy" build "$caddy_version" --output "$dev_out" \
	--with "$with_module" \
	--with "$module/caddymodule/sim" \
	--replace "$module=."

dev_modules=$("$dev_out" list-modules)
for m in http.handlers.model_router http.handlers.model_router_sim; do
	if ! grep -qx "$m" <<<"$dev_modules"; then
		echo "xcaddy.sh: $dev_out does not list $m" >&2
		exit 1
	fi
done
"$dev_out" validate --config Caddyfile.example --adapter caddyfile >/dev/null 2>&1 || {
	echo "xcaddy.sh: $dev_out cannot validate Caddyfile.example" >&2
	"$dev_out" validate --config Caddyfile.example --adapter caddyfile
	exit 1
}
echo "built $out ($caddy_version, xcaddy $XCADDY_VERSION) with model_router and without the simulator,"
echo "and $dev_out with model_router_sim, which validates Caddyfile.example"
