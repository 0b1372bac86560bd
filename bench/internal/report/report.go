// Package report formats benchmark results: aligned tables, durations in
// milliseconds, ratios, and PASS/MISS verdicts against targets.
package report

import (
	"fmt"
	"io"
	"math"
	"strings"
	"time"
	"unicode/utf8"
)

// Table is a text table whose first Left columns are left-aligned (names) and
// the others right-aligned (numbers).
type Table struct {
	Left int
	rows [][]string
}

// Row adds a row; the first row added is the header.
func (t *Table) Row(cells ...string) { t.rows = append(t.rows, cells) }

// Write prints the table, each line starting with indent.
func (t *Table) Write(w io.Writer, indent string) {
	var widths []int
	for _, r := range t.rows {
		for i, c := range r {
			if i >= len(widths) {
				widths = append(widths, 0)
			}
			widths[i] = max(widths[i], utf8.RuneCountInString(c))
		}
	}
	for _, r := range t.rows {
		var b strings.Builder
		b.WriteString(indent)
		for i, c := range r {
			pad := strings.Repeat(" ", widths[i]-utf8.RuneCountInString(c))
			if i > 0 {
				b.WriteString("  ")
			}
			if i < t.Left {
				b.WriteString(c + pad)
			} else {
				b.WriteString(pad + c)
			}
		}
		fmt.Fprintln(w, strings.TrimRight(b.String(), " "))
	}
}

// Ms prints a duration in milliseconds with a precision that suits its size.
func Ms(d time.Duration) string {
	ms := float64(d) / float64(time.Millisecond)
	switch {
	case d == 0:
		return "-"
	case ms < 10:
		return fmt.Sprintf("%.2fms", ms)
	case ms < 100:
		return fmt.Sprintf("%.1fms", ms)
	default:
		return fmt.Sprintf("%.0fms", ms)
	}
}

// Ratio prints a ratio with two decimals, "n/a" when it is missing (NaN).
func Ratio(r float64) string {
	if math.IsNaN(r) {
		return "n/a"
	}
	return fmt.Sprintf("%.2f", r)
}

// PreciseRatio prints a ratio with three decimals, for comparisons with a
// target, where two decimals could show 0.90 for a 0.904 that misses 0.90.
func PreciseRatio(r float64) string {
	if math.IsNaN(r) {
		return "n/a"
	}
	return fmt.Sprintf("%.3f", r)
}

// Verdict prints a target check: PASS, MISS, or n/a when it was not measured.
func Verdict(ok, measured bool) string {
	switch {
	case !measured:
		return "n/a"
	case ok:
		return "PASS"
	default:
		return "MISS"
	}
}

// AtMost checks r ≤ target, AtLeast r ≥ target; a NaN ratio is n/a.
func AtMost(r, target float64) string  { return Verdict(r <= target, !math.IsNaN(r)) }
func AtLeast(r, target float64) string { return Verdict(r >= target, !math.IsNaN(r)) }
