package sim

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/modules/filestorage"
)

// runCaddy loads a Caddyfile into the real Caddy in this process (replacing
// any config loaded before, as a reload does) and stops Caddy when the test
// ends. siteBlock is the body of a site block at the returned base URL.
// Caddy's storage goes to storageDir, not the home directory.
func runCaddy(t *testing.T, storageDir string, port int, siteBlock string) string {
	t.Helper()
	caddyfile := fmt.Sprintf(`{
	admin off
	persist_config off
	auto_https off
	storage file_system %q
	log {
		output discard
	}
}

http://127.0.0.1:%d {
%s
}
`, storageDir, port, siteBlock)
	cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), nil)
	if err != nil {
		t.Fatalf("adapting Caddyfile: %v", err)
	}
	if err := caddy.Load(cfg, true); err != nil {
		t.Fatalf("loading config: %v", err)
	}
	return fmt.Sprintf("http://127.0.0.1:%d", port)
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// TestInCaddy serves the sim from a real Caddy configured by Caddyfile: the
// directive needs no order line, streams are flushed through Caddy's response
// writer wrappers, an abort reaches the client, and the counters survive a
// config reload.
func TestInCaddy(t *testing.T) {
	storage := t.TempDir() // removed after Caddy stops: cleanups run last-in first-out
	t.Cleanup(func() {
		if err := caddy.Stop(); err != nil {
			t.Errorf("stopping Caddy: %v", err)
		}
	})
	name := uniqueName(t)
	port := freePort(t)
	base := runCaddy(t, storage, port, `	model_router_sim {
		name `+name+`
		slots 2
		ttft 10ms
		per_token 150ms
		tokens 5
	}`)

	t.Run("chat", func(t *testing.T) {
		resp := post(t, base+"/v1/chat/completions", `{"model":"m","max_tokens":1}`)
		if got := decode(t, resp); resp.StatusCode != 200 || !strings.Contains(fmt.Sprint(got["choices"]), "["+name+"]") {
			t.Errorf("status %d body %v", resp.StatusCode, got)
		}
	})

	t.Run("stream is flushed per event", func(t *testing.T) {
		resp := post(t, base+"/v1/chat/completions", `{"model":"m","stream":true}`)
		r := bufio.NewReader(resp.Body)
		if _, err := readEvent(r); err != nil {
			t.Fatal(err)
		}
		first := time.Now()
		events := readEvents(t, r)
		// Four more tokens 150ms apart: buffered events would arrive together.
		if gap := time.Since(first); gap < 300*time.Millisecond {
			t.Errorf("the rest of the stream came %s after the first event; it was not flushed", gap)
		}
		if len(events) != 4+1+1 || events[len(events)-1].data != "[DONE]" {
			t.Errorf("events after the first: %v", events)
		}
	})

	t.Run("abort reaches the client", func(t *testing.T) {
		resp := post(t, base+"/v1/chat/completions", `{"model":"m","stream":true,"max_tokens":4}`, FaultHeader, FaultAbortMidstream)
		if _, err := io.ReadAll(resp.Body); err == nil {
			t.Error("aborted stream read to a clean end")
		}
	})

	// A run-time slowdown survives the reload, over the new configuration.
	setConfig(t, base, `{"slowdown":2}`)

	before := stateFor(name).Snapshot()
	runCaddy(t, storage, port, `	model_router_sim {
		name `+name+`
		slots 3
		ttft 0
		per_token 0
	}`)
	// The reload closed the old server's connections; afterReload sends
	// again what one of them lost before it reached the sim.
	http.DefaultClient.CloseIdleConnections()
	afterReload(t, func() (*http.Response, error) {
		return http.Post(base+"/v1/completions", "application/json", strings.NewReader(`{"model":"m"}`))
	})
	got := decode(t, afterReload(t, func() (*http.Response, error) { return http.Get(base + "/sim/stats") }))
	if before.Requests != 3 || got["requests"] != float64(before.Requests+1) || got["served"] != 3.0 || got["failed"] != 1.0 {
		t.Errorf("before reload %+v; after reload and one more request %v", before, got)
	}
	wantConfig(t, decode(t, afterReload(t, func() (*http.Response, error) { return http.Get(base + "/sim/config") })), "0s", "0s", "0s", 2, "slowdown")
	reset := afterReload(t, func() (*http.Response, error) {
		return http.Post(base+"/sim/config", "application/json", strings.NewReader(`{"reset":true}`))
	})
	wantConfig(t, decode(t, reset), "0s", "0s", "0s", 1)
}

// afterReload sends a request to a server that has just been reloaded. The
// old server shuts down in the background (Caddy's http app only waits for
// the shutdown to start), so it may still accept a new connection and then
// close it before reading the request: a transport error is that race, and
// the request did not reach the handler, so it is sent again on a new
// connection. Any answer is returned, whatever its status; non-200 fails.
func afterReload(t *testing.T, send func() (*http.Response, error)) *http.Response {
	t.Helper()
	var resp *http.Response
	eventually(t, "a request after the reload gets an answer", func() bool {
		var err error
		if resp, err = send(); err != nil {
			t.Logf("after reload: %v", err)
			http.DefaultClient.CloseIdleConnections()
			return false
		}
		return true
	})
	t.Cleanup(func() { resp.Body.Close() })
	if resp.StatusCode != 200 {
		t.Fatalf("after reload: status %d", resp.StatusCode)
	}
	return resp
}
