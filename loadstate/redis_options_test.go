package loadstate

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/modelrouter/modelrouter/internal/redistest"
)

func TestClientOptions(t *testing.T) {
	o, err := ClientOptions(RedisConfig{URL: "redis://user:secret@127.0.0.1:7000/3"})
	if err != nil {
		t.Fatal(err)
	}
	if len(o.Addrs) != 1 || o.Addrs[0] != "127.0.0.1:7000" || o.DB != 3 || o.Username != "user" || o.Password != "secret" || o.TLSConfig != nil {
		t.Errorf("from URL: %+v", o)
	}
	// The whole budget of a call is the timeout: no retries, no long dials or
	// pool waits, the context deadline honoured.
	if o.MaxRetries != -1 || o.DialerRetries != 1 || o.DialTimeout != DefaultTimeout || o.ReadTimeout != DefaultTimeout ||
		o.WriteTimeout != DefaultTimeout || o.PoolTimeout != DefaultTimeout || !o.ContextTimeoutEnabled {
		t.Errorf("timeouts: %+v", o)
	}

	o, err = ClientOptions(RedisConfig{URL: "rediss://cache.example:6380", Timeout: 20 * time.Millisecond, Password: "override"})
	if err != nil {
		t.Fatal(err)
	}
	if o.TLSConfig == nil || o.TLSConfig.ServerName != "cache.example" || o.ReadTimeout != 20*time.Millisecond || o.Password != "override" {
		t.Errorf("rediss: %+v", o)
	}

	o, err = ClientOptions(RedisConfig{MasterName: "m", SentinelAddrs: []string{"a:26379", "b:26379"}, SentinelPassword: "s"})
	if err != nil || o.MasterName != "m" || len(o.Addrs) != 2 || o.SentinelPassword != "s" || o.IsClusterMode {
		t.Errorf("sentinel: %+v, %v", o, err)
	}
	o, err = ClientOptions(RedisConfig{ClusterAddrs: []string{"a:7000"}, URL: "redis://:pw@ignored:1"})
	if err != nil || !o.IsClusterMode || len(o.Addrs) != 1 || o.Addrs[0] != "a:7000" || o.Password != "pw" {
		t.Errorf("cluster: %+v, %v", o, err)
	}

	for name, cfg := range map[string]RedisConfig{
		"nothing":                {},
		"both":                   {MasterName: "m", SentinelAddrs: []string{"a:1"}, ClusterAddrs: []string{"b:1"}},
		"sentinel without name":  {SentinelAddrs: []string{"a:1"}},
		"name without sentinels": {MasterName: "m"},
		"scheme":                 {URL: "http://host:1"},
		"cluster db":             {URL: "redis://host:1/2", ClusterAddrs: []string{"a:1"}},
		"malformed":              {URL: "redis://user:p%zzsecret@host:1"},
	} {
		if _, err := ClientOptions(cfg); err == nil {
			t.Errorf("%s: no error", name)
		} else if strings.Contains(err.Error(), "secret") {
			t.Errorf("%s: the error leaks the password: %v", name, err)
		}
	}
}

func TestParseOnDown(t *testing.T) {
	for in, want := range map[string]OnDown{"": FailLocal, "fail_local": FailLocal, "fail_closed": FailClosed, "fail_open": FailOpen} {
		if got, err := ParseOnDown(in); err != nil || got != want {
			t.Errorf("ParseOnDown(%q) = %q, %v", in, got, err)
		}
	}
	if _, err := ParseOnDown("fail_sometimes"); err == nil {
		t.Error("no error for an unknown mode")
	}
}

func TestRedisOptionsValidation(t *testing.T) {
	srv := redistest.Start(t)
	c := testClient(t, RedisConfig{URL: srv.URL()})
	for name, o := range map[string]RedisOptions{
		"heartbeat not shorter than lease": {Lease: time.Second, Heartbeat: time.Second},
		"bad mode":                         {OnDown: "sometimes"},
		"bad replica id":                   {ReplicaID: "a b"},
	} {
		if s, err := NewRedisStore(c, o); err == nil {
			_ = s.Close()
			t.Errorf("%s: no error", name)
		}
	}
	if _, err := NewRedisStore(nil, RedisOptions{}); err == nil {
		t.Error("nil client: no error")
	}
	s, err := NewRedisStore(c, RedisOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.LeaseTTL() != DefaultLease || s.opts.Pool != DefaultPool || s.opts.KeyPrefix != DefaultKeyPrefix ||
		s.opts.Timeout != DefaultTimeout || s.opts.OnDown != FailLocal || !plainName(s.ReplicaID()) {
		t.Errorf("defaults: %+v", s.opts)
	}
}

// TestClientOptionsBoundCalls checks that a call fails after about the
// timeout against a paused Redis, rather than waiting out the pause (it
// returns while the pause is still on, as Redis itself reports), and fails
// against a stopped one.
func TestClientOptionsBoundCalls(t *testing.T) {
	srv := redistest.Start(t)
	const timeout = 100 * time.Millisecond
	c := testClient(t, RedisConfig{URL: srv.URL(), Timeout: timeout})
	ctx := context.Background()
	if err := c.Ping(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	over := srv.PauseWatch(5 * time.Second)
	start := time.Now()
	err := c.Ping(ctx).Err()
	t.Logf("PING on a paused Redis failed after %v (%v)", time.Since(start).Round(time.Millisecond), err)
	if err == nil {
		t.Fatal("PING on a paused Redis succeeded: it waited out the pause")
	}
	select {
	case <-over:
		t.Fatal("PING on a paused Redis returned only after the pause")
	default:
	}
	<-over

	srv.Stop()
	if err := c.Ping(ctx).Err(); err == nil {
		t.Fatal("PING on a stopped Redis succeeded")
	}
}
