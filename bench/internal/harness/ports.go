package harness

import (
	"fmt"
	"net"
)

// reservedPorts belong to other things on a developer's machine (the example
// gateway and its sims, Caddy's default admin endpoint, a local Redis) and are
// never handed out, even if the kernel offers them.
var reservedPorts = map[int]bool{8080: true, 2019: true, 9001: true, 9002: true, 9003: true, 6379: true}

// FreePort returns a loopback TCP port that was free a moment ago and that this
// harness has not handed out before.
func (h *Harness) FreePort() (int, error) {
	for range 100 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, fmt.Errorf("finding a free port: %w", err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		h.mu.Lock()
		taken := h.ports[port] || reservedPorts[port]
		h.ports[port] = true
		h.mu.Unlock()
		if !taken {
			return port, nil
		}
	}
	return 0, fmt.Errorf("finding a free port: no fresh port after 100 tries")
}

// FreeAddrs returns n distinct free loopback addresses, host:port.
func (h *Harness) FreeAddrs(n int) ([]string, error) {
	addrs := make([]string, n)
	for i := range addrs {
		port, err := h.FreePort()
		if err != nil {
			return nil, err
		}
		addrs[i] = fmt.Sprintf("127.0.0.1:%d", port)
	}
	return addrs, nil
}
