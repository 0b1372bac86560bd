package sim

import (
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// now is the clock for the "created" timestamps; tests may replace it.
var now = time.Now

// maxRequestBody caps inference request bodies.
const maxRequestBody = 8 << 20

// Embedding vector sizes: the default is small because the numbers mean
// nothing; a request may ask for more with "dimensions".
const (
	defaultEmbeddingDims = 8
	maxEmbeddingDims     = 4096
)

// kind is the OpenAI API an inference request was sent to.
type kind uint8

const (
	kindChat       kind = iota // POST /v1/chat/completions
	kindCompletion             // POST /v1/completions
	kindResponse               // POST /v1/responses
	kindEmbedding              // POST /v1/embeddings
)

// inferenceRequest holds the request fields the sim looks at; the rest are
// ignored, as a lenient server would.
type inferenceRequest struct {
	Model         string `json:"model"`
	Stream        bool   `json:"stream"`
	StreamOptions *struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
	MaxTokens           *tokenCount     `json:"max_tokens"`
	MaxCompletionTokens *tokenCount     `json:"max_completion_tokens"`
	MaxOutputTokens     *tokenCount     `json:"max_output_tokens"`
	Messages            json.RawMessage `json:"messages"`
	Prompt              json.RawMessage `json:"prompt"`
	Input               json.RawMessage `json:"input"`
	Instructions        string          `json:"instructions"`
	Dimensions          int             `json:"dimensions"`
	EncodingFormat      string          `json:"encoding_format"`
}

// tokenCount is a count of tokens given as any JSON number with a whole
// value (100, 1e2, 100.0), as lenient servers (pydantic's lax mode, which
// vLLM's OpenAI server uses) and the router accept; a fraction is an error.
type tokenCount int

func (c *tokenCount) UnmarshalJSON(b []byte) error {
	var f float64
	if err := json.Unmarshal(b, &f); err != nil {
		return err
	}
	if f != math.Trunc(f) || math.Abs(f) > math.MaxInt32 {
		return fmt.Errorf("%s is not a whole number of tokens", b)
	}
	*c = tokenCount(f)
	return nil
}

// requestError is a client mistake, answered with 400 and the offending
// parameter.
type requestError struct {
	param string
	err   error
}

func (e *requestError) Error() string { return e.err.Error() }
func (e *requestError) Unwrap() error { return e.err }

// parseRequest decodes and checks an inference request body.
func parseRequest(k kind, body []byte) (*inferenceRequest, error) {
	var req inferenceRequest
	if err := json.Unmarshal(body, &req); err != nil {
		return nil, &requestError{err: fmt.Errorf("decoding request body: %w", err)}
	}
	for _, limit := range []struct {
		param string
		value *tokenCount
	}{
		{"max_tokens", req.MaxTokens},
		{"max_completion_tokens", req.MaxCompletionTokens},
		{"max_output_tokens", req.MaxOutputTokens},
	} {
		if limit.value != nil && *limit.value < 1 {
			return nil, &requestError{param: limit.param, err: fmt.Errorf("%s must be at least 1, got %d", limit.param, *limit.value)}
		}
	}
	if k == kindEmbedding {
		if len(req.Input) == 0 || string(req.Input) == "null" {
			return nil, &requestError{param: "input", err: errors.New("input is required")}
		}
		if req.Dimensions < 0 || req.Dimensions > maxEmbeddingDims {
			return nil, &requestError{param: "dimensions", err: fmt.Errorf("dimensions must be between 1 and %d, got %d", maxEmbeddingDims, req.Dimensions)}
		}
		if req.EncodingFormat != "" && req.EncodingFormat != "float" && req.EncodingFormat != "base64" {
			return nil, &requestError{param: "encoding_format", err: fmt.Errorf("encoding_format must be float or base64, got %q", req.EncodingFormat)}
		}
	}
	return &req, nil
}

// tokenLimit is the request's cap on generated tokens, 0 if none.
func (req *inferenceRequest) tokenLimit() int {
	for _, v := range []*tokenCount{req.MaxCompletionTokens, req.MaxTokens, req.MaxOutputTokens} {
		if v != nil {
			return int(*v)
		}
	}
	return 0
}

// includeUsage reports whether a stream should end with a usage chunk.
func (req *inferenceRequest) includeUsage() bool {
	return req.StreamOptions != nil && req.StreamOptions.IncludeUsage
}

// promptTokens estimates the prompt's tokens as a quarter of its text bytes,
// rounded up, the usual rule of thumb for English.
func (req *inferenceRequest) promptTokens() int {
	n := len(req.Instructions)
	for _, raw := range []json.RawMessage{req.Messages, req.Prompt, req.Input} {
		n += textBytes(raw)
	}
	return (n + 3) / 4
}

// textBytes counts the bytes of prompt text in a messages, prompt or input
// value: strings, strings under "content" or "text" keys (chat messages and
// content parts), and 4 bytes per token id in token arrays.
func textBytes(raw json.RawMessage) int {
	if len(raw) == 0 {
		return 0
	}
	var v any
	if json.Unmarshal(raw, &v) != nil {
		return 0
	}
	var walk func(v any) int
	walk = func(v any) int {
		switch v := v.(type) {
		case string:
			return len(v)
		case float64:
			return 4
		case []any:
			n := 0
			for _, e := range v {
				n += walk(e)
			}
			return n
		case map[string]any:
			return walk(v["content"]) + walk(v["text"])
		}
		return 0
	}
	return walk(v)
}

// usage is the token accounting of chat and text completions.
type usage struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
	TotalTokens      int `json:"total_tokens"`
}

