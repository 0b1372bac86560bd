package sim

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func TestUnmarshalCaddyfile(t *testing.T) {
	for _, tc := range []struct {
		name, input string
		want        string // the handler as JSON
	}{
		{"bare", `model_router_sim`, `{}`},
		{"empty block", `model_router_sim {
		}`, `{}`},
		{"everything", `model_router_sim {
			name fast
			slots 2
			ttft 50ms
			per_token 5ms
			prefill_per_token 100us
			tokens 16
			max_queue 1000
			fail_status 500
		}`, `{"name":"fast","slots":2,"ttft":50000000,"per_token":5000000,"prefill_per_token":100000,"tokens":16,"max_queue":1000,"fail_status":500}`},
		{"zero delays and no queue", `model_router_sim {
			ttft 0
			per_token 0s
			max_queue 0
		}`, `{"ttft":0,"per_token":0,"max_queue":0}`},
		{"day durations", `model_router_sim {
			ttft 1d
		}`, `{"ttft":86400000000000}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var h Handler
			if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input)); err != nil {
				t.Fatalf("UnmarshalCaddyfile: %v", err)
			}
			got, err := json.Marshal(h)
			if err != nil {
				t.Fatal(err)
			}
			if !jsonEqual(t, got, []byte(tc.want)) {
				t.Errorf("got %s, want %s", got, tc.want)
			}
		})
	}
}

func TestUnmarshalCaddyfileRejects(t *testing.T) {
	// Each line becomes the only line of a block, except the first two.
	inputs := []string{
		"model_router_sim fast",
		"model_router_sim {\n\tname a\n\tname b\n}",
	}
	for _, line := range []string{
		"name",
		"name a b",
		"bogus 1",
		"slots 0",
		"slots -1",
		"slots two",
		"tokens 0",
		"tokens 1.5",
		"ttft fast",
		"ttft -5ms",
		"per_token 5",
		"prefill_per_token -1us",
		"prefill_per_token slow",
		"prefill_per_token",
		"max_queue -1",
		"fail_status 200",
		"fail_status 600",
		"fail_status oops",
	} {
		inputs = append(inputs, "model_router_sim {\n\t"+line+"\n}")
	}
	for _, input := range inputs {
		var h Handler
		if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(input)); err == nil {
			t.Errorf("accepted %q", input)
		}
	}
}

// TestCaddyfileAdapt adapts each testdata/*.caddyfiletest (a Caddyfile, a
// line of dashes, the JSON it must become) through the real Caddyfile
// adapter, which also checks that the directive needs no order line.
func TestCaddyfileAdapt(t *testing.T) {
	files, err := filepath.Glob("testdata/*.caddyfiletest")
	if err != nil || len(files) == 0 {
		t.Fatalf("no fixtures (%v)", err)
	}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			raw, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			input, want, ok := strings.Cut(string(raw), "\n----------\n")
			if !ok {
				t.Fatal("fixture lacks the ---------- separator")
			}
			got, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(input+"\n"), nil)
			if err != nil {
				t.Fatalf("adapting: %v", err)
			}
			if len(warnings) > 0 {
				t.Errorf("warnings: %v", warnings)
			}
			if !jsonEqual(t, got, []byte(want)) {
				var pretty bytes.Buffer
				_ = json.Indent(&pretty, got, "", "\t")
				t.Errorf("adapted to\n%s\nwant\n%s", pretty.String(), want)
			}
		})
	}
}

func jsonEqual(t *testing.T, a, b []byte) bool {
	t.Helper()
	var va, vb any
	if err := json.Unmarshal(a, &va); err != nil {
		t.Fatalf("decoding %s: %v", a, err)
	}
	if err := json.Unmarshal(b, &vb); err != nil {
		t.Fatalf("decoding %s: %v", b, err)
	}
	ja, _ := json.Marshal(va)
	jb, _ := json.Marshal(vb)
	return bytes.Equal(ja, jb)
}
