#!/usr/bin/env bash
# make run-fleet: three Model Router replicas sharing a throwaway
# redis-server, in front of three simulated backends. One command; Ctrl-C
# stops everything (and so does the end of this script for any reason).
#
# Ports (loopback only; override with the environment variables):
#   replicas     MR_PORTS   8081 8082 8083     (the OpenAI API, /healthz)
#   admin        MR_ADMINS  2021 2022 2023     (metrics, /model_router/*, the dashboard)
#   backends     MR_SIMS    9101 9102 9103     (fast, big, coder)
#   redis-server MR_REDIS_PORT 6390            (no persistence, in a temp dir)
# MR_BIN runs a prebuilt gateway binary instead of building bin/modelrouter.
set -euo pipefail
cd "$(dirname "$0")/../.."

read -r -a ports <<<"${MR_PORTS:-8081 8082 8083}"
read -r -a admins <<<"${MR_ADMINS:-2021 2022 2023}"
read -r -a sims <<<"${MR_SIMS:-9101 9102 9103}"
redis_port="${MR_REDIS_PORT:-6390}"

for tool in redis-server curl; do
	command -v "$tool" >/dev/null || { echo "run-fleet needs $tool (apt-get install redis-server)" >&2; exit 1; }
done

work="$(mktemp -d)"
pids=()
cleanup() {
	trap - INT TERM EXIT
	for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup INT TERM EXIT

bin="${MR_BIN:-}"
if [ -z "$bin" ]; then
	echo "building bin/modelrouter..."
	go build -o bin/modelrouter ./cmd/modelrouter
	bin=bin/modelrouter
fi

redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" \
	--logfile "$work/redis.log" &
pids+=($!)

export MR_SIM_FAST="${sims[0]}" MR_SIM_BIG="${sims[1]}" MR_SIM_CODER="${sims[2]}"
export MR_REDIS="redis://127.0.0.1:$redis_port/0"
HOME="$work" "$bin" run --config deploy/fleet/backends.Caddyfile >"$work/backends.log" 2>&1 &
pids+=($!)

for i in 0 1 2; do
	MR_PORT="${ports[$i]}" MR_ADMIN="${admins[$i]}" HOME="$work" XDG_DATA_HOME="$work/r$i" XDG_CONFIG_HOME="$work/r$i" \
		"$bin" run --config deploy/fleet/replica.Caddyfile >"$work/replica$i.log" 2>&1 &
	pids+=($!)
done

for i in 0 1 2; do
	for _ in $(seq 1 100); do
		curl -sf "http://127.0.0.1:${ports[$i]}/healthz" >/dev/null 2>&1 && break
		sleep 0.1
	done
	curl -sf "http://127.0.0.1:${ports[$i]}/healthz" >/dev/null || {
		echo "replica $i did not become ready; its log:" >&2
		cat "$work/replica$i.log" >&2
		exit 1
	}
done

cat <<INFO

Model Router fleet is up (logs in $work):
  replicas   http://127.0.0.1:${ports[0]}  :${ports[1]}  :${ports[2]}   (POST /v1/chat/completions, GET /healthz)
  dashboard  http://127.0.0.1:${admins[0]}/model_router/dashboard   (any replica's admin port)
  admin API  curl -s 127.0.0.1:${admins[0]}/model_router/backends
  metrics    http://127.0.0.1:${admins[0]}/metrics  :${admins[1]}  :${admins[2]}
  redis      127.0.0.1:$redis_port
  backends   fast :${sims[0]}  big :${sims[1]}  coder :${sims[2]}   (POST /sim/fault to make one fail)

Try: curl -s 127.0.0.1:${ports[1]}/v1/chat/completions -d '{"model":"llama-8b","messages":[{"role":"user","content":"Hi"}]}'
     curl -s -X POST 127.0.0.1:${admins[0]}/model_router/backends/big/drain   # then watch replica 2 avoid it

Ctrl-C stops everything.
INFO

# Wait for Ctrl-C, or for any process to die (then stop the rest).
wait -n "${pids[@]}" || true
echo "a process of the fleet exited; stopping the others" >&2
