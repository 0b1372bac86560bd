package main

import (
	"context"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestRunFleet runs `make run-fleet`'s script (deploy/fleet/run.sh) on free
// ports: three replicas and the backends come up around a throwaway
// redis-server, every replica serves, a drain through one replica's admin API
// shows on another's, and one Ctrl-C (SIGINT) stops every process.
func TestRunFleet(t *testing.T) {
	ports := []string{freePort(t), freePort(t), freePort(t)}
	admins := []string{freePort(t), freePort(t), freePort(t)}
	sims := []string{freePort(t), freePort(t), freePort(t)}
	redisPort := freePort(t)
	cmd := exec.Command("bash", "deploy/fleet/run.sh")
	cmd.Dir = "../.."
	cmd.Env = append(os.Environ(), "MR_BIN="+gatewayBin, "MR_PORTS="+strings.Join(ports, " "),
		"MR_ADMINS="+strings.Join(admins, " "), "MR_SIMS="+strings.Join(sims, " "), "MR_REDIS_PORT="+redisPort)
	logs := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGINT)
		<-done
		if t.Failed() {
			t.Logf("run.sh output:\n%s", logs.String())
		}
	})
	waitFor(t, "the fleet to be up", 60*time.Second, func() bool { return strings.Contains(logs.String(), "Model Router fleet is up") })

	gws := make([]*gateway, 3)
	for i := range gws {
		gws[i] = &gateway{base: "http://127.0.0.1:" + ports[i], admin: "http://127.0.0.1:" + admins[i], model: "llama-8b"}
		resp, err := http.Post(gws[i].base+"/v1/chat/completions", "application/json",
			strings.NewReader(`{"model":"llama-8b","messages":[{"role":"user","content":"Hi"}]}`))
		if err != nil {
			t.Fatalf("replica %d: %v", i, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("replica %d: %s", i, resp.Status)
		}
	}
	var reps struct {
		Replicas []any `json:"replicas"`
	}
	waitFor(t, "three replicas in the registry", 20*time.Second, func() bool {
		return getJSON(gws[2].admin+"/model_router/replicas", &reps) == nil && len(reps.Replicas) == 3
	})
	if status, body := gws[0].adminCall(t, http.MethodPost, "/model_router/backends/big/drain", ""); status != http.StatusOK {
		t.Fatalf("drain: %d %s", status, body)
	}
	waitFor(t, "replica 2 to see the drain", 10*time.Second, func() bool { return gws[2].backends(t)["big"].Drained })
	if _, err := gws[1].chat(context.Background()); err != nil {
		t.Fatal(err)
	}

	// One Ctrl-C stops everything: the script, the replicas, the backends
	// and Redis.
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("run.sh did not stop within 30s of SIGINT")
	}
	all := append(append(append(append([]string{}, ports...), admins...), sims...), redisPort)
	waitFor(t, "every port of the fleet closed", 10*time.Second, func() bool {
		for _, p := range all {
			if c, err := net.DialTimeout("tcp", "127.0.0.1:"+p, time.Second); err == nil {
				c.Close()
				return false
			}
		}
		return true
	})
}
