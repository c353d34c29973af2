package firewall

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"
)

// namespace holds the three handles through which a Guard reaches its
// network namespace. All three are opened by Start on the calling thread
// and keep pointing at that namespace whatever thread later uses them: a
// netlink socket belongs to the namespace it was created in, a
// /proc/sys/net file to the namespace of the thread that opened it, and the
// namespace file is the namespace. So Update, Remove and the renewal
// goroutine need no setns(2), which would take CAP_SYS_ADMIN.
type namespace struct {
	nft *nftables.Conn
	// sysctl is ip_local_reserved_ports, opened read-write, or read-only
	// where /proc/sys is mounted read-only (a Docker container): there the
	// ports must already be reserved (docker run --sysctl), Start then
	// finds nothing to write, and a write that is needed fails with EROFS.
	sysctl   *os.File
	readOnly bool
	// nsFile is /proc/thread-self/ns/net. flock(2) on it is the lock that
	// serialises the read-modify-write of the sysctl and of the tables'
	// records among the rawlb processes of this namespace only: every
	// opener of one namespace gets the same nsfs inode, another namespace
	// is another inode, and the kernel drops the lock when its holder dies.
	nsFile *os.File
	// lo are lo's settings that frames injected into lo need (see
	// loopbackSysctls).
	lo []loSetting
}

// openNamespace opens the handles in the calling thread's namespace.
func openNamespace() (*namespace, error) {
	ns := &namespace{}
	var err error
	if ns.nsFile, err = os.Open("/proc/thread-self/ns/net"); err != nil {
		return nil, fmt.Errorf("firewall: opening the network namespace: %w", err)
	}
	ns.sysctl, err = os.OpenFile(ReservedPortsPath, os.O_RDWR, 0)
	if errors.Is(err, syscall.EROFS) {
		ns.sysctl, err = os.Open(ReservedPortsPath)
		ns.readOnly = true
	}
	if err != nil {
		ns.nsFile.Close()
		return nil, sysctlError("opening", err)
	}
	if ns.nft, err = nftables.New(nftables.AsLasting()); err != nil {
		ns.sysctl.Close()
		ns.nsFile.Close()
		return nil, nftError("opening nftables netlink socket", err)
	}
	ns.lo = openLoopback()
	return ns, nil
}

func (ns *namespace) close() {
	ns.closeLoopback()
	ns.nft.CloseLasting()
	ns.sysctl.Close()
	ns.nsFile.Close()
}

// lockTimeout bounds the wait for another rawlb of the namespace, which
// holds the lock for a few netlink round trips; a holder that hangs must
// not hang us for good.
const lockTimeout = 30 * time.Second

// lock takes the namespace's lock and returns its release.
func (ns *namespace) lock() (unlock func(), err error) {
	conn, err := ns.nsFile.SyscallConn()
	if err != nil {
		return nil, err
	}
	try := func(how int) (err error) {
		if cerr := conn.Control(func(fd uintptr) { err = unix.Flock(int(fd), how) }); cerr != nil {
			return cerr
		}
		return err
	}
	deadline := time.Now().Add(lockTimeout)
	for {
		err := try(unix.LOCK_EX | unix.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("firewall: locking the network namespace: %w", err)
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("firewall: another rawlb in this network namespace has held the firewall lock for %v: is one stuck? (see fuser /proc/*/ns/net)", lockTimeout)
		}
		// flock has no timeout, and the holder is done in milliseconds.
		time.Sleep(5 * time.Millisecond)
	}
	return func() { _ = try(unix.LOCK_UN) }, nil
}

// sysctlMax is more than the longest ip_local_reserved_ports can print
// (pairs of ports one apart, "1000-1001,", are 4 bytes a port: 262 KB).
const sysctlMax = 512 << 10

// readReserved reads the sysctl in one read from offset 0: the kernel
// (proc_do_large_bitmap) prints nothing at a non-zero offset, so a read
// in pieces would silently truncate a long list.
func (ns *namespace) readReserved() (PortList, error) {
	return readSysctl(ns.sysctl)
}

func readSysctl(f *os.File) (PortList, error) {
	buf := make([]byte, sysctlMax)
	n, err := f.ReadAt(buf, 0)
	if err != nil && err != io.EOF {
		return nil, sysctlError("reading", err)
	}
	if n == len(buf) {
		return nil, fmt.Errorf("firewall: reading %s: longer than %d bytes", ReservedPortsPath, len(buf))
	}
	l, err := ParsePortList(string(buf[:n]))
	if err != nil {
		return nil, fmt.Errorf("firewall: reading %s: %w", ReservedPortsPath, err)
	}
	return l, nil
}

