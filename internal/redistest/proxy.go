package redistest

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Proxy is a TCP proxy in front of a server that can hold back replies, the way
// a congested network does: requests reach Redis (and run) at once, replies
// arrive late. It is how a test makes a call time out after Redis executed it.
type Proxy struct {
	// Addr is where clients connect.
	Addr string

	target string
	ln     net.Listener
	delay  atomic.Int64 // reply delay in ns
	cut    atomic.Bool  // connections are refused
	wg     sync.WaitGroup

	mu    sync.Mutex
	conns map[net.Conn]bool
}

// NewProxy starts a proxy to target on a free loopback port, closed when the
// test ends.
func NewProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("redistest: proxy listen: %v", err)
	}
	p := &Proxy{Addr: ln.Addr().String(), target: target, ln: ln, conns: map[net.Conn]bool{}}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.Close)
	return p
}

// SetReplyDelay makes every reply chunk wait d before it is forwarded.
func (p *Proxy) SetReplyDelay(d time.Duration) { p.delay.Store(int64(d)) }

// SetCut cuts the proxy off from the server as a broken network would: while
// cut, its open connections are closed and new ones are closed at once (the
// client sees EOF or a reset). Uncut, it proxies again.
func (p *Proxy) SetCut(cut bool) {
	p.cut.Store(cut)
	if cut {
		p.mu.Lock()
		for c := range p.conns {
			_ = c.Close()
		}
		p.mu.Unlock()
	}
}

// Close stops the proxy and drops its connections.
func (p *Proxy) Close() {
	_ = p.ln.Close()
	p.mu.Lock()
	for c := range p.conns {
		_ = c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conns == nil {
		return false
	}
	p.conns[c] = true
	return true
}

func (p *Proxy) untrack(c net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.conns, c)
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return
		}
		if p.cut.Load() {
			_ = client.Close()
			continue
		}
		server, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = client.Close()
			continue
		}
		p.track(client)
		p.track(server)
		p.wg.Add(2)
		go func() { // requests: forwarded at once
			defer p.wg.Done()
			_, _ = io.Copy(server, client)
			_ = server.Close()
			p.untrack(server)
		}()
		go func() { // replies: held back by the current delay
			defer p.wg.Done()
			buf := make([]byte, 32<<10)
			for {
				n, err := server.Read(buf)
				if n > 0 {
					if d := time.Duration(p.delay.Load()); d > 0 {
						time.Sleep(d)
					}
					if _, werr := client.Write(buf[:n]); werr != nil {
						break
					}
				}
				if err != nil {
					break
				}
			}
			_ = client.Close()
			p.untrack(client)
		}()
	}
}
