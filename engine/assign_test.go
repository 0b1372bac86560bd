package engine

import (
	"math"
	"math/rand"
	"testing"
)

// bruteAssign tries every assignment of min(rows, cols) pairs and returns the
// least total cost over the allowed ones (Forbidden pairs excluded), and
// whether any exists.
func bruteAssign(rows, cols int, cost [][]float64) (float64, bool) {
	best, found := math.Inf(1), false
	usedCol := make([]bool, cols)
	usedRow := make([]bool, rows)
	k := min(rows, cols)
	var rec func(made int, total float64)
	rec = func(made int, total float64) {
		if made == k {
			if total < best {
				best, found = total, true
			}
			return
		}
		// Pair the first unpaired row (or, with more rows than columns,
		// decide per row whether it gets a column).
		if rows <= cols {
			i := made
			for j := 0; j < cols; j++ {
				if !usedCol[j] && Allowed(cost[i][j]) {
					usedCol[j] = true
					rec(made+1, total+cost[i][j])
					usedCol[j] = false
				}
			}
			return
		}
		j := made
		for i := 0; i < rows; i++ {
			if !usedRow[i] && Allowed(cost[i][j]) {
				usedRow[i] = true
				rec(made+1, total+cost[i][j])
				usedRow[i] = false
			}
		}
	}
	rec(0, 0)
	return best, found
}

// TestAssignEqualsBruteForce: on every small problem (random costs, square
// and rectangular both ways, forbidden pairs, ties), the assignment's total
// equals the best that brute force finds, and it is a valid assignment.
func TestAssignEqualsBruteForce(t *testing.T) {
	rnd := rand.New(rand.NewSource(42))
	var a Assigner
	cases := 0
	for rows := 0; rows <= 6; rows++ {
		for cols := 0; cols <= 6; cols++ {
			for trial := 0; trial < 60; trial++ {
				cost := make([][]float64, rows)
				for i := range cost {
					cost[i] = make([]float64, cols)
					for j := range cost[i] {
						switch r := rnd.Intn(10); {
						case r == 0 && trial%3 == 0:
							cost[i][j] = Forbidden
						case trial%4 == 1:
							cost[i][j] = float64(rnd.Intn(3)) // many ties
						default:
							cost[i][j] = rnd.Float64()*10 - 5 // negatives: scores as costs
						}
					}
				}
				match := make([]int, rows)
				got := a.Assign(rows, cols, func(i, j int) float64 { return cost[i][j] }, match)
				want, ok := bruteAssign(rows, cols, cost)
				cases++
				if !ok {
					continue // no full assignment avoids forbidden pairs
				}
				if math.Abs(got-want) > 1e-9 {
					t.Fatalf("%dx%d trial %d: total %v, brute force %v; costs %v match %v", rows, cols, trial, got, want, cost, match)
				}
				// Valid: distinct columns, the promised number of pairs, totals add up.
				seen := map[int]bool{}
				pairs, sum := 0, 0.0
				for i, j := range match {
					if j < 0 {
						continue
					}
					if seen[j] || j >= cols {
						t.Fatalf("%dx%d: column %d given twice or out of range: %v", rows, cols, j, match)
					}
					seen[j] = true
					pairs++
					sum += cost[i][j]
				}
				if pairs != min(rows, cols) || math.Abs(sum-got) > 1e-9 {
					t.Fatalf("%dx%d: %d pairs totalling %v, want %d totalling %v", rows, cols, pairs, sum, min(rows, cols), got)
				}
			}
		}
	}
	if cases < 2000 {
		t.Fatalf("only %d cases", cases)
	}
}

// TestAssignMaximisesScore: assigning by cost = −score maximises the total
// score, which a greedy pass does not.
func TestAssignMaximisesScore(t *testing.T) {
	// Greedy gives row 0 its best (column 0, 0.9) and row 1 what is left
	// (column 1, 0.1): 1.0. Optimal: 0.8 + 0.8 = 1.6.
	score := [][]float64{{0.9, 0.8}, {0.8, 0.1}}
	var a Assigner
	match := make([]int, 2)
	total := -a.Assign(2, 2, func(i, j int) float64 { return -score[i][j] }, match)
	if match[0] != 1 || match[1] != 0 || math.Abs(total-1.6) > 1e-12 {
		t.Fatalf("match %v total %v, want [1 0] and 1.6", match, total)
	}
}

func TestAssignAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector adds allocations")
	}
	var a Assigner
	cost := randomCosts(64, 64, 1)
	match := make([]int, 64)
	f := func(i, j int) float64 { return cost[i*64+j] }
	a.Assign(64, 64, f, match) // sizes the buffers
	if n := testing.AllocsPerRun(20, func() { a.Assign(64, 64, f, match) }); n != 0 {
		t.Fatalf("%v allocations per Assign once sized", n)
	}
}

func randomCosts(n, m int, seed int64) []float64 {
	rnd := rand.New(rand.NewSource(seed))
	c := make([]float64, n*m)
	for i := range c {
		c[i] = -rnd.Float64()
	}
	return c
}

func benchmarkAssign(b *testing.B, n int) {
	cost := randomCosts(n, n, 7)
	match := make([]int, n)
	var a Assigner
	f := func(i, j int) float64 { return cost[i*n+j] }
	a.Assign(n, n, f, match)
	b.ReportAllocs()
	for b.Loop() {
		a.Assign(n, n, f, match)
	}
}

func BenchmarkAssign64(b *testing.B)  { benchmarkAssign(b, 64) }
func BenchmarkAssign256(b *testing.B) { benchmarkAssign(b, 256) }
