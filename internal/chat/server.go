package chat

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"
)

// DefaultQueueLen is the number of lines a client may fall behind before the
// server disconnects it, when [Server.QueueLen] is zero. On top of it sit the
// kernel's socket buffers (megabytes on Linux), so in practice only a client
// that has stopped reading reaches it. A queue of a few lines would also drop
// clients that read fine but whose writer goroutine was not scheduled during
// a burst.
const DefaultQueueLen = 256

// DefaultMaxLineBytes bounds one line, newline included, when
// [Server.MaxLineBytes] is zero. The original read into a 100-byte buffer; a
// bound keeps one client from making the server buffer an endless line.
const DefaultMaxLineBytes = 64 << 10

// drainTimeout bounds how long a client that closed its side may take to
// read the lines still queued for it.
const drainTimeout = 5 * time.Second

// ErrServerClosed is returned by [Server.Serve] after [Server.Close].
var ErrServerClosed = errors.New("chat: server closed")

// errLineTooLong ends a client that sends a line longer than MaxLineBytes.
var errLineTooLong = errors.New("line too long")

// Server is a chat server: every line a client sends goes to every client
// connected to the server, the sender included. The zero value is ready to
// use; set the fields before the first call to Serve.
//
// Each client has one goroutine that reads its lines and one that writes its
// queue, so hundreds of clients cost hundreds of small goroutines, and a
// client whose queue is full is disconnected rather than waited for (see
// broadcast).
type Server struct {
	// Logger receives one line per join and per leave; nil means
	// slog.Default().
	Logger *slog.Logger
	// QueueLen is the per-client queue of lines not yet written; 0 means
	// DefaultQueueLen.
	QueueLen int
	// MaxLineBytes is the longest line accepted, newline included; 0 means
	// DefaultMaxLineBytes.
	MaxLineBytes int

	mu        sync.Mutex
	closed    bool
	listeners map[net.Listener]struct{}
	clients   map[*client]struct{} // receive broadcasts
	live      map[*client]struct{} // still connected, receiving or not; for Close
	// wg counts Serve loops and client goroutines. Add is only called under
	// mu while closed is false, so it never races with Close's Wait.
	wg sync.WaitGroup
}

// client is one connection and its outgoing queue.
type client struct {
	conn       net.Conn
	remote     string
	out        chan []byte   // closed by read, once broadcast can no longer reach it
	done       chan struct{} // closed by close: the writer stops at once
	writerDone chan struct{} // closed when write returns

	closeOnce sync.Once
	reason    string // why it left; written once, inside closeOnce
}

// close records why the client leaves, wakes its writer and closes the
// socket, which also ends a read the reader goroutine is blocked in. The
// first reason wins, so a client dropped for a full queue is logged as such
// and not as the read error that the drop then causes.
func (c *client) close(reason string) {
	c.closeOnce.Do(func() {
		c.reason = reason
		close(c.done)
		c.conn.Close()
	})
}

