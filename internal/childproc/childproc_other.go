//go:build !linux

// Package childproc starts helper processes (redis-server for tests, Caddy
// and stubs for benchmarks); outside Linux they are not tied to the parent.
package childproc

import "os/exec"

// Start starts cmd.
func Start(cmd *exec.Cmd, _ bool) error { return cmd.Start() }
