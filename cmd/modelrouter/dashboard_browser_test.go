package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// chromiumPath is Debian's chromium, which `make test-deps` installs.
const chromiumPath = "/usr/bin/chromium"

// screenshotEnv, when set to a path, makes TestDashboardInBrowser save its
// screenshot there too (docs/dashboard.png is made this way, after a longer
// warm-up so that the charts have some history).
const screenshotEnv = "MR_DASHBOARD_SCREENSHOT"

// dashboardConfig runs one gateway replica in front of three simulated
// backends, with the admin endpoint open to a browser (see the README:
// Caddy refuses browser navigations that carry no Origin unless "" is an
// allowed origin).
const dashboardConfig = `{
	admin 127.0.0.1:%[1]s {
		origins 127.0.0.1:%[1]s localhost:%[1]s ""
	}
	persist_config off
	metrics
}
http://127.0.0.1:%[2]s {
	model_router {
		strategy balanced
		max_wait 5s
		slo_latency 2s
		backend fast http://127.0.0.1:%[3]s {
			models llama-8b
			capabilities chat=0.7 coding=0.4
			max_inflight 2
		}
		backend big http://127.0.0.1:%[4]s {
			models llama-70b llama-8b
			capabilities chat=0.9 coding=0.6
			max_inflight 8
		}
		backend coder http://127.0.0.1:%[5]s {
			models qwen-coder
			capabilities coding=0.95 chat=0.4
			max_inflight 4
		}
	}
}
http://127.0.0.1:%[3]s {
	model_router_sim {
		name fast
		slots 2
		ttft 30ms
		per_token 4ms
	}
}
http://127.0.0.1:%[4]s {
	model_router_sim {
		name big
		slots 8
		ttft 90ms
		per_token 10ms
	}
}
http://127.0.0.1:%[5]s {
	model_router_sim {
		name coder
		slots 4
		ttft 40ms
		per_token 6ms
	}
}
`

