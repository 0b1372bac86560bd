package caddymodule

// Config that reaches a running router: capability names in any case, and an
// api_key that expands to nothing. Both in a real Caddy with real backends.

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/caddyserver/caddy/v2"
)

// jsonGateway is a real Caddy started from a JSON config whose one server, on
// a free loopback port, runs the given model_router handler.
type jsonGateway struct {
	base    string // http://127.0.0.1:<port>
	logFile string // every log line at DEBUG and above, as JSON
}

// startJSONGateway loads handlerJSON (a "handler": "model_router" object) into
// a real Caddy with every log at DEBUG level written to a file, and stops it
// when the test ends. It returns Caddy's error when the config is refused.
func startJSONGateway(t *testing.T, handlerJSON string) (*jsonGateway, error) {
	t.Helper()
	caddyMu.Lock()
	t.Cleanup(caddyMu.Unlock)
	dir := t.TempDir()
	g := &jsonGateway{logFile: filepath.Join(dir, "caddy.log")}
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		port := freePort(t)
		g.base = fmt.Sprintf("http://127.0.0.1:%d", port)
		cfg := fmt.Sprintf(`{
			"admin": {"disabled": true, "config": {"persist": false}},
			"storage": {"module": "file_system", "root": %q},
			"logging": {"logs": {"default": {
				"writer": {"output": "file", "filename": %q},
				"encoder": {"format": "json"},
				"level": "DEBUG"
			}}},
			"apps": {"http": {"servers": {"gw": {
				"listen": ["127.0.0.1:%d"],
				"automatic_https": {"disable": true},
				"logs": {},
				"routes": [{"handle": [%s]}]
			}}}}
		}`, dir, g.logFile, port, handlerJSON)
		err = caddy.Load([]byte(cfg), true)
		if err == nil {
			t.Cleanup(func() {
				if err := caddy.Stop(); err != nil {
					t.Errorf("stopping caddy: %v", err)
				}
			})
			return g, nil
		}
		if !errors.Is(err, syscall.EADDRINUSE) && !strings.Contains(err.Error(), "address already in use") {
			break
		}
	}
	return nil, err
}

// logLines returns the log file's lines decoded, and its raw text.
func (g *jsonGateway) logLines(t *testing.T) ([]map[string]any, string) {
	t.Helper()
	raw, err := os.ReadFile(g.logFile)
	if err != nil {
		t.Fatalf("reading the log: %v", err)
	}
	var lines []map[string]any
	sc := bufio.NewScanner(strings.NewReader(string(raw)))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("log line is not JSON: %v: %s", err, sc.Text())
		}
		lines = append(lines, m)
	}
	return lines, string(raw)
}

// TestIntegrationCapabilityCaseCaddyfile: "capabilities Coding=0.9" in a
// Caddyfile is chosen for a request asking for CODING (before, the config
// kept "Coding" while the header was matched in lower case, so it answered
// 400 unknown_capability).
func TestIntegrationCapabilityCaseCaddyfile(t *testing.T) {
	general := newUpstream(t, "general", 0, false)
	coder := newUpstream(t, "coder", 0, false)
	g := startGateway(t, gatewayOptions{}, `
{{url "gw"}} {
	model_router {
		pool {{.Pool}}
		strategy greedy
		backend general {{index .Up "general"}} {
			models general-model
			capabilities Chat=0.9 coding=0.2
			max_inflight 4
		}
		backend coder {{index .Up "coder"}} {
			models coder-model
			capabilities Coding=0.9 CHAT=0.1
			max_inflight 4
		}
	}
}
`, map[string]string{"general": general.srv.URL, "coder": coder.srv.URL})

	for _, tc := range []struct{ header, want string }{
		{"CODING", "coder"},
		{"coding", "coder"},
		{"Chat", "general"},
		{"", "general"}, // auto without the header means chat
	} {
		var hdr []string
		if tc.header != "" {
			hdr = []string{capabilityHeader, tc.header}
		}
		resp, body := post(t, g.url("gw")+"/v1/chat/completions", chatBody("auto"), hdr...)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("capability %q: status %d: %s", tc.header, resp.StatusCode, body)
		}
		if got := resp.Header.Get(backendHeader); got != tc.want {
			t.Errorf("capability %q went to %q, want %q", tc.header, got, tc.want)
		}
	}
	if coder.total.Load() != 2 || general.total.Load() != 2 {
		t.Errorf("coder saw %d requests and general %d, want 2 and 2", coder.total.Load(), general.total.Load())
	}
}

