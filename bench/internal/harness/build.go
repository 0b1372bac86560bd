package harness

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

const modulePath = "github.com/modelrouter/modelrouter"

// Gateway returns the path of the gateway binary: prebuilt when it is set,
// else a fresh `go build ./cmd/modelrouter` of the enclosing module into the
// temporary directory, so the benchmark measures the code in the checkout.
func (h *Harness) Gateway(prebuilt string) (string, error) {
	if prebuilt != "" {
		abs, err := filepath.Abs(prebuilt)
		if err != nil {
			return "", fmt.Errorf("locating %s: %w", prebuilt, err)
		}
		if _, err := os.Stat(abs); err != nil {
			return "", fmt.Errorf("gateway binary: %w", err)
		}
		return abs, nil
	}
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(h.Dir, "modelrouter")
	start := time.Now()
	fmt.Fprintf(os.Stderr, "building ./cmd/modelrouter ...")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/modelrouter")
	cmd.Dir = root
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr)
		return "", fmt.Errorf("go build ./cmd/modelrouter in %s: %w\n%s", root, err, out.Bytes())
	}
	fmt.Fprintf(os.Stderr, " done in %.1fs\n", time.Since(start).Seconds())
	return bin, nil
}

// moduleRoot finds the directory of the modelrouter module from the working
// directory, as the go command does.
func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("run the benchmark from inside the modelrouter checkout (or pass -bin)")
	}
	data, err := os.ReadFile(gomod)
	if err != nil {
		return "", fmt.Errorf("reading %s: %w", gomod, err)
	}
	if !bytes.Contains(data, []byte("module "+modulePath+"\n")) {
		return "", fmt.Errorf("%s is not the %s module: run from inside the checkout (or pass -bin)", gomod, modulePath)
	}
	return filepath.Dir(gomod), nil
}

// GatewayAt builds ./cmd/modelrouter as of the git commit ref of the
// enclosing repository, for a contender that runs an older gateway: it checks
// ref out in a temporary `git worktree` inside the harness directory, builds
// there, and removes the worktree again (whether or not the build worked).
func (h *Harness) GatewayAt(ref string) (string, error) {
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	git := func(args ...string) ([]byte, error) {
		cmd := exec.Command("git", append([]string{"-C", root}, args...)...)
		return cmd.CombinedOutput()
	}
	out, err := git("rev-parse", "--verify", "--short", ref+"^{commit}")
	if err != nil {
		return "", fmt.Errorf("git rev-parse %s: %w: %s", ref, err, bytes.TrimSpace(out))
	}
	commit := string(bytes.TrimSpace(out))
	src := filepath.Join(h.Dir, "src-"+commit)
	if out, err := git("worktree", "add", "--detach", src, commit); err != nil {
		return "", fmt.Errorf("git worktree add %s: %w: %s", commit, err, bytes.TrimSpace(out))
	}
	defer func() {
		if out, err := git("worktree", "remove", "--force", src); err != nil {
			fmt.Fprintf(os.Stderr, "git worktree remove %s: %v: %s\n", src, err, bytes.TrimSpace(out))
			_ = os.RemoveAll(src)
			_, _ = git("worktree", "prune")
		}
	}()
	bin := filepath.Join(h.Dir, "modelrouter-"+commit)
	start := time.Now()
	fmt.Fprintf(os.Stderr, "building ./cmd/modelrouter at %s ...", commit)
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/modelrouter")
	cmd.Dir = src
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr)
		return "", fmt.Errorf("go build ./cmd/modelrouter at %s: %w\n%s", commit, err, buf.Bytes())
	}
	fmt.Fprintf(os.Stderr, " done in %.1fs\n", time.Since(start).Seconds())
	return bin, nil
}
