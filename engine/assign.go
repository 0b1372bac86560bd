package engine

import "math"

// Assigner solves the assignment problem: given a cost for every (row,
// column) pair, pick one distinct column for each row (or one row for each
// column, whichever are fewer) so that the total cost is minimal. The
// optimal strategy uses it to assign a batch of waiting requests (rows) to
// freed slots (columns) by maximum total score: cost = −score.
//
// The method is the Hungarian algorithm (Kuhn, "The Hungarian method for the
// assignment problem", 1955; Munkres, 1957) in its O(n²·m) form with row and
// column potentials and shortest augmenting paths (Edmonds & Karp, 1972;
// Tomizawa, 1971), as presented in "Hungarian algorithm for solving the
// assignment problem" (e-maxx.ru / cp-algorithms.com). For n rows and m ≥ n
// columns it adds one row at a time and grows the matching along the
// cheapest augmenting path, so it is exact: it equals brute force on every
// input (see the property test).
//
// Ours rather than a library's: the Go implementations published
// (github.com/oddg/hungarian-algorithm, 2017, and its fork
// bitbucket.org/dchapes/assignment, 2019) take square matrices only, so
// neither solves a batch with more waiters than slots, nor knows forbidden
// pairs, and both allocate on every call.
//
// An Assigner reuses its buffers across calls: Assign allocates only when a
// problem is larger than every one before. It is not safe for concurrent use.
type Assigner struct {
	u, v, minv []float64
	p, way     []int
	used       []bool
	cost       []float64 // the problem, transposed when it has more rows than columns
}

// Forbidden is a cost that marks a pair as impossible (a request that cannot
// use a backend). An assignment uses a forbidden pair only when no other
// assignment of the same size exists; callers check with Allowed.
var Forbidden = math.Inf(1)

// forbiddenCost stands in for Forbidden inside the algorithm, which needs
// finite arithmetic: larger than any sum of real costs.
const forbiddenCost = 1e15

// Allowed reports whether a cost is not Forbidden.
func Allowed(cost float64) bool { return !math.IsInf(cost, 1) && cost < forbiddenCost }

// Assign solves the problem of rows×cols costs, where cost(i, j) is the cost
// of giving column j to row i. It writes to match[i] the column given to row
// i, or -1 when row i gets none (more rows than columns), and returns the
// total cost of the pairs made. match must have length rows.
func (a *Assigner) Assign(rows, cols int, cost func(i, j int) float64, match []int) float64 {
	for i := range match {
		match[i] = -1
	}
	if rows == 0 || cols == 0 {
		return 0
	}
	// The algorithm wants rows ≤ columns: transpose when needed.
	n, m, transposed := rows, cols, false
	if rows > cols {
		n, m, transposed = cols, rows, true
	}
	a.grow(n, m)
	c := a.cost[:n*m]
	for i := 0; i < n; i++ {
		for j := 0; j < m; j++ {
			var x float64
			if transposed {
				x = cost(j, i)
			} else {
				x = cost(i, j)
			}
			if !Allowed(x) || math.IsNaN(x) {
				x = forbiddenCost
			}
			c[i*m+j] = x
		}
	}
	// 1-based arrays: index 0 is the virtual start column.
	u, v, p, way, minv, used := a.u[:n+1], a.v[:m+1], a.p[:m+1], a.way[:m+1], a.minv[:m+1], a.used[:m+1]
	clear(u)
	clear(v)
	clear(p)
	clear(way)
	for i := 1; i <= n; i++ {
		p[0] = i
		j0 := 0
		for j := range minv {
			minv[j] = math.Inf(1)
			used[j] = false
		}
		for {
			used[j0] = true
			i0, delta, j1 := p[j0], math.Inf(1), 0
			for j := 1; j <= m; j++ {
				if used[j] {
					continue
				}
				if cur := c[(i0-1)*m+j-1] - u[i0] - v[j]; cur < minv[j] {
					minv[j], way[j] = cur, j0
				}
				if minv[j] < delta {
					delta, j1 = minv[j], j
				}
			}
			for j := 0; j <= m; j++ {
				if used[j] {
					u[p[j]] += delta
					v[j] -= delta
				} else {
					minv[j] -= delta
				}
			}
			j0 = j1
			if p[j0] == 0 {
				break
			}
		}
		for j0 != 0 {
			j1 := way[j0]
			p[j0] = p[j1]
			j0 = j1
		}
	}
	total := 0.0
	for j := 1; j <= m; j++ {
		if p[j] == 0 {
			continue
		}
		i := p[j] - 1
		total += c[i*m+j-1]
		if transposed {
			match[j-1] = i
		} else {
			match[i] = j - 1
		}
	}
	return total
}

// grow makes the buffers hold an n×m problem.
func (a *Assigner) grow(n, m int) {
	if cap(a.cost) < n*m {
		a.cost = make([]float64, n*m)
	}
	if cap(a.u) < n+1 {
		a.u = make([]float64, n+1)
	}
	if cap(a.v) < m+1 {
		a.v = make([]float64, m+1)
		a.minv = make([]float64, m+1)
		a.p = make([]int, m+1)
		a.way = make([]int, m+1)
		a.used = make([]bool, m+1)
	}
}
