# One target per thing a person does. `make run` starts the example;
# `make test` runs every test (installing redis-server first when missing).
GO ?= go

.PHONY: run build test test-deps lint bench fuzz xcaddy

run:
	$(GO) run ./cmd/modelrouter run --config Caddyfile.example

build:
	$(GO) build -o bin/modelrouter ./cmd/modelrouter

# The Redis tests start their own throwaway redis-server processes on free
# ports; they need the binaries, never a running server.
test-deps:
	@if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then \
		if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing redis-server (needed by the load-state tests)"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; \
		else \
			echo "redis-server is missing: install it (e.g. 'sudo apt-get install redis-server') and run 'make test' again" >&2; \
			exit 1; \
		fi; \
	fi

# The race detector makes sync.Pool drop items, so the allocation budget of
# ranking is checked in a second, race-free run.
test: test-deps
	$(GO) test -race -count=1 ./...
	$(GO) test -count=1 -run 'Allocs' ./engine

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt: files above need formatting" >&2; exit 1; }
	$(GO) vet ./...

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./engine ./loadstate ./caddymodule
	$(GO) run ./bench/overhead
	$(GO) run ./bench/quality

fuzz:
	$(GO) test -run '^$$' -fuzz FuzzClassify -fuzztime 30s ./caddymodule

xcaddy:
	./xcaddy.sh
