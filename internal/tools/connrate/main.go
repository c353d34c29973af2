// Command connrate is scripts/bench.sh's close load for the restart
// scenario: clients that connect, send an HTTP GET with Connection: close,
// read the answer and close, counted in 10 ms buckets so that a restart's
// or an upgrade's forwarding gap shows second by second (wrk reports only
// totals). It also summarizes, tabulates and charts what it recorded.
//
//	connrate run -addr HOST:PORT [-c 32] [-d 30s] [-path /] -o FILE
//	connrate summary FILE
//	connrate table NAME=FILE [NAME=FILE...]
//	connrate chart -o OUT.svg [-title T] [-bin 250ms] NAME=FILE [NAME=FILE...]
//
// FILE is text (see record.write); bench.sh appends "mark NAME UNIX_MS"
// lines to it for the restart and the upgrade, which summary, table and
// chart place relative to the run's start.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, "usage: connrate run|summary|table|chart ... (see the package comment)")
		return 2
	}
	var err error
	switch args[0] {
	case "run":
		err = cmdRun(args[1:], stderr)
	case "summary":
		err = cmdSummary(args[1:], stdout)
	case "table":
		err = cmdTable(args[1:], stdout)
	case "chart":
		err = cmdChart(args[1:])
	default:
		err = fmt.Errorf("unknown command %q: want run, summary, table or chart", args[0])
	}
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "connrate: %v\n", err)
		return 2
	}
	return 0
}

func cmdRun(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("connrate run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg := loadConfig{progress: stderr}
	fs.StringVar(&cfg.addr, "addr", "", "`host:port` to connect to")
	fs.StringVar(&cfg.path, "path", "/", "HTTP path to GET")
	fs.IntVar(&cfg.clients, "c", 32, "concurrent clients")
	fs.DurationVar(&cfg.duration, "d", 30*time.Second, "how long the load runs")
	fs.DurationVar(&cfg.bucket, "bucket", 10*time.Millisecond, "counting resolution (a divisor of 1s)")
	fs.DurationVar(&cfg.connectTimeout, "connect-timeout", 5*time.Second, "give up a connect after this long")
	fs.DurationVar(&cfg.ioTimeout, "io-timeout", 10*time.Second, "give up an answer after this long")
	fs.DurationVar(&cfg.backoff, "backoff", 10*time.Millisecond, "a client's pause after an error")
	out := fs.String("o", "", "write the record to this `file`")
	quiet := fs.Bool("q", false, "no line per second on stderr")
	if err := fs.Parse(args); err != nil {
		return err
	}
	switch {
	case cfg.addr == "" || *out == "":
		return fmt.Errorf("run needs -addr and -o")
	case fs.NArg() > 0:
		return fmt.Errorf("run: unexpected argument %q", fs.Arg(0))
	case cfg.clients < 1 || cfg.clients > 10000:
		return fmt.Errorf("-c %d: want 1-10000", cfg.clients)
	case cfg.duration < time.Second || cfg.duration > time.Hour:
		return fmt.Errorf("-d %v: want 1s-1h", cfg.duration)
	case cfg.bucket < time.Millisecond || time.Second%cfg.bucket != 0 || cfg.bucket%time.Millisecond != 0:
		return fmt.Errorf("-bucket %v: want whole milliseconds dividing 1s", cfg.bucket)
	case !strings.HasPrefix(cfg.path, "/") || strings.ContainsAny(cfg.path, " \r\n"):
		return fmt.Errorf("-path %q: want an absolute path without spaces", cfg.path)
	}
	if *quiet {
		cfg.progress = nil
	}
	cfg.host = cfg.addr
	// The file is created first, so that a bad path fails before the load.
	f, err := os.Create(*out)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rec := runLoad(ctx, cfg)
	if err := rec.write(f); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	s := rec.summarize()
	fmt.Fprintf(stderr, "connrate: %d connections (%.0f/s), %d errors %v in %v\n", s.conns, s.rate, s.errors, rec.kinds, cfg.duration)
	return nil
}

func load(path string) (*record, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	r, err := parse(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return r, nil
}

func cmdSummary(args []string, stdout io.Writer) error {
	if len(args) != 1 {
		return fmt.Errorf("summary takes one file")
	}
	r, err := load(args[0])
	if err != nil {
		return err
	}
	return writeSummary(stdout, r.summarize())
}

// namedFiles reads NAME=FILE arguments.
func namedFiles(args []string) ([]series, error) {
	if len(args) == 0 {
		return nil, fmt.Errorf("want NAME=FILE arguments")
	}
	var out []series
	for _, a := range args {
		name, path, ok := strings.Cut(a, "=")
		if !ok || name == "" || path == "" {
			return nil, fmt.Errorf("%q: want NAME=FILE", a)
		}
		r, err := load(path)
		if err != nil {
			return nil, err
		}
		out = append(out, series{name: name, rec: r})
	}
	return out, nil
}

func cmdTable(args []string, stdout io.Writer) error {
	ss, err := namedFiles(args)
	if err != nil {
		return err
	}
	return writeTable(stdout, ss)
}

func cmdChart(args []string) error {
	fs := flag.NewFlagSet("connrate chart", flag.ContinueOnError)
	out := fs.String("o", "", "write the SVG to this `file`")
	title := fs.String("title", "Connections per second across a restart and an upgrade", "the chart's title")
	bin := fs.Duration("bin", 250*time.Millisecond, "width of a point on the time axis")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *out == "" {
		return fmt.Errorf("chart needs -o")
	}
	ss, err := namedFiles(fs.Args())
	if err != nil {
		return err
	}
	tmp := *out + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	if err := writeChart(f, *title, *bin, ss); err != nil {
		f.Close()
		os.Remove(tmp)
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, *out)
}
