package loadstate

import (
	"context"
	"fmt"

	"go.uber.org/zap"
)

// RedisLogger adapts a zap logger for go-redis's process-wide logger:
// redis.SetLogger(loadstate.RedisLogger(logger)). It logs at debug level:
// go-redis reports every failed dial, which during an outage would repeat, once
// per probe, what the store already said once.
func RedisLogger(l *zap.Logger) interface {
	Printf(ctx context.Context, format string, v ...any)
} {
	return redisLogger{l.Named("go-redis")}
}

type redisLogger struct{ l *zap.Logger }

func (r redisLogger) Printf(_ context.Context, format string, v ...any) {
	if ce := r.l.Check(zap.DebugLevel, "go-redis"); ce != nil {
		ce.Write(zap.String("detail", fmt.Sprintf(format, v...)))
	}
}
