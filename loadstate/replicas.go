package loadstate

import (
	"context"
	"time"
)

// Replica is one gateway replica as registered in a shared store.
type Replica struct {
	ID       string
	Addr     string
	Version  string
	LastBeat time.Time // the last heartbeat, by the shared store's clock
	Self     bool      // the replica asking
}

// ReplicaRegistry is implemented by stores that know the other gateway
// replicas sharing their state.
type ReplicaRegistry interface {
	// Replicas lists the live replicas, sorted by id.
	Replicas(ctx context.Context) ([]Replica, error)
	// LiveReplicas returns how many replicas were alive at the last heartbeat,
	// this one included, without blocking on I/O.
	LiveReplicas() int
}
