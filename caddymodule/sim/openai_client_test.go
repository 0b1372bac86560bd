package sim

import (
	"context"
	"errors"
	"net/http"
	"testing"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/responses"
)

// TestOpenAIClient drives the sim with the official Go client, which is what
// gateway users will point at it.
func TestOpenAIClient(t *testing.T) {
	h := provision(t, &Handler{Name: "fast", Tokens: 4, wait: noWait})
	srv := serve(t, h)
	client := openai.NewClient(
		option.WithBaseURL(srv.URL+"/v1/"),
		option.WithAPIKey("sk-sim"),
		option.WithMaxRetries(0),
	)
	ctx := context.Background()
	const want = "[fast] token token token"

	t.Run("chat", func(t *testing.T) {
		got, err := client.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
			Model:    "m-chat",
			Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hello there")},
		})
		if err != nil {
			t.Fatal(err)
		}
		if got.Model != "m-chat" || got.Choices[0].Message.Content != want || got.Usage.CompletionTokens != 4 {
			t.Errorf("got model %q content %q usage %+v", got.Model, got.Choices[0].Message.Content, got.Usage)
		}
	})

	t.Run("chat stream", func(t *testing.T) {
		stream := client.Chat.Completions.NewStreaming(ctx, openai.ChatCompletionNewParams{
			Model:         "m-chat",
			Messages:      []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hello there")},
			StreamOptions: openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)},
		})
		var acc openai.ChatCompletionAccumulator
		chunks := 0
		for stream.Next() {
			chunk := stream.Current()
			if !acc.AddChunk(chunk) {
				t.Fatalf("accumulator rejected chunk %d: %s", chunks, chunk.RawJSON())
			}
			chunks++
		}
		if err := stream.Err(); err != nil {
			t.Fatal(err)
		}
		if chunks != 4+1+1 {
			t.Errorf("%d chunks, want 4 tokens, a finish and a usage chunk", chunks)
		}
		if len(acc.Choices) != 1 || acc.Choices[0].Message.Content != want || acc.Choices[0].FinishReason != "stop" {
			t.Errorf("accumulated %+v", acc.Choices)
		}
		if acc.Model != "m-chat" || acc.Usage.CompletionTokens != 4 || acc.Usage.PromptTokens != 3 {
			t.Errorf("model %q usage %+v", acc.Model, acc.Usage)
		}
	})

	t.Run("completion stream", func(t *testing.T) {
		stream := client.Completions.NewStreaming(ctx, openai.CompletionNewParams{
			Model:  "m-text",
			Prompt: openai.CompletionNewParamsPromptUnion{OfString: openai.String("once upon")},
		})
		var text string
		for stream.Next() {
			if c := stream.Current(); len(c.Choices) > 0 {
				text += c.Choices[0].Text
			}
		}
		if err := stream.Err(); err != nil || text != want {
			t.Errorf("text %q, err %v", text, err)
		}
	})

	t.Run("responses", func(t *testing.T) {
		got, err := client.Responses.New(ctx, responses.ResponseNewParams{
			Model: "m-resp",
			Input: responses.ResponseNewParamsInputUnion{OfString: openai.String("hi")},
		})
		if err != nil {
			t.Fatal(err)
		}
		if got.OutputText() != want || got.Model != "m-resp" || got.Status != "completed" {
			t.Errorf("got %q model %q status %q", got.OutputText(), got.Model, got.Status)
		}
	})

	t.Run("responses stream", func(t *testing.T) {
		stream := client.Responses.NewStreaming(ctx, responses.ResponseNewParams{
			Model: "m-resp",
			Input: responses.ResponseNewParamsInputUnion{OfString: openai.String("hi")},
		})
		var deltas string
		var final responses.Response
		for stream.Next() {
			switch ev := stream.Current().AsAny().(type) {
			case responses.ResponseTextDeltaEvent:
				deltas += ev.Delta
			case responses.ResponseCompletedEvent:
				final = ev.Response
			}
		}
		if err := stream.Err(); err != nil {
			t.Fatal(err)
		}
		if deltas != want || final.OutputText() != want {
			t.Errorf("deltas %q, final %q", deltas, final.OutputText())
		}
	})

	t.Run("embeddings", func(t *testing.T) {
		got, err := client.Embeddings.New(ctx, openai.EmbeddingNewParams{
			Model: "m-emb",
			Input: openai.EmbeddingNewParamsInputUnion{OfArrayOfStrings: []string{"a", "b"}},
		})
		if err != nil {
			t.Fatal(err)
		}
		if len(got.Data) != 2 || len(got.Data[1].Embedding) != defaultEmbeddingDims || got.Model != "m-emb" {
			t.Errorf("got %+v", got)
		}
	})

	t.Run("models", func(t *testing.T) {
		page, err := client.Models.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(page.Data) != 1 || page.Data[0].ID != "fast" {
			t.Errorf("models %+v", page.Data)
		}
	})

	t.Run("error", func(t *testing.T) {
		_, err := client.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "m"},
			option.WithHeader(FaultHeader, "503"))
		var apiErr *openai.Error
		if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusServiceUnavailable || apiErr.Type != "server_error" || apiErr.Message == "" {
			t.Errorf("got %v", err)
		}
	})

	t.Run("aborted stream", func(t *testing.T) {
		stream := client.Chat.Completions.NewStreaming(ctx, openai.ChatCompletionNewParams{Model: "m"},
			option.WithHeader(FaultHeader, FaultAbortMidstream))
		chunks := 0
		for stream.Next() {
			chunks++
		}
		if stream.Err() == nil {
			t.Errorf("an aborted stream ended without error after %d chunks", chunks)
		}
	})
}
