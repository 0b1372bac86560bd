package caddymodule

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/modelrouter/modelrouter/engine"
)

func TestClassify(t *testing.T) {
	deep := `{"model":"m","messages":` + strings.Repeat("[", maxJSONDepth+1) + strings.Repeat("]", maxJSONDepth+1) + `}`
	tests := []struct {
		name     string
		body     string
		want     engine.Request
		wantCode string
	}{
		{"chat", `{"model":"llama","messages":[{"role":"user","content":"12345678"}]}`,
			engine.Request{Model: "llama", PromptTokens: 3}, ""}, // values "user" + "12345678" = 12 bytes; keys do not count
		{"stream and max tokens", `{"stream":true,"max_tokens":100,"model":"x"}`,
			engine.Request{Model: "x", Stream: true, MaxTokens: 100}, ""},
		{"max_completion_tokens", `{"model":"x","max_completion_tokens":7}`, engine.Request{Model: "x", MaxTokens: 7}, ""},
		{"null stream", `{"model":"x","stream":null}`, engine.Request{Model: "x"}, ""},
		{"unknown fields skipped", `{"model":"x","tools":[{"a":{"b":[1,2,{"c":null}]}}],"temperature":0.5}`, engine.Request{Model: "x"}, ""},
		{"prompt string", `{"model":"x","prompt":"abcdefgh"}`, engine.Request{Model: "x", PromptTokens: 2}, ""},
		{"escaped model key", `{"mod\u0065l":"x"}`, engine.Request{Model: "x"}, ""},
		{"missing model", `{"messages":[]}`, engine.Request{}, "missing_model"},
		{"empty model", `{"model":""}`, engine.Request{}, "missing_model"},
		{"duplicate model", `{"model":"a","model":"b"}`, engine.Request{}, "invalid_request_body"},
		{"case variant model", `{"model":"a","Model":"b"}`, engine.Request{}, "invalid_request_body"},
		{"upper case model only", `{"MODEL":"a"}`, engine.Request{}, "invalid_request_body"},
		{"model not a string", `{"model":5}`, engine.Request{}, "invalid_type"},
		{"model object", `{"model":{"x":1}}`, engine.Request{}, "invalid_type"},
		{"stream not bool", `{"model":"x","stream":"yes"}`, engine.Request{}, "invalid_type"},
		{"negative max tokens", `{"model":"x","max_tokens":-1}`, engine.Request{}, "invalid_value"},
		{"fractional max tokens", `{"model":"x","max_tokens":1.5}`, engine.Request{}, "invalid_value"},
		{"max tokens with an exponent", `{"model":"x","max_tokens":1e2}`, engine.Request{Model: "x", MaxTokens: 100}, ""},
		{"max tokens with a zero fraction", `{"model":"x","max_tokens":64.0}`, engine.Request{Model: "x", MaxTokens: 64}, ""},
		{"max tokens over int64", `{"model":"x","max_tokens":99999999999999999999999}`, engine.Request{Model: "x", MaxTokens: 1<<31 - 1}, ""},
		{"max tokens over float64", `{"model":"x","max_tokens":1e999}`, engine.Request{Model: "x", MaxTokens: 1<<31 - 1}, ""},
		{"negative max tokens with an exponent", `{"model":"x","max_tokens":-1e2}`, engine.Request{}, "invalid_value"},
		{"negative zero max tokens", `{"model":"x","max_tokens":-0}`, engine.Request{Model: "x"}, ""},
		{"max tokens string", `{"model":"x","max_tokens":"9"}`, engine.Request{}, "invalid_type"},
		{"array body", `[{"model":"x"}]`, engine.Request{}, "invalid_json"},
		{"truncated", `{"model":"x"`, engine.Request{}, "invalid_json"},
		{"trailing garbage", `{"model":"x"} {}`, engine.Request{}, "invalid_json"},
		{"empty", ``, engine.Request{}, "invalid_json"},
		{"too deep", deep, engine.Request{}, "invalid_json"},
		{"deep in unknown field", `{"model":"m","x":` + strings.Repeat("[", maxJSONDepth+1) + strings.Repeat("]", maxJSONDepth+1) + `}`, engine.Request{}, "invalid_json"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, apiErr := classify([]byte(tt.body), engine.KindChat)
			if tt.wantCode != "" {
				if apiErr == nil {
					t.Fatalf("classify(%s) succeeded, want error %s", tt.body, tt.wantCode)
				}
				if apiErr.Code != tt.wantCode || apiErr.Status != 400 {
					t.Fatalf("classify(%s) = %d %s, want 400 %s", tt.body, apiErr.Status, apiErr.Code, tt.wantCode)
				}
				return
			}
			if apiErr != nil {
				t.Fatalf("classify(%s): %v", tt.body, apiErr)
			}
			if c.req != tt.want {
				t.Fatalf("classify(%s) = %+v, want %+v", tt.body, c.req, tt.want)
			}
		})
	}
}

