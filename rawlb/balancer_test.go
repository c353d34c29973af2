package rawlb

import (
	"testing"
	"time"
)

func TestNextSweep(t *testing.T) {
	for _, tc := range []struct{ took, want time.Duration }{
		{0, minSweepEvery}, // a small table: as often as the floor allows
		{30 * time.Millisecond, 300 * time.Millisecond}, // ten times the sweep
		{300 * time.Millisecond, maxSweepEvery},         // 1,000,000 flows: the cap
	} {
		if got := nextSweep(tc.took); got != tc.want {
			t.Errorf("nextSweep(%v) = %v, want %v", tc.took, got, tc.want)
		}
	}
}
