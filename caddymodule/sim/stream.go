package sim

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
)

// sseWriter writes Server-Sent Events, flushing each one so the client sees
// every token when it is generated.
type sseWriter struct {
	w   http.ResponseWriter
	rc  *http.ResponseController
	buf bytes.Buffer
}

// startSSE sends the event-stream headers at once, as real servers do, so a
// gateway sees the response start before the first token.
func startSSE(w http.ResponseWriter) (*sseWriter, error) {
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	s := &sseWriter{w: w, rc: http.NewResponseController(w)}
	return s, s.flush()
}

// Data queues one "data:" event holding v as JSON; name, if set, adds an
// "event:" line (the Responses API names its events, chat does not).
func (s *sseWriter) Data(name string, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		// Every value written here is built by this package from plain types.
		panic(fmt.Sprintf("encoding %T: %v", v, err))
	}
	if name != "" {
		s.buf.WriteString("event: " + name + "\n")
	}
	s.buf.WriteString("data: ")
	s.buf.Write(body)
	s.buf.WriteString("\n\n")
}

// Done queues the "data: [DONE]" event that ends chat and text streams.
func (s *sseWriter) Done() {
	s.buf.WriteString("data: [DONE]\n\n")
}

// Send writes the queued events and flushes them to the client.
func (s *sseWriter) Send() error {
	_, err := s.w.Write(s.buf.Bytes())
	s.buf.Reset()
	if err != nil {
		return fmt.Errorf("writing stream events: %w", err)
	}
	return s.flush()
}

func (s *sseWriter) flush() error {
	if err := s.rc.Flush(); err != nil && !errors.Is(err, http.ErrNotSupported) {
		return fmt.Errorf("flushing stream events: %w", err)
	}
	return nil
}

// streamFormat turns a completion into the events of one API's stream.
type streamFormat interface {
	// Start queues the events before the first token, if any.
	Start(s *sseWriter)
	// Token queues the event carrying token i.
	Token(s *sseWriter, i int)
	// End queues the events after the last token.
	End(s *sseWriter)
}

// serveStream answers a streaming chat, text or responses request: headers
// at once, the first token after the time to first token (TTFT and prefill),
// each further token PerToken later, all as tm says.
func (h *Handler) serveStream(w http.ResponseWriter, r *http.Request, l *lease, k kind, req *inferenceRequest, tm timing, brk midstreamBreak) {
	c := h.newCompletion(req, idPrefix(k))
	var format streamFormat
	switch k {
	case kindChat:
		format = &chatStream{c: c, usage: req.includeUsage()}
	case kindCompletion:
		format = &textStream{c: c, usage: req.includeUsage()}
	default:
		format = &responseStream{c: c}
	}
	ctx := r.Context()
	s, err := startSSE(w)
	if err != nil {
		l.finish(outcomeCanceled)
		return
	}
	format.Start(s)
	if err := s.Send(); err != nil {
		l.finish(outcomeCanceled)
		return
	}
	abortAfter := min(len(c.pieces), abortAfterEvents)
	for i := range c.pieces {
		d := tm.nextToken()
		if i == 0 {
			d = tm.firstToken(c.promptTokens)
		}
		if h.wait(ctx, d) != nil {
			l.finish(outcomeCanceled)
			return
		}
		format.Token(s, i)
		if err := s.Send(); err != nil {
			l.finish(outcomeCanceled)
			return
		}
		if brk != noBreak && i+1 == abortAfter {
			h.breakAnswer(w, r, l, brk, true)
			return
		}
	}
	l.finish(outcomeServed)
	format.End(s)
	_ = s.Send()
}

// chatStream is the chat.completion.chunk stream: the first token's chunk
// carries the role, a final chunk the finish reason, an optional one the
// usage, then [DONE].
type chatStream struct {
	c     *completion
	usage bool
}

func (f *chatStream) Start(*sseWriter) {}

func (f *chatStream) Token(s *sseWriter, i int) {
	delta := chatDelta{Content: f.c.pieces[i]}
	if i == 0 {
		delta.Role = "assistant"
	}
	s.Data("", f.c.chatChunk(chatChunkChoice{Delta: delta}))
}

func (f *chatStream) End(s *sseWriter) {
	s.Data("", f.c.chatChunk(chatChunkChoice{FinishReason: &f.c.finishReason}))
	if f.usage {
		chunk := f.c.chatChunk()
		chunk.Usage = f.c.usage()
		s.Data("", chunk)
	}
	s.Done()
}

// textStream is the legacy completions stream: text_completion chunks, a
// final one with the finish reason, an optional usage one, then [DONE].
type textStream struct {
	c     *completion
	usage bool
}

func (f *textStream) Start(*sseWriter) {}

func (f *textStream) Token(s *sseWriter, i int) {
	s.Data("", f.c.textCompletion(textChoice{Text: f.c.pieces[i]}))
}

func (f *textStream) End(s *sseWriter) {
	s.Data("", f.c.textCompletion(textChoice{FinishReason: &f.c.finishReason}))
	if f.usage {
		chunk := f.c.textCompletion()
		chunk.Usage = f.c.usage()
		s.Data("", chunk)
	}
	s.Done()
}

// responseStream is the Responses API stream: named events with sequence
// numbers, from response.created through one output_text.delta per token to
// response.completed. It has no [DONE].
type responseStream struct {
	c   *completion
	seq int
}

// event queues the named event with fields plus its type and sequence number.
func (f *responseStream) event(s *sseWriter, typ string, fields map[string]any) {
	fields["type"] = typ
	fields["sequence_number"] = f.seq
	f.seq++
	s.Data(typ, fields)
}

// part returns the fields that locate the single text part of the output.
func (f *responseStream) part(more map[string]any) map[string]any {
	more["item_id"] = f.c.messageID()
	more["output_index"] = 0
	more["content_index"] = 0
	return more
}

func (f *responseStream) Start(s *sseWriter) {
	f.event(s, "response.created", map[string]any{"response": f.c.response(false)})
	f.event(s, "response.in_progress", map[string]any{"response": f.c.response(false)})
	f.event(s, "response.output_item.added", map[string]any{"output_index": 0, "item": f.c.responseMessage(false)})
	f.event(s, "response.content_part.added", f.part(map[string]any{"part": f.c.responseOutput(false)}))
}

func (f *responseStream) Token(s *sseWriter, i int) {
	f.event(s, "response.output_text.delta", f.part(map[string]any{"delta": f.c.pieces[i], "logprobs": []any{}}))
}

func (f *responseStream) End(s *sseWriter) {
	f.event(s, "response.output_text.done", f.part(map[string]any{"text": f.c.content(), "logprobs": []any{}}))
	f.event(s, "response.content_part.done", f.part(map[string]any{"part": f.c.responseOutput(true)}))
	f.event(s, "response.output_item.done", map[string]any{"output_index": 0, "item": f.c.responseMessage(true)})
	done := f.c.response(true)
	typ := "response.completed"
	if done.Status == "incomplete" {
		typ = "response.incomplete"
	}
	f.event(s, typ, map[string]any{"response": done})
}

// Interface guards
var (
	_ streamFormat = (*chatStream)(nil)
	_ streamFormat = (*textStream)(nil)
	_ streamFormat = (*responseStream)(nil)
)
