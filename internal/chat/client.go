package chat

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"
)

// ErrClosedByServer is wrapped by the errors of [Client.Run], [Client.Send]
// and [Client.ReadLine] when the connection ended from the server's side (or
// the network's): the peer closed or reset it. The caller tells the user and
// exits non-zero, as the original client did when read returned 0.
var ErrClosedByServer = errors.New("connection closed by the server")

// QuitTimeout bounds how long [Client.Run] waits, after the user quits, for
// the server to close its side. Waiting lets the connection end with a FIN
// from each side instead of a reset for unread data, which is what a load
// balancer's connection tracking should see from a well-behaved client.
const QuitTimeout = 2 * time.Second

// Client is one chat connection with a nickname. Use Send and ReadLine to
// script it (tests), or Run to wire it to a terminal; not both at once.
type Client struct {
	conn net.Conn
	nick string
	r    *bufio.Reader
}

// Dial connects to the chat server (or load balancer) at addr as nick.
func Dial(ctx context.Context, addr, nick string) (*Client, error) {
	if err := ValidateNickname(nick); err != nil {
		return nil, err
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	return &Client{conn: conn, nick: nick, r: bufio.NewReader(conn)}, nil
}

// NewClient wraps an established connection, for callers that dial in their
// own way (from a given source address or network namespace, say).
func NewClient(conn net.Conn, nick string) (*Client, error) {
	if err := ValidateNickname(nick); err != nil {
		return nil, err
	}
	return &Client{conn: conn, nick: nick, r: bufio.NewReader(conn)}, nil
}

// ValidateNickname reports whether nick can be sent in the chat format: it
// must be non-empty and fit on the line.
func ValidateNickname(nick string) error {
	if nick == "" {
		return errors.New("chat: empty nickname")
	}
	if strings.ContainsAny(nick, "\r\n") {
		return fmt.Errorf("chat: nickname %q contains a line break", nick)
	}
	return nil
}

// FormatMessage returns the line a client sends for text: "[nick] text\n",
// the original client's format.
func FormatMessage(nick, text string) string {
	return "[" + nick + "] " + text + "\n"
}

// Conn returns the underlying connection, for its addresses or deadlines.
func (c *Client) Conn() net.Conn { return c.conn }

// Send sends one line of text in the chat format.
func (c *Client) Send(text string) error {
	if _, err := io.WriteString(c.conn, FormatMessage(c.nick, text)); err != nil {
		return closedByServer(err)
	}
	return nil
}

// ReadLine returns the next line from the server without its newline.
func (c *Client) ReadLine() (string, error) {
	line, err := c.r.ReadString('\n')
	if err != nil {
		return "", closedByServer(err)
	}
	return strings.TrimSuffix(line, "\n"), nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// Run is the interactive client: it sends each line read from in, prints to
// out every byte the server sends, and returns nil when in has a line "q" or
// "Q" (the original's quit command) or ends. Blank lines are not sent: one
// would show everyone a nickname and nothing else. It returns an error
// wrapping ErrClosedByServer if the connection ends first.
//
// Run closes the connection before it returns. A read from in that is still
// blocked when the server goes away is left behind: in must be something the
// caller can close (a pipe) or the process's stdin, which exit closes.
func (c *Client) Run(in io.Reader, out io.Writer) error {
	received := make(chan error, 1)
	go func() {
		_, err := io.Copy(outputWriter{out}, c.r)
		if err == nil {
			err = io.EOF
		}
		received <- err
	}()
	inputDone := make(chan error, 1)
	go func() { inputDone <- c.sendInput(in) }()

	select {
	case err := <-received:
		c.conn.Close()
		var we *outputError
		if errors.As(err, &we) {
			return err
		}
		return closedByServer(err)
	case err := <-inputDone:
		if err != nil {
			c.conn.Close()
			<-received
			return err
		}
	}
	// The user quit. Send our FIN and keep printing until the server's
	// arrives, so the connection closes cleanly on both sides.
	if cw, ok := c.conn.(interface{ CloseWrite() error }); ok {
		if cw.CloseWrite() == nil {
			t := time.NewTimer(QuitTimeout)
			select {
			case <-received:
			case <-t.C:
			}
			t.Stop()
		}
	}
	c.conn.Close()
	return nil
}

// sendInput sends the lines of in until a quit line or the end of in (nil),
// or until reading in or writing the connection fails.
func (c *Client) sendInput(in io.Reader) error {
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 4096), DefaultMaxLineBytes)
	for sc.Scan() {
		text := strings.TrimSuffix(sc.Text(), "\r")
		if text == "q" || text == "Q" {
			return nil
		}
		if text == "" {
			continue
		}
		if err := c.Send(text); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("reading input: %w", err)
	}
	return nil
}

// outputError marks a failure to write to Run's out, which is the user's
// problem (a closed stdout), not the server's.
type outputError struct{ err error }

func (e *outputError) Error() string { return "writing output: " + e.err.Error() }
func (e *outputError) Unwrap() error { return e.err }

// outputWriter tags the errors of the writer it wraps as outputErrors, so Run
// can tell a broken stdout from a broken connection after io.Copy.
type outputWriter struct{ w io.Writer }

func (o outputWriter) Write(p []byte) (int, error) {
	n, err := o.w.Write(p)
	if err != nil {
		err = &outputError{err}
	}
	return n, err
}

// closedByServer wraps a read or write error on the connection in
// ErrClosedByServer, keeping the cause unless it is a plain EOF.
func closedByServer(err error) error {
	if errors.Is(err, io.EOF) {
		return ErrClosedByServer
	}
	return fmt.Errorf("%w: %w", ErrClosedByServer, err)
}
