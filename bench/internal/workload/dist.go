package workload

import (
	"fmt"
	"math"
	"math/rand/v2"
)

// Dist is a distribution of token counts (of an answer or a prompt).
type Dist interface {
	// Draw returns one count in [Min, Max].
	Draw(rng *rand.Rand) int
	// Mean is the exact mean of the counts Draw returns.
	Mean() float64
	// Min and Max bound the counts.
	Min() int
	Max() int
	String() string
}

// Constant always draws N.
type Constant int

func (c Constant) Draw(*rand.Rand) int { return int(c) }
func (c Constant) Mean() float64       { return float64(c) }
func (c Constant) Min() int            { return int(c) }
func (c Constant) Max() int            { return int(c) }
func (c Constant) String() string      { return fmt.Sprintf("%d", int(c)) }

// Uniform draws every whole number of [Lo, Hi] with the same chance.
type Uniform struct{ Lo, Hi int }

func (u Uniform) Draw(rng *rand.Rand) int { return u.Lo + rng.IntN(u.Hi-u.Lo+1) }
func (u Uniform) Mean() float64           { return float64(u.Lo+u.Hi) / 2 }
func (u Uniform) Min() int                { return u.Lo }
func (u Uniform) Max() int                { return u.Hi }
func (u Uniform) String() string          { return fmt.Sprintf("uniform %d-%d", u.Lo, u.Hi) }

// continuous is a distribution on the reals, drawn as whole numbers: a draw
// is ⌊x⌋ for x from the distribution restricted to [lo, hi+1), so every
// whole number of [lo, hi] can come out and the mean is exact:
// Σ k × (F(k+1) − F(k)) over k in [lo, hi].
type continuous struct {
	lo, hi int
	cdf    func(x float64) float64 // of the unrestricted distribution
	inv    func(p float64) float64 // its inverse
}

func (c continuous) draw(rng *rand.Rand) int {
	lo, hi := c.cdf(float64(c.lo)), c.cdf(float64(c.hi+1))
	k := int(math.Floor(c.inv(lo + rng.Float64()*(hi-lo))))
	return min(max(k, c.lo), c.hi) // rounding at the very edges
}

func (c continuous) mean() float64 {
	lo, hi := c.cdf(float64(c.lo)), c.cdf(float64(c.hi+1))
	var m float64
	for k := c.lo; k <= c.hi; k++ {
		m += float64(k) * (c.cdf(float64(k+1)) - c.cdf(float64(k)))
	}
	return m / (hi - lo)
}

// LogUniform draws ⌊x⌋ with ln x uniform on [ln Lo, ln(Hi+1)): as many draws
// between 50 and 500 as between 500 and 5000, as prompt sizes tend to be.
type LogUniform struct{ Lo, Hi int }

func (l LogUniform) c() continuous {
	return continuous{lo: l.Lo, hi: l.Hi, cdf: math.Log, inv: math.Exp}
}
func (l LogUniform) Draw(rng *rand.Rand) int { return l.c().draw(rng) }
func (l LogUniform) Mean() float64           { return l.c().mean() }
func (l LogUniform) Min() int                { return l.Lo }
func (l LogUniform) Max() int                { return l.Hi }
func (l LogUniform) String() string          { return fmt.Sprintf("log-uniform %d-%d", l.Lo, l.Hi) }

// LogNormal draws ⌊x⌋ for x log-normal with the given Median (e^μ) and Sigma
// (σ of ln x), restricted to [Lo, Hi+1) (truncated, not clamped: no pile-up
// at the bounds). A heavy right tail: most answers short, a few very long.
type LogNormal struct {
	Lo, Hi int
	Median float64
	Sigma  float64
}

func (l LogNormal) c() continuous {
	mu := math.Log(l.Median)
	return continuous{
		lo: l.Lo, hi: l.Hi,
		cdf: func(x float64) float64 { return 0.5 * math.Erfc(-(math.Log(x)-mu)/(l.Sigma*math.Sqrt2)) },
		inv: func(p float64) float64 { return math.Exp(mu + l.Sigma*math.Sqrt2*math.Erfinv(2*p-1)) },
	}
}
func (l LogNormal) Draw(rng *rand.Rand) int { return l.c().draw(rng) }
func (l LogNormal) Mean() float64           { return l.c().mean() }
func (l LogNormal) Min() int                { return l.Lo }
func (l LogNormal) Max() int                { return l.Hi }
func (l LogNormal) String() string {
	return fmt.Sprintf("log-normal median %g σ %g within %d-%d", l.Median, l.Sigma, l.Lo, l.Hi)
}
