// Package deploy holds ready-made monitoring and a runnable fleet example
// for Model Router; its tests check them against the code.
package deploy

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/modelrouter/modelrouter/caddymodule"
	_ "github.com/modelrouter/modelrouter/caddymodule/sim"
)

var metricRE = regexp.MustCompile(`model_router_[a-z_]+`)

// exportedMetrics reads the metric names the router registers from its
// source: Name: "x" in a collector with the model_router namespace, and
// namespace+"_x" descriptors.
func exportedMetrics(t *testing.T) map[string]bool {
	t.Helper()
	names := map[string]bool{}
	files, _ := filepath.Glob("../caddymodule/*.go")
	nameRE := regexp.MustCompile(`Name: +"([a-z_]+)"`)
	descRE := regexp.MustCompile(`namespace\+"(_[a-z_]+)"`)
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range nameRE.FindAllStringSubmatch(string(src), -1) {
			names["model_router_"+m[1]] = true
		}
		for _, m := range descRE.FindAllStringSubmatch(string(src), -1) {
			names["model_router"+m[1]] = true
		}
	}
	if len(names) < 10 {
		t.Fatalf("found only %d metric names in the source: %v", len(names), names)
	}
	return names
}

// checkNames fails for every model_router_* series in text that the router
// does not export (histogram suffixes allowed).
func checkNames(t *testing.T, file string, text string, exported map[string]bool) {
	t.Helper()
	seen := map[string]bool{}
	for _, n := range metricRE.FindAllString(text, -1) {
		base := n
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			if b, ok := strings.CutSuffix(n, suffix); ok && exported[b] {
				base = b
			}
		}
		if !exported[base] && !seen[n] {
			seen[n] = true
			t.Errorf("%s uses %s, which the router does not export", file, n)
		}
	}
}

// TestGrafanaDashboard: valid JSON, every panel has a query, and every
// series it queries exists.
func TestGrafanaDashboard(t *testing.T) {
	raw, err := os.ReadFile("grafana/model-router.json")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Title  string `json:"title"`
		Panels []struct {
			Type    string `json:"type"`
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatalf("not JSON: %v", err)
	}
	graphs := 0
	for _, p := range d.Panels {
		if p.Type == "row" {
			continue
		}
		graphs++
		if len(p.Targets) == 0 || p.Targets[0].Expr == "" {
			t.Errorf("panel %q has no query", p.Title)
		}
	}
	if graphs < 8 {
		t.Errorf("only %d panels", graphs)
	}
	checkNames(t, "grafana/model-router.json", string(raw), exportedMetrics(t))
}

// TestPrometheusRules: promtool checks the rules and runs their unit tests
// (Debian's prometheus package; `make test-deps` installs it); the series
// they use exist either way.
func TestPrometheusRules(t *testing.T) {
	raw, err := os.ReadFile("prometheus/alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	checkNames(t, "prometheus/alerts.yml", string(raw), exportedMetrics(t))
	// Every alert the router evaluates is relayed (ModelRouterAlert) and
	// has a raw-series counterpart, by name.
	for _, rule := range []string{"ModelRouterAlert", "ModelRouterRedisDegraded", "ModelRouterBackendErrorRate",
		"ModelRouterLatencyP99OverSLO", "ModelRouterTTFTP99OverSLO", "ModelRouterCapacityRejections", "ModelRouterQueueWait"} {
		if !strings.Contains(string(raw), "alert: "+rule+"\n") {
			t.Errorf("alerts.yml lacks %s", rule)
		}
	}
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool not installed (Debian package prometheus; `make test-deps` installs it): rules not checked by promtool")
	}
	if out, err := exec.Command(promtool, "check", "rules", "prometheus/alerts.yml").CombinedOutput(); err != nil {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}
	cmd := exec.Command(promtool, "test", "rules", "alerts_test.yml")
	cmd.Dir = "prometheus"
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("promtool test rules: %v\n%s", err, out)
	}
}

// TestFleetConfigsAdapt: the fleet example's Caddyfiles adapt with the
// environment run.sh gives them, and run.sh is valid shell.
func TestFleetConfigsAdapt(t *testing.T) {
	for k, v := range map[string]string{"MR_PORT": "8081", "MR_ADMIN": "2021", "MR_REDIS": "redis://127.0.0.1:6390/0",
		"MR_SIM_FAST": "9101", "MR_SIM_BIG": "9102", "MR_SIM_CODER": "9103"} {
		t.Setenv(k, v)
	}
	files, _ := filepath.Glob("fleet/*.Caddyfile")
	sort.Strings(files)
	if len(files) != 2 {
		t.Fatalf("fleet configs: %v", files)
	}
	for _, f := range files {
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		out, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt(src, map[string]any{"filename": f})
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		for _, w := range warnings {
			t.Errorf("%s: %s", f, w.String())
		}
		if strings.Contains(string(out), "{$") {
			t.Errorf("%s: an environment placeholder was left unexpanded", f)
		}
	}
	if out, err := exec.Command("bash", "-n", "fleet/run.sh").CombinedOutput(); err != nil {
		t.Fatalf("run.sh: %v\n%s", err, out)
	}
}
