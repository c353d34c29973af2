package healthcheck

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"syscall"
	"time"
)

// checkError is a failed check. Its message names the step that failed and
// how, for the "backend down" log line; Unwrap keeps the cause for
// errors.Is (syscall.ECONNREFUSED, context.DeadlineExceeded).
type checkError struct {
	msg   string
	cause error
}

func (e *checkError) Error() string { return e.msg }
func (e *checkError) Unwrap() error { return e.cause }

// timeout is the error of a step that ran out of the check's time. It
// unwraps to context.DeadlineExceeded whichever clock ran out (the dial's
// context or the connection's deadline), so callers test one value.
func timeout(step string, after time.Duration) error {
	return &checkError{msg: fmt.Sprintf("%s: timeout after %v", step, after), cause: context.DeadlineExceeded}
}

// isTimeout reports whether err is a deadline running out, from a context
// (dial) or from a connection deadline (read, write).
func isTimeout(err error) bool {
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded)
}

// stepError wraps the error of a step other than a timeout. The address is
// left out (the event carries it), and a net.OpError's "dial tcp a:p:"
// prefix with it, so the message reads "connect: connection refused".
func stepError(step string, err error) error {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return &checkError{msg: step + ": " + errno.Error(), cause: err}
	}
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		return &checkError{msg: step + ": " + op.Err.Error(), cause: err}
	}
	return &checkError{msg: step + ": " + err.Error(), cause: err}
}

// aLongTimeAgo is a deadline in the past: setting it wakes every blocked
// read and write on the connection at once.
var aLongTimeAgo = time.Unix(1, 0)

// probe runs one check of addr and returns nil if it passed. ctx carries the
// check's Timeout; cancelling it (shutdown, Set) ends the check at once.
func (c *Checker) probe(ctx context.Context, addr string, ck *Check, expect []byte) error {
	conn, err := c.dial(ctx, "tcp", addr)
	if err != nil {
		if isTimeout(err) {
			return timeout("connect", ck.Timeout)
		}
		return stepError("connect", err)
	}
	defer conn.Close()
	if ctx.Err() != nil {
		// A dialer that ignored its deadline and connected late.
		return timeout("connect", ck.Timeout)
	}
	if dl, ok := ctx.Deadline(); ok {
		// An error here means a connection already broken (net.Pipe says so
		// once its peer has closed): the I/O that follows reports it with
		// the step it broke.
		_ = conn.SetDeadline(dl)
	}
	// Cancellation without a deadline (Set removed the target) must wake
	// the reads too.
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(aLongTimeAgo) })
	defer stop()

	switch ck.Kind {
	case HTTP:
		return httpGet(conn, addr, ck)
	default:
		return tcpExchange(conn, ck, expect)
	}
}

// tcpExchange writes ck.Send and waits for expect on a connected conn.
func tcpExchange(conn net.Conn, ck *Check, expect []byte) error {
	if ck.Send != "" {
		if _, err := io.WriteString(conn, ck.Send); err != nil {
			if isTimeout(err) {
				return timeout("send", ck.Timeout)
			}
			return stepError("send", err)
		}
	}
	if len(expect) == 0 {
		return nil
	}
	buf := make([]byte, MaxReply)
	n := 0
	for {
		m, err := conn.Read(buf[n:])
		n += m
		if bytes.Contains(buf[:n], expect) {
			return nil
		}
		switch {
		case err == nil && n < len(buf):
			continue
		case err == nil:
			return fmt.Errorf("expect %q: not in the first %d bytes of the reply, which begins %s", expect, MaxReply, quoteReply(buf[:n]))
		case isTimeout(err) && n == 0:
			return timeout("expect", ck.Timeout)
		case isTimeout(err):
			return &checkError{msg: fmt.Sprintf("expect %q: got %s, then timeout after %v", expect, quoteReply(buf[:n]), ck.Timeout), cause: context.DeadlineExceeded}
		case errors.Is(err, io.EOF) && n == 0:
			return fmt.Errorf("expect %q: connection closed without a reply", expect)
		case errors.Is(err, io.EOF):
			return fmt.Errorf("expect %q: got %s", expect, quoteReply(buf[:n]))
		default:
			return stepError("expect", err)
		}
	}
}

// quoteReply quotes the start of a reply for an error message: enough to
// recognise "-ERR" or an HTML error page, not a whole page in a log line.
func quoteReply(b []byte) string {
	const show = 64
	if len(b) > show {
		return fmt.Sprintf("%q...", b[:show])
	}
	return fmt.Sprintf("%q", b)
}

// maxResponseHead bounds what an http check reads: the status line and
// headers of a health endpoint fit many times over, and a backend that
// streams headers forever fails instead of growing a buffer.
const maxResponseHead = 64 << 10

// httpGet sends one GET on a connected conn and compares the status.
//
// The request is written by hand rather than through http.Client so that a
// check is exactly one connection from the configured dialer, with no pool,
// no proxy from the environment, no redirect handling and no goroutines of a
// Transport's own; http.ReadResponse still parses the reply.
func httpGet(conn net.Conn, addr string, ck *Check) error {
	host := ck.Host
	if host == "" {
		host = addr
	}
	step := "GET " + ck.Path
	req := "GET " + ck.Path + " HTTP/1.1\r\n" +
		"Host: " + host + "\r\n" +
		"User-Agent: " + UserAgent + "\r\n" +
		"Accept: */*\r\n" +
		"Connection: close\r\n\r\n"
	if _, err := io.WriteString(conn, req); err != nil {
		if isTimeout(err) {
			return timeout(step, ck.Timeout)
		}
		return stepError(step, err)
	}
	br := bufio.NewReader(io.LimitReader(conn, maxResponseHead))
	for {
		resp, err := http.ReadResponse(br, nil)
		switch {
		case err == nil:
		case isTimeout(err):
			return timeout(step, ck.Timeout)
		case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
			return &checkError{msg: step + ": connection closed before a complete response", cause: err}
		default:
			return stepError(step, err)
		}
		if resp.ProtoMajor != 1 {
			// What answered a request line ending in HTTP/1.1 is not an HTTP/1
			// server, whatever its status says.
			return fmt.Errorf("%s: reply is %s, want HTTP/1.x", step, resp.Proto)
		}
		if resp.StatusCode == ck.Status {
			return nil
		}
		// RFC 9110 section 15.2: a 1xx (103 Early Hints, say) is an interim
		// response; the final one follows on the same connection. 101 is
		// final: the connection would switch protocols.
		if resp.StatusCode >= 100 && resp.StatusCode < 200 && resp.StatusCode != http.StatusSwitchingProtocols {
			continue
		}
		return fmt.Errorf("%s: status %d, want %d", step, resp.StatusCode, ck.Status)
	}
}
