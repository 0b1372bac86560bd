package loadstate

import (
	"errors"
	"fmt"
	"net/url"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
	"go.uber.org/zap"
)

// Defaults of the Redis store.
const (
	DefaultPool      = "default"
	DefaultKeyPrefix = "mr"
	DefaultLease     = 5 * time.Second
	DefaultHeartbeat = time.Second
	DefaultTimeout   = 50 * time.Millisecond
)

// OnDown says how a replica admits requests while it cannot use Redis.
type OnDown string

const (
	// FailLocal admits, on each backend, this replica's share of the capacity:
	// ⌊N ÷ live replicas⌋, plus one on as many replicas (chosen by rank) as the
	// remainder, so the shares add up to exactly N. The default.
	FailLocal OnDown = "fail_local"
	// FailClosed admits nothing: requests get "no capacity".
	FailClosed OnDown = "fail_closed"
	// FailOpen admits up to the full capacity N on this replica alone.
	FailOpen OnDown = "fail_open"
)

// ParseOnDown validates an on_redis_down value; "" means FailLocal.
func ParseOnDown(s string) (OnDown, error) {
	switch OnDown(s) {
	case "":
		return FailLocal, nil
	case FailLocal, FailClosed, FailOpen:
		return OnDown(s), nil
	}
	return "", fmt.Errorf("unknown on_redis_down mode %q (want fail_local, fail_closed or fail_open)", s)
}

// RedisOptions configure a RedisStore. Zero values take the defaults.
type RedisOptions struct {
	// Pool names the set of gateway replicas that share state: replicas with
	// the same pool (and key prefix) on the same Redis share every count.
	// Default: "default".
	Pool string
	// KeyPrefix starts every key. Default: "mr".
	KeyPrefix string
	// ReplicaID identifies this replica in the registry and in its leases'
	// bookkeeping; unique per process. Default: hostname, pid and a random
	// suffix.
	ReplicaID string
	// ReplicaAddr and Version are published in the registry for operators.
	ReplicaAddr string
	Version     string
	// Lease is how long a slot stays held without renewal: the longest a dead
	// replica's slots stay taken. Default: 5s.
	Lease time.Duration
	// Heartbeat is how often the replica registers itself, reclaims expired
	// leases, shares its latency sketches and, while Redis is down, probes it.
	// Must be shorter than Lease. Default: 1s.
	Heartbeat time.Duration
	// Timeout bounds one Redis call on the request path. Default: 50ms.
	Timeout time.Duration
	// OnDown is what to do while Redis is unreachable. Default: FailLocal.
	OnDown OnDown
	// Sketches, when set, are shared with the other replicas on every
	// heartbeat and merged with theirs.
	Sketches *Sketches
	// Learner, when set, is shared likewise: every replica's latency
	// models and error rates are fitted on the fleet's observations.
	Learner *Learner
	// Logger receives the store's warnings (one per outage, not per request).
	// Default: no logging.
	Logger *zap.Logger
	// Now is the clock for local bookkeeping (lease ids' local expiry, how long
	// counts stay untrusted); time.Now when nil. Lease expiry in Redis always
	// uses Redis's own clock.
	Now func() time.Time
}

