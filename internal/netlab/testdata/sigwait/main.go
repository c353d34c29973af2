// Command sigwait is the binary netlab's self-test builds with BuildBinary
// and runs with StartProcess: it reports the interfaces it sees, proving it
// runs inside the lab host's namespace, then waits for SIGTERM and exits
// with a code the test checks.
package main

import (
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM)
	ifaces, err := net.Interfaces()
	if err != nil {
		fmt.Fprintln(os.Stderr, "interfaces:", err)
		os.Exit(1)
	}
	for _, ifc := range ifaces {
		addrs, _ := ifc.Addrs()
		fmt.Println("iface", ifc.Name, addrs)
	}
	fmt.Println("ready")
	<-sig
	fmt.Fprintln(os.Stderr, "terminated")
	os.Exit(3)
}
