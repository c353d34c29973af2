//go:build race

package conntrack

// The race detector slows the million-flow tests tenfold without finding
// anything the smaller concurrent tests would not.
func init() { raceEnabled = true }
