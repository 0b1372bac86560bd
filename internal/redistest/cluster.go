package redistest

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// clusterSlots is the number of hash slots of a Redis Cluster.
const clusterSlots = 16384

// Cluster is a Redis Cluster of masters only, on loopback, started by
// StartCluster.
type Cluster struct {
	t testing.TB
	// Nodes are the masters, in the order their slot ranges ascend.
	Nodes []*Server
	// Addrs are the nodes' host:port addresses, as seed addresses for clients.
	Addrs []string
}

// StartCluster starts a Redis Cluster of the given number of masters and no
// replicas (at least 3, as Redis requires for a majority). Every node gets an
// explicit cluster bus port, because the default (port+10000) overflows for
// the high ports the kernel hands out. It returns once every node reports
// cluster_state:ok and knows every slot's owner. The nodes are killed when the
// test ends.
func StartCluster(t testing.TB, masters int) *Cluster {
	t.Helper()
	if masters < 3 {
		masters = 3
	}
	c := &Cluster{t: t}
	for i := 0; i < masters; i++ {
		s := start(t, true, nil)
		c.Nodes = append(c.Nodes, s)
		c.Addrs = append(c.Addrs, s.Addr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := c.create(ctx); err != nil {
		for _, n := range c.Nodes {
			t.Logf("redistest: node %s output:\n%s", n.Addr, n.Output())
		}
		t.Fatalf("redistest: creating a %d-master cluster: %v", masters, err)
	}
	return c
}

// create assigns slot ranges, introduces the nodes to each other and waits
// until the cluster is usable from any node.
func (c *Cluster) create(ctx context.Context) error {
	clients := make([]*redis.Client, len(c.Nodes))
	for i, n := range c.Nodes {
		clients[i] = redis.NewClient(&redis.Options{Addr: n.Addr, MaxRetries: -1, DisableIdentity: true})
		defer clients[i].Close()
	}
	per := clusterSlots / len(c.Nodes)
	for i, cl := range clients {
		lo, hi := i*per, (i+1)*per-1
		if i == len(clients)-1 {
			hi = clusterSlots - 1
		}
		if err := cl.Do(ctx, "CLUSTER", "ADDSLOTSRANGE", lo, hi).Err(); err != nil {
			return fmt.Errorf("CLUSTER ADDSLOTSRANGE %d %d on %s: %w", lo, hi, c.Nodes[i].Addr, err)
		}
		// Distinct epochs let the nodes agree on slot ownership at once.
		if err := cl.Do(ctx, "CLUSTER", "SET-CONFIG-EPOCH", i+1).Err(); err != nil {
			return fmt.Errorf("CLUSTER SET-CONFIG-EPOCH on %s: %w", c.Nodes[i].Addr, err)
		}
	}
	for _, n := range c.Nodes[1:] {
		if err := clients[0].Do(ctx, "CLUSTER", "MEET", "127.0.0.1", n.Port, n.ClusterPort).Err(); err != nil {
			return fmt.Errorf("CLUSTER MEET %s: %w", n.Addr, err)
		}
	}
	for {
		err := c.ready(ctx, clients)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cluster did not converge: %w", err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// ready reports nil once every node sees the cluster as ok, knows all nodes and
// maps every slot.
func (c *Cluster) ready(ctx context.Context, clients []*redis.Client) error {
	for i, cl := range clients {
		info, err := cl.ClusterInfo(ctx).Result()
		if err != nil {
			return fmt.Errorf("CLUSTER INFO on %s: %w", c.Nodes[i].Addr, err)
		}
		fields := map[string]string{}
		for _, line := range strings.Split(info, "\n") {
			k, v, _ := strings.Cut(strings.TrimSpace(line), ":")
			fields[k] = v
		}
		if fields["cluster_state"] != "ok" {
			return fmt.Errorf("%s: cluster_state %q", c.Nodes[i].Addr, fields["cluster_state"])
		}
		if fields["cluster_known_nodes"] != strconv.Itoa(len(c.Nodes)) {
			return fmt.Errorf("%s: knows %s nodes", c.Nodes[i].Addr, fields["cluster_known_nodes"])
		}
		slots, err := cl.ClusterSlots(ctx).Result()
		if err != nil {
			return fmt.Errorf("CLUSTER SLOTS on %s: %w", c.Nodes[i].Addr, err)
		}
		covered := 0
		for _, r := range slots {
			if len(r.Nodes) == 0 || r.Nodes[0].Addr == "" || strings.HasSuffix(r.Nodes[0].Addr, ":0") {
				return fmt.Errorf("%s: slots %d-%d have no known address yet", c.Nodes[i].Addr, r.Start, r.End)
			}
			covered += int(r.End - r.Start + 1)
		}
		if covered != clusterSlots {
			return fmt.Errorf("%s: maps %d of %d slots", c.Nodes[i].Addr, covered, clusterSlots)
		}
	}
	return nil
}

// Client returns a cluster client for inspecting the cluster from a test,
// closed when the test ends.
func (c *Cluster) Client() *redis.ClusterClient {
	cl := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs, MaxRetries: -1, DisableIdentity: true})
	c.t.Cleanup(func() { _ = cl.Close() })
	return cl
}

// ResetStats clears INFO commandstats on every node.
func (c *Cluster) ResetStats() {
	for _, n := range c.Nodes {
		n.ResetStats()
	}
}

// CommandStats returns INFO commandstats summed over every node.
func (c *Cluster) CommandStats() map[string]int64 {
	out := make(map[string]int64)
	for _, n := range c.Nodes {
		for k, v := range n.CommandStats() {
			out[k] += v
		}
	}
	return out
}