// TestIntegrationCapabilityCaseJSON: the same through JSON, which has no
// parser to lower-case names: Provision does, and a name given twice in
// different cases is refused.
func TestIntegrationCapabilityCaseJSON(t *testing.T) {
	t.Run("mixed case is chosen", func(t *testing.T) {
		general := newUpstream(t, "general", 0, false)
		coder := newUpstream(t, "coder", 0, false)
		g, err := startJSONGateway(t, fmt.Sprintf(`{
			"handler": "model_router",
			"pool": "capjson%d",
			"strategy": "greedy",
			"backends": [
				{"name": "general", "url": %q, "models": [{"public": "general-model"}],
				 "capabilities": {"chat": 0.9, "coding": 0.2}, "max_inflight": 4},
				{"name": "coder", "url": %q, "models": [{"public": "coder-model"}],
				 "capabilities": {"Coding": 0.9}, "max_inflight": 4}
			]
		}`, poolSeq.Add(1), general.srv.URL, coder.srv.URL))
		if err != nil {
			t.Fatalf("loading: %v", err)
		}
		resp, body := post(t, g.base+"/v1/chat/completions", chatBody("auto"), capabilityHeader, "CODING")
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d: %s", resp.StatusCode, body)
		}
		if got := resp.Header.Get(backendHeader); got != "coder" {
			t.Errorf("CODING went to %q, want coder", got)
		}
	})
	t.Run("same name in two cases is refused", func(t *testing.T) {
		_, err := startJSONGateway(t, `{
			"handler": "model_router",
			"backends": [{"name": "b", "url": "http://127.0.0.1:9", "models": [{"public": "m"}],
				"capabilities": {"Coding": 0.9, "coding": 0.5}, "max_inflight": 1}]
		}`)
		if err == nil || !strings.Contains(err.Error(), "capability coding is listed twice") {
			t.Fatalf("loading: %v, want the duplicate capability refused", err)
		}
	})
}

// TestIntegrationAPIKeyUnsetWarns: an api_key whose placeholder expands to
// nothing is logged once at warn level, naming the backend; the key of
// another backend (set) appears in no log line at any level, not even with
// every request logged at DEBUG.
func TestIntegrationAPIKeyUnsetWarns(t *testing.T) {
	const secret = "sk-test-3c1f7a9e5b2d4k"
	t.Setenv("MR_TEST_API_KEY", secret)
	const unset = "MR_TEST_API_KEY_NEVER_SET_7d2e"
	if _, ok := os.LookupEnv(unset); ok {
		t.Fatalf("%s is set in the environment; the test needs it unset", unset)
	}
	keyed := newUpstream(t, "keyed", 0, false)
	unkeyed := newUpstream(t, "unkeyed", 0, false)
	g, err := startJSONGateway(t, fmt.Sprintf(`{
		"handler": "model_router",
		"pool": "apikey%d",
		"backends": [
			{"name": "keyed", "url": %q, "models": [{"public": "keyed-model"}], "max_inflight": 2,
			 "api_key": "{env.MR_TEST_API_KEY}"},
			{"name": "unkeyed", "url": %q, "models": [{"public": "unkeyed-model"}], "max_inflight": 2,
			 "api_key": "{env.%s}"}
		]
	}`, poolSeq.Add(1), keyed.srv.URL, unkeyed.srv.URL, unset))
	if err != nil {
		t.Fatalf("loading: %v", err)
	}
	for _, model := range []string{"keyed-model", "unkeyed-model"} {
		resp, body := post(t, g.base+"/v1/chat/completions", chatBody(model))
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: status %d: %s", model, resp.StatusCode, body)
		}
	}
	if _, heads := keyed.received(); len(heads) != 1 || heads[0].Get("Authorization") != "Bearer "+secret {
		t.Errorf("the keyed backend did not get its key")
	}
	if _, heads := unkeyed.received(); len(heads) != 1 || heads[0].Get("Authorization") != "" {
		t.Errorf("the unkeyed backend got an Authorization header")
	}

	lines, raw := g.logLines(t)
	var warnings []map[string]any
	for _, l := range lines {
		if msg, _ := l["msg"].(string); strings.Contains(msg, "api_key") {
			warnings = append(warnings, l)
		}
	}
	if len(warnings) != 1 {
		t.Fatalf("%d api_key log lines, want 1 (for backend unkeyed):\n%s", len(warnings), raw)
	}
	if w := warnings[0]; w["level"] != "warn" || w["backend"] != "unkeyed" {
		t.Errorf("api_key warning has level %v backend %v, want warn and unkeyed: %v", w["level"], w["backend"], w)
	}
	if !strings.Contains(raw, `"upstream roundtrip"`) {
		// Proves the DEBUG lines that describe upstream requests were written,
		// so the check below covers them.
		t.Errorf("no upstream request was logged at DEBUG; the log:\n%s", raw)
	}
	for _, leak := range []string{secret, "{env."} {
		if strings.Contains(raw, leak) {
			t.Errorf("the log contains %q", leak)
		}
	}
}
