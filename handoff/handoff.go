// Package handoff carries a running balancer's state to its successor: the
// flows, what the NAT ports remember, the keys of the SYN cookies and of
// the sequence-number clock, and, in a binary upgrade, the ring sockets
// themselves with the slot each was read up to.
//
// Two ways, as users restart:
//   - A restart (systemctl restart: SIGTERM, then a new process): the old
//     process writes a state file on exit (Write), the new one reads it at
//     start (Read). The file has a format version and the configuration's
//     fingerprint, and is refused when stale (its flows' clients have been
//     answered by the host meanwhile) or from another configuration.
//   - A binary upgrade with no downtime (SIGUSR2): the old process starts
//     the new binary with its ring sockets as inherited descriptors
//     (StartChild), as cloudflare/tableflip does; the child gets ready,
//     the parent stops forwarding at a batch boundary and sends the state
//     through a pipe, and exits once the child forwards. Frames that arrive
//     in between wait in the rings, which the child reads on from the
//     parent's slot: none is lost.
//
// Flows are keyed by addresses, not by process-local ids, and times are
// ages: a record means the same in another process, and could one day go
// to a standby balancer.
package handoff

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/rawlb/rawlb/conntrack"
)

// Version is the state format's version. A state of another version is
// refused, not guessed at.
const Version = 2

// magic starts every state file, so that a stray file is not decoded.
const magic = "rawlb-state\n"

// State is what a balancer hands its successor.
type State struct {
	Version     int
	Fingerprint string    // config.Config.Fingerprint of the writer
	Written     time.Time // wall clock
	Workers     int       // a flow's worker follows from its NAT port and this
	NATFirst    uint16
	NATLast     uint16
	Flows       []conntrack.FlowState
	Ports       []conntrack.PortState
	CookieKeys  []byte // syncookie.Jar keys: cookies in flight stay valid
	ISNKeys     []byte // the sequence-number clock's key: numbers keep rising
	// Rings is set in an upgrade only: the slot each worker's ring was
	// read up to, in worker order.
	Rings []Ring
}

// Ring is an inherited ring socket: its descriptor in the child, its size,
// and the slot to read next.
type Ring struct {
	FD        int
	Frames    int
	FrameSize int
	Head      int
}

// Write writes s to path atomically (a temporary file renamed over it), in
// a directory only the owner can read: the keys are secrets.
func Write(path string, s *State) error {
	s.Version = Version
	if s.Written.IsZero() {
		s.Written = time.Now()
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, ".state-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	w := bufio.NewWriterSize(tmp, 1<<20)
	if err := encode(w, s); err != nil {
		tmp.Close()
		return err
	}
	if err := w.Flush(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// Read reads and removes the state file at path. It returns nil and no
// error when there is none. A state older than maxAge, of another format
// version, or whose fingerprint differs from fingerprint is refused with an
// error that says which (and removed all the same: it can never be taken
// over).
func Read(path string, maxAge time.Duration, fingerprint string) (*State, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer os.Remove(path)
	defer f.Close()
	s, err := decode(bufio.NewReaderSize(f, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if age := time.Since(s.Written); age > maxAge {
		return nil, fmt.Errorf("%s: state written %v ago, more than %v: its flows' clients were answered by the host meanwhile", path, age.Round(time.Millisecond), maxAge)
	}
	if s.Fingerprint != fingerprint {
		return nil, fmt.Errorf("%s: state from another configuration (address, NAT ports or listen addresses changed)", path)
	}
	return s, nil
}
