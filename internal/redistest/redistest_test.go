package redistest

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

func TestServerLifecycle(t *testing.T) {
	s := Start(t)
	if s.Port == reservedPort {
		t.Fatalf("started on the reserved port %d", reservedPort)
	}
	c := s.Client()
	ctx := context.Background()
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	s.ResetStats()
	if err := c.Get(ctx, "k").Err(); err != nil {
		t.Fatal(err)
	}
	if got := s.CommandStats()["get"]; got != 1 {
		t.Fatalf("commandstats get = %d, want 1", got)
	}

	s.Stop()
	if s.Running() {
		t.Fatal("server still running after Stop")
	}
	if err := c.Ping(ctx).Err(); err == nil {
		t.Fatal("PING succeeded on a stopped server")
	}
	s.Restart()
	if err := c.Get(ctx, "k").Err(); !errors.Is(err, redis.Nil) {
		t.Fatalf("after a restart the key should be gone, got err %v", err)
	}

	// CLIENT PAUSE: a command waits out the pause, or times out before it
	// ends (before PauseWatch's own PING, sent at its start, is answered).
	over := s.PauseWatch(5 * time.Second)
	short := redis.NewClient(&redis.Options{Addr: s.Addr, MaxRetries: -1, ReadTimeout: 100 * time.Millisecond, DisableIdentity: true})
	defer short.Close()
	if err := short.Get(ctx, "k").Err(); err == nil || errors.Is(err, redis.Nil) {
		t.Fatalf("GET during CLIENT PAUSE returned %v, want a timeout", err)
	}
	select {
	case <-over:
		t.Fatal("GET during the pause returned only after the pause: the read timeout did not apply")
	default:
	}
	<-over
	if err := short.Get(ctx, "k").Err(); !errors.Is(err, redis.Nil) {
		t.Fatalf("GET after the pause: %v", err)
	}

	s.Kill()
	if s.Running() {
		t.Fatal("server still running after Kill")
	}
}

func TestCluster(t *testing.T) {
	c := StartCluster(t, 3)
	if len(c.Nodes) != 3 {
		t.Fatalf("%d nodes, want 3", len(c.Nodes))
	}
	cl := c.Client()
	ctx := context.Background()
	// Keys spread over every node: the cluster serves all slots.
	for i := 0; i < 100; i++ {
		if err := cl.Set(ctx, fmt.Sprintf("key-%d", i), i, 0).Err(); err != nil {
			t.Fatalf("SET through the cluster: %v", err)
		}
	}
	perNode := 0
	for _, n := range c.Nodes {
		size, err := n.Client().DBSize(ctx).Result()
		if err != nil {
			t.Fatal(err)
		}
		if size > 0 {
			perNode++
		}
	}
	if perNode != 3 {
		t.Fatalf("keys landed on %d of 3 nodes", perNode)
	}
	// A hash tag keeps keys in one slot, which multi-key commands need.
	if err := cl.MSet(ctx, "a:{pool}:x", 1, "a:{pool}:y", 2).Err(); err != nil {
		t.Fatalf("MSET within one hash tag: %v", err)
	}
}

func TestSentinel(t *testing.T) {
	master := Start(t)
	sentinel := StartSentinel(t, master, "mymaster")
	c := redis.NewFailoverClient(&redis.FailoverOptions{MasterName: "mymaster", SentinelAddrs: []string{sentinel.Addr}, MaxRetries: -1, DisableIdentity: true})
	defer c.Close()
	ctx := context.Background()
	if err := c.Set(ctx, "via-sentinel", "1", 0).Err(); err != nil {
		t.Fatalf("SET through sentinel: %v", err)
	}
	if v, err := master.Client().Get(ctx, "via-sentinel").Result(); err != nil || v != "1" {
		t.Fatalf("the master has %q, %v", v, err)
	}
}
