package caddymodule

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"runtime/debug"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/redis/go-redis/v9"

	"github.com/modelrouter/modelrouter/loadstate"
)

// RedisConfig makes every gateway replica with the same pool share in-flight
// load, capacity limits and latency percentiles through Redis. Without it, an
// in-memory store serves this replica alone.
type RedisConfig struct {
	// URL is redis://[user:password@]host:port[/db], or rediss:// for TLS.
	// With Sentinel or Cluster it may still carry credentials and TLS.
	// Placeholders such as {env.REDIS_PASSWORD} are expanded.
	URL string `json:"url,omitempty"`

	// MasterName and Sentinels select Redis Sentinel: the master's name and the
	// Sentinels' host:port addresses.
	MasterName string   `json:"master_name,omitempty"`
	Sentinels  []string `json:"sentinels,omitempty"`

	// Cluster lists seed host:port addresses of a Redis Cluster.
	Cluster []string `json:"cluster,omitempty"`

	// Username and Password override the URL's; placeholders are expanded.
	// Credentials never appear in logs, errors or the keys that share
	// clients and stores (only a hash of them does).
	Username string `json:"username,omitempty"`
	Password string `json:"password,omitempty"`

	// Lease is how long a slot stays held without renewal: the longest a
	// crashed replica's slots stay taken. Default: 5s.
	Lease caddy.Duration `json:"lease,omitempty"`

	// Heartbeat is how often a replica registers itself, shares its latency
	// sketches and, while Redis is down, probes it. Default: 1s.
	Heartbeat caddy.Duration `json:"heartbeat,omitempty"`

	// Timeout bounds one Redis call on the request path. Default: 50ms.
	Timeout caddy.Duration `json:"timeout,omitempty"`

	// OnRedisDown is what to admit while Redis is unreachable: fail_local (each
	// live replica takes its share of every backend's capacity), fail_closed
	// (nothing) or fail_open (the full capacity, on each replica). Default:
	// fail_local.
	//
	// Lease, Heartbeat, Timeout and OnRedisDown can change on a config reload
	// without dropping anything: the store (keyed by the connection, the key
	// prefix and the pool) is kept, with the leases of the requests in flight,
	// and tuned. Changing the connection, the key prefix or the pool starts a
	// new store, and the old one releases its leases once the last request of
	// the old config is done.
	OnRedisDown string `json:"on_redis_down,omitempty"`

	// KeyPrefix starts every Redis key. Default: "mr".
	KeyPrefix string `json:"key_prefix,omitempty"`
}

func (c *RedisConfig) validate() error {
	if _, err := loadstate.ParseOnDown(c.OnRedisDown); err != nil {
		return err
	}
	if c.KeyPrefix != "" && !nameRE.MatchString(c.KeyPrefix) {
		return fmt.Errorf("redis key_prefix %q: use letters, digits, '.', '_' or '-'", c.KeyPrefix)
	}
	if c.Lease < 0 || c.Heartbeat < 0 || c.Timeout < 0 {
		return fmt.Errorf("redis durations must not be negative")
	}
	lease, beat := time.Duration(c.Lease), time.Duration(c.Heartbeat)
	if lease == 0 {
		lease = loadstate.DefaultLease
	}
	if beat == 0 {
		beat = loadstate.DefaultHeartbeat
	}
	if beat >= lease {
		return fmt.Errorf("redis heartbeat %v must be shorter than the lease %v", beat, lease)
	}
	_, err := loadstate.ClientOptions(c.clientConfig(caddy.NewReplacer()))
	return err
}

func (c *RedisConfig) clientConfig(repl *caddy.Replacer) loadstate.RedisConfig {
	return loadstate.RedisConfig{
		URL:           repl.ReplaceAll(c.URL, ""),
		MasterName:    c.MasterName,
		SentinelAddrs: c.Sentinels,
		ClusterAddrs:  c.Cluster,
		Timeout:       time.Duration(c.Timeout),
		Username:      repl.ReplaceAll(c.Username, ""),
		Password:      repl.ReplaceAll(c.Password, ""),
	}
}

// redisClients shares Redis clients across config reloads and routers, keyed
// by what identifies the connection (redisClientKey), and closes one when its
// last user is gone.
var redisClients = caddy.NewUsagePool()