func newUsage(prompt, completion int) *usage {
	return &usage{PromptTokens: prompt, CompletionTokens: completion, TotalTokens: prompt + completion}
}

// completion is what the sim "generates" for one request.
type completion struct {
	id           string
	model        string
	created      int64
	pieces       []string // one per token; joined they are the content
	finishReason string   // "stop", or "length" when max_tokens cut it short
	promptTokens int
}

func (c *completion) content() string { return strings.Join(c.pieces, "") }

func (c *completion) usage() *usage { return newUsage(c.promptTokens, len(c.pieces)) }

// idCounter makes response ids unique within the process without randomness.
var idCounter atomic.Uint64

func newID(prefix string) string {
	return prefix + "sim" + strconv.FormatUint(idCounter.Add(1), 10)
}

// newCompletion plans the answer to req: Tokens pieces, or fewer when the
// request's limit is lower. The first piece names the sim, so a test can tell
// which backend answered; the rest are filler.
func (h *Handler) newCompletion(req *inferenceRequest, idPrefix string) *completion {
	n, finish := h.Tokens, "stop"
	if limit := req.tokenLimit(); limit > 0 && limit < n {
		n, finish = limit, "length"
	}
	pieces := make([]string, n)
	pieces[0] = "[" + h.Name + "]"
	for i := 1; i < n; i++ {
		pieces[i] = " token"
	}
	model := req.Model
	if model == "" {
		model = h.Name
	}
	return &completion{
		id:           newID(idPrefix),
		model:        model,
		created:      now().Unix(),
		pieces:       pieces,
		finishReason: finish,
		promptTokens: req.promptTokens(),
	}
}

// chatCompletion is the "chat.completion" object.
type chatCompletion struct {
	ID      string       `json:"id"`
	Object  string       `json:"object"`
	Created int64        `json:"created"`
	Model   string       `json:"model"`
	Choices []chatChoice `json:"choices"`
	Usage   *usage       `json:"usage"`
}

type chatChoice struct {
	Index        int         `json:"index"`
	Message      chatMessage `json:"message"`
	Logprobs     *struct{}   `json:"logprobs"`
	FinishReason string      `json:"finish_reason"`
}

type chatMessage struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

func (c *completion) chatCompletion() chatCompletion {
	return chatCompletion{
		ID: c.id, Object: "chat.completion", Created: c.created, Model: c.model,
		Choices: []chatChoice{{
			Message:      chatMessage{Role: "assistant", Content: c.content()},
			FinishReason: c.finishReason,
		}},
		Usage: c.usage(),
	}
}

// chatChunk is the "chat.completion.chunk" object of a chat stream.
type chatChunk struct {
	ID      string            `json:"id"`
	Object  string            `json:"object"`
	Created int64             `json:"created"`
	Model   string            `json:"model"`
	Choices []chatChunkChoice `json:"choices"`
	Usage   *usage            `json:"usage,omitempty"`
}

type chatChunkChoice struct {
	Index        int       `json:"index"`
	Delta        chatDelta `json:"delta"`
	Logprobs     *struct{} `json:"logprobs"`
	FinishReason *string   `json:"finish_reason"`
}

