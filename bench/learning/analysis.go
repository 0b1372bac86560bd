package main

import (
	"fmt"
	"math"
	"os"
	"strings"
	"time"

	"github.com/modelrouter/modelrouter/bench/internal/loadgen"
	"github.com/modelrouter/modelrouter/bench/internal/report"
	"github.com/modelrouter/modelrouter/bench/internal/stats"
)

// windowCount is one window's answered requests, those the slowed sim
// answered, and their latencies.
type windowCount struct {
	all, slowed int
	latencies   []time.Duration
}

// analysis is a timeline cut into windows by the requests' scheduled
// arrival.
type analysis struct {
	windows       []windowCount
	failed        int
	slowW, backW  int           // the windows in which the slowdown and the recovery took effect
	base          float64       // the slowed sim's share in the second half of the warm-up
	dropT, climbT time.Duration // rolling share over smooth windows
	// dropHeld and climbHeld are the same over hold windows: a longer
	// rolling share, which a lucky or unlucky second does not cross.
	dropHeld, climbHeld time.Duration
	window              time.Duration
	smooth              int
	slowAt, backAt      time.Duration
}

// analyze counts the outcomes per window and finds the crossings: from the
// slowdown to the end of the first window whose rolling share (over smooth
// windows) is below drop × base, and from the recovery to the end of the
// first whose rolling share is back to climb × base; -1 when it never is
// (before the recovery, before the end).
func analyze(outcomes []loadgen.Outcome, slowedName string, total, warmup, slowAt, backAt, window time.Duration, smooth, hold int, drop, climb float64) *analysis {
	n := int(math.Ceil(float64(total) / float64(window)))
	a := &analysis{windows: make([]windowCount, n), window: window, smooth: smooth, slowAt: slowAt, backAt: backAt}
	for _, out := range outcomes {
		if !out.OK {
			a.failed++
			continue
		}
		i := min(int(out.Arrival.Offset/window), n-1)
		a.windows[i].all++
		if out.Sim == slowedName {
			a.windows[i].slowed++
		}
		a.windows[i].latencies = append(a.windows[i].latencies, out.Latency)
	}
	a.slowW, a.backW = a.windowOf(slowAt), a.windowOf(backAt)
	a.base = share(a.windows[a.windowOf(warmup/2):a.slowW])
	below := func(s float64) bool { return s < drop*a.base }
	above := func(s float64) bool { return s >= climb*a.base }
	a.dropT = a.crossing(a.slowW, a.backW, slowAt, smooth, below)
	a.climbT = a.crossing(a.backW, n, backAt, smooth, above)
	a.dropHeld = a.crossing(a.slowW, a.backW, slowAt, hold, below)
	a.climbHeld = a.crossing(a.backW, n, backAt, hold, above)
	return a
}

func (a *analysis) windowOf(d time.Duration) int { return min(int(d/a.window), len(a.windows)) }

// rolling is the share over the span windows that end with window i.
func (a *analysis) rolling(i, span int) float64 { return share(a.windows[max(i-span+1, 0) : i+1]) }

// crossing is the time from change to the end of the first window in
// [from, limit) whose rolling share over span windows is past the threshold,
// -1 if none is.
func (a *analysis) crossing(from, limit int, change time.Duration, span int, past func(float64) bool) time.Duration {
	for i := from; i < limit; i++ {
		if s := a.rolling(i, span); !math.IsNaN(s) && past(s) {
			return time.Duration(i+1)*a.window - change
		}
	}
	return -1
}

// share is the slowed sim's share of the windows' answered requests, NaN for
// none.
func share(ws []windowCount) float64 {
	var all, slowed int
	for _, w := range ws {
		all += w.all
		slowed += w.slowed
	}
	if all == 0 {
		return math.NaN()
	}
	return float64(slowed) / float64(all)
}

func latencies(ws []windowCount) []time.Duration {
	var out []time.Duration
	for _, w := range ws {
		out = append(out, w.latencies...)
	}
	return out
}

