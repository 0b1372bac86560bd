// Package harness runs the processes a benchmark needs, all on 127.0.0.1: it
// builds the gateway binary from ./cmd/modelrouter, starts Caddy processes (the
// gateway binary with a plain reverse_proxy config is stock Caddy) and helper
// processes on free ports, waits until they accept connections, and kills them
// and removes its temporary directory on exit, on SIGINT/SIGTERM and, on Linux,
// when the benchmark process itself dies.
package harness
