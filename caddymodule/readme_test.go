package caddymodule

import (
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
)

// TestReadmeConfigBlocks adapts the README's Caddyfile blocks as a user
// would paste them, so that what the README shows (every option with its
// documented default or example value) is a config that loads. Blocks that
// elide parts with "..." get a minimal backend in their place; the
// credentials template of the Redis URL is dropped.
func TestReadmeConfigBlocks(t *testing.T) {
	data, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks := regexp.MustCompile("(?s)```caddy\n(.*?)```").FindAllStringSubmatch(string(data), -1)
	if len(blocks) < 3 {
		t.Fatalf("found %d caddy blocks in the README, want at least 3", len(blocks))
	}
	const minimal = "backend b http://127.0.0.1:9001 {\n\tmodels m\n\tmax_inflight 1\n}"
	elided := regexp.MustCompile(`(?m)^\s*(backend )?\.\.\.\s*$`)
	for i, b := range blocks {
		src := b[1]
		if !strings.HasPrefix(src, "model_router") {
			continue // global options: checked where they are used (Caddyfile.example)
		}
		src = elided.ReplaceAllString(src, minimal)
		src = strings.ReplaceAll(src, "[user:{env.REDIS_PASSWORD}@]", "")
		site := "http://127.0.0.1:8080 {\n" + src + "}\n"
		if _, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(site), map[string]any{"filename": "README.md"}); err != nil {
			t.Errorf("README caddy block %d does not adapt: %v\n%s", i+1, err, site)
		}
	}
}
