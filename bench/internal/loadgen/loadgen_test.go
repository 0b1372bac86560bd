package loadgen

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/modelrouter/modelrouter/bench/internal/workload"
)

func TestReadStream(t *testing.T) {
	at := time.Now()
	for _, tc := range []struct {
		name, body string
		ok, ttft   bool
	}{
		{"complete", "data: {\"x\":1}\n\ndata: {\"x\":2}\n\ndata: [DONE]\n\n", true, true},
		{"cut short", "data: {\"x\":1}\n\n", false, true},
		{"empty", "", false, false},
		{"done only", "data: [DONE]\n\n", true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var ttft time.Duration
			ok, failure := ReadStream(strings.NewReader(tc.body), at, &ttft)
			if ok != tc.ok {
				t.Errorf("ok = %v (%s), want %v", ok, failure, tc.ok)
			}
			if (ttft > 0) != tc.ttft {
				t.Errorf("ttft = %v, want set: %v", ttft, tc.ttft)
			}
		})
	}
}

// TestSendNamesTheTask: a request with a task carries the capability header
// naming it; one without carries none.
func TestSendNamesTheTask(t *testing.T) {
	got := make(chan string, 2)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got <- r.Header.Get(workload.CapabilityHeader) + "|" + strconv.Itoa(len(r.Header.Values(workload.CapabilityHeader)))
		w.Header().Set(SimHeader, "A")
		io.WriteString(w, `{"choices":[{}]}`)
	}))
	defer srv.Close()
	for _, tc := range []struct{ task, want string }{{"reasoning", "reasoning|1"}, {"", "|0"}} {
		o := Send(context.Background(), srv.Client(), srv.URL, nil, workload.Arrival{Output: 16, Task: tc.task}, time.Now(), 5*time.Second)
		if !o.OK || o.Sim != "A" {
			t.Errorf("task %q: outcome %+v", tc.task, o)
		}
		if h := <-got; h != tc.want {
			t.Errorf("task %q: capability header %q, want %q", tc.task, h, tc.want)
		}
	}
}
