package redistest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// StartSentinel starts a Redis Sentinel on a free loopback port that monitors
// master under masterName (quorum 1), and returns once it reports the master's
// address. It is killed when the test ends.
func StartSentinel(t testing.TB, master *Server, masterName string) *Server {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("redistest: redis-server is not on PATH (%v); run `make test`, which installs it, or install redis-server (e.g. apt-get install redis-server)", err)
	}
	dir := t.TempDir()
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		port := freePort(t)
		conf := filepath.Join(dir, fmt.Sprintf("sentinel-%d.conf", port))
		body := fmt.Sprintf("sentinel monitor %s 127.0.0.1 %d 1\nsentinel down-after-milliseconds %s 5000\n",
			masterName, master.Port, masterName)
		if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
			t.Fatalf("redistest: writing the sentinel config: %v", err)
		}
		s := &Server{t: t, bin: bin, dir: dir, conf: conf,
			Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), Port: port}
		s.args = []string{"--sentinel", "--port", strconv.Itoa(port), "--bind", "127.0.0.1",
			"--daemonize", "no", "--logfile", "", "--loglevel", "warning", "--dir", dir}
		if lastErr = s.launch(); lastErr != nil {
			continue
		}
		t.Cleanup(s.Kill)
		c := redis.NewSentinelClient(&redis.Options{Addr: s.Addr, MaxRetries: -1, DisableIdentity: true})
		defer c.Close()
		deadline := time.Now().Add(startTimeout)
		for {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			addr, err := c.GetMasterAddrByName(ctx, masterName).Result()
			cancel()
			if err == nil && len(addr) == 2 && addr[1] == strconv.Itoa(master.Port) {
				return s
			}
			if time.Now().After(deadline) {
				t.Fatalf("redistest: sentinel on %s does not report master %s: %v %v", s.Addr, masterName, addr, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	t.Fatalf("redistest: starting redis sentinel: %v", lastErr)
	return nil
}