type chatDelta struct {
	Role    string `json:"role,omitempty"`
	Content string `json:"content,omitempty"`
}

func (c *completion) chatChunk(choices ...chatChunkChoice) chatChunk {
	if choices == nil {
		choices = []chatChunkChoice{}
	}
	return chatChunk{ID: c.id, Object: "chat.completion.chunk", Created: c.created, Model: c.model, Choices: choices}
}

// textCompletion is the "text_completion" object, whole or as a stream chunk.
type textCompletion struct {
	ID      string       `json:"id"`
	Object  string       `json:"object"`
	Created int64        `json:"created"`
	Model   string       `json:"model"`
	Choices []textChoice `json:"choices"`
	Usage   *usage       `json:"usage,omitempty"`
}

type textChoice struct {
	Text         string    `json:"text"`
	Index        int       `json:"index"`
	Logprobs     *struct{} `json:"logprobs"`
	FinishReason *string   `json:"finish_reason"`
}

func (c *completion) textCompletion(choices ...textChoice) textCompletion {
	if choices == nil {
		choices = []textChoice{}
	}
	return textCompletion{ID: c.id, Object: "text_completion", Created: c.created, Model: c.model, Choices: choices}
}

// response is a minimal Responses API "response" object.
type response struct {
	ID                string             `json:"id"`
	Object            string             `json:"object"`
	CreatedAt         int64              `json:"created_at"`
	Status            string             `json:"status"`
	IncompleteDetails *incompleteDetails `json:"incomplete_details"`
	Model             string             `json:"model"`
	Output            []responseMessage  `json:"output"`
	Usage             *responseUsage     `json:"usage"`
}

type incompleteDetails struct {
	Reason string `json:"reason"`
}

type responseMessage struct {
	Type    string           `json:"type"`
	ID      string           `json:"id"`
	Status  string           `json:"status"`
	Role    string           `json:"role"`
	Content []responseOutput `json:"content"`
}

type responseOutput struct {
	Type        string   `json:"type"`
	Text        string   `json:"text"`
	Annotations []string `json:"annotations"`
}

type responseUsage struct {
	InputTokens        int `json:"input_tokens"`
	InputTokensDetails struct {
		CachedTokens int `json:"cached_tokens"`
	} `json:"input_tokens_details"`
	OutputTokens        int `json:"output_tokens"`
	OutputTokensDetails struct {
		ReasoningTokens int `json:"reasoning_tokens"`
	} `json:"output_tokens_details"`
	TotalTokens int `json:"total_tokens"`
}

// messageID is the id of a response's single output message.
func (c *completion) messageID() string { return "msg_" + strings.TrimPrefix(c.id, "resp_") }

// response returns the response object; done selects the final state rather
// than the in-progress one that a stream starts with.
func (c *completion) response(done bool) response {
	r := response{
		ID: c.id, Object: "response", CreatedAt: c.created, Status: "in_progress",
		Model: c.model, Output: []responseMessage{},
	}
	if !done {
		return r
	}
	r.Status = "completed"
	if c.finishReason == "length" {
		r.Status = "incomplete"
		r.IncompleteDetails = &incompleteDetails{Reason: "max_output_tokens"}
	}
	r.Output = []responseMessage{c.responseMessage(true)}
	r.Usage = &responseUsage{InputTokens: c.promptTokens, OutputTokens: len(c.pieces), TotalTokens: c.promptTokens + len(c.pieces)}
	return r
}

func (c *completion) responseMessage(done bool) responseMessage {
	m := responseMessage{Type: "message", ID: c.messageID(), Status: "in_progress", Role: "assistant", Content: []responseOutput{}}
	if done {
		m.Status = "completed"
		m.Content = []responseOutput{c.responseOutput(true)}
	}
	return m
}

func (c *completion) responseOutput(done bool) responseOutput {
	o := responseOutput{Type: "output_text", Annotations: []string{}}
	if done {
		o.Text = c.content()
	}
	return o
}

// embeddingList is the answer to POST /v1/embeddings.
type embeddingList struct {
	Object string      `json:"object"`
	Data   []embedding `json:"data"`
	Model  string      `json:"model"`
	Usage  struct {
		PromptTokens int `json:"prompt_tokens"`
		TotalTokens  int `json:"total_tokens"`
	} `json:"usage"`
}

