// Package stats holds the arithmetic the benchmarks share: nearest-rank
// percentiles over latency samples, medians, and ratios that tolerate a
// missing baseline.
package stats

import (
	"math"
	"slices"
	"time"
)

// Percentile returns the q-quantile (0 < q ≤ 1) of sorted by the nearest-rank
// method, or 0 for no samples.
func Percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// Sorted returns a sorted copy of d.
func Sorted(d []time.Duration) []time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s
}

// Ratio is num/den, NaN when either is missing (zero or NaN).
func Ratio(num, den float64) float64 {
	if den == 0 || num == 0 || math.IsNaN(num) || math.IsNaN(den) {
		return math.NaN()
	}
	return num / den
}

// DurationRatio is Ratio for durations.
func DurationRatio(num, den time.Duration) float64 { return Ratio(float64(num), float64(den)) }

// Median returns the median of xs, NaN for none.
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