// redisClientCeiling is the clients' own bound on one call. The store gives
// every call a deadline of its (reloadable) timeout through the context, which
// the client honours, so a changed timeout needs no new client; the ceiling
// only bounds a call that would come without a deadline.
const redisClientCeiling = 30 * time.Second

type pooledClient struct{ redis.UniversalClient }

func (p pooledClient) Destruct() error { return p.Close() }

// redisClientKey identifies a connection: addresses, database, TLS and
// credentials. The credentials only enter through a hash, so that neither the
// key nor anything derived from it (store keys, logs, errors) carries a
// password.
func redisClientKey(cfg loadstate.RedisConfig) string {
	cfg.Timeout = 0 // not part of the identity: applied per call
	b, _ := json.Marshal(cfg)
	sum := sha256.Sum256(b)
	return "redis-client:" + hex.EncodeToString(sum[:])
}

// redisLogOnce routes go-redis's own log lines (one per failed dial during an
// outage, otherwise on stderr) into Caddy's logs, once per process.
var redisLogOnce sync.Once

func (h *Handler) provisionRedisStore(ctx caddy.Context) error {
	redisLogOnce.Do(func() { redis.SetLogger(loadstate.RedisLogger(caddy.Log())) })
	cfg := h.Redis.clientConfig(caddy.NewReplacer())
	clientKey := redisClientKey(cfg)
	cfg.Timeout = redisClientCeiling
	cv, _, err := redisClients.LoadOrNew(clientKey, func() (caddy.Destructor, error) {
		c, err := loadstate.NewRedisClient(cfg)
		if err != nil {
			return nil, err
		}
		return pooledClient{c}, nil
	})
	if err != nil {
		return fmt.Errorf("connecting to redis: %w", err)
	}
	client := cv.(pooledClient)

	onDown, _ := loadstate.ParseOnDown(h.Redis.OnRedisDown)
	tunables := loadstate.RedisTunables{
		Lease:     time.Duration(h.Redis.Lease),
		Heartbeat: time.Duration(h.Redis.Heartbeat),
		Timeout:   time.Duration(h.Redis.Timeout),
		OnDown:    onDown,
	}
	// The store is keyed by what identifies the shared state (the
	// connection, the key prefix and the pool), not by its tunables: a
	// reload that changes only lease, heartbeat, timeout or on_redis_down
	// keeps the store, and the leases of the requests still in flight, and
	// tunes it instead. Routers that agree on the identity share one store
	// (one replica, one set of leases) within this process; the tunables of
	// the router provisioned last apply.
	h.storeKey = "redis:" + clientKey + "|" + h.Redis.KeyPrefix + "|" + h.Pool
	created := false
	v, _, err := stores.LoadOrNew(h.storeKey, func() (caddy.Destructor, error) {
		created = true
		sketches, learner := loadstate.NewSketches(0, 0, nil), loadstate.NewLearner(0, 0, nil)
		store, err := loadstate.NewRedisStore(client, loadstate.RedisOptions{
			Pool:        h.Pool,
			KeyPrefix:   h.Redis.KeyPrefix,
			ReplicaAddr: replicaAddr(),
			Version:     version(),
			Lease:       tunables.Lease,
			Heartbeat:   tunables.Heartbeat,
			Timeout:     tunables.Timeout,
			OnDown:      tunables.OnDown,
			Sketches:    sketches,
			Learner:     learner,
			Logger:      ctx.Logger().Named("redis"),
		})
		if err != nil {
			return nil, err
		}
		// The store takes a client reference of its own, given back when the
		// store's last router is gone.
		redisClients.LoadOrStore(clientKey, client)
		return &pooledStore{pool: h.Pool, store: store, redis: store, sketches: sketches, learner: learner, close: func() error {
			// Caddy cleans an old config up while its last requests may
			// still run (a reload that changed the connection, say a
			// rotated password, or the pool): their leases must stay in
			// Redis until they end, so the store closes once it holds none.
			go func() {
				drainRedisStore(store)
				_ = store.Close()
				_, _ = redisClients.Delete(clientKey)
			}()
			return nil
		}}, nil
	})
	// This router's own client reference is only needed to build the store.
	_, _ = redisClients.Delete(clientKey)
	if err != nil {
		h.storeKey = ""
		return fmt.Errorf("setting up the redis load store for pool %s: %w", h.Pool, err)
	}
	ps := v.(*pooledStore)
	if !created {
		if err := ps.redis.Tune(tunables); err != nil {
			h.releaseStore()
			h.storeKey = ""
			return fmt.Errorf("redis load store for pool %s: %w", h.Pool, err)
		}
	}
	h.store, h.sketches, h.learner = ps.store, ps.sketches, ps.learner
	ps.addBackends(h.backendNames())
	return nil
}

