package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// freePort returns a loopback port nobody listens on right now.
func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return fmt.Sprint(l.Addr().(*net.TCPAddr).Port)
}

// gatewayBin is the binary under test, built once by TestMain.
var gatewayBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "modelrouter-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	gatewayBin = filepath.Join(dir, "modelrouter")
	if out, err := exec.Command("go", "build", "-o", gatewayBin, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "go build: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// ipv6Loopback reports whether [::1] can be bound on this machine.
func ipv6Loopback() bool {
	l, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		return false
	}
	l.Close()
	return true
}

// TestExampleRuns runs Caddyfile.example on free ports (the
// file's own ports 8080, 2019 and 9001-9003 are only renamed) and sends the
// README's requests: a routed answer, a stream and a model "auto" request;
// then the gateway answers under any host name, on [::1] too, and outside
// /v1/ with a JSON 404.
func TestExampleRuns(t *testing.T) {
	dir := t.TempDir()
	bin := gatewayBin
	example, err := os.ReadFile("../../Caddyfile.example")
	if err != nil {
		t.Fatal(err)
	}
	gateway, admin := freePort(t), freePort(t)
	replacer := strings.NewReplacer(
		":8080", ":"+gateway,
		":2019", ":"+admin,
		"127.0.0.1:9001", "127.0.0.1:"+freePort(t),
		"127.0.0.1:9002", "127.0.0.1:"+freePort(t),
		"127.0.0.1:9003", "127.0.0.1:"+freePort(t),
	)
	text := replacer.Replace(string(example))
	hasIPv6 := ipv6Loopback()
	if !hasIPv6 {
		// The example binds [::1] too; where it cannot be bound, run the
		// rest of the example on 127.0.0.1 alone.
		bind := "bind 127.0.0.1 [::1]"
		if !strings.Contains(text, bind) {
			t.Fatalf("Caddyfile.example no longer has %q", bind)
		}
		text = strings.Replace(text, bind, "bind 127.0.0.1", 1)
	}
	config := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(config, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "run", "--config", config)
	cmd.Env = append(os.Environ(), "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir, "HOME="+dir)
	var logs strings.Builder
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cancel()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("gateway output:\n%s", logs.String())
		}
	}()

	base := "http://127.0.0.1:" + gateway
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get(base + "/v1/models")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the example did not come up: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}

	post := func(body string, header ...string) *http.Response {
		req, _ := http.NewRequest("POST", base+"/v1/chat/completions", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		for i := 0; i+1 < len(header); i += 2 {
			req.Header.Set(header[i], header[i+1])
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}

	resp := post(`{"model":"llama-8b","messages":[{"role":"user","content":"Hello"}]}`)
	var answer struct {
		Model   string `json:"model"`
		Choices []struct {
			Message struct{ Content string } `json:"message"`
		} `json:"choices"`
	}
	err = json.NewDecoder(resp.Body).Decode(&answer)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 || len(answer.Choices) == 0 {
		t.Fatalf("plain request: status %d, err %v, answer %+v", resp.StatusCode, err, answer)
	}
	backend := resp.Header.Get("X-Model-Router-Backend")
	if backend != "fast" && backend != "big" {
		t.Fatalf("llama-8b went to %q, want fast or big", backend)
	}
	if answer.Model != "meta-llama/Llama-3.1-8B-Instruct" {
		t.Fatalf("upstream saw model %q, want the upstream name", answer.Model)
	}

	resp = post(`{"model":"llama-8b","stream":true,"messages":[{"role":"user","content":"Hello"}]}`)
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/event-stream") {
		t.Fatalf("stream Content-Type %q", ct)
	}
	events, done := 0, false
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "data: [DONE]" {
			done = true
		} else if strings.HasPrefix(line, "data: ") {
			events++
		}
	}
	resp.Body.Close()
	if events < 2 || !done {
		t.Fatalf("stream: %d events, [DONE] seen %v", events, done)
	}

	resp = post(`{"model":"auto","messages":[{"role":"user","content":"Write a sort"}]}`, "X-Model-Router-Capability", "coding")
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("X-Model-Router-Backend") != "coder" {
		t.Fatalf("auto/coding: status %d backend %q, want 200 from coder", resp.StatusCode, resp.Header.Get("X-Model-Router-Backend"))
	}

	// Any host name is the gateway: with another Host (a name in /etc/hosts,
	// a proxy's) the answer used to be Caddy's empty 200, which the OpenAI
	// SDKs read as an empty result.
	models := func(t *testing.T, url, host string) {
		t.Helper()
		req, _ := http.NewRequest("GET", url+"/v1/models", nil)
		if host != "" {
			req.Host = host
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var list struct {
			Data []struct{ ID string } `json:"data"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&list); err != nil || resp.StatusCode != 200 || len(list.Data) != 3 {
			t.Fatalf("GET /v1/models (Host %q): status %d, err %v, models %+v", req.Host, resp.StatusCode, err, list.Data)
		}
	}
	t.Run("another host name", func(t *testing.T) {
		models(t, base, "other.example")
		models(t, base, "other.example:"+gateway)
		req, _ := http.NewRequest("POST", base+"/v1/chat/completions",
			strings.NewReader(`{"model":"qwen-coder","messages":[{"role":"user","content":"Hello"}]}`))
		req.Host = "other.example"
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 || resp.Header.Get("X-Model-Router-Backend") != "coder" {
			t.Fatalf("chat with Host other.example: status %d backend %q", resp.StatusCode, resp.Header.Get("X-Model-Router-Backend"))
		}
	})
	t.Run("IPv6 loopback", func(t *testing.T) {
		if !hasIPv6 {
			t.Skip("[::1] cannot be bound on this machine; the example ran on 127.0.0.1 only")
		}
		models(t, "http://[::1]:"+gateway, "")
	})
	t.Run("outside /v1/ is a JSON 404", func(t *testing.T) {
		for _, path := range []string{"/", "/health", "/v1"} {
			resp, err := http.Get(base + path)
			if err != nil {
				t.Fatal(err)
			}
			var body struct {
				Error struct {
					Message, Type, Code string
				} `json:"error"`
			}
			err = json.NewDecoder(resp.Body).Decode(&body)
			resp.Body.Close()
			if resp.StatusCode != 404 || err != nil || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
				t.Fatalf("GET %s: status %d, Content-Type %q, decoding: %v", path, resp.StatusCode, resp.Header.Get("Content-Type"), err)
			}
			if body.Error.Code != "unknown_url" || !strings.Contains(body.Error.Message, "/v1/") {
				t.Errorf("GET %s: error %+v, want code unknown_url and a message naming /v1/", path, body.Error)
			}
		}
	})
	t.Run("dashboard opens by its typed URL", func(t *testing.T) {
		// What a browser sends for a typed URL: fetch metadata, no Origin
		// or Referer. Caddy's admin refuses that unless the example allows
		// the empty origin.
		req, _ := http.NewRequest("GET", "http://localhost:"+admin+"/model_router/dashboard", nil)
		req.Header.Set("Sec-Fetch-Mode", "navigate")
		req.Header.Set("Sec-Fetch-Site", "none")
		req.Header.Set("Sec-Fetch-Dest", "document")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		page, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(page), "<html") {
			t.Fatalf("GET dashboard: status %d: %.200s", resp.StatusCode, page)
		}
	})
}
