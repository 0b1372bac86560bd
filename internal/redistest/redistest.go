// Package redistest starts throwaway redis-server processes for tests: single
// servers and a real Redis Cluster, each on free loopback ports, in a temporary
// directory, with nothing persisted, and killed when the test ends. It never
// touches a Redis it did not start (in particular not 127.0.0.1:6379).
//
// redis-server must be on PATH; `make test` installs it. Tests fail, never
// skip, when it is missing: a skipped Redis test reads as a passing one.
package redistest

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/modelrouter/modelrouter/internal/childproc"
)

// startTimeout bounds how long a server may take to accept connections; a
// loaded 2-core machine running tests with -race can be slow.
const startTimeout = 20 * time.Second

// reservedPort is the conventional Redis port: whatever listens there belongs
// to someone else and must never be started, stopped or written to by a test.
const reservedPort = 6379

// Server is one redis-server process started by Start.
type Server struct {
	t    testing.TB
	bin  string
	dir  string
	conf string // config file given before args (Sentinel needs one it can rewrite)
	args []string

	// Addr is host:port of the server, on 127.0.0.1.
	Addr string
	// Port is the TCP port it listens on.
	Port int
	// ClusterPort is the cluster bus port (cluster nodes only; 0 otherwise).
	ClusterPort int

	mu   sync.Mutex
	cmd  *exec.Cmd
	out  *lockedBuffer
	done chan struct{} // closed when the current process exits
}

// Start starts a standalone redis-server on a free loopback port. The server is
// killed when the test ends. extra are additional `--name value` arguments.
func Start(t testing.TB, extra ...string) *Server {
	t.Helper()
	return start(t, false, extra)
}

func start(t testing.TB, cluster bool, extra []string) *Server {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("redistest: redis-server is not on PATH (%v); run `make test`, which installs it, or install redis-server (e.g. apt-get install redis-server)", err)
	}
	dir := t.TempDir()
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		// Free-port discovery races with other processes grabbing the same
		// port; a failed start on a taken port is retried on another.
		port := freePort(t)
		s := &Server{t: t, bin: bin, dir: dir, Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), Port: port}
		s.args = []string{
			"--port", strconv.Itoa(port),
			"--bind", "127.0.0.1",
			"--save", "",
			"--appendonly", "no",
			"--dir", dir,
			"--daemonize", "no",
			"--logfile", "",
			"--loglevel", "warning",
			"--protected-mode", "yes",
		}
		if cluster {
			s.ClusterPort = freePort(t)
			s.args = append(s.args,
				"--cluster-enabled", "yes",
				"--cluster-port", strconv.Itoa(s.ClusterPort),
				"--cluster-config-file", filepath.Join(dir, fmt.Sprintf("nodes-%d.conf", port)),
				"--cluster-node-timeout", "5000",
				"--cluster-require-full-coverage", "yes",
			)
		}
		s.args = append(s.args, extra...)
		if lastErr = s.launch(); lastErr == nil {
			t.Cleanup(s.Kill)
			return s
		}
	}
	t.Fatalf("redistest: starting redis-server: %v", lastErr)
	return nil
}

