package sim

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestChatStreamFormat(t *testing.T) {
	for _, includeUsage := range []bool{false, true} {
		t.Run(map[bool]string{false: "plain", true: "include_usage"}[includeUsage], func(t *testing.T) {
			h := provision(t, &Handler{Name: "fast", Tokens: 4, wait: noWait})
			srv := serve(t, h)
			body := `{"model":"m-chat","stream":true,"messages":[{"role":"user","content":"abcdefgh"}]}`
			if includeUsage {
				body = `{"model":"m-chat","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"abcdefgh"}]}`
			}
			resp := post(t, srv.URL+"/v1/chat/completions", body)
			if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
				t.Errorf("Content-Type = %q", ct)
			}
			events := readEvents(t, resp.Body)
			wantEvents := 4 + 1 + 1 // tokens, finish, [DONE]
			if includeUsage {
				wantEvents++
			}
			if len(events) != wantEvents {
				t.Fatalf("got %d events, want %d: %v", len(events), wantEvents, events)
			}
			if last := events[len(events)-1]; last.data != "[DONE]" || last.name != "" {
				t.Errorf("last event = %+v, want data: [DONE]", last)
			}

			var content strings.Builder
			var id string
			for i, ev := range events[:len(events)-1] {
				var c chatChunk
				if err := json.Unmarshal([]byte(ev.data), &c); err != nil {
					t.Fatalf("event %d: %v", i, err)
				}
				if c.Object != "chat.completion.chunk" || c.Model != "m-chat" || c.Created == 0 {
					t.Errorf("event %d: %+v", i, c)
				}
				if id == "" {
					id = c.ID
				} else if c.ID != id {
					t.Errorf("event %d id %q, want %q throughout", i, c.ID, id)
				}
				switch {
				case i < 4:
					if len(c.Choices) != 1 || c.Choices[0].FinishReason != nil {
						t.Fatalf("token event %d: %+v", i, c.Choices)
					}
					if role := c.Choices[0].Delta.Role; (i == 0) != (role == "assistant") {
						t.Errorf("token event %d role %q: only the first carries it", i, role)
					}
					content.WriteString(c.Choices[0].Delta.Content)
				case i == 4:
					if len(c.Choices) != 1 || c.Choices[0].FinishReason == nil || *c.Choices[0].FinishReason != "stop" || c.Choices[0].Delta != (chatDelta{}) {
						t.Errorf("finish event: %+v", c.Choices)
					}
				default:
					if len(c.Choices) != 0 || c.Usage == nil || *c.Usage != (usage{PromptTokens: 2, CompletionTokens: 4, TotalTokens: 6}) {
						t.Errorf("usage event: %s", ev.data)
					}
				}
				if i < 5 && strings.Contains(ev.data, `"usage"`) {
					t.Errorf("event %d carries usage: %s", i, ev.data)
				}
			}
			if content.String() != "[fast] token token token" {
				t.Errorf("streamed content = %q", content.String())
			}
		})
	}
}

func TestCompletionStreamFormat(t *testing.T) {
	h := provision(t, &Handler{Name: "fast", Tokens: 5, wait: noWait})
	srv := serve(t, h)
	resp := post(t, srv.URL+"/v1/completions", `{"model":"m","prompt":"x","stream":true,"max_tokens":3,"stream_options":{"include_usage":true}}`)
	events := readEvents(t, resp.Body)
	if len(events) != 3+1+1+1 || events[len(events)-1].data != "[DONE]" {
		t.Fatalf("events: %v", events)
	}
	var text strings.Builder
	for i, ev := range events[:3] {
		var c textCompletion
		if err := json.Unmarshal([]byte(ev.data), &c); err != nil {
			t.Fatal(err)
		}
		if c.Object != "text_completion" || len(c.Choices) != 1 || c.Choices[0].FinishReason != nil {
			t.Errorf("token event %d: %s", i, ev.data)
		}
		text.WriteString(c.Choices[0].Text)
	}
	if text.String() != "[fast] token token" {
		t.Errorf("text = %q", text.String())
	}
	var finish, usageChunk textCompletion
	_ = json.Unmarshal([]byte(events[3].data), &finish)
	_ = json.Unmarshal([]byte(events[4].data), &usageChunk)
	if len(finish.Choices) != 1 || *finish.Choices[0].FinishReason != "length" {
		t.Errorf("finish event: %s", events[3].data)
	}
	if usageChunk.Usage == nil || usageChunk.Usage.CompletionTokens != 3 {
		t.Errorf("usage event: %s", events[4].data)
	}
}

