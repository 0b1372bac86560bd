// Package childproc starts helper processes (redis-server for tests, Caddy
// and stubs for benchmarks) that die with the process that started them.
package childproc

import (
	"os/exec"
	"runtime"
	"syscall"
)

// spawns carries process starts to one goroutine locked to its OS thread.
// Pdeathsig fires when the thread that forked the child exits, so forking from
// a thread that lives as long as the process makes the kernel kill the
// children exactly when their parent dies (crash, timeout, kill -9), and never
// earlier.
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

// Start starts cmd so that it is killed when this process dies. With
// ownGroup the child gets a process group of its own, which keeps a terminal's
// Ctrl-C away from it so the parent can stop it itself, in order.
func Start(cmd *exec.Cmd, ownGroup bool) error {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: ownGroup}
	r := spawnRequest{cmd: cmd, done: make(chan error, 1)}
	spawns <- r
	return <-r.done
}
