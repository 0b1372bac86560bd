package loadstate

import (
	"os"
	"testing"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

func TestMain(m *testing.M) {
	// go-redis logs each failed dial; the outage tests cause many on purpose.
	redis.SetLogger(RedisLogger(zap.NewNop()))
	os.Exit(m.Run())
}