// writeReserved replaces the sysctl's list with l in a single write at
// offset 0, which the kernel parses as the whole new list.
func (ns *namespace) writeReserved(l PortList) error {
	// The newline matters: the kernel ignores a zero-length write, so an
	// empty list must be written as "\n" to clear the bitmap.
	if ns.readOnly {
		return sysctlError("writing", &fs.PathError{Op: "write", Path: ReservedPortsPath, Err: syscall.EROFS})
	}
	if _, err := ns.sysctl.WriteAt([]byte(l.String()+"\n"), 0); err != nil {
		return sysctlError("writing", err)
	}
	return nil
}

// sysctlError says what to do about a failed access to the sysctl.
func sysctlError(what string, err error) error {
	switch {
	case errors.Is(err, fs.ErrPermission):
		return fmt.Errorf("firewall: %s %s: %w: reserving the NAT ports needs root (CAP_NET_ADMIN and write access to /proc/sys)", what, ReservedPortsPath, err)
	case errors.Is(err, syscall.EROFS):
		return fmt.Errorf("firewall: %s %s: %w: /proc/sys is read-only here (a container?): reserve the NAT ports before rawlb starts (docker run --sysctl net.ipv4.ip_local_reserved_ports=<first>-<last>, or sysctls: in compose) or run rawlb with -firewall=false", what, ReservedPortsPath, err)
	}
	return fmt.Errorf("firewall: %s %s: %w", what, ReservedPortsPath, err)
}

// process identifies a process for the lifetime of the boot: a pid alone
// is reused, a pid with its start time is not.
type process struct {
	PID   int
	Start uint64
}

// self is the calling process.
func self() (process, error) {
	start, _, err := procStat(os.Getpid())
	if err != nil {
		return process{}, err
	}
	return process{os.Getpid(), start}, nil
}

// alive reports whether p still runs. A zombie does not: its rules renew
// no more.
func (p process) alive() bool {
	start, state, err := procStat(p.PID)
	if err != nil {
		return false
	}
	return start == p.Start && state != "Z" && state != "X"
}

// procStat returns the start time and state of pid from /proc/PID/stat
// (proc(5): the state is the field after the parenthesised command name,
// which may itself hold spaces and parentheses, the start time field 22).
func procStat(pid int) (start uint64, state string, err error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, "", err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, "", fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state), so field 22 is f[19].
	if len(f) < 20 {
		return 0, "", fmt.Errorf("/proc/%d/stat: %d fields after the command name", pid, len(f))
	}
	start, err = strconv.ParseUint(f[19], 10, 64)
	return start, f[0], err
}

// clockWatch wakes up when the wall clock is set, which moves every
// "meta time" deadline relative to the present: a timerfd armed with
// TFD_TIMER_CANCEL_ON_SET fails its read with ECANCELED when
// CLOCK_REALTIME is set discontinuously (timerfd_create(2)). Gradual NTP
// slewing (at most 500 ppm) never needs it.
type clockWatch struct {
	f *os.File
}

func newClockWatch() (*clockWatch, error) {
	fd, err := unix.TimerfdCreate(unix.CLOCK_REALTIME, unix.TFD_NONBLOCK|unix.TFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("firewall: timerfd_create: %w", err)
	}
	if err := armClockWatch(fd); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return &clockWatch{os.NewFile(uintptr(fd), "timerfd")}, nil
}

// armClockWatch sets a timer that never fires (it expires in January
// 2038, the most a 32-bit time_t can say, as on a Raspberry Pi's 32-bit
// OS), only to be cancelled by a clock change.
func armClockWatch(fd int) error {
	var spec unix.ItimerSpec
	spec.Value.Sec = math.MaxInt32
	if err := unix.TimerfdSettime(fd, unix.TFD_TIMER_ABSTIME|unix.TFD_TIMER_CANCEL_ON_SET, &spec, nil); err != nil {
		return fmt.Errorf("firewall: timerfd_settime: %w", err)
	}
	return nil
}

// wait blocks until the clock is set (nil) or the watch is closed.
func (w *clockWatch) wait() error {
	var b [8]byte
	_, err := w.f.Read(b[:])
	if err != nil && !errors.Is(err, unix.ECANCELED) {
		return err
	}
	// Cancelled (or, in 2242, expired): the kernel disarms the
	// cancellation after reporting it once, so arm it again.
	conn, cerr := w.f.SyscallConn()
	if cerr != nil {
		return cerr
	}
	var aerr error
	if cerr := conn.Control(func(fd uintptr) { aerr = armClockWatch(int(fd)) }); cerr != nil {
		return cerr
	}
	return aerr
}

func (w *clockWatch) close() { w.f.Close() }
