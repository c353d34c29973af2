// Command chatclient is the demo client: it joins a chat server (or rawlb in
// front of several) under a nickname, sends each line typed as
// "[nickname] text", and prints every line the server sends, like the
// original project's chat_clnt.c.
//
//	chatclient <host> <port> <nickname>
//
// A line "q" or "Q", or the end of input, quits (exit status 0). If the
// server closes the connection, it says so and exits with status 1. The logic
// lives in internal/chat; see that package for driving it from a Go test.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/rawlb/rawlb/internal/chat"
)

// version is stamped in by `make build` (-X main.version=...).
var version = "dev"

const usageLine = "usage: chatclient <host> <port> <nickname>"

// dialTimeout bounds the connect, so a wrong address fails in seconds rather
// than after the kernel's minutes of SYN retries.
const dialTimeout = 10 * time.Second

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// run is main without the process around it, so tests can call it. It
// returns the exit status: 0 when the user quit, 1 when the connection could
// not be made or was dropped, 2 for bad arguments.
func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("chatclient", flag.ContinueOnError)
	showVersion := fs.Bool("version", false, "print the version and exit")
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stdout)
			fmt.Fprintln(stdout, usageLine)
			fmt.Fprintln(stdout, "  Type lines to send them; a line q or Q quits.")
			fs.PrintDefaults()
			return 0
		}
		fmt.Fprintln(stderr, usageLine)
		return 2
	}
	if *showVersion {
		fmt.Fprintln(stdout, "chatclient", version)
		return 0
	}
	if fs.NArg() != 3 {
		fmt.Fprintln(stderr, usageLine)
		return 2
	}
	host, portArg, nick := fs.Arg(0), fs.Arg(1), fs.Arg(2)
	if port, err := strconv.ParseUint(portArg, 10, 16); err != nil || port == 0 {
		fmt.Fprintf(stderr, "%s\nchatclient: invalid port %q\n", usageLine, portArg)
		return 2
	}
	if err := chat.ValidateNickname(nick); err != nil {
		fmt.Fprintf(stderr, "%s\nchatclient: %v\n", usageLine, err)
		return 2
	}
	addr := net.JoinHostPort(host, portArg)

	ctx, cancel := context.WithTimeout(context.Background(), dialTimeout)
	c, err := chat.Dial(ctx, addr, nick)
	cancel()
	if err != nil {
		fmt.Fprintf(stderr, "chatclient: cannot connect to %s: %v\n", addr, err)
		return 1
	}
	err = c.Run(stdin, stdout)
	switch {
	case err == nil:
		return 0
	case errors.Is(err, chat.ErrClosedByServer):
		fmt.Fprintf(stderr, "connection to %s closed by the server\n", addr)
	default:
		fmt.Fprintf(stderr, "chatclient: %v\n", err)
	}
	return 1
}
