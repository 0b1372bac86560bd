package loadstate

import (
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/modelrouter/modelrouter/engine"
)

// HealthEvent is a piece of passive-health news about a backend: the outcome
// of an attempt that the breaker counted (see engine.Health.Record), shared
// with the other replicas of a pool so that one replica's evidence protects
// them all.
type HealthEvent struct {
	Backend    string
	Outcome    engine.Outcome
	Probe      bool          // the attempt was the backend's half-open probe
	RetryAfter time.Duration // for engine.OutcomeRateLimited
}

// HealthSharer is a Store that shares passive health between replicas.
type HealthSharer interface {
	// ShareHealth sends news to the other replicas, with the next batch of
	// releases (no round trip of its own when one is due). It never blocks.
	ShareHealth(HealthEvent)
	// SetHealthSink sets the function other replicas' news is given to
	// (the last one set wins; nil stops it). It must not block.
	SetHealthSink(func(HealthEvent))
}

// maxHealthQueue bounds the news waiting for the next release batch: under a
// storm of failures the first ones already told the fleet.
const maxHealthQueue = 256

// ShareHealth implements HealthSharer.
func (s *RedisStore) ShareHealth(ev HealthEvent) {
	if s.down.Load() || s.closed.Load() || !plainName(ev.Backend) {
		return
	}
	s.mu.Lock()
	if len(s.healthQueue) < maxHealthQueue {
		s.healthQueue = append(s.healthQueue, ev)
	}
	s.mu.Unlock()
	s.signal()
}

// SetHealthSink implements HealthSharer.
func (s *RedisStore) SetHealthSink(fn func(HealthEvent)) {
	if fn == nil {
		s.healthSink.Store(nil)
		return
	}
	s.healthSink.Store(&fn)
}

// encodeHealthEvents is "<backend>,<outcome>,<probe 0|1>,<retry-after ms>"
// per event, ';'-separated; backend names are plain (see plainName).
func encodeHealthEvents(events []HealthEvent) string {
	if len(events) == 0 {
		return ""
	}
	var b strings.Builder
	for i, ev := range events {
		if i > 0 {
			b.WriteByte(';')
		}
		b.WriteString(ev.Backend)
		b.WriteByte(',')
		b.WriteString(strconv.Itoa(int(ev.Outcome)))
		if ev.Probe {
			b.WriteString(",1,")
		} else {
			b.WriteString(",0,")
		}
		b.WriteString(strconv.FormatInt(ev.RetryAfter.Milliseconds(), 10))
	}
	return b.String()
}

// decodeHealthEvents reads encodeHealthEvents' format, skipping what it
// cannot read (a newer replica's additions, say).
func decodeHealthEvents(data string) []HealthEvent {
	var out []HealthEvent
	for _, part := range strings.Split(data, ";") {
		f := strings.Split(part, ",")
		if len(f) < 4 || !plainName(f[0]) {
			continue
		}
		o, err1 := strconv.Atoi(f[1])
		ms, err2 := strconv.ParseInt(f[3], 10, 64)
		if err1 != nil || err2 != nil || o < 0 || o >= engine.OutcomeCount || ms < 0 {
			continue
		}
		out = append(out, HealthEvent{Backend: f[0], Outcome: engine.Outcome(o), Probe: f[2] == "1", RetryAfter: time.Duration(ms) * time.Millisecond})
	}
	return out
}

// deliverHealth gives other replicas' news to the sink.
func (s *RedisStore) deliverHealth(data string) {
	sink := s.healthSink.Load()
	if sink == nil {
		return
	}
	for _, ev := range decodeHealthEvents(data) {
		s.stats.healthReceived.Add(1)
		(*sink)(ev)
	}
}

// healthSinkPtr is the sink's type, for the store's atomic field.
type healthSinkPtr = atomic.Pointer[func(HealthEvent)]

// Interface guards
var _ HealthSharer = (*RedisStore)(nil)
