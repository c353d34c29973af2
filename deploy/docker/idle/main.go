// Command idle keeps a container running until it is told to stop, for the
// compose demo's client container: the image is FROM scratch, so it has no
// shell and no sleep(1), and chatclient has no mode that waits.
//
//	idle
//
// It exits with status 0 on SIGTERM (docker stop, docker compose down) or
// SIGINT. As PID 1 of a container it must handle SIGTERM itself: the kernel
// drops signals that PID 1 has no handler for, and docker stop would then
// wait its full timeout (10 s) before SIGKILL.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

// version is stamped in by `make image` (-X main.version=...).
var version = "dev"

func main() {
	if len(os.Args) > 1 {
		if os.Args[1] == "-version" || os.Args[1] == "--version" {
			fmt.Println("idle", version)
			return
		}
		fmt.Fprintln(os.Stderr, "usage: idle (waits for SIGTERM or SIGINT, then exits 0)")
		os.Exit(2)
	}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, os.Interrupt)
	// Said only once the handler is in place, so that whoever waits for
	// this line knows a SIGTERM from then on ends idle cleanly.
	fmt.Fprintln(os.Stderr, "idle: waiting for SIGTERM")
	sig := <-stop
	fmt.Fprintln(os.Stderr, "idle: got", sig, "- exiting")
}
