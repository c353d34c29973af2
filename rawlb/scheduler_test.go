package rawlb

import "testing"

func TestSchedulerRoundRobin(t *testing.T) {
	up := []bool{true, true, true}
	s := &scheduler{algo: RoundRobin, n: 3, usable: func(i int) bool { return up[i] }}
	count := make([]int, 3)
	for k := 0; k < 30; k++ {
		count[s.pick()]++
	}
	if count[0] != 10 || count[1] != 10 || count[2] != 10 {
		t.Fatalf("30 picks over 3 healthy backends: %v, want 10 each", count)
	}
	up[1] = false
	count = make([]int, 3)
	for k := 0; k < 30; k++ {
		count[s.pick()]++
	}
	if count[1] != 0 || count[0] != 15 || count[2] != 15 {
		t.Fatalf("30 picks with backend 1 down: %v, want 15/0/15", count)
	}
	up[0], up[2] = false, false
	if i := s.pick(); i != -1 {
		t.Fatalf("all down: picked %d, want -1", i)
	}
}

func TestSchedulerLeastConnections(t *testing.T) {
	live := []int{5, 2, 7}
	up := []bool{true, true, true}
	s := &scheduler{algo: LeastConnections, n: 3, usable: func(i int) bool { return up[i] }, live: func(i int) int { return live[i] }}
	for k := 0; k < 5; k++ {
		if i := s.pick(); i != 1 {
			t.Fatalf("picked %d with live %v, want 1", i, live)
		}
	}
	up[1] = false
	if i := s.pick(); i != 0 {
		t.Fatalf("backend 1 down: picked %d, want 0", i)
	}
	// Ties rotate instead of always landing on the first.
	live = []int{1, 1, 1}
	up[1] = true
	seen := map[int]bool{}
	for k := 0; k < 3; k++ {
		seen[s.pick()] = true
	}
	if len(seen) != 3 {
		t.Fatalf("ties went to %v, want all three", seen)
	}
}

func TestDefaultWorkers(t *testing.T) {
	for cpus, want := range map[int]int{1: 1, 2: 1, 4: 1, 8: 2, 12: 3, 16: 4, 64: 4} {
		if got := defaultWorkers(cpus); got != want {
			t.Errorf("defaultWorkers(%d) = %d, want %d", cpus, got, want)
		}
	}
}