func TestResponsesStreamFormat(t *testing.T) {
	h := provision(t, &Handler{Name: "fast", Tokens: 3, wait: noWait})
	srv := serve(t, h)
	resp := post(t, srv.URL+"/v1/responses", `{"model":"m","input":"hello","stream":true}`)
	events := readEvents(t, resp.Body)
	want := []string{
		"response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
		"response.output_text.delta", "response.output_text.delta", "response.output_text.delta",
		"response.output_text.done", "response.content_part.done", "response.output_item.done", "response.completed",
	}
	if len(events) != len(want) {
		t.Fatalf("got %d events, want %d: %v", len(events), len(want), events)
	}
	var deltas strings.Builder
	for i, ev := range events {
		var fields map[string]any
		if err := json.Unmarshal([]byte(ev.data), &fields); err != nil {
			t.Fatalf("event %d: %v", i, err)
		}
		if ev.name != want[i] || fields["type"] != want[i] || fields["sequence_number"] != float64(i) {
			t.Errorf("event %d: name %q type %v seq %v, want %s", i, ev.name, fields["type"], fields["sequence_number"], want[i])
		}
		if d, ok := fields["delta"].(string); ok {
			deltas.WriteString(d)
		}
	}
	if deltas.String() != "[fast] token token" {
		t.Errorf("deltas = %q", deltas.String())
	}
	var completed struct{ Response response }
	_ = json.Unmarshal([]byte(events[len(events)-1].data), &completed)
	if r := completed.Response; r.Status != "completed" || r.Model != "m" || r.Output[0].Content[0].Text != "[fast] token token" || r.Usage.OutputTokens != 3 {
		t.Errorf("completed response: %+v", r)
	}
}

// TestStreamFlushesEachEvent reads each token while the handler is still
// held before the next one: it must have been flushed, not buffered.
func TestStreamFlushesEachEvent(t *testing.T) {
	clock := newStepClock()
	defer clock.Open()
	h := provision(t, &Handler{Tokens: 3, wait: clock.wait})
	srv := serve(t, h)

	// Headers come before the first token; if they were not flushed, this
	// times out.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", srv.URL+"/v1/chat/completions", strings.NewReader(`{"stream":true}`))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("waiting for headers: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("status %d, Content-Type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	r := bufio.NewReader(resp.Body)
	for i := range 3 {
		clock.Step(t) // TTFT, then PerToken
		ev, err := readEvent(r)
		if err != nil {
			t.Fatalf("token %d: %v", i, err)
		}
		if !strings.Contains(ev.data, "chat.completion.chunk") {
			t.Fatalf("token %d: %q", i, ev.data)
		}
	}
	if rest := readEvents(t, r); len(rest) != 2 || rest[1].data != "[DONE]" {
		t.Errorf("after the tokens: %v", rest)
	}
}

// TestStreamStopsWhenClientLeaves closes the stream after the first token;
// the handler must stop at its next delay and count the request canceled.
func TestStreamStopsWhenClientLeaves(t *testing.T) {
	clock := newStepClock()
	defer clock.Open()
	h := provision(t, &Handler{Tokens: 1000, wait: clock.wait})
	srv := serve(t, h)
	resp := post(t, srv.URL+"/v1/chat/completions", `{"stream":true}`)
	clock.Step(t)
	if _, err := readEvent(bufio.NewReader(resp.Body)); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	eventually(t, "the handler notices the client left", func() bool {
		st := h.state.Snapshot()
		return st.Canceled == 1 && st.Inflight == 0
	})
	if n := len(clock.Waits()); n > 3 {
		t.Errorf("handler went on for %d delays after its client left", n)
	}
}
