package rawlb

import "testing"

// TestDefaultWorkers: one worker per CPU, at least one and at most eight
// (see DefaultWorkers for the measurements behind it).
func TestDefaultWorkers(t *testing.T) {
	for cpus, want := range map[int]int{0: 1, 1: 1, 2: 2, 4: 4, 8: 8, 12: 8, 64: 8} {
		if got := DefaultWorkers(cpus); got != want {
			t.Errorf("DefaultWorkers(%d) = %d, want %d", cpus, got, want)
		}
	}
}
