package harness

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/modelrouter/modelrouter/internal/childproc"
)

// startTimeout bounds how long a process may take to accept connections; a
// Caddy with many modules on a loaded 2-core machine takes a second or two.
const startTimeout = 30 * time.Second

// stopGrace is how long a process may take to exit after SIGTERM before it
// is killed.
const stopGrace = 2 * time.Second

// Process is one child process, its output going to a log file in the
// harness directory.
type Process struct {
	Name    string
	LogPath string

	cmd    *exec.Cmd
	exited chan struct{} // closed when the process has exited
	err    error         // how it exited; read after exited is closed
}

// Start runs bin with args (and extra environment variables) as a child
// process named name; stdout and stderr go to <Dir>/<name>.log.
func (h *Harness) Start(name, bin string, args, env []string) (*Process, error) {
	logPath := filepath.Join(h.Dir, name+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Dir = h.Dir
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	p := &Process{Name: name, LogPath: logPath, cmd: cmd, exited: make(chan struct{})}
	if err := h.track(p); err != nil {
		logFile.Close()
		return nil, err
	}
	if err := childproc.Start(cmd, true); err != nil {
		logFile.Close()
		close(p.exited)
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	go func() {
		p.err = cmd.Wait()
		logFile.Close()
		close(p.exited)
	}()
	return p, nil
}

// WaitListening returns once every addr accepts TCP connections, or an error
// with the end of the log if the process exits first or takes too long.
func (p *Process) WaitListening(addrs ...string) error {
	deadline := time.Now().Add(startTimeout)
	for _, addr := range addrs {
		for {
			conn, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
			if err == nil {
				conn.Close()
				break
			}
			select {
			case <-p.exited:
				return fmt.Errorf("%s exited before listening on %s (%v): %s", p.Name, addr, p.err, p.Failure())
			case <-time.After(20 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%s did not listen on %s within %s: %s", p.Name, addr, startTimeout, p.Failure())
			}
		}
	}
	return nil
}

// Alive reports whether the process is still running.
func (p *Process) Alive() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// Stop ends the process: SIGTERM, then SIGKILL after a grace period.
func (p *Process) Stop() {
	if !p.Alive() || p.cmd.Process == nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(stopGrace):
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
}

// Failure summarises why the process failed from its log: a Go panic line,
// else the last error Caddy logged (a config error names the file and line),
// else the last few lines.
func (p *Process) Failure() string {
	data, err := os.ReadFile(p.LogPath)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	var lastError string
	for _, l := range lines {
		if strings.HasPrefix(l, "panic:") || strings.HasPrefix(l, "fatal error:") {
			return l
		}
		if strings.HasPrefix(l, "Error:") {
			lastError = strings.TrimSpace(strings.TrimPrefix(l, "Error:"))
			continue
		}
		var entry struct {
			Level string `json:"level"`
			Msg   string `json:"msg"`
			Error string `json:"error"`
		}
		if json.Unmarshal([]byte(l), &entry) == nil && (entry.Level == "error" || entry.Level == "fatal" || entry.Level == "panic") {
			lastError = entry.Msg
			if entry.Error != "" {
				lastError += ": " + entry.Error
			}
		}
	}
	if lastError != "" {
		return lastError
	}
	if len(lines) > 5 {
		lines = lines[len(lines)-5:]
	}
	if len(lines) == 0 || (len(lines) == 1 && lines[0] == "") {
		return "(empty log " + p.LogPath + ")"
	}
	return strings.Join(lines, " | ")
}

// StartCaddy writes config to <Dir>/<name>.caddyfile (adapter "caddyfile") or
// <name>.json (adapter "") and runs `bin run` on it, returning once every
// listen address accepts connections. When Caddy rejects the config the error
// carries Caddy's message. Each Caddy gets its own XDG directories inside the
// harness directory, so nothing is written to the user's Caddy storage.
func (h *Harness) StartCaddy(name, bin, config, adapter string, listen ...string) (*Process, error) {
	ext := ".json"
	if adapter != "" {
		ext = "." + adapter
	}
	path := filepath.Join(h.Dir, name+ext)
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		return nil, fmt.Errorf("writing %s config: %w", name, err)
	}
	args := []string{"run", "--config", path}
	if adapter != "" {
		args = append(args, "--adapter", adapter)
	}
	xdg := filepath.Join(h.Dir, name+"-xdg")
	env := []string{"XDG_CONFIG_HOME=" + filepath.Join(xdg, "config"), "XDG_DATA_HOME=" + filepath.Join(xdg, "data")}
	p, err := h.Start(name, bin, args, env)
	if err != nil {
		return nil, err
	}
	if err := p.WaitListening(listen...); err != nil {
		p.Stop()
		return nil, err
	}
	return p, nil
}

// ErrExited is returned by Check for a process that has exited.
var ErrExited = errors.New("process exited")

// Check returns ErrExited, with the log summary, if the process exited.
func (p *Process) Check() error {
	if p.Alive() {
		return nil
	}
	return fmt.Errorf("%s: %w (%v): %s", p.Name, ErrExited, p.err, p.Failure())
}
