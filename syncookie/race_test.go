//go:build race

package syncookie

// The race detector slows TestGuessRate's loop tenfold, and the loop has no
// concurrency for it to check: guess less.
func init() { guesses = 1 << 20 }
