package caddymodule

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"

	"github.com/modelrouter/modelrouter/engine"
)

// TestAdaptFixtures adapts each testdata/adapt/*.caddyfile and compares the
// JSON with the .json beside it (regenerate with `caddy adapt --pretty`).
func TestAdaptFixtures(t *testing.T) {
	files, err := filepath.Glob("testdata/adapt/*.caddyfile")
	if err != nil || len(files) == 0 {
		t.Fatalf("no fixtures: %v", err)
	}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			input, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			want, err := os.ReadFile(strings.TrimSuffix(file, ".caddyfile") + ".json")
			if err != nil {
				t.Fatal(err)
			}
			got, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt(input, map[string]any{"filename": file})
			if err != nil {
				t.Fatalf("adapting: %v", err)
			}
			for _, w := range warnings {
				t.Errorf("warning: %s", w.String())
			}
			var g, w bytes.Buffer
			if err := json.Indent(&g, got, "", "\t"); err != nil {
				t.Fatal(err)
			}
			if err := json.Compact(&w, want); err != nil {
				t.Fatal(err)
			}
			var wi bytes.Buffer
			_ = json.Indent(&wi, w.Bytes(), "", "\t")
			if g.String() != wi.String() {
				t.Errorf("adapted JSON differs\n--- got\n%s\n--- want\n%s", g.String(), wi.String())
			}
		})
	}
}