// Serve accepts connections on ln and serves each one until the client
// leaves or the server is closed. It always returns an error: ErrServerClosed
// after Close, otherwise the error that stopped accepting. Serve may be called
// on several listeners at once; Close closes them all.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	if s.listeners == nil {
		s.listeners = make(map[net.Listener]struct{})
	}
	s.listeners[ln] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()

	s.logger().Info("chat server listening", "addr", ln.Addr().String())
	var backoff time.Duration
	for {
		conn, err := ln.Accept()
		if err != nil {
			if s.isClosed() {
				return ErrServerClosed
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			// Anything else (EMFILE with hundreds of clients, ECONNABORTED)
			// passes once clients leave: back off and retry rather than
			// take the whole server down, as net/http does.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.logger().Warn("accept failed; retrying", "err", err, "retry_in", backoff)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		s.start(conn)
	}
}

// start registers conn and starts its goroutines, or closes it if the server
// has been closed since Accept returned.
func (s *Server) start(conn net.Conn) {
	c := &client{
		conn:       conn,
		remote:     conn.RemoteAddr().String(),
		out:        make(chan []byte, s.queueLen()),
		done:       make(chan struct{}),
		writerDone: make(chan struct{}),
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		conn.Close()
		return
	}
	if s.clients == nil {
		s.clients = make(map[*client]struct{})
		s.live = make(map[*client]struct{})
	}
	s.clients[c] = struct{}{}
	s.live[c] = struct{}{}
	n := len(s.clients)
	s.wg.Add(2)
	s.mu.Unlock()

	s.logger().Info("client joined", "remote", c.remote, "clients", n)
	go s.write(c)
	go s.read(c)
}

// read forwards the client's lines until the client leaves, then
// unregisters it and logs the leave once the writer has stopped too.
func (s *Server) read(c *client) {
	defer s.wg.Done()
	reason := s.forward(c)
	n := s.remove(c)
	if reason == reasonClientClosed {
		// The client only half-closed: let it have what is still queued
		// for it, its own last lines' echo included, before our FIN. A
		// scripted client (echo hi | chatclient ...) then always sees its
		// echo. remove took c out of clients under mu, so no broadcast can
		// send on c.out any more and closing it is safe. The deadline keeps
		// a client that stopped reading from holding the drain open.
		c.conn.SetWriteDeadline(time.Now().Add(drainTimeout))
		close(c.out)
		<-c.writerDone
	}
	c.close(reason)
	<-c.writerDone
	s.forget(c)
	s.logger().Info("client left", "remote", c.remote, "reason", c.reason, "clients", n)
}

// reasonClientClosed is the leave reason for a client that closed its side.
const reasonClientClosed = "closed by client"

// forward broadcasts the client's lines until it stops sending, and returns
// why it stopped.
func (s *Server) forward(c *client) string {
	r := bufio.NewReader(c.conn)
	maxLine := s.maxLineBytes()
	for {
		line, err := readLine(r, maxLine)
		if line != nil {
			s.broadcast(line)
		}
		switch {
		case err == nil:
		case errors.Is(err, io.EOF):
			return reasonClientClosed
		case errors.Is(err, errLineTooLong):
			return fmt.Sprintf("line longer than %d bytes", maxLine)
		default:
			// After a close by the server this is "use of closed network
			// connection"; close keeps the reason given by whoever closed.
			return "read failed: " + err.Error()
		}
	}
}

// write drains the client's queue onto its socket until the client is closed
// or its queue is closed and empty. It collects whatever is queued into one
// buffer before writing, so a burst of lines costs one syscall, not one each.
func (s *Server) write(c *client) {
	defer s.wg.Done()
	defer close(c.writerDone)
	w := bufio.NewWriter(c.conn)
	for {
		select {
		case <-c.done:
			return
		case msg, open := <-c.out:
			if open {
				w.Write(msg) // bufio.Writer keeps the first error for Flush.
				open = writeQueued(w, c.out)
			}
			if err := w.Flush(); err != nil {
				c.close("write failed: " + err.Error())
				return
			}
			if !open {
				return
			}
		}
	}
}

// writeQueued writes to w whatever is already queued on out, without
// waiting for more, and reports whether out is still open.
func writeQueued(w *bufio.Writer, out <-chan []byte) bool {
	for {
		select {
		case msg, ok := <-out:
			if !ok {
				return false
			}
			w.Write(msg)
		default:
			return true
		}
	}
}

// broadcast queues line for every client, the sender included, without ever
// blocking: the reader of one client must not wait for the socket of another.
//
// A client whose queue is full is disconnected, not skipped. Skipping would
// drop lines out of the middle of a conversation without anyone knowing;
// a disconnect is visible (the client prints that the server closed the
// connection, and the server logs the reason), frees the queue at once, and
// a client DefaultQueueLen lines behind, with full socket buffers on top, has
// stopped reading anyway.
func (s *Server) broadcast(line []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.clients {
		select {
		case c.out <- line:
		default:
			delete(s.clients, c)
			// Closing a TCP socket without SO_LINGER does not block, so it
			// is fine under the lock.
			c.close("send queue full (client not reading)")
		}
	}
}

// remove unregisters c, if broadcast or Close has not already done it, and
// returns the number of clients left.
func (s *Server) remove(c *client) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.clients, c)
	return len(s.clients)
}

// forget drops c from the clients Close must disconnect.
func (s *Server) forget(c *client) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.live, c)
}

// NumClients returns the number of connected clients. Tests poll it to know
// that every client has joined before they broadcast.
func (s *Server) NumClients() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.clients)
}

// Close stops every Serve loop, disconnects every client and waits until all
// of the server's goroutines have returned. It returns the first error from
// closing a listener.
func (s *Server) Close() error {
	var err error
	s.mu.Lock()
	s.closed = true
	for ln := range s.listeners {
		if cerr := ln.Close(); cerr != nil && err == nil && !errors.Is(cerr, net.ErrClosed) {
			err = cerr
		}
		delete(s.listeners, ln)
	}
	for c := range s.live {
		delete(s.clients, c)
		c.close("server shutting down")
	}
	s.mu.Unlock()
	s.wg.Wait()
	return err
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

func (s *Server) logger() *slog.Logger {
	if s.Logger != nil {
		return s.Logger
	}
	return slog.Default()
}

func (s *Server) queueLen() int {
	if s.QueueLen > 0 {
		return s.QueueLen
	}
	return DefaultQueueLen
}

func (s *Server) maxLineBytes() int {
	if s.MaxLineBytes > 0 {
		return s.MaxLineBytes
	}
	return DefaultMaxLineBytes
}

// readLine returns the next line, newline included, in a fresh slice that
// the caller may hand to other goroutines. A last line cut off by EOF is
// returned with a newline added, together with io.EOF, because the original
// server forwarded whatever bytes it read and a line-based client needs the
// newline to print it.
func readLine(r *bufio.Reader, maxLen int) ([]byte, error) {
	var line []byte
	for {
		frag, err := r.ReadSlice('\n')
		if len(line)+len(frag) > maxLen {
			return nil, errLineTooLong
		}
		line = append(line, frag...)
		switch {
		case err == nil:
			return line, nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case errors.Is(err, io.EOF) && len(line) > 0:
			return append(line, '\n'), err
		default:
			return nil, err
		}
	}
}
