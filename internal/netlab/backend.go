package netlab

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rawlb/rawlb/internal/testenv"
)

// Backend is a real TCP server in a backend host's namespace speaking the
// lab protocol (see Hello, EchoRoundTrip, Get, Put and the HOLD command):
//
//	server: <name>\n                 on accept, so a client learns which backend it reached
//	client: ECHO\n <bytes...> EOF    server echoes every byte, then closes
//	client: GET <n>\n                server sends n bytes of GETStream(n), then closes
//	client: PUT <n>\n <n bytes>      server replies with their lowercase hex SHA-256 and \n, then closes
//	client: HOLD\n                   server keeps the connection open until the client closes it
//
// It listens on the wildcard address, so it also answers on an address a
// test adds to the backend later (a VIP on lo for direct server return).
type Backend struct {
	host *Host
	t    testing.TB
	port int
	name string

	accepted atomic.Int64
	active   atomic.Int64

	mu    sync.Mutex
	ln    net.Listener          // nil while stopped
	conns map[net.Conn]struct{} // open connections, closed by Stop
	wg    sync.WaitGroup        // accept loop and connection handlers
}

// StartBackend starts a backend named name listening on port in h's
// namespace. It is stopped in t.Cleanup, before the lab is torn down.
func (h *Host) StartBackend(t testing.TB, port int, name string) *Backend {
	t.Helper()
	testenv.RequirePrivileged(t)
	if strings.Contains(name, "\n") {
		t.Fatalf("netlab: backend name %q contains a newline", name)
	}
	b := &Backend{host: h, t: t, port: port, name: name, conns: make(map[net.Conn]struct{})}
	b.Start()
	t.Cleanup(b.Stop)
	return b
}

// Start listens again on the backend's port after Stop. It must be called
// from the test's goroutine: a failure to listen fails the test.
func (b *Backend) Start() {
	b.t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.ln != nil {
		b.t.Fatalf("netlab: backend %s started twice", b.name)
	}
	// Go sets SO_REUSEADDR on listeners, so connections of the previous
	// incarnation lingering in TIME_WAIT do not block the port.
	ln, err := b.host.Listen("tcp4", net.JoinHostPort("0.0.0.0", strconv.Itoa(b.port)))
	if err != nil {
		b.t.Fatalf("netlab: backend %s on %s: %v", b.name, b.host.Name, err)
	}
	b.ln = ln
	b.wg.Add(1)
	go b.acceptLoop(ln)
}

// Stop closes the listener and every open connection and waits for their
// handlers to finish. With no listener left, the kernel answers new SYNs to
// the port with a RST, which is how a dead backend looks to a balancer.
// Stopping a stopped backend does nothing.
func (b *Backend) Stop() {
	b.mu.Lock()
	ln := b.ln
	b.ln = nil
	for c := range b.conns {
		c.Close()
	}
	b.mu.Unlock()
	if ln != nil {
		ln.Close()
	}
	b.wg.Wait()
}

// Accepted returns how many connections the backend has accepted since it
// was first started.
func (b *Backend) Accepted() int { return int(b.accepted.Load()) }

// Active returns how many accepted connections are still open.
func (b *Backend) Active() int { return int(b.active.Load()) }

// Name returns the name the backend greets clients with.
func (b *Backend) Name() string { return b.name }

func (b *Backend) acceptLoop(ln net.Listener) {
	defer b.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: back off rather than
			// spin; Stop ends the loop by closing ln.
			time.Sleep(10 * time.Millisecond)
			continue
		}
		b.accepted.Add(1)
		b.mu.Lock()
		if b.ln != ln {
			// Stop ran between Accept and here and has already closed the
			// connections it knew about; this one must not outlive it.
			b.mu.Unlock()
			c.Close()
			continue
		}
		b.conns[c] = struct{}{}
		b.active.Add(1)
		b.wg.Add(1)
		b.mu.Unlock()
		go b.serve(c)
	}
}

func (b *Backend) serve(c net.Conn) {
	defer b.wg.Done()
	defer func() {
		c.Close()
		b.mu.Lock()
		delete(b.conns, c)
		b.mu.Unlock()
		b.active.Add(-1)
	}()
	if _, err := io.WriteString(c, b.name+"\n"); err != nil {
		return
	}
	br := bufio.NewReader(c)
	line, err := br.ReadString('\n')
	if err != nil {
		return
	}
	verb, arg, _ := strings.Cut(strings.TrimSuffix(line, "\n"), " ")
	switch verb {
	case "ECHO":
		// br may already hold the first payload bytes, so copy from it.
		io.Copy(c, br)
	case "GET":
		n, err := strconv.ParseInt(arg, 10, 64)
		if err != nil || n < 0 {
			fmt.Fprintf(c, "ERR bad length %q\n", arg)
			return
		}
		writeGETStream(c, n)
	case "PUT":
		n, err := strconv.ParseInt(arg, 10, 64)
		if err != nil || n < 0 {
			fmt.Fprintf(c, "ERR bad length %q\n", arg)
			return
		}
		h := sha256.New()
		if _, err := io.CopyN(h, br, n); err != nil {
			return
		}
		io.WriteString(c, hex.EncodeToString(h.Sum(nil))+"\n")
	case "HOLD":
		// Anything sent meanwhile is discarded, so the client's close, not a
		// full receive window, decides when this ends.
		io.Copy(io.Discard, br)
	default:
		fmt.Fprintf(c, "ERR unknown command %q\n", verb)
	}
}
