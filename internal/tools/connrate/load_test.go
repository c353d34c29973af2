package main

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// server listens on loopback and answers each connection with answer
// (after reading the request's head), then closes; it counts the
// connections it answered in full.
func server(t *testing.T, answer string) (addr string, answered *atomic.Int64) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	answered = new(atomic.Int64)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				br := bufio.NewReader(c)
				for {
					line, err := br.ReadString('\n')
					if err != nil {
						return
					}
					if line == "\r\n" {
						break
					}
				}
				if _, err := io.WriteString(c, answer); err == nil {
					answered.Add(1)
				}
			}()
		}
	}()
	return ln.Addr().String(), answered
}

func testConfig(addr string, d time.Duration) loadConfig {
	return loadConfig{addr: addr, path: "/", host: addr, clients: 4, duration: d, bucket: 10 * time.Millisecond,
		connectTimeout: time.Second, ioTimeout: time.Second, backoff: 10 * time.Millisecond}
}

func TestLoadCounts(t *testing.T) {
	addr, answered := server(t, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbe1\n")
	r := runLoad(context.Background(), testConfig(addr, 700*time.Millisecond))
	s := r.summarize()
	if s.conns == 0 || s.errors != 0 || len(r.kinds) != 0 {
		t.Fatalf("%d connections, %d errors %v; want some and none", s.conns, s.errors, r.kinds)
	}
	// Every counted connection was answered; at most one per client was
	// answered but cut off by the end of the run.
	if n := answered.Load(); s.conns > n || s.conns < n-4 {
		t.Errorf("counted %d connections, the server answered %d", s.conns, n)
	}
	if len(r.conns) != 70 || r.seconds() != 1 {
		t.Errorf("%d buckets over %d seconds, want 70 over 1", len(r.conns), r.seconds())
	}
	if len(r.slowest) != 1 || r.slowest[0] <= 0 || r.slowest[0] > time.Second {
		t.Errorf("slowest %v", r.slowest)
	}
}

func TestLoadErrorKinds(t *testing.T) {
	closed := func() string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		a := ln.Addr().String()
		ln.Close()
		return a
	}
	a500, _ := server(t, "HTTP/1.1 500 Oops\r\nConnection: close\r\n\r\n")
	aNone, _ := server(t, "")
	for _, tc := range []struct {
		name, addr, kind string
	}{
		{"status", a500, "status"},
		{"no answer", aNone, "read"},
		{"refused", closed(), "connect"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := runLoad(context.Background(), testConfig(tc.addr, 300*time.Millisecond))
			s := r.summarize()
			if s.conns != 0 || s.errors == 0 || len(r.kinds) != 1 || r.kinds[tc.kind] != s.errors {
				t.Errorf("%d connections, %d errors %v; want only %s errors", s.conns, s.errors, r.kinds, tc.kind)
			}
			// The backoff bounds the errors: 4 clients, one per 10 ms each.
			if s.errors > 4*300/10+4 {
				t.Errorf("%d errors in 300 ms: the backoff did not hold", s.errors)
			}
		})
	}
}

// The command line end to end: run writes a file that summary, table and
// chart read, with a mark appended the way bench.sh does it.
func TestCommands(t *testing.T) {
	addr, _ := server(t, "HTTP/1.0 200 OK\r\n\r\nbe2\n")
	dir := t.TempDir()
	file := filepath.Join(dir, "run.txt")
	var stderr bytes.Buffer
	if code := run([]string{"run", "-addr", addr, "-c", "2", "-d", "1s", "-q", "-o", file}, io.Discard, &stderr); code != 0 {
		t.Fatalf("run: exit %d: %s", code, stderr.String())
	}
	r, err := load(file)
	if err != nil {
		t.Fatal(err)
	}
	good, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	// A bad mark line is reported with its line number.
	appendLine(t, file, "mark restart soon")
	var out bytes.Buffer
	if code := run([]string{"summary", file}, &out, &stderr); code != 2 || !strings.Contains(stderr.String(), `mark: "soon"`) {
		t.Fatalf("summary of a bad mark: exit %d, %q", code, stderr.String())
	}
	if err := os.WriteFile(file, good, 0o644); err != nil {
		t.Fatal(err)
	}
	appendLine(t, file, "mark restart "+strconv.FormatInt(r.start.Add(500*time.Millisecond).UnixMilli(), 10))
	out.Reset()
	if code := run([]string{"summary", file}, &out, &stderr); code != 0 {
		t.Fatalf("summary: exit %d: %s", code, stderr.String())
	}
	for _, want := range []string{"seconds 1\n", "errors 0\n", "stall before 0\n", "stall restart "} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("summary lacks %q:\n%s", want, out.String())
		}
	}
	out.Reset()
	if code := run([]string{"table", "rawlb=" + file}, &out, &stderr); code != 0 || !strings.Contains(out.String(), "| 0 |") {
		t.Fatalf("table: exit %d: %s%s", code, stderr.String(), out.String())
	}
	svg := filepath.Join(dir, "c.svg")
	if code := run([]string{"chart", "-o", svg, "-bin", "100ms", "rawlb=" + file}, &out, &stderr); code != 0 {
		t.Fatalf("chart: exit %d: %s", code, stderr.String())
	}
	b, err := os.ReadFile(svg)
	if err != nil {
		t.Fatal(err)
	}
	decodeSVG(t, b)
	for _, bad := range [][]string{{}, {"nonsense"}, {"run", "-addr", addr}, {"table", "nofile"}, {"chart", "x=y"}} {
		if code := run(bad, &out, io.Discard); code != 2 {
			t.Errorf("connrate %q: exit %d, want 2", bad, code)
		}
	}
}

// appendLine appends a line as bench.sh's echo >>FILE does.
func appendLine(t *testing.T, file, line string) {
	t.Helper()
	f, err := os.OpenFile(file, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := io.WriteString(f, line+"\n"); err != nil {
		t.Fatal(err)
	}
}