// TestDashboardInBrowser loads the dashboard in a real headless Chromium
// against a running gateway under load, checks that every backend and its
// numbers appear, clicks a drain button and checks that the backend is
// drained (through the admin API, and on the page), and saves a screenshot.
func TestDashboardInBrowser(t *testing.T) {
	if _, err := os.Stat(chromiumPath); err != nil {
		t.Fatalf("%s is missing: `make test-deps` installs Debian's chromium (apt-get install chromium)", chromiumPath)
	}
	dir := t.TempDir()
	admin, gw := freePort(t), freePort(t)
	config := filepath.Join(dir, "Caddyfile")
	body := fmt.Sprintf(dashboardConfig, admin, gw, freePort(t), freePort(t), freePort(t))
	if err := os.WriteFile(config, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(gatewayBin, "run", "--config", config)
	cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir)
	logs := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("gateway output:\n%s", logs.String())
		}
	})
	adminURL := "http://127.0.0.1:" + admin
	gwURL := "http://127.0.0.1:" + gw
	waitFor(t, "the gateway", 30*time.Second, func() bool {
		resp, err := http.Get(gwURL + "/v1/models")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})

	// Traffic through the gateway while the page is open: plain and
	// streamed requests for every model, from a few clients, bounded in
	// time and stopped at the end of the test.
	ctx, stop := context.WithTimeout(context.Background(), 2*time.Minute)
	var wg sync.WaitGroup
	t.Cleanup(func() { stop(); wg.Wait() })
	models := []string{"llama-8b", "llama-70b", "qwen-coder"}
	for w := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				body := fmt.Sprintf(`{"model":%q,"stream":%v,"max_tokens":%d,"messages":[{"role":"user","content":"hello"}]}`,
					models[(w+i)%3], i%2 == 0, 8+(w*7+i*13)%40)
				req, _ := http.NewRequestWithContext(ctx, http.MethodPost, gwURL+"/v1/chat/completions", strings.NewReader(body))
				resp, err := fleetClient.Do(req)
				if err != nil {
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		}()
	}
	samples := 3
	shot := os.Getenv(screenshotEnv)
	if shot != "" {
		samples = 40 // charts with some history for the README
	}
	waitFor(t, fmt.Sprintf("%d history samples", samples), 2*time.Minute, func() bool {
		var h struct {
			Samples []json.RawMessage `json:"samples"`
		}
		return getJSON(adminURL+"/model_router/history", &h) == nil && len(h.Samples) >= samples
	})

	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromiumPath),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(filepath.Join(dir, "chromium")),
		chromedp.WindowSize(1400, 1250),
	)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(ctx, opts...)
	defer cancelAlloc()
	bctx, cancelBrowser := chromedp.NewContext(allocCtx)
	defer cancelBrowser()
	runCtx, cancelRun := context.WithTimeout(bctx, 90*time.Second)
	defer cancelRun()

	err := chromedp.Do(runCtx,
		chromedp.Navigate(adminURL+"/model_router/dashboard"),
		chromedp.WaitVisible(chromedp.CSS(`body[data-loaded="1"]`)),
		// Charts drawn from the history: one polyline per series.
		chromedp.WaitVisible(chromedp.CSS(`#charts .chart svg polyline`)),
	)
	if err != nil {
		t.Fatalf("loading the dashboard: %v", err)
	}
	text := func(sel string) string {
		t.Helper()
		s, err := chromedp.Run(runCtx, chromedp.Text(chromedp.CSS(sel)))
		if err != nil {
			t.Fatalf("reading %s: %v", sel, err)
		}
		return s
	}
	rows := text(`#backends tbody`)
	fastInflight := text(`tr[data-backend="fast"] td.inflight`)
	bigLatency := text(`tr[data-backend="big"] td.latency`)
	status := text(`#status`)
	png, err := chromedp.Run(runCtx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	for _, name := range []string{"fast", "big", "coder", "llama-70b", "qwen-coder"} {
		if !strings.Contains(rows, name) {
			t.Errorf("the backends table lacks %q:\n%s", name, rows)
		}
	}
	if !strings.Contains(fastInflight, " / 2") {
		t.Errorf("fast's in flight / capacity cell: %q", fastInflight)
	}
	if !strings.Contains(bigLatency, "ms") && !strings.Contains(bigLatency, "s /") {
		t.Errorf("big's latency cell shows no percentile: %q", bigLatency)
	}
	if !strings.HasPrefix(status, "updated") {
		t.Errorf("the page reports %q", status)
	}
	if err := os.WriteFile(filepath.Join(dir, "dashboard.png"), png, 0o600); err != nil {
		t.Fatal(err)
	}
	if shot != "" {
		if err := os.WriteFile(shot, png, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("screenshot saved to %s", shot)
	}

	// The drain button drains: the admin API says so, and the page shows it.
	err = chromedp.Do(runCtx,
		chromedp.Click(chromedp.CSS(`button[data-backend="fast"]`)),
		chromedp.WaitVisible(chromedp.CSS(`tr[data-backend="fast"] .badge.draining`)),
	)
	if err != nil {
		t.Fatalf("draining from the page: %v", err)
	}
	badge := text(`tr[data-backend="fast"] .badge`)
	if badge != "draining" {
		t.Errorf("fast's badge after the click: %q", badge)
	}
	var v struct {
		Backends []struct {
			Name    string `json:"name"`
			Drained bool   `json:"drained"`
		} `json:"backends"`
	}
	if err := getJSON(adminURL+"/model_router/backends", &v); err != nil {
		t.Fatal(err)
	}
	for _, b := range v.Backends {
		if b.Drained != (b.Name == "fast") {
			t.Errorf("after clicking fast's drain button, %s drained = %v", b.Name, b.Drained)
		}
	}
}

func getJSON(url string, v any) error {
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}