type embedding struct {
	Object    string `json:"object"`
	Index     int    `json:"index"`
	Embedding any    `json:"embedding"` // []float32, or a base64 string of little-endian float32s
}

// newEmbeddings embeds each input of req: a string, a token array, or an
// array of either.
func (h *Handler) newEmbeddings(req *inferenceRequest) embeddingList {
	dims := req.Dimensions
	if dims == 0 {
		dims = defaultEmbeddingDims
	}
	inputs := []json.RawMessage{req.Input}
	var elems []json.RawMessage
	if json.Unmarshal(req.Input, &elems) == nil && len(elems) > 0 && !isTokenArray(elems) {
		inputs = elems
	}
	model := req.Model
	if model == "" {
		model = h.Name
	}
	list := embeddingList{Object: "list", Model: model, Data: make([]embedding, len(inputs))}
	for i, in := range inputs {
		vec := embeddingVector(in, dims)
		var value any = vec
		if req.EncodingFormat == "base64" {
			buf := make([]byte, 4*len(vec))
			for j, f := range vec {
				binary.LittleEndian.PutUint32(buf[4*j:], math.Float32bits(f))
			}
			value = base64.StdEncoding.EncodeToString(buf)
		}
		list.Data[i] = embedding{Object: "embedding", Index: i, Embedding: value}
	}
	list.Usage.PromptTokens = req.promptTokens()
	list.Usage.TotalTokens = list.Usage.PromptTokens
	return list
}

// isTokenArray reports whether elems is one input given as token ids.
func isTokenArray(elems []json.RawMessage) bool {
	for _, e := range elems {
		var f float64
		if json.Unmarshal(e, &f) != nil {
			return false
		}
	}
	return true
}

// embeddingVector derives a unit vector from the input's bytes, so equal
// inputs embed equally and different ones (almost surely) differently.
func embeddingVector(input []byte, dims int) []float32 {
	hash := fnv.New64a()
	hash.Write(input)
	state := hash.Sum64()
	vec := make([]float32, dims)
	var norm float64
	for i := range vec {
		// splitmix64: a tiny, well-mixed deterministic sequence.
		state += 0x9e3779b97f4a7c15
		z := state
		z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
		z = (z ^ (z >> 27)) * 0x94d049bb133111eb
		z ^= z >> 31
		x := float64(z>>11)/float64(1<<53)*2 - 1
		vec[i] = float32(x)
		norm += x * x
	}
	if norm > 0 {
		scale := 1 / math.Sqrt(norm)
		for i := range vec {
			vec[i] = float32(float64(vec[i]) * scale)
		}
	}
	return vec
}

// modelList is the answer to GET /v1/models: the sim serves one model, named
// after itself (though it answers any model name it is asked for).
type modelList struct {
	Object string  `json:"object"`
	Data   []model `json:"data"`
}

type model struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	OwnedBy string `json:"owned_by"`
}

// apiError is OpenAI's error body.
type apiError struct {
	Error apiErrorDetail `json:"error"`
}

type apiErrorDetail struct {
	Message string  `json:"message"`
	Type    string  `json:"type"`
	Param   *string `json:"param"`
	Code    *string `json:"code"`
}

// writeError answers with status and an OpenAI-shaped error body. param names
// the offending request parameter, if any.
func writeError(w http.ResponseWriter, status int, err error, param string) {
	detail := apiErrorDetail{Message: err.Error(), Type: errorType(status)}
	if param != "" {
		detail.Param = &param
	}
	writeJSON(w, status, apiError{Error: detail})
}

func errorType(status int) string {
	switch {
	case status == http.StatusTooManyRequests:
		return "rate_limit_error"
	case status >= 500:
		return "server_error"
	}
	return "invalid_request_error"
}

// writeJSON answers with status and v as JSON.
func writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		// Every value written here is built by this package from plain types.
		panic(fmt.Sprintf("encoding %T: %v", v, err))
	}
	body = append(body, '\n')
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// allowMethods answers 405 and returns false unless r uses one of methods.
func allowMethods(w http.ResponseWriter, r *http.Request, methods ...string) bool {
	for _, m := range methods {
		if r.Method == m {
			return true
		}
	}
	w.Header().Set("Allow", strings.Join(methods, ", "))
	writeError(w, http.StatusMethodNotAllowed, fmt.Errorf("method %s not allowed on %s", r.Method, r.URL.Path), "")
	return false
}

// Interface guards
var _ error = (*requestError)(nil)