func printTimeline(o options, slowedName string, tl *timeline) {
	a := analyze(tl.outcomes, slowedName, o.warmup+o.slow+o.recover, o.warmup, tl.slowAt, tl.backAt, o.window, o.smooth, o.hold, o.drop, o.climb)
	n := len(a.windows)
	fmt.Printf("%d requests, %d failed, %d reached a full sim; slowdown in force at %.2fs, recovery at %.2fs\n",
		len(tl.outcomes), a.failed, tl.reachedFull, tl.slowAt.Seconds(), tl.backAt.Seconds())
	if tl.leak != "" {
		fmt.Printf("ANOMALY: %s\n", tl.leak)
	}

	fmt.Printf("\nshare of requests answered by %s, %% per %s window by arrival (rows of 5s; * marks the windows of the slowdown and the recovery)\n",
		slowedName, o.window)
	perRow := max(int(5*time.Second/o.window), 1)
	for row := 0; row < n; row += perRow {
		end := min(row+perRow, n)
		var b strings.Builder
		for i := row; i < end; i++ {
			mark := " "
			if i == a.slowW || i == a.backW {
				mark = "*"
			}
			if w := a.windows[i]; w.all > 0 {
				fmt.Fprintf(&b, "%s%3.0f", mark, 100*float64(w.slowed)/float64(w.all))
			} else {
				b.WriteString(mark + "  -")
			}
		}
		lat := stats.Sorted(latencies(a.windows[row:end]))
		fmt.Printf("  %5.1fs %s | %3.0f%% of %4d, p99 %s\n", (time.Duration(row) * o.window).Seconds(), b.String(),
			100*share(a.windows[row:end]), len(lat), report.Ms(stats.Percentile(lat, 0.99)))
	}

	fmt.Printf("\n%s's share in the second half of the warm-up: %.1f%%; thresholds: below %.0f%% of it (%.1f%%), back to %.0f%% of it (%.1f%%)\n",
		slowedName, 100*a.base, 100*o.drop, 100*o.drop*a.base, 100*o.climb, 100*o.climb*a.base)
	left := time.Duration(n)*o.window - tl.backAt
	for _, span := range []int{o.smooth, o.hold} {
		dropT, climbT := a.dropT, a.climbT
		if span == o.hold {
			dropT, climbT = a.dropHeld, a.climbHeld
		}
		judged := time.Duration(span) * o.window
		fmt.Printf("  rolling %-5s share: fell below after the slowdown in %s; back after the recovery in %s\n",
			judged, since(dropT, tl.backAt-tl.slowAt), since(climbT, left))
	}
	fmt.Printf("  (from the change to the end of the first %s window whose rolling share is past the threshold; a rolling share lags by up to its span,\n"+
		"   the short one reacts first and may cross on a lucky second, the long one does not)\n", o.window)

	fmt.Println("\nphases (by arrival)")
	t := &report.Table{Left: 1}
	t.Row("phase", "requests", "share "+slowedName, "p50", "p99")
	for _, p := range []struct {
		name     string
		from, to int
	}{
		{"warm-up", 0, a.slowW},
		{"warm-up, 2nd half", a.windowOf(o.warmup / 2), a.slowW},
		{fmt.Sprintf("%s %.3g× slower", slowedName, o.slowdown), a.slowW, a.backW},
		{"recovered", a.backW, n},
	} {
		lat := stats.Sorted(latencies(a.windows[p.from:p.to]))
		t.Row(p.name, fmt.Sprint(len(lat)), fmt.Sprintf("%.1f%%", 100*share(a.windows[p.from:p.to])),
			report.Ms(stats.Percentile(lat, 0.5)), report.Ms(stats.Percentile(lat, 0.99)))
	}
	t.Write(os.Stdout, "  ")
}

// since prints a crossing time, or that there was none within limit.
func since(d, limit time.Duration) string {
	if d < 0 {
		return "never (within " + limit.Round(time.Millisecond).String() + ")"
	}
	return d.Round(time.Millisecond).String()
}
