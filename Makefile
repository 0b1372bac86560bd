# One target per thing a person does. `make run` starts the example;
# `make test` runs every test (installing redis-server first when missing).
GO ?= go

.PHONY: run run-fleet build test test-deps lint bench fuzz xcaddy

run:
	$(GO) run ./cmd/modelrouter run --config Caddyfile.example

# Three gateway replicas sharing a throwaway redis-server, in front of three
# simulated backends (deploy/fleet/run.sh); Ctrl-C stops them all.
run-fleet:
	./deploy/fleet/run.sh

build:
	$(GO) build -o bin/modelrouter ./cmd/modelrouter

# The Redis tests start their own throwaway redis-server processes on free
# ports; they need the binaries, never a running server. The dashboard test
# drives Debian's chromium; promtool (Debian's prometheus) checks the
# alerting rules.
TEST_DEPS = redis-server:redis-server redis-cli:redis-server /usr/bin/chromium:chromium promtool:prometheus

test-deps:
	@missing=""; \
	for dep in $(TEST_DEPS); do \
		tool=$${dep%%:*}; pkg=$${dep##*:}; \
		command -v $$tool >/dev/null 2>&1 || case " $$missing " in *" $$pkg "*) ;; *) missing="$$missing $$pkg";; esac; \
	done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing$$missing (needed by the tests)"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
		else \
			echo "missing:$$missing: install them (e.g. 'sudo apt-get install$$missing') and run 'make test' again" >&2; \
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
