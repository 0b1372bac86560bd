package loadgen

import (
	"strings"
	"testing"
	"time"
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
