package flood_test

import (
	"context"
	"log"
	"net/netip"
	"time"

	"github.com/rawlb/rawlb/internal/flood"
	"github.com/rawlb/rawlb/internal/netlab"
)

// A test floods the balancer from the lab's client for at most a second
// or a million SYNs, then checks what the balancer made of them.
func ExampleSYNFlood() {
	var lab *netlab.Lab // from netlab.New(t, ...)
	f := flood.SYNFlood{
		Link: flood.Link{
			Netns:  lab.Client.Name, // Run creates its sockets there
			Iface:  lab.Client.Iface,
			DstMAC: lab.Balancer.MAC,
		},
		Dst:      netip.MustParseAddrPort("198.18.0.2:20000"),
		Sources:  netip.MustParsePrefix("198.18.128.0/17"), // no route back
		Count:    1_000_000,
		Duration: time.Second,
		Seed:     1,
	}
	st, err := f.Run(context.Background())
	if err != nil {
		log.Fatal(err)
	}
	log.Printf("%d SYNs in %v (%.0f/s), stopped by %v", st.Sent, st.Elapsed, st.Rate(), st.Stop)
}

// A test resets a live connection from off the path: the client's
// address and port, and the server's next expected sequence number.
func ExampleRSTSpray() {
	var lab *netlab.Lab
	var client netip.AddrPort // the connection's client end
	var rcvNxt uint32         // the server's RCV.NXT, read off the wire
	r := flood.RSTSpray{
		Link:  flood.Link{Netns: lab.Client.Name, Iface: lab.Client.Iface, DstMAC: lab.Balancer.MAC},
		Src:   client,
		Dst:   netip.MustParseAddrPort("198.18.0.2:20000"),
		Count: 1,
		Seq:   &rcvNxt,
	}
	if _, err := r.Run(context.Background()); err != nil {
		log.Fatal(err)
	}
}
