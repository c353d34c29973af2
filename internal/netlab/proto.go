package netlab

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"sync"
)

// getChunk is the write size of a GET stream. The stream's bytes do not
// depend on it, but writing in large chunks keeps the server from being the
// bottleneck when a test measures the balancer.
const getChunk = 64 << 10

// GETStream returns the n bytes a backend sends in answer to "GET n": a
// ChaCha8 stream keyed by n. Keying by n means a response cut short by a
// reset or spliced from two backends never hashes to the expected value,
// and different sizes do not share a prefix a broken rewrite could hide in.
func GETStream(n int64) io.Reader {
	var seed [32]byte
	copy(seed[:], "rawlb-netlab-GET")
	binary.LittleEndian.PutUint64(seed[24:], uint64(n))
	return io.LimitReader(rand.NewChaCha8(seed), n)
}

// writeGETStream writes GETStream(n) to w in getChunk writes. The loop is
// explicit because io.Copy would hand a socket to its ReadFrom, which copies
// in its own, smaller chunks.
func writeGETStream(w io.Writer, n int64) error {
	src := GETStream(n)
	buf := make([]byte, getChunk)
	for {
		k, err := src.Read(buf)
		if k > 0 {
			if _, werr := w.Write(buf[:k]); werr != nil {
				return werr
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

var expectedGET sync.Map // int64 -> [32]byte

// ExpectedGET returns the SHA-256 of GETStream(n), the sum Get must report
// for an intact response. Sums are cached: tests ask for the same sizes over
// and over, and hashing 64 MiB takes a noticeable fraction of a second.
func ExpectedGET(n int64) [32]byte {
	if v, ok := expectedGET.Load(n); ok {
		return v.([32]byte)
	}
	h := sha256.New()
	writeGETStream(h, n)
	var sum [32]byte
	h.Sum(sum[:0])
	expectedGET.Store(n, sum)
	return sum
}

// maxGreeting bounds the greeting line Hello reads, so a peer that is not a
// lab backend cannot make it read forever.
const maxGreeting = 256

// Hello reads the greeting a backend sends on accept and returns the
// backend's name. Call it first on every connection to a backend: the other
// helpers expect the greeting to be consumed already. It reads byte by byte
// so it never takes bytes that belong to what follows.
func Hello(c net.Conn) (backendName string, err error) {
	var line []byte
	var b [1]byte
	for len(line) < maxGreeting {
		if _, err := io.ReadFull(c, b[:]); err != nil {
			if errors.Is(err, io.EOF) && len(line) > 0 {
				err = io.ErrUnexpectedEOF
			}
			return "", fmt.Errorf("netlab: reading greeting after %q: %w", line, err)
		}
		if b[0] == '\n' {
			return string(line), nil
		}
		line = append(line, b[0])
	}
	return "", fmt.Errorf("netlab: greeting longer than %d bytes: %q", maxGreeting, line)
}

// closeWriter is what a connection needs for EchoRoundTrip to signal the end
// of its data with a FIN while still reading; *net.TCPConn has it.
type closeWriter interface {
	CloseWrite() error
}

// EchoRoundTrip sends ECHO and data, half-closes the connection and checks
// that exactly data comes back, followed by the backend's close. Writing runs
// concurrently with reading, so data may be far larger than the socket
// buffers. The comparison is incremental; a mismatch names its offset.
func EchoRoundTrip(c net.Conn, data []byte) error {
	cw, ok := c.(closeWriter)
	if !ok {
		return fmt.Errorf("netlab: EchoRoundTrip needs a connection with CloseWrite, got %T", c)
	}
	werr := make(chan error, 1)
	go func() {
		if _, err := io.WriteString(c, "ECHO\n"); err != nil {
			werr <- err
			return
		}
		if _, err := c.Write(data); err != nil {
			werr <- err
			return
		}
		werr <- cw.CloseWrite()
	}()

	buf := make([]byte, 64<<10)
	off := 0
	var rerr error
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if off+n > len(data) {
				rerr = fmt.Errorf("netlab: echo returned more than the %d bytes sent", len(data))
				break
			}
			if !bytes.Equal(buf[:n], data[off:off+n]) {
				i := 0
				for buf[i] == data[off+i] {
					i++
				}
				rerr = fmt.Errorf("netlab: echo differs at byte %d of %d (did you call Hello first?)", off+i, len(data))
				break
			}
			off += n
		}
		if err == io.EOF {
			if off != len(data) {
				rerr = fmt.Errorf("netlab: echo ended after %d of %d bytes", off, len(data))
			}
			break
		}
		if err != nil {
			rerr = fmt.Errorf("netlab: echo read after %d of %d bytes: %w", off, len(data), err)
			break
		}
	}
	if rerr != nil {
		// Unblock the writer if the peer stopped reading.
		c.Close()
		<-werr
		return rerr
	}
	if err := <-werr; err != nil {
		return fmt.Errorf("netlab: echo write: %w", err)
	}
	return nil
}

// Get sends "GET n" and reads the response to its end, returning the
// SHA-256 of what arrived and how many bytes that was; compare sum with
// ExpectedGET(n). err is non-nil when the stream did not end cleanly after
// exactly n bytes (a reset, a timeout, a short or long response).
func Get(c net.Conn, n int64) (sum [32]byte, got int64, err error) {
	if _, err := io.WriteString(c, "GET "+strconv.FormatInt(n, 10)+"\n"); err != nil {
		return sum, 0, fmt.Errorf("netlab: GET request: %w", err)
	}
	h := sha256.New()
	buf := make([]byte, getChunk)
	for {
		k, rerr := c.Read(buf)
		h.Write(buf[:k])
		got += int64(k)
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			err = rerr
			break
		}
	}
	h.Sum(sum[:0])
	if err != nil {
		return sum, got, fmt.Errorf("netlab: GET %d: read after %d bytes: %w", n, got, err)
	}
	if got != n {
		return sum, got, fmt.Errorf("netlab: GET %d: got %d bytes", n, got)
	}
	return sum, got, nil
}

// Put sends "PUT n" and n bytes from data, and returns the backend's
// lowercase hex SHA-256 of what it received; compare it with the sum of
// what was sent. The backend reads exactly n bytes, so the write finishes
// before the reply is read.
func Put(c net.Conn, data io.Reader, n int64) (hexsum string, err error) {
	if _, err := io.WriteString(c, "PUT "+strconv.FormatInt(n, 10)+"\n"); err != nil {
		return "", fmt.Errorf("netlab: PUT request: %w", err)
	}
	sent, err := io.CopyN(c, data, n)
	if err != nil {
		return "", fmt.Errorf("netlab: PUT %d: sent %d bytes: %w", n, sent, err)
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("netlab: PUT %d: reading reply %q: %w", n, line, err)
	}
	return strings.TrimSuffix(line, "\n"), nil
}
