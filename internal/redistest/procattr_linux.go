package redistest

import (
	"os/exec"
	"runtime"
	"syscall"
)

// spawns carries process starts to one goroutine locked to its OS thread.
// Pdeathsig fires when the thread that forked the child exits, so forking from
// a thread that lives as long as the test binary makes the kernel kill our
// redis-servers exactly when the test binary dies (crash, timeout, kill -9),
// and never earlier.
var spawns = make(chan spawnRequest)

type spawnRequest struct {
	cmd  *exec.Cmd
	done chan error
}

func init() {
	go func() {
		runtime.LockOSThread() // never unlocked: the thread lives until exit
		for r := range spawns {
			r.done <- r.cmd.Start()
		}
	}()
}

func startProcess(cmd *exec.Cmd) error {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	r := spawnRequest{cmd: cmd, done: make(chan error, 1)}
	spawns <- r
	return <-r.done
}