// storeDrainLimit bounds how long a store no router uses any more waits for
// the leases of its last requests before closing (which releases them).
const storeDrainLimit = time.Hour

// drainRedisStore waits until the store holds no lease, or storeDrainLimit.
func drainRedisStore(store *loadstate.RedisStore) {
	deadline := time.Now().Add(storeDrainLimit)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for store.Held() > 0 && time.Now().Before(deadline) {
		<-tick.C
	}
}

func replicaAddr() string {
	host, _ := os.Hostname()
	return host
}

func version() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, dep := range bi.Deps {
			if dep.Path == "github.com/modelrouter/modelrouter" {
				return dep.Version
			}
		}
		return bi.Main.Version
	}
	return "unknown"
}

// parseRedis reads the redis block:
//
//	redis [<url>] {
//	    lease 5s
//	    heartbeat 1s
//	    timeout 50ms
//	    on_redis_down fail_local   # fail_local | fail_closed | fail_open
//	    key_prefix mr
//	    sentinel <master_name> <addr>...   # or: master_name <name> + sentinels <addr>...
//	    cluster <addr>...
//	    username <name>
//	    password <secret>          # e.g. {env.REDIS_PASSWORD}
//	}
func parseRedis(d *caddyfile.Dispenser) (*RedisConfig, error) {
	c := new(RedisConfig)
	args := d.RemainingArgs()
	switch len(args) {
	case 0:
	case 1:
		c.URL = args[0]
	default:
		return nil, d.ArgErr()
	}
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		key := d.Val()
		if seen[key] {
			return nil, d.Errf("redis: %s is set twice", key)
		}
		seen[key] = true
		var err error
		switch key {
		case "lease":
			c.Lease, err = durationArg(d)
		case "heartbeat":
			c.Heartbeat, err = durationArg(d)
		case "timeout":
			c.Timeout, err = durationArg(d)
		case "on_redis_down":
			c.OnRedisDown, err = oneArg(d)
			if err == nil {
				if _, perr := loadstate.ParseOnDown(c.OnRedisDown); perr != nil {
					err = d.Err(perr.Error())
				}
			}
		case "key_prefix":
			c.KeyPrefix, err = oneArg(d)
			if err == nil && !nameRE.MatchString(c.KeyPrefix) {
				err = d.Errf("redis key_prefix %q: use letters, digits, '.', '_' or '-'", c.KeyPrefix)
			}
		case "sentinel":
			a := d.RemainingArgs()
			if len(a) < 2 {
				return nil, d.Errf("redis sentinel needs the master name and at least one sentinel address")
			}
			c.MasterName, c.Sentinels = a[0], a[1:]
		case "master_name":
			c.MasterName, err = oneArg(d)
		case "sentinels":
			a := d.RemainingArgs()
			if len(a) == 0 {
				return nil, d.Errf("redis sentinels needs at least one address")
			}
			c.Sentinels = a
		case "cluster":
			a := d.RemainingArgs()
			if len(a) == 0 {
				return nil, d.Errf("redis cluster needs at least one seed address")
			}
			c.Cluster = a
		case "username":
			c.Username, err = oneArg(d)
		case "password":
			c.Password, err = oneArg(d)
		default:
			return nil, d.Errf("redis: unknown option %q", key)
		}
		if err != nil {
			return nil, err
		}
	}
	if seen["sentinel"] && (seen["master_name"] || seen["sentinels"]) {
		return nil, d.Err("redis: use either sentinel <master_name> <addr>... or master_name and sentinels, not both")
	}
	if c.URL == "" && c.MasterName == "" && len(c.Cluster) == 0 {
		return nil, d.Err("redis needs a URL, a sentinel line or a cluster line")
	}
	if err := c.validate(); err != nil {
		return nil, d.Err(err.Error())
	}
	return c, nil
}