func TestRewriteModel(t *testing.T) {
	tests := []struct{ body, to, want string }{
		{`{"model":"a","x":1}`, "meta/B", `{"model":"meta/B","x":1}`},
		{`{"x":1, "model" :  "auto" }`, "q\"uote", `{"x":1, "model" :  "q\"uote" }`},
		{`{"mod\u0065l":"a"}`, "b", `{"mod\u0065l":"b"}`},
		{`{"model":"a\"b","stream":true}`, "c", `{"model":"c","stream":true}`},
	}
	for _, tt := range tests {
		c, apiErr := classify([]byte(tt.body), engine.KindChat)
		if apiErr != nil {
			t.Fatalf("classify(%s): %v", tt.body, apiErr)
		}
		got := string(rewriteModel([]byte(tt.body), &c, tt.to))
		if got != tt.want {
			t.Errorf("rewriteModel(%s, %q) = %s, want %s", tt.body, tt.to, got, tt.want)
		}
		var v map[string]any
		if err := json.Unmarshal([]byte(got), &v); err != nil || v["model"] != tt.to {
			t.Errorf("rewritten body %s: model = %v (err %v), want %q", got, v["model"], err, tt.to)
		}
	}
}

// FuzzClassify checks that no body makes the classifier panic, that a body it
// accepts is valid JSON, and that rewriting the model keeps the body valid and
// changes nothing but the model.
func FuzzClassify(f *testing.F) {
	for _, s := range []string{
		`{"model":"a","messages":[{"role":"user","content":"hi"}],"stream":true}`,
		`{"model":"a","model":"b"}`, `{"prompt":["x","y"],"model":"m","max_tokens":3}`,
		`[]`, `{"model":"\u00e9"}`, `{"a":[[[[{}]]]],"model":"z"}`,
	} {
		f.Add([]byte(s))
	}
	f.Add([]byte(`{"model":"m","max_tokens":1e2,"stream":false,"x":[true,null,-0.5e-3,"\u00e9\n"]}`))
	f.Add([]byte("{\"model\":\"m\"}\n\t "))
	f.Fuzz(func(t *testing.T, body []byte) {
		c, apiErr := classify(body, engine.KindChat)
		if apiErr != nil {
			if apiErr.Status != 400 {
				t.Fatalf("status %d for a bad body", apiErr.Status)
			}
			// The scanner must not be stricter than encoding/json, but for
			// its nesting limit and the top level being an object.
			if apiErr.Code == "invalid_json" && json.Valid(body) && !strings.Contains(apiErr.Message, "nested deeper") {
				var obj map[string]any
				if json.Unmarshal(body, &obj) == nil {
					t.Fatalf("rejected valid JSON object %q: %s", body, apiErr.Message)
				}
			}
			return
		}
		if !json.Valid(body) {
			t.Fatalf("accepted invalid JSON %q", body)
		}
		out := rewriteModel(body, &c, "rewritten")
		var v map[string]any
		if err := json.Unmarshal(out, &v); err != nil {
			t.Fatalf("rewritten body %q is invalid: %v", out, err)
		}
		if v["model"] != "rewritten" {
			t.Fatalf("rewritten body %q has model %v", out, v["model"])
		}
		var orig map[string]any
		_ = json.Unmarshal(body, &orig)
		delete(orig, "model")
		delete(v, "model")
		a, _ := json.Marshal(orig)
		b, _ := json.Marshal(v)
		if string(a) != string(b) {
			t.Fatalf("rewrite changed more than the model: %s vs %s", a, b)
		}
	})
}
