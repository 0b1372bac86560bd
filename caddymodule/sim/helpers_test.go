package sim

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// uniqueName names a sim after the test, uniquely even with -count=N:
// counters are shared by name for the life of the process.
func uniqueName(t *testing.T) string {
	return fmt.Sprintf("%s#%d", t.Name(), nameCounter.Add(1))
}

var nameCounter atomic.Int64

// provision provisions and validates h as Caddy would, naming it uniquely
// unless it has a name.
func provision(t *testing.T, h *Handler) *Handler {
	t.Helper()
	if h.Name == "" {
		h.Name = uniqueName(t)
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	if err := h.Provision(ctx); err != nil {
		t.Fatalf("Provision: %v", err)
	}
	if err := h.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	return h
}

// serve runs h behind a real HTTP server; it is closed when the test ends.
func serve(t *testing.T, h *Handler) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := h.ServeHTTP(w, r, nil); err != nil {
			t.Errorf("ServeHTTP returned %v", err)
		}
	}))
	t.Cleanup(srv.Close)
	return srv
}

// noWait makes every simulated delay instant.
func noWait(ctx context.Context, _ time.Duration) error { return ctx.Err() }

// stepClock stands in for Handler.wait so a test decides when each simulated
// delay ends, and records the delays asked for.
type stepClock struct {
	steps  chan struct{}
	opened chan struct{}
	once   sync.Once

	mu    sync.Mutex
	waits []time.Duration
}

func newStepClock() *stepClock {
	return &stepClock{steps: make(chan struct{}), opened: make(chan struct{})}
}

func (c *stepClock) wait(ctx context.Context, d time.Duration) error {
	c.mu.Lock()
	c.waits = append(c.waits, d)
	c.mu.Unlock()
	select {
	case <-c.steps:
		return nil
	case <-c.opened:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Step ends one pending or future delay, failing the test if the handler
// does not reach one soon.
func (c *stepClock) Step(t *testing.T) {
	t.Helper()
	select {
	case c.steps <- struct{}{}:
	case <-time.After(10 * time.Second):
		t.Fatal("the handler reached no delay within 10s")
	}
}

// Open ends every delay, now and from now on.
func (c *stepClock) Open() { c.once.Do(func() { close(c.opened) }) }

// Waits returns the delays asked for so far.
func (c *stepClock) Waits() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]time.Duration(nil), c.waits...)
}

// post sends body as JSON to url and returns the response.
func post(t *testing.T, url, body string, header ...string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

// decode reads resp's JSON body into a generic map, failing on bad JSON.
func decode(t *testing.T, resp *http.Response) map[string]any {
	t.Helper()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading body: %v", err)
	}
	var v map[string]any
	if err := json.Unmarshal(body, &v); err != nil {
		t.Fatalf("decoding %q: %v", body, err)
	}
	return v
}

// wantOpenAIError checks resp has status and an OpenAI error body, and
// returns the error object.
func wantOpenAIError(t *testing.T, resp *http.Response, status int) map[string]any {
	t.Helper()
	if resp.StatusCode != status {
		t.Fatalf("status = %d, want %d", resp.StatusCode, status)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q, want application/json", ct)
	}
	e, ok := decode(t, resp)["error"].(map[string]any)
	if !ok {
		t.Fatal("body has no error object")
	}
	for _, key := range []string{"message", "type", "param", "code"} {
		if _, ok := e[key]; !ok {
			t.Errorf("error object lacks %q: %v", key, e)
		}
	}
	if msg, _ := e["message"].(string); msg == "" {
		t.Errorf("error message is empty")
	}
	return e
}

// sseEvent is one Server-Sent Event.
type sseEvent struct {
	name string
	data string
}

// readEvent reads the next event from r, or returns io.EOF.
func readEvent(r *bufio.Reader) (sseEvent, error) {
	var ev sseEvent
	var data bytes.Buffer
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			if err == io.EOF && line == "" && data.Len() == 0 {
				return ev, io.EOF
			}
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return ev, err
		}
		line = strings.TrimSuffix(line, "\n")
		if line == "" {
			if data.Len() == 0 && ev.name == "" {
				continue
			}
			ev.data = data.String()
			return ev, nil
		}
		field, value, _ := strings.Cut(line, ": ")
		switch field {
		case "event":
			ev.name = value
		case "data":
			if data.Len() > 0 {
				data.WriteByte('\n')
			}
			data.WriteString(value)
		}
	}
}

// readEvents reads every event until the stream ends.
func readEvents(t *testing.T, body io.Reader) []sseEvent {
	t.Helper()
	r := bufio.NewReader(body)
	var events []sseEvent
	for {
		ev, err := readEvent(r)
		if err == io.EOF {
			return events
		}
		if err != nil {
			t.Fatalf("reading event %d: %v", len(events), err)
		}
		events = append(events, ev)
	}
}

// eventually polls cond until it holds or a generous deadline passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}