// freePort asks the kernel for a free loopback TCP port.
func freePort(t testing.TB) int {
	t.Helper()
	for {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("redistest: finding a free port: %v", err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		_ = l.Close()
		// Cluster ports are given explicitly, so any port up to 65535 works.
		if port != reservedPort {
			return port
		}
	}
}

// launch starts the process with s.args and waits until it answers PING.
func (s *Server) launch() error {
	if s.Port == reservedPort {
		return fmt.Errorf("refusing to start a server on port %d", reservedPort)
	}
	args := s.args
	if s.conf != "" {
		args = append([]string{s.conf}, args...)
	}
	cmd := exec.Command(s.bin, args...)
	out := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.Dir = s.dir
	if err := childproc.Start(cmd, false); err != nil {
		return fmt.Errorf("running %s: %w", s.bin, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	s.mu.Lock()
	s.cmd, s.out, s.done = cmd, out, done
	s.mu.Unlock()

	c := redis.NewClient(&redis.Options{Addr: s.Addr, MaxRetries: -1, DialTimeout: time.Second, DisableIdentity: true})
	defer c.Close()
	deadline := time.Now().Add(startTimeout)
	for {
		select {
		case <-done:
			return fmt.Errorf("redis-server on port %d exited: %s", s.Port, strings.TrimSpace(out.String()))
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := c.Ping(ctx).Err()
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			s.Kill()
			return fmt.Errorf("redis-server on port %d did not answer PING within %v: %v; output: %s", s.Port, startTimeout, err, out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// URL is the redis:// URL of the server (database 0).
func (s *Server) URL() string { return "redis://" + s.Addr + "/0" }

// Client returns a plain client for inspecting the server from a test, closed
// when the test ends.
func (s *Server) Client() *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: s.Addr, MaxRetries: -1, DisableIdentity: true})
	s.t.Cleanup(func() { _ = c.Close() })
	return c
}

// Running reports whether the server process is alive.
func (s *Server) Running() bool {
	s.mu.Lock()
	done := s.done
	s.mu.Unlock()
	if done == nil {
		return false
	}
	select {
	case <-done:
		return false
	default:
		return true
	}
}

// Stop shuts the server down with SHUTDOWN NOSAVE (falling back to SIGKILL)
// and waits for the process to exit. Its data is lost, as in a crash.
func (s *Server) Stop() {
	s.t.Helper()
	if !s.Running() {
		return
	}
	c := redis.NewClient(&redis.Options{Addr: s.Addr, MaxRetries: -1, DisableIdentity: true})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	_ = c.Do(ctx, "SHUTDOWN", "NOSAVE").Err() // the connection drops: an error is expected
	cancel()
	_ = c.Close()
	if !s.wait(5 * time.Second) {
		s.Kill()
	}
}

// Kill kills the server with SIGKILL and waits for it to exit.
func (s *Server) Kill() {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.mu.Unlock()
	if cmd == nil || cmd.Process == nil {
		return
	}
	_ = cmd.Process.Kill()
	if done != nil {
		<-done
	}
}

func (s *Server) wait(d time.Duration) bool {
	s.mu.Lock()
	done := s.done
	s.mu.Unlock()
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}

// Restart starts the server again on the same port after Stop or Kill. It
// comes back empty (nothing is persisted).
func (s *Server) Restart() {
	s.t.Helper()
	if s.Running() {
		s.t.Fatalf("redistest: Restart of %s while it is still running", s.Addr)
	}
	var err error
	// The port was just released; another process could take it in between,
	// which is unlikely enough that a few retries suffice.
	for attempt := 0; attempt < 50; attempt++ {
		if err = s.launch(); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	s.t.Fatalf("redistest: restarting %s: %v", s.Addr, err)
}

// Pause makes the server stop answering every client for d (CLIENT PAUSE ALL),
// as a Redis that is alive but too slow. It returns once the pause is in effect.
func (s *Server) Pause(d time.Duration) {
	s.t.Helper()
	c := redis.NewClient(&redis.Options{Addr: s.Addr, MaxRetries: -1, DisableIdentity: true})
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Do(ctx, "CLIENT", "PAUSE", d.Milliseconds(), "ALL").Err(); err != nil {
		s.t.Fatalf("redistest: CLIENT PAUSE on %s: %v", s.Addr, err)
	}
}

// PauseWatch pauses the server like Pause and returns a channel that is
// closed once the pause is over as Redis itself reports it: a PING sent on a
// connection of its own right after the pause took effect has been answered
// (or failed). A test checks that something happened during the pause, not
// after waiting it out, by seeing the channel still open when it happened.
func (s *Server) PauseWatch(d time.Duration) <-chan struct{} {
	s.t.Helper()
	s.Pause(d)
	over := make(chan struct{})
	c := redis.NewClient(&redis.Options{Addr: s.Addr, MaxRetries: -1, DisableIdentity: true, ReadTimeout: -1})
	go func() {
		defer close(over)
		defer c.Close()
		ctx, cancel := context.WithTimeout(context.Background(), d+time.Minute)
		defer cancel()
		_ = c.Ping(ctx).Err()
	}()
	return over
}

// Unpause ends a CLIENT PAUSE early. Redis 7 pauses the CLIENT UNPAUSE of a
// new connection too, so with PAUSE ALL this returns when the pause ends.
func (s *Server) Unpause() {
	s.t.Helper()
	c := redis.NewClient(&redis.Options{Addr: s.Addr, MaxRetries: -1, DisableIdentity: true})
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Do(ctx, "CLIENT", "UNPAUSE").Err(); err != nil {
		s.t.Fatalf("redistest: CLIENT UNPAUSE on %s: %v", s.Addr, err)
	}
}

// ResetStats clears INFO commandstats (CONFIG RESETSTAT).
func (s *Server) ResetStats() {
	s.t.Helper()
	c := redis.NewClient(&redis.Options{Addr: s.Addr, MaxRetries: -1, DisableIdentity: true})
	defer c.Close()
	if err := c.ConfigResetStat(context.Background()).Err(); err != nil {
		s.t.Fatalf("redistest: CONFIG RESETSTAT on %s: %v", s.Addr, err)
	}
}

// CommandStats returns INFO commandstats as command name → calls, counting
// commands issued by clients and those run inside Lua scripts alike (Redis
// counts both).
func (s *Server) CommandStats() map[string]int64 {
	s.t.Helper()
	c := redis.NewClient(&redis.Options{Addr: s.Addr, MaxRetries: -1, DisableIdentity: true})
	defer c.Close()
	info, err := c.Info(context.Background(), "commandstats").Result()
	if err != nil {
		s.t.Fatalf("redistest: INFO commandstats on %s: %v", s.Addr, err)
	}
	return ParseCommandStats(info)
}

// CommandUsec returns INFO commandstats' microseconds of CPU per command
// name. A script's usec include the commands it ran, which are also listed
// under their own names: add up evalsha and eval, not the rest.
func (s *Server) CommandUsec() map[string]int64 {
	s.t.Helper()
	c := redis.NewClient(&redis.Options{Addr: s.Addr, MaxRetries: -1, DisableIdentity: true})
	defer c.Close()
	info, err := c.Info(context.Background(), "commandstats").Result()
	if err != nil {
		s.t.Fatalf("redistest: INFO commandstats on %s: %v", s.Addr, err)
	}
	return parseCommandField(info, "usec=")
}

// ParseCommandStats parses the text of INFO commandstats: calls per command.
func ParseCommandStats(info string) map[string]int64 { return parseCommandField(info, "calls=") }

func parseCommandField(info, field string) map[string]int64 {
	out := make(map[string]int64)
	for _, line := range strings.Split(info, "\n") {
		line = strings.TrimSpace(line)
		name, rest, ok := strings.Cut(line, ":")
		if !ok || !strings.HasPrefix(name, "cmdstat_") {
			continue
		}
		for _, kv := range strings.Split(rest, ",") {
			if v, ok := strings.CutPrefix(kv, field); ok {
				n, _ := strconv.ParseInt(v, 10, 64)
				out[strings.TrimPrefix(name, "cmdstat_")] = n
			}
		}
	}
	return out
}

// Output returns what the server process wrote so far, for test diagnostics.
func (s *Server) Output() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.out == nil {
		return ""
	}
	return s.out.String()
}

// lockedBuffer collects process output written from another goroutine.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.buf.Len() > 1<<20 {
		return len(p), nil // enough for diagnostics; never grow without bound
	}
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
