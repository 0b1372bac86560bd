package caddymodule

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/modelrouter/modelrouter/loadstate"
)

// streamCaddyfile is a gateway in front of a sim that takes long enough per
// token that a buffered stream would be told apart from a flushed one.
const streamCaddyfile = `
{{url "gw"}} {
	model_router {
		pool {{.Pool}}
		backend s1 {{url "sim1"}} {
			models gpt-test=upstream-test
			capabilities chat=0.8
			max_inflight 4
		}
	}
}

{{url "sim1"}} {
	model_router_sim {
		name {{.Pool}}-s1
		slots 4
		ttft 30ms
		per_token 60ms
		tokens 6
	}
}
`

// openaiClient is the official OpenAI Go client pointed at the gateway, with
// the client's own retries off so that what the gateway does is what we see.
func openaiClient(g *gateway) openai.Client {
	return openai.NewClient(
		option.WithBaseURL(g.url("gw")+"/v1/"),
		option.WithAPIKey("sk-test-not-forwarded"),
		option.WithMaxRetries(0),
		option.WithRequestTimeout(30*time.Second),
	)
}

func chatParams(model string) openai.ChatCompletionNewParams {
	return openai.ChatCompletionNewParams{
		Model:    model,
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Tell me something.")},
	}
}

func TestIntegrationStreamingOpenAIClient(t *testing.T) {
	g := startGateway(t, gatewayOptions{}, streamCaddyfile, nil)
	client := openaiClient(g)
	simName := g.pool + "-s1"
	ttftBefore := metricValue(t, theMetrics().ttft.WithLabelValues("s1").(prometheus.Metric))

	var resp *http.Response
	start := time.Now()
	stream := client.Chat.Completions.NewStreaming(context.Background(), chatParams("gpt-test"), option.WithResponseInto(&resp))
	var acc openai.ChatCompletionAccumulator
	var chunks int
	var first, last time.Duration
	for stream.Next() {
		chunk := stream.Current()
		if !acc.AddChunk(chunk) {
			t.Fatalf("chunk %d did not accumulate", chunks)
		}
		if chunk.Model != "upstream-test" {
			t.Errorf("chunk model %q, want the upstream name upstream-test", chunk.Model)
		}
		if chunks == 0 {
			first = time.Since(start)
		}
		last = time.Since(start)
		chunks++
	}
	if err := stream.Err(); err != nil {
		t.Fatalf("stream: %v", err)
	}
	_ = stream.Close()
	if resp == nil || resp.Header.Get(backendHeader) != "s1" {
		t.Errorf("%s missing on the streamed response", backendHeader)
	}
	if resp != nil && !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		t.Errorf("Content-Type %q", resp.Header.Get("Content-Type"))
	}
	if chunks < 6 {
		t.Errorf("got %d chunks, want one per token at least", chunks)
	}
	if len(acc.Choices) != 1 {
		t.Fatalf("accumulated %d choices", len(acc.Choices))
	}
	text := acc.Choices[0].Message.Content
	if !strings.Contains(text, "["+simName+"]") {
		t.Errorf("accumulated text %q does not name the sim %s", text, simName)
	}
	// Five more tokens come 60ms apart: flushed as they come, the first and
	// the last chunk are far apart; buffered, they would arrive together.
	if last-first < 150*time.Millisecond {
		t.Errorf("first chunk at %s, last at %s: the stream was not flushed as it arrived", first, last)
	}

	// Time to first token is measured and recorded for every stream, also
	// when the client hangs up right after the last event, as this one does.
	const more = 4
	slowestFirst := first
	for range more {
		start := time.Now()
		stream := client.Chat.Completions.NewStreaming(context.Background(), chatParams("gpt-test"))
		for chunk := 0; stream.Next(); chunk++ {
			if chunk == 0 {
				slowestFirst = max(slowestFirst, time.Since(start))
			}
		}
		if err := stream.Err(); err != nil {
			t.Fatalf("stream: %v", err)
		}
		_ = stream.Close()
	}
	eventually(t, 5*time.Second, "the TTFT histogram to count every stream", func() bool {
		return metricValue(t, theMetrics().ttft.WithLabelValues("s1").(prometheus.Metric)) == ttftBefore+1+more
	})
	sk := g.pooled().sketches
	if n := sk.Count("s1", loadstate.TTFT); n != 1+more {
		t.Errorf("TTFT sketch has %d samples, want %d", n, 1+more)
	}
	// The gateway sees each first token before its client does (up to the
	// sketch's relative accuracy), and not before the sim's TTFT.
	if q := sk.Quantile("s1", loadstate.TTFT, 0.5); q < 20*time.Millisecond || q > slowestFirst+slowestFirst/20 {
		t.Errorf("TTFT p50 %s; the sim's TTFT is 30ms and the clients' slowest first chunk came after %s", q, slowestFirst)
	}

	t.Run("non-streaming", func(t *testing.T) {
		var resp *http.Response
		cc, err := client.Chat.Completions.New(context.Background(), chatParams("gpt-test"), option.WithResponseInto(&resp))
		if err != nil {
			t.Fatalf("chat completion: %v", err)
		}
		if cc.Model != "upstream-test" {
			t.Errorf("model %q, want upstream-test", cc.Model)
		}
		if len(cc.Choices) != 1 || !strings.Contains(cc.Choices[0].Message.Content, "["+simName+"]") {
			t.Errorf("choices %+v do not name the sim", cc.Choices)
		}
		if resp.Header.Get(backendHeader) != "s1" {
			t.Errorf("%s = %q", backendHeader, resp.Header.Get(backendHeader))
		}
		if n := g.pooled().sketches.Count("s1", loadstate.EndToEnd); n < 1 {
			t.Errorf("latency sketch has %d samples after a completed request", n)
		}
	})

	t.Run("other APIs", func(t *testing.T) {
		comp, err := client.Completions.New(context.Background(), openai.CompletionNewParams{
			Model:  "gpt-test",
			Prompt: openai.CompletionNewParamsPromptUnion{OfString: openai.String("Once upon a time")},
		})
		if err != nil {
			t.Fatalf("completion: %v", err)
		}
		if len(comp.Choices) != 1 || !strings.Contains(comp.Choices[0].Text, "["+simName+"]") {
			t.Errorf("completion choices %+v", comp.Choices)
		}
		emb, err := client.Embeddings.New(context.Background(), openai.EmbeddingNewParams{
			Model: "gpt-test",
			Input: openai.EmbeddingNewParamsInputUnion{OfArrayOfStrings: []string{"a", "b"}},
		})
		if err != nil {
			t.Fatalf("embeddings: %v", err)
		}
		if len(emb.Data) != 2 || len(emb.Data[0].Embedding) == 0 {
			t.Errorf("embeddings %+v", emb.Data)
		}
	})

	t.Run("errors reach the client as API errors", func(t *testing.T) {
		_, err := client.Chat.Completions.New(context.Background(), chatParams("no-such-model"))
		var apiErr *openai.Error
		if !errors.As(err, &apiErr) {
			t.Fatalf("err = %v, want *openai.Error", err)
		}
		if apiErr.StatusCode != http.StatusNotFound || apiErr.Code != "model_not_found" || apiErr.Param != "model" {
			t.Errorf("got %d %q param %q", apiErr.StatusCode, apiErr.Code, apiErr.Param)
		}
		stream := client.Chat.Completions.NewStreaming(context.Background(), chatParams("no-such-model"))
		for stream.Next() {
			t.Error("a chunk from a failed stream")
		}
		if !errors.As(stream.Err(), &apiErr) || apiErr.StatusCode != http.StatusNotFound {
			t.Errorf("stream err = %v, want a 404 *openai.Error", stream.Err())
		}
	})

	g.waitIdle()
}