// TestUnmarshalCaddyfileErrors is the table of bad inputs: each must fail, and
// the error must name the line at fault.
func TestUnmarshalCaddyfileErrors(t *testing.T) {
	const backend = "backend a http://127.0.0.1:1 {\n\t\tmodels m\n\t\tmax_inflight 1\n\t}"
	tests := []struct {
		name, body, wantErr string
		line                int
	}{
		{"unknown option", "bogus 1\n" + backend, `unknown model_router option "bogus"`, 2},
		{"bad number", "max_queue lots\n" + backend, "not a whole number", 2},
		{"negative queue", "max_queue -1\n" + backend, "at least 1", 2},
		{"zero queue", "max_queue 0\n" + backend, "at least 1", 2},
		{"bad duration", "max_wait soon\n" + backend, "positive duration", 2},
		{"zero duration", "max_wait 0s\n" + backend, "positive duration", 2},
		{"bad size", "max_body huge\n" + backend, "not a size", 2},
		{"bad full status", "full_status 500\n" + backend, "503 or 429", 2},
		{"option twice", "strategy greedy\nstrategy balanced\n" + backend, "set twice", 3},
		{"option without value", "strategy\n" + backend, "wrong argument count", 2},
		{"bad pool", "pool {a}\n" + backend, "pool", 2},
		{"no backends", "strategy greedy", "at least one backend", 0},
		{"backend without url", "backend a {\n\t\tmodels m\n\t\tmax_inflight 1\n\t}", "needs a name and a URL", 2},
		{"bad backend name", "backend a/b http://127.0.0.1:1 {\n\t\tmodels m\n\t\tmax_inflight 1\n\t}", "backend name", 2},
		{"duplicate backend", backend + "\n" + backend, "defined twice", 0},
		{"max_inflight 0", "backend a http://127.0.0.1:1 {\n\t\tmodels m\n\t\tmax_inflight 0\n\t}", "at least 1", 4},
		{"max_inflight missing", "backend a http://127.0.0.1:1 {\n\t\tmodels m\n\t}", "max_inflight is required", 0},
		{"models missing", "backend a http://127.0.0.1:1 {\n\t\tmax_inflight 1\n\t}", "models is required", 0},
		{"score above 1", "backend a http://127.0.0.1:1 {\n\t\tmodels m\n\t\tcapabilities chat=1.5\n\t\tmax_inflight 1\n\t}", "in [0,1]", 4},
		{"negative score", "backend a http://127.0.0.1:1 {\n\t\tmodels m\n\t\tcapabilities chat=-0.1\n\t\tmax_inflight 1\n\t}", "in [0,1]", 4},
		{"score not a number", "backend a http://127.0.0.1:1 {\n\t\tmodels m\n\t\tcapabilities chat=high\n\t\tmax_inflight 1\n\t}", "in [0,1]", 4},
		{"capability without score", "backend a http://127.0.0.1:1 {\n\t\tmodels m\n\t\tcapabilities chat\n\t\tmax_inflight 1\n\t}", "<name>=<score>", 4},
		{"duplicate capability", "backend a http://127.0.0.1:1 {\n\t\tmodels m\n\t\tcapabilities chat=1 chat=0.5\n\t\tmax_inflight 1\n\t}", "listed twice", 4},
		{"duplicate model", "backend a http://127.0.0.1:1 {\n\t\tmodels m m=n\n\t\tmax_inflight 1\n\t}", "listed twice", 3},
		{"empty upstream name", "backend a http://127.0.0.1:1 {\n\t\tmodels m=\n\t\tmax_inflight 1\n\t}", "<public>=<upstream>", 3},
		{"auto as a model", "backend a http://127.0.0.1:1 {\n\t\tmodels auto\n\t\tmax_inflight 1\n\t}", "not allowed", 3},
		{"unknown backend option", "backend a http://127.0.0.1:1 {\n\t\tmodels m\n\t\tmax_inflight 1\n\t\tcolour blue\n\t}", `unknown option "colour"`, 5},
		{"bad url scheme", "backend a ftp://127.0.0.1:1 {\n\t\tmodels m\n\t\tmax_inflight 1\n\t}", "http:// or https://", 2},
		{"url with query", "backend a http://127.0.0.1:1/?x=1 {\n\t\tmodels m\n\t\tmax_inflight 1\n\t}", "query", 2},
		{"port above 65535", "backend a http://127.0.0.1:70000 {\n\t\tmodels m\n\t\tmax_inflight 1\n\t}", `port "70000" must be a number from 1 to 65535`, 2},
		{"port 0", "backend a http://127.0.0.1:0 {\n\t\tmodels m\n\t\tmax_inflight 1\n\t}", `port "0" must be a number from 1 to 65535`, 2},
		{"empty port", "backend a http://127.0.0.1: {\n\t\tmodels m\n\t\tmax_inflight 1\n\t}", `port "" must be a number from 1 to 65535`, 2},
		{"port not a number", "backend a http://127.0.0.1:http {\n\t\tmodels m\n\t\tmax_inflight 1\n\t}", "invalid port", 2},
		{"url without host", "backend a http://:9001 {\n\t\tmodels m\n\t\tmax_inflight 1\n\t}", "names no host", 2},
		{"url ending in /v1", "backend a http://127.0.0.1:9001/v1/ {\n\t\tmodels m\n\t\tmax_inflight 1\n\t}", "ends in /v1", 2},
		{"unknown strategy", "strategy quickest\n" + backend, `unknown strategy "quickest" (valid: ` + strings.Join(engine.StrategyNames(), ", ") + ")", 2},
		{"full_status 0", "full_status 0\n" + backend, "503 or 429", 2},
		{"capability twice in two cases", "backend a http://127.0.0.1:1 {\n\t\tmodels m\n\t\tcapabilities Coding=0.9 coding=0.5\n\t\tmax_inflight 1\n\t}", "capability coding is listed twice", 4},
		{"bad capability name", "backend a http://127.0.0.1:1 {\n\t\tmodels m\n\t\tcapabilities co/ding=0.5\n\t\tmax_inflight 1\n\t}", "capability name", 4},
		{"weight 0", "backend a http://127.0.0.1:1 {\n\t\tmodels m\n\t\tmax_inflight 1\n\t\tweight 0\n\t}", "weight must be greater than 0", 5},
		{"negative cost", "backend a http://127.0.0.1:1 {\n\t\tmodels m\n\t\tmax_inflight 1\n\t\tcost -1\n\t}", "non-negative", 5},
		{"bad context", "backend a http://127.0.0.1:1 {\n\t\tmodels m\n\t\tmax_inflight 1\n\t\tcontext big\n\t}", "whole number", 5},
		{"argument after directive", "", "wrong argument count", 1},
		{"redis unknown option", "redis redis://127.0.0.1:6379 {\n\t\tcolour blue\n\t}\n" + backend, `redis: unknown option "colour"`, 3},
		{"redis bad mode", "redis redis://127.0.0.1:6379 {\n\t\ton_redis_down panic\n\t}\n" + backend, "unknown on_redis_down mode", 3},
		{"redis heartbeat not under lease", "redis redis://127.0.0.1:6379 {\n\t\tlease 1s\n\t\theartbeat 2s\n\t}\n" + backend, "shorter than the lease", 0},
		{"redis nothing to reach", "redis {\n\t\tlease 1s\n\t}\n" + backend, "needs a URL", 0},
		{"redis cluster and sentinel", "redis {\n\t\tcluster 127.0.0.1:7000\n\t\tsentinel m 127.0.0.1:26379\n\t}\n" + backend, "either cluster or sentinel", 0},
		{"redis bad url", "redis http://127.0.0.1:6379\n" + backend, "redis", 2},
		{"redis bad prefix", "redis redis://127.0.0.1:6379 {\n\t\tkey_prefix a:b\n\t}\n" + backend, "key_prefix", 3},
		{"redis twice in block", "redis redis://127.0.0.1:6379 {\n\t\ttimeout 1s\n\t\ttimeout 2s\n\t}\n" + backend, "set twice", 4},
		{"redis sentinel without addrs", "redis {\n\t\tsentinel m\n\t}\n" + backend, "at least one sentinel", 3},
		{"redis master_name without sentinels", "redis {\n\t\tmaster_name m\n\t}\n" + backend, "sentinel", 0},
		{"redis both sentinel forms", "redis {\n\t\tsentinel m 127.0.0.1:26379\n\t\tmaster_name m\n\t}\n" + backend, "not both", 0},
		{"alerts unknown option", "alerts {\n\t\tcolour blue\n\t}\n" + backend, `alerts: unknown option "colour"`, 3},
		{"alerts argument", "alerts now {\n\t}\n" + backend, "wrong argument count", 2},
		{"alerts bad duration", "alerts {\n\t\tfire_after soon\n\t}\n" + backend, "positive duration", 3},
		{"alerts error rate over 1", "alerts {\n\t\terror_rate 1.5\n\t}\n" + backend, "share in (0,1]", 3},
		{"alerts error rate 0", "alerts {\n\t\terror_rate 0\n\t}\n" + backend, "share in (0,1]", 3},
		{"alerts min_attempts 0", "alerts {\n\t\tmin_attempts 0\n\t}\n" + backend, "at least 1", 3},
		{"alerts option twice", "alerts {\n\t\tinterval 1s\n\t\tinterval 2s\n\t}\n" + backend, "set twice", 4},
		{"alerts twice", "alerts {\n\t}\nalerts {\n\t}\n" + backend, "set twice", 4},
		{"webhook not a URL", "alert_webhook example.com/hook\n" + backend, "absolute http:// or https:// URL", 2},
		{"webhook bad scheme", "alert_webhook ftp://example.com/hook\n" + backend, "absolute http:// or https:// URL", 2},
		{"webhook without value", "alert_webhook\n" + backend, "wrong argument count", 2},
		{"priority class name", "priorities high no/rmal\n" + backend, "priority class \"no/rmal\"", 2},
		{"priority class twice", "priorities high low HIGH\n" + backend, "priority class HIGH is listed twice", 2},
		{"priorities without classes", "priorities\n" + backend, "wrong argument count", 2},
		{"default priority not a class", "priorities high low\n\tdefault_priority normal\n" + backend, `default_priority "normal" is not one of the priorities`, 3},
		{"default priority before the classes", "default_priority urgent\n\tpriorities high low\n" + backend, `default_priority "urgent" is not one of the priorities`, 2},
		{"default priority without classes", "default_priority high\n" + backend, `default_priority "high" is not one of the priorities`, 2},
		{"sheddable not a class", "priorities high low\n\tsheddable spare\n" + backend, `sheddable class "spare" is not one of the priorities`, 3},
		{"priority header not a name", "priority_header X:Priority\n" + backend, "not a header name", 2},
		{"priority aging not a duration", "priority_aging later\n" + backend, "positive duration", 2},
		{"batch window without optimal", "strategy greedy\n\tbatch_window 5ms\n" + backend, `batch_window applies to strategy optimal only (strategy is "greedy")`, 3},
		{"batch window with the default strategy", "batch_window 5ms\n" + backend, `(strategy is "balanced")`, 2},
		{"batch window not a duration", "strategy optimal\n\tbatch_window soon\n" + backend, "duration of 0 or more", 3},
		{"batch window negative", "strategy optimal\n\tbatch_window -1ms\n" + backend, "duration of 0 or more", 3},
		{"assign aging without optimal", "strategy fastest\n\tassign_aging 2s\n" + backend, `assign_aging applies to strategy optimal only (strategy is "fastest")`, 3},
		{"batch window not below max_wait", "strategy optimal\n\tmax_wait 1s\n\tbatch_window 1s\n" + backend, "batch_window 1s must be shorter than max_wait 1s", 4},
		{"batch window over the default max_wait", "strategy optimal\n\tbatch_window 1h\n" + backend, "shorter than max_wait 2s", 3},
		{"assign aging zero", "strategy optimal\n\tassign_aging 0\n" + backend, "positive duration", 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			input := "model_router {\n\t" + tt.body + "\n}"
			if tt.name == "argument after directive" {
				input = "model_router extra {\n}"
			}
			d := caddyfile.NewTestDispenser(input)
			err := new(Handler).UnmarshalCaddyfile(d)
			if err == nil {
				t.Fatalf("accepted:\n%s", input)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %q does not say %q", err, tt.wantErr)
			}
			if tt.line > 0 && !strings.Contains(err.Error(), "Testfile:"+strconv.Itoa(tt.line)) {
				t.Fatalf("error %q does not name line %d", err, tt.line)
			}
			if tt.line == 0 && !strings.Contains(err.Error(), "Testfile:") {
				t.Fatalf("error %q names no line", err)
			}
		})
	}
}

