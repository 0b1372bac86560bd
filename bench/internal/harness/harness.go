package harness

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"
)

// Harness owns a benchmark's temporary directory and child processes.
type Harness struct {
	// Dir holds the gateway binary, configs and process logs.
	Dir string

	keep      bool
	ctx       context.Context
	interrupt context.CancelFunc
	closeOnce sync.Once

	mu     sync.Mutex
	procs  []*Process
	ports  map[int]bool
	closed bool
}

// interruptGrace is how long the benchmark has, after a signal, to stop its
// load and call Close itself before the harness cleans up and exits anyway.
const interruptGrace = 5 * time.Second

// New creates the temporary directory and watches for SIGINT, SIGTERM and
// SIGHUP: the first cancels Context, so the benchmark stops its load and
// returns; if it has not called Close within a few seconds (or on a second
// signal) the harness cleans up itself and exits with status 130. With keep,
// Close leaves the directory (configs and logs) in place.
func New(name string, keep bool) (*Harness, error) {
	dir, err := os.MkdirTemp("", "modelrouter-bench-"+name+"-")
	if err != nil {
		return nil, fmt.Errorf("creating temporary directory: %w", err)
	}
	h := &Harness{Dir: dir, keep: keep, ports: map[int]bool{}}
	h.ctx, h.interrupt = context.WithCancel(context.Background())
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		s := <-sigs
		fmt.Fprintf(os.Stderr, "\n%s: stopping the load, the child processes, and cleaning up\n", s)
		h.interrupt()
		select {
		case <-sigs:
		case <-time.After(interruptGrace):
		}
		h.Close()
		os.Exit(130)
	}()
	return h, nil
}

// Context is cancelled when the benchmark is interrupted by a signal.
func (h *Harness) Context() context.Context { return h.ctx }

// Interrupted reports whether a signal asked the benchmark to stop.
func (h *Harness) Interrupted() bool { return h.ctx.Err() != nil }

// Close stops every process started through the harness and removes the
// temporary directory unless it is kept. It is safe to call more than once and
// from several goroutines; every call returns after the cleanup is done.
func (h *Harness) Close() {
	h.closeOnce.Do(func() {
		h.mu.Lock()
		h.closed = true
		procs := h.procs
		h.mu.Unlock()

		var wg sync.WaitGroup
		for _, p := range procs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				p.Stop()
			}()
		}
		wg.Wait()
		if h.keep {
			fmt.Fprintf(os.Stderr, "configs and logs kept in %s\n", h.Dir)
			return
		}
		_ = os.RemoveAll(h.Dir)
	})
}

func (h *Harness) track(p *Process) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return fmt.Errorf("starting %s: the benchmark is shutting down", p.Name)
	}
	h.procs = append(h.procs, p)
	return nil
}

// Main runs a benchmark program's body in a new harness and exits: 130 when
// interrupted, 1 on an error (printed with the program's name), 0 otherwise.
func Main(name string, keep bool, run func(*Harness) error) {
	h, err := New(name, keep)
	if err != nil {
		fmt.Fprintln(os.Stderr, name+":", err)
		os.Exit(1)
	}
	err = run(h)
	h.Close()
	if h.Interrupted() {
		os.Exit(130)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, name+":", err)
		os.Exit(1)
	}
}
