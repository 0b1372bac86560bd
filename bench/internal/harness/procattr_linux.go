package harness

import (
	"os/exec"
	"runtime"
	"syscall"
)

// spawns carries process starts to one goroutine locked to its OS thread.
// Pdeathsig fires when the thread that forked the child exits, so forking from
// a thread that lives as long as the benchmark makes the kernel kill the
// children exactly when the benchmark dies (even by kill -9), never earlier.
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
	// Setpgid keeps a terminal's Ctrl-C away from the children: the benchmark
	// stops them itself, in order, after it has printed what it has.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	r := spawnRequest{cmd: cmd, done: make(chan error, 1)}
	spawns <- r
	return <-r.done
}