func TestUnmarshalCaddyfile(t *testing.T) {
	d := caddyfile.NewTestDispenser(`model_router {
		strategy p2c
		max_body 2KB
		retries 0
		backend a http://127.0.0.1:1 {
			models x=y z
			capabilities chat=0.5 Coding=1
			max_inflight 3
		}
	}`)
	var h Handler
	if err := h.UnmarshalCaddyfile(d); err != nil {
		t.Fatal(err)
	}
	// retries 0 means none, which JSON spells -1 (0 there is the default).
	if h.Strategy != "p2c" || h.MaxBody != 2000 || h.Retries != -1 || len(h.Backends) != 1 {
		t.Fatalf("parsed %+v", h)
	}
	b := h.Backends[0]
	// Capability names are stored in lower case, as requests are matched.
	if b.MaxInflight != 3 || len(b.Models) != 2 || b.Models[0] != (ModelName{"x", "y"}) || b.Models[1] != (ModelName{"z", ""}) ||
		len(b.Capabilities) != 2 || b.Capabilities["chat"] != 0.5 || b.Capabilities["coding"] != 1 {
		t.Fatalf("parsed backend %+v", b)
	}
}

// TestValidateJSON is the table of bad JSON configs: the same rules as the
// Caddyfile's (one check* helper each), applied when Provision validates, here
// in a real Caddy that must refuse to load each of them.
func TestValidateJSON(t *testing.T) {
	const models = `"models": [{"public": "m"}], "max_inflight": 1`
	backend := func(fields string) string {
		return `{"handler": "model_router", "backends": [{"name": "b", ` + fields + `}]}`
	}
	ok := backend(`"url": "http://127.0.0.1:9001", ` + models)
	tests := []struct{ name, config, wantErr string }{
		{"unknown strategy", strings.Replace(ok, "{", `{"strategy": "quickest", `, 1),
			`unknown strategy "quickest" (valid: ` + strings.Join(engine.StrategyNames(), ", ") + ")"},
		{"port above 65535", backend(`"url": "http://127.0.0.1:65536", ` + models), `port "65536" must be a number from 1 to 65535`},
		{"port 0", backend(`"url": "http://127.0.0.1:0", ` + models), `port "0" must be a number from 1 to 65535`},
		{"port not a number", backend(`"url": "http://127.0.0.1:x", ` + models), "invalid port"},
		{"url without host", backend(`"url": "http://:9001", ` + models), "names no host"},
		{"url ending in /v1", backend(`"url": "https://api.example.com/v1", ` + models), "ends in /v1"},
		{"capability in two cases", backend(`"url": "http://127.0.0.1:9001", "capabilities": {"Coding": 0.9, "coding": 0.5}, ` + models), "capability coding is listed twice"},
		{"capability score above 1", backend(`"url": "http://127.0.0.1:9001", "capabilities": {"chat": 1.5}, ` + models), "in [0,1]"},
		{"negative dial_timeout", strings.Replace(ok, "{", `{"dial_timeout": -1, `, 1), "dial_timeout must not be negative"},
		{"negative stream_idle_timeout", strings.Replace(ok, "{", `{"stream_idle_timeout": -1, `, 1), "stream_idle_timeout must not be negative"},
		{"negative fail_cooldown", strings.Replace(ok, "{", `{"fail_cooldown": -1, `, 1), "fail_cooldown must not be negative"},
		{"retries below -1", strings.Replace(ok, "{", `{"retries": -2, `, 1), "retries must be -1"},
		{"negative max_fails", strings.Replace(ok, "{", `{"max_fails": -1, `, 1), "max_fails must not be negative"},
		{"full_status 500", strings.Replace(ok, "{", `{"full_status": 500, `, 1), "503 or 429"},
		{"auto as a model", backend(`"url": "http://127.0.0.1:9001", "models": [{"public": "auto"}], "max_inflight": 1`), "not allowed"},
		{"default priority not a class", strings.Replace(ok, "{", `{"priorities": ["high", "low"], "default_priority": "normal", `, 1), `default_priority "normal" is not one of the priorities`},
		{"sheddable not a class", strings.Replace(ok, "{", `{"sheddable": ["spare"], `, 1), `sheddable class "spare" is not one of the priorities`},
		{"priority class twice", strings.Replace(ok, "{", `{"priorities": ["high", "High"], `, 1), "listed twice"},
		{"negative priority_aging", strings.Replace(ok, "{", `{"priority_aging": -1, `, 1), "priority_aging must not be negative"},
		{"bad priority_header", strings.Replace(ok, "{", `{"priority_header": "X Priority", `, 1), "not a header name"},
		{"batch_window without optimal", strings.Replace(ok, "{", `{"batch_window": 5000000, `, 1), "batch_window applies to strategy optimal only"},
		{"negative batch_window", strings.Replace(ok, "{", `{"strategy": "optimal", "batch_window": -1, `, 1), "batch_window must not be negative"},
		{"assign_aging without optimal", strings.Replace(ok, "{", `{"assign_aging": 2000000000, `, 1), "assign_aging applies to strategy optimal only"},
		{"batch_window not below max_wait", strings.Replace(ok, "{", `{"strategy": "optimal", "batch_window": 3600000000000, `, 1), "must be shorter than max_wait 2s"},
		{"negative assign_aging", strings.Replace(ok, "{", `{"strategy": "optimal", "assign_aging": -1, `, 1), "assign_aging must not be negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := startJSONGateway(t, tt.config)
			if err == nil {
				t.Fatalf("accepted: %s", tt.config)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %q does not say %q", err, tt.wantErr)
			}
		})
	}
}
