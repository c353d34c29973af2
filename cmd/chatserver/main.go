// Command chatserver is the demo backend that rawlb balances: a TCP chat
// server that sends every line a client sends to every client connected to
// it, the sender included, like the original project's chat_serv.c.
//
//	chatserver [flags] <port>
//
// It logs each join and leave on stderr and stops cleanly on SIGINT or
// SIGTERM. The logic lives in internal/chat; see that package for driving a
// server from a Go test.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strconv"
	"syscall"

	"github.com/rawlb/rawlb/internal/chat"
)

// version is stamped in by `make build` (-X main.version=...).
var version = "dev"

const usageLine = "usage: chatserver [flags] <port>"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// run is main without the process around it, so tests can call it. It
// returns the exit status: 0 after a clean shutdown, 1 if serving failed, 2
// for bad arguments.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("chatserver", flag.ContinueOnError)
	listen := fs.String("listen", "", "listen on this `address` only (default: all addresses)")
	queue := fs.Int("queue", chat.DefaultQueueLen, "lines a client may fall behind before it is disconnected")
	logLevel := fs.String("log-level", "info", "log `level`: debug, info, warn or error")
	showVersion := fs.Bool("version", false, "print the version and exit")
	// The flag package would print the whole usage for any mistake; a bad
	// argument gets one line instead, and -h the full text on stdout.
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	badArgs := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "chatserver: "+format+" (%s; -h for help)\n", append(a, usageLine)...)
		return 2
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stdout)
			fmt.Fprintln(stdout, usageLine)
			fs.PrintDefaults()
			return 0
		}
		return badArgs("%v", err)
	}
	if *showVersion {
		fmt.Fprintln(stdout, "chatserver", version)
		return 0
	}
	if fs.NArg() != 1 {
		return badArgs("want exactly one port, got %d arguments", fs.NArg())
	}
	port, err := strconv.ParseUint(fs.Arg(0), 10, 16)
	if err != nil {
		return badArgs("invalid port %q: want a number from 0 to 65535", fs.Arg(0))
	}
	if *queue < 1 {
		return badArgs("-queue %d: want at least 1", *queue)
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return badArgs("-log-level %q: want debug, info, warn or error", *logLevel)
	}

	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	ln, err := net.Listen("tcp", net.JoinHostPort(*listen, strconv.FormatUint(port, 10)))
	if err != nil {
		logger.Error("cannot listen", "err", err)
		return 1
	}
	srv := &chat.Server{Logger: logger, QueueLen: *queue}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	select {
	case err := <-served:
		logger.Error("serving failed", "err", err)
		srv.Close()
		return 1
	case <-ctx.Done():
	}
	logger.Info("shutting down", "clients", srv.NumClients())
	srv.Close()
	<-served
	return 0
}
