package loadstate

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/modelrouter/modelrouter/internal/redistest"
	"github.com/redis/go-redis/v9"
)

// testPools numbers pools so that tests sharing a server never share state.
var testPools atomic.Uint64

func newTestPool() string { return fmt.Sprintf("t%d", testPools.Add(1)) }

// redisEnv is a Redis the tests run against: a standalone server or a cluster.
type redisEnv struct {
	cfg   func(timeout time.Duration) RedisConfig
	stats func() map[string]int64
	reset func()
	// usec is CPU microseconds per command (standalone only; nil otherwise).
	usec func() map[string]int64
}

func standaloneEnv(srv *redistest.Server) redisEnv {
	return redisEnv{
		cfg:   func(timeout time.Duration) RedisConfig { return RedisConfig{URL: srv.URL(), Timeout: timeout} },
		stats: srv.CommandStats,
		reset: srv.ResetStats,
		usec:  srv.CommandUsec,
	}
}

func clusterEnv(c *redistest.Cluster) redisEnv {
	return redisEnv{
		cfg:   func(timeout time.Duration) RedisConfig { return RedisConfig{ClusterAddrs: c.Addrs, Timeout: timeout} },
		stats: c.CommandStats,
		reset: c.ResetStats,
	}
}

// testClient returns a request-path client (ClientOptions), closed at the end
// of the test after the stores using it.
func testClient(t testing.TB, cfg RedisConfig) redis.UniversalClient {
	t.Helper()
	c, err := NewRedisClient(cfg)
	if err != nil {
		t.Fatalf("building the redis client: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// newTestStore opens a store with its own client (as a separate gateway
// process would have), closed at the end of the test.
func newTestStore(t testing.TB, env redisEnv, opts RedisOptions) *RedisStore {
	t.Helper()
	timeout := opts.Timeout
	if timeout == 0 {
		timeout = 5 * time.Second // generous: a breaker trip in a test not about outages would be noise
		opts.Timeout = timeout
	}
	if opts.Lease == 0 {
		opts.Lease = 3 * time.Second
	}
	if opts.Heartbeat == 0 {
		opts.Heartbeat = 200 * time.Millisecond
	}
	s, err := NewRedisStore(testClient(t, env.cfg(timeout)), opts)
	if err != nil {
		t.Fatalf("NewRedisStore: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// redisReplicas returns a newReplicasFunc whose stores are replicas of a fresh
// pool on env.
func redisReplicas(env redisEnv) newReplicasFunc {
	return func(t *testing.T, n int) []Store {
		pool := newTestPool()
		out := make([]Store, n)
		for i := range out {
			s := newTestStore(t, env, RedisOptions{Pool: pool, ReplicaID: fmt.Sprintf("r%d", i)})
			out[i] = s
			t.Cleanup(func() {
				if st := s.Stats(); st.Trips > 0 {
					t.Errorf("replica %d tripped its breaker %d times in a test without outages", i, st.Trips)
				}
			})
		}
		return out
	}
}

func TestConformanceRedis(t *testing.T) {
	srv := redistest.Start(t)
	runStoreConformance(t, redisReplicas(standaloneEnv(srv)))
}

func TestConformanceRedisSentinel(t *testing.T) {
	master := redistest.Start(t)
	sentinel := redistest.StartSentinel(t, master, "mr-master")
	env := standaloneEnv(master)
	env.cfg = func(timeout time.Duration) RedisConfig {
		return RedisConfig{MasterName: "mr-master", SentinelAddrs: []string{sentinel.Addr}, Timeout: timeout}
	}
	runStoreConformance(t, redisReplicas(env))
}

func TestConformanceRedisCluster(t *testing.T) {
	c := redistest.StartCluster(t, 3)
	runStoreConformance(t, redisReplicas(clusterEnv(c)))
}
