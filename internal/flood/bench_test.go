package flood_test

import (
	"fmt"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/rawlb/rawlb/internal/flood"
)

// BenchmarkSYNFlood measures how fast the client host can flood the
// balancer host (its kernel answering each SYN to a closed port with a
// RST that has no route back): one op is one frame, so ns/op is the cost
// of a frame and frames/s the rate. On a veth the receiving host's whole
// stack runs inside the sender's send, so this is the rate of the pair,
// not of the generator alone. delivered is the share of frames the
// target's TCP counted (Tcp.InSegs); below 1 the veth dropped some.
// cpu-ns/frame is this process's user and system time per frame, which
// includes the softirq work run inside its sends (unless the kernel
// accounts IRQ time apart): on a machine shared with other work it is
// steadier than the rate, which depends on how much CPU the run got.
//
//	sudo go test ./internal/flood -run '^$' -bench SYNFlood -benchtime 1000000x -count 3
func BenchmarkSYNFlood(b *testing.B) {
	l := twoHosts(b)
	for _, m := range []flood.Method{flood.Sendmmsg, flood.TXRing} {
		for _, w := range []int{1, 2} {
			b.Run(fmt.Sprintf("%v/workers=%d", m, w), func(b *testing.B) {
				before := l.Balancer.Snmp(b)["Tcp.InSegs"]
				f := flood.SYNFlood{
					Link: linkFrom(l), Dst: target, Sources: spoofed,
					Count: b.N, Duration: 10 * time.Minute, Seed: 1, Method: m, Workers: w,
				}
				cpu0 := cpuTime(b)
				b.ResetTimer()
				st, err := f.Run(b.Context())
				b.StopTimer()
				cpu := cpuTime(b) - cpu0
				if err != nil {
					b.Fatal(err)
				}
				if st.Sent != b.N {
					b.Fatalf("sent %d of %d", st.Sent, b.N)
				}
				in := l.Balancer.Snmp(b)["Tcp.InSegs"] - before
				b.ReportMetric(st.Rate(), "frames/s")
				b.ReportMetric(float64(in)/float64(st.Sent), "delivered")
				b.ReportMetric(float64(cpu.Nanoseconds())/float64(st.Sent), "cpu-ns/frame")
			})
		}
	}
}

// cpuTime is the process's user plus system time so far.
func cpuTime(b *testing.B) time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
