package handoff

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// envUpgrade tells a child it is the successor in an upgrade, and how many
// descriptors it inherits: "rings,extra".
const envUpgrade = "RAWLB_UPGRADE"

// The descriptors a child inherits, in order after stdin, stdout, stderr:
// the control pipe it writes to, the state pipe it reads from, the ring
// sockets, then the extra files (the metrics listener).
const (
	fdCtl   = 3
	fdState = 4
	fdRings = 5
)

// Parent is the old process's side of an upgrade.
type Parent struct {
	cmd   *exec.Cmd
	ctl   *bufio.Reader
	ctlR  *os.File
	state *os.File
	exit  chan error
}

// StartChild starts the binary at path (os.Executable() by default: the
// file now at the path this process was started from, so a binary replaced
// on disk is the one that runs) with args, handing it rings and extra as
// inherited descriptors. The child's stdout and stderr are this process's.
func StartChild(path string, args []string, rings, extra []*os.File) (*Parent, error) {
	if path == "" {
		p, err := os.Executable()
		if err != nil {
			return nil, err
		}
		path = p
	}
	ctlR, ctlW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	stateR, stateW, err := os.Pipe()
	if err != nil {
		ctlR.Close()
		ctlW.Close()
		return nil, err
	}
	cmd := exec.Command(path, args...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%d,%d", envUpgrade, len(rings), len(extra)))
	cmd.ExtraFiles = append(append([]*os.File{ctlW, stateR}, rings...), extra...)
	if err := cmd.Start(); err != nil {
		ctlR.Close()
		ctlW.Close()
		stateR.Close()
		stateW.Close()
		return nil, fmt.Errorf("starting %s: %w", path, err)
	}
	// The child holds its own copies now.
	ctlW.Close()
	stateR.Close()
	p := &Parent{cmd: cmd, ctl: bufio.NewReader(ctlR), ctlR: ctlR, state: stateW, exit: make(chan error, 1)}
	go func() { p.exit <- cmd.Wait() }()
	return p, nil
}

// wait reads the child's next control line, which must be want, within
// timeout.
func (p *Parent) wait(want string, timeout time.Duration) error {
	line := make(chan string, 1)
	errc := make(chan error, 1)
	go func() {
		s, err := p.ctl.ReadString('\n')
		if err != nil {
			errc <- err
			return
		}
		line <- strings.TrimSpace(s)
	}()
	select {
	case s := <-line:
		if s != want {
			return fmt.Errorf("the new process said %q, want %q", s, want)
		}
		return nil
	case err := <-errc:
		select {
		case werr := <-p.exit:
			return fmt.Errorf("the new process exited before %s: %v", want, werr)
		case <-time.After(2 * time.Second):
			return fmt.Errorf("the new process's control pipe closed before %s: %v", want, err)
		}
	case <-time.After(timeout):
		return fmt.Errorf("the new process was not %s within %v", want, timeout)
	}
}

// WaitReady waits until the child is ready to take over: configured, its
// health checks done. On error the child is killed: the parent goes on.
func (p *Parent) WaitReady(timeout time.Duration) error {
	if err := p.wait("ready", timeout); err != nil {
		p.Abort()
		return err
	}
	return nil
}

// Send hands the child the state (the parent has stopped forwarding).
func (p *Parent) Send(s *State) error {
	s.Version = Version
	err := encode(p.state, s)
	if cerr := p.state.Close(); err == nil {
		err = cerr
	}
	return err
}

// WaitForwarding waits until the child forwards.
func (p *Parent) WaitForwarding(timeout time.Duration) error { return p.wait("forwarding", timeout) }

// Abort kills the child (an upgrade given up before the hand-over).
func (p *Parent) Abort() {
	_ = p.cmd.Process.Kill()
	p.state.Close()
	p.ctlR.Close()
}

// Child is the new process's side of an upgrade.
type Child struct {
	// Rings are the inherited ring sockets' descriptors, in worker order.
	RingFDs []int
	// Extra are the other inherited files (the metrics listener).
	Extra []*os.File
	// State is the parent's, once Receive returned.
	State *State
	// ParentStopped is when the parent stopped forwarding.
	ParentStopped time.Time
	ctl           *os.File
	state         *os.File
}

// Inherited returns this process's side of an upgrade, or nil if it was not
// started by one.
func Inherited() (*Child, error) {
	v := os.Getenv(envUpgrade)
	if v == "" {
		return nil, nil
	}
	os.Unsetenv(envUpgrade) // not for this process's own children
	a, b, ok := strings.Cut(v, ",")
	nr, err1 := strconv.Atoi(a)
	ne, err2 := strconv.Atoi(b)
	if !ok || err1 != nil || err2 != nil || nr < 1 || ne < 0 {
		return nil, fmt.Errorf("%s=%q: not an upgrade this rawlb understands", envUpgrade, v)
	}
	c := &Child{ctl: os.NewFile(fdCtl, "upgrade-ctl"), state: os.NewFile(fdState, "upgrade-state")}
	if c.ctl == nil || c.state == nil {
		return nil, errors.New("upgrade: the control descriptors were not inherited")
	}
	for i := 0; i < nr; i++ {
		c.RingFDs = append(c.RingFDs, fdRings+i)
	}
	for i := 0; i < ne; i++ {
		c.Extra = append(c.Extra, os.NewFile(uintptr(fdRings+nr+i), "upgrade-extra"))
	}
	return c, nil
}

// Ready tells the parent to stop and hand over.
func (c *Child) Ready() error {
	_, err := c.ctl.WriteString("ready\n")
	return err
}

// Receive reads the parent's state.
func (c *Child) Receive(timeout time.Duration) error {
	_ = c.state.SetReadDeadline(time.Now().Add(timeout))
	sp, err := decode(bufio.NewReaderSize(c.state, 1<<20))
	c.state.Close()
	if err != nil {
		return fmt.Errorf("upgrade: receiving the state: %w", err)
	}
	s := *sp
	if len(s.Rings) != len(c.RingFDs) {
		return fmt.Errorf("upgrade: %d rings described, %d inherited", len(s.Rings), len(c.RingFDs))
	}
	for i := range s.Rings {
		s.Rings[i].FD = c.RingFDs[i]
	}
	c.State = &s
	c.ParentStopped = s.Written
	return nil
}

// Forwarding tells the parent the child forwards, so it may exit.
func (c *Child) Forwarding() {
	_, _ = c.ctl.WriteString("forwarding\n")
	c.ctl.Close()
}