func (o *RedisOptions) setDefaults() error {
	if o.Pool == "" {
		o.Pool = DefaultPool
	}
	if o.KeyPrefix == "" {
		o.KeyPrefix = DefaultKeyPrefix
	}
	if o.ReplicaID == "" {
		o.ReplicaID = defaultReplicaID()
	}
	if o.Lease == 0 {
		o.Lease = DefaultLease
	}
	if o.Heartbeat == 0 {
		o.Heartbeat = DefaultHeartbeat
	}
	if o.Timeout == 0 {
		o.Timeout = DefaultTimeout
	}
	if o.OnDown == "" {
		o.OnDown = FailLocal
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o.tunables().validate()
}

func (o *RedisOptions) tunables() RedisTunables {
	return RedisTunables{Lease: o.Lease, Heartbeat: o.Heartbeat, Timeout: o.Timeout, OnDown: o.OnDown}
}

// RedisTunables are the settings of a RedisStore that can change while it runs
// (RedisStore.Tune), as on a config reload: none of them identifies the shared
// state, so changing one keeps every lease in flight. Zero values take the
// defaults of RedisOptions.
type RedisTunables struct {
	// Lease applies to slots taken from now on; a held slot keeps the length
	// it was taken with, or the new one when longer, on renewal (so that the
	// renewal cadence its request chose still keeps it alive).
	Lease time.Duration
	// Heartbeat takes effect at the next heartbeat.
	Heartbeat time.Duration
	// Timeout bounds the next Redis calls. Every call carries its deadline in
	// its context (clients from ClientOptions honour it), so no new client
	// is needed.
	Timeout time.Duration
	// OnDown applies to the next decision taken without Redis.
	OnDown OnDown
}

func (t *RedisTunables) setDefaults() {
	if t.Lease == 0 {
		t.Lease = DefaultLease
	}
	if t.Heartbeat == 0 {
		t.Heartbeat = DefaultHeartbeat
	}
	if t.Timeout == 0 {
		t.Timeout = DefaultTimeout
	}
	if t.OnDown == "" {
		t.OnDown = FailLocal
	}
}

func (t RedisTunables) validate() error {
	switch {
	case t.Lease < 10*time.Millisecond:
		return fmt.Errorf("lease %v is too short", t.Lease)
	case t.Heartbeat <= 0 || t.Heartbeat >= t.Lease:
		return fmt.Errorf("heartbeat %v must be positive and shorter than the lease %v", t.Heartbeat, t.Lease)
	case t.Timeout <= 0:
		return fmt.Errorf("timeout %v must be positive", t.Timeout)
	}
	if _, err := ParseOnDown(string(t.OnDown)); err != nil {
		return err
	}
	return nil
}

// RedisConfig says how to reach Redis: a URL for a single server, a master name
// and Sentinel addresses, or Cluster seed addresses.
type RedisConfig struct {
	// URL is redis://[user:password@]host:port[/db] or rediss:// for TLS. With
	// Sentinel or Cluster it may still carry credentials, database and TLS.
	URL string
	// MasterName and SentinelAddrs select Redis Sentinel.
	MasterName    string
	SentinelAddrs []string
	// ClusterAddrs are seed addresses of a Redis Cluster.
	ClusterAddrs []string
	// Timeout is the budget for one call, dial included. Default: 50ms.
	Timeout time.Duration
	// Username and Password override those of the URL.
	Username, Password string
	// SentinelUsername and SentinelPassword authenticate to the Sentinels.
	SentinelUsername, SentinelPassword string
}

// ClientOptions returns go-redis options for the request path: one call costs at
// most cfg.Timeout, end to end, or less when its context has an earlier
// deadline (ContextTimeoutEnabled): a RedisStore gives every call a deadline
// of its own (tunable) timeout, so a client built with a longer Timeout, as a
// ceiling, serves stores whose timeout changes without being rebuilt. go-redis's defaults would defeat that: 3 retries
// with backoff, 5 retried dials of 5s each, 3s reads and a pool wait of the read
// timeout plus 1s. A failed call must fail fast so that the store switches to
// local mode; it is the store, not the client, that decides when to try again.
func ClientOptions(cfg RedisConfig) (*redis.UniversalOptions, error) {
	timeout := cfg.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	o := &redis.UniversalOptions{}
	if cfg.URL != "" {
		// url.Parse errors quote the URL, password included: report the
		// problem without them.
		if _, err := url.Parse(cfg.URL); err != nil {
			return nil, errors.New("parsing redis URL: malformed URL")
		}
		po, err := redis.ParseURL(cfg.URL)
		if err != nil {
			return nil, fmt.Errorf("parsing redis URL: %w", err)
		}
		o.Addrs = []string{po.Addr}
		o.DB = po.DB
		o.Username, o.Password = po.Username, po.Password
		o.TLSConfig = po.TLSConfig
		o.ClientName = po.ClientName
		o.Protocol = po.Protocol
	}
	switch {
	case len(cfg.ClusterAddrs) > 0 && (cfg.MasterName != "" || len(cfg.SentinelAddrs) > 0):
		return nil, errors.New("redis: choose either cluster or sentinel, not both")
	case len(cfg.ClusterAddrs) > 0:
		if o.DB != 0 {
			return nil, errors.New("redis: a cluster has only database 0")
		}
		o.Addrs = append([]string(nil), cfg.ClusterAddrs...)
		o.IsClusterMode = true
		o.MaxRedirects = 2 // MOVED/ASK after resharding; still bounded by the context
	case cfg.MasterName != "":
		if len(cfg.SentinelAddrs) == 0 {
			return nil, errors.New("redis: sentinel master name given without sentinel addresses")
		}
		o.MasterName = cfg.MasterName
		o.Addrs = append([]string(nil), cfg.SentinelAddrs...)
		o.SentinelUsername, o.SentinelPassword = cfg.SentinelUsername, cfg.SentinelPassword
	case len(cfg.SentinelAddrs) > 0:
		return nil, errors.New("redis: sentinel addresses given without a master name")
	case cfg.URL == "":
		return nil, errors.New("redis: no URL, sentinel or cluster addresses")
	}
	if cfg.Username != "" {
		o.Username = cfg.Username
	}
	if cfg.Password != "" {
		o.Password = cfg.Password
	}

	if o.Protocol == 0 {
		// RESP2: with RESP3 (go-redis's default) every command first checks
		// the connection for pending push notifications, which costs the
		// request path CPU for a feature the store does not use (pub/sub has
		// its own connection).
		o.Protocol = 2
	}
	o.MaxRetries = -1      // no retries: the budget is one attempt
	o.MinRetryBackoff = -1 // and no backoff sleeps
	o.MaxRetryBackoff = -1
	o.DialTimeout = timeout
	o.DialerRetries = 1 // go-redis otherwise redials 5 times, 100ms apart
	o.ReadTimeout = timeout
	o.WriteTimeout = timeout
	o.PoolTimeout = timeout // waiting for a free connection counts too
	o.ContextTimeoutEnabled = true
	o.MinIdleConns = 2 // keep connections warm so a request rarely pays a dial
	// No extra handshake commands per connection (CLIENT SETINFO, CLIENT
	// MAINT_NOTIFICATIONS): a reconnect after an outage should cost one dial.
	o.DisableIdentity = true
	o.MaintNotificationsConfig = &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
	return o, nil
}

// NewRedisClient returns a client built with ClientOptions.
func NewRedisClient(cfg RedisConfig) (redis.UniversalClient, error) {
	o, err := ClientOptions(cfg)
	if err != nil {
		return nil, err
	}
	return redis.NewUniversalClient(o), nil
}
