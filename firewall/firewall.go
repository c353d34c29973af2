// Package firewall keeps the host's own TCP stack out of rawlb's traffic.
//
// rawlb reads its frames from an AF_PACKET socket, which sees each frame
// before netfilter does, but the kernel still delivers its own copy to the
// host stack. Nothing listens on the balancer port or on the NAT ports, so
// the host would answer every client SYN and every backend reply with a RST
// and tear down the very connections rawlb is forwarding. Install drops
// exactly rawlb's packets in a raw-priority prerouting chain (before
// conntrack and routing, so the kernel spends nothing on them), drops any RST
// the host still sends from those ports, and reserves the NAT ports so that
// no local program binds or auto-picks one of them.
//
// Start returns a Guard for one rawlb process serving several services:
// its rules expire on their own a grace period after the process stops
// renewing them (a crash, or a handoff exit with no successor), a restart
// adopts the previous process's table without a moment unguarded, and
// several instances share a namespace without touching each other's rules
// or reservations. Install and Remove are the older single-port API,
// kept until the engine calls Start.
//
// Everything happens in the network namespace of the calling thread.
package firewall

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"sync"
	"syscall"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
)

// ReservedPortsPath is the sysctl that keeps ports away from bind(0) and
// connect()'s ephemeral port choice. It is per network namespace: the
// kernel resolves /proc/sys/net against the opening thread's namespace.
const ReservedPortsPath = "/proc/sys/net/ipv4/ip_local_reserved_ports"

// Rules describes the traffic that belongs to one rawlb instance.
type Rules struct {
	// SrcIP is the balancer's address: clients connect to SrcIP:Port and
	// backends see connections from SrcIP:NATFirst..NATLast.
	SrcIP netip.Addr
	// Port is the balancer's listening port.
	Port uint16
	// NATFirst and NATLast bound the source ports rawlb uses towards the
	// backends, inclusive.
	NATFirst, NATLast uint16
}

// TableName is the nftables table (family ip) Install creates for r. It is
// keyed by port so two balancers on different ports never collide, and so a
// restart after a crash finds and replaces its own leftovers.
func (r Rules) TableName() string {
	return fmt.Sprintf("rawlb_%d", r.Port)
}

// natRange returns the NAT port range as a PortRange.
func (r Rules) natRange() PortRange {
	return PortRange{r.NATFirst, r.NATLast}
}

// Validate reports the first problem with r, phrased as what to fix.
func (r Rules) Validate() error {
	switch {
	case !r.SrcIP.IsValid():
		return errors.New("firewall: no source address: set the balancer's IPv4 address")
	case !r.SrcIP.Unmap().Is4():
		return fmt.Errorf("firewall: source address %s is not IPv4: rawlb balances IPv4 only", r.SrcIP)
	case r.Port == 0:
		return errors.New("firewall: balancer port 0: pick a port between 1 and 65535")
	case r.NATFirst == 0 || r.NATLast < r.NATFirst:
		return fmt.Errorf("firewall: NAT port range %d-%d is empty or starts at 0: use first-last with 1 <= first <= last", r.NATFirst, r.NATLast)
	case r.NATFirst <= r.Port && r.Port <= r.NATLast:
		return fmt.Errorf("firewall: balancer port %d lies inside the NAT port range %d-%d: move one of them", r.Port, r.NATFirst, r.NATLast)
	}
	return nil
}

// Installed is the handle to rules put in place by Install.
type Installed struct {
	rules Rules
	table *nftables.Table
	// reserved holds the NAT ports Install added to ip_local_reserved_ports,
	// i.e. the range minus what was already reserved, so that Remove gives
	// back exactly the prior list and never drops someone else's ports.
	reserved PortList

	mu      sync.Mutex
	removed bool
}

// Install silences the host stack for r's traffic in the calling thread's
// network namespace: an nftables table named r.TableName() with the drop
// rules, and the NAT range added to ip_local_reserved_ports. A table of the
// same name left by an earlier run is replaced in the same transaction, so
// there is no moment without rules. On error nothing stays installed.
//
// A crashed run's reserved ports cannot be told apart from ports the
// administrator reserved, so Install counts them as prior state and Remove
// leaves them reserved.
func Install(r Rules) (*Installed, error) {
	if err := r.Validate(); err != nil {
		return nil, err
	}
	r.SrcIP = r.SrcIP.Unmap()
	in := &Installed{
		rules: r,
		table: &nftables.Table{Family: nftables.TableFamilyIPv4, Name: r.TableName()},
	}

	conn, err := nftables.New()
	if err != nil {
		return nil, nftError("opening nftables netlink socket", err)
	}
	// Add-delete-add in one batch: the first add makes the delete succeed
	// whether or not a stale table exists, and the kernel applies the batch
	// atomically, so a stale table is swapped rather than removed first.
	conn.AddTable(in.table)
	conn.DelTable(in.table)
	conn.AddTable(in.table)
	addRules(conn, in.table, r)
	if err := conn.Flush(); err != nil {
		return nil, nftError("installing nftables table "+r.TableName(), err)
	}

	reserved, err := reservePorts(r.natRange())
	if err != nil {
		if rmErr := deleteTable(in.table); rmErr != nil {
			err = errors.Join(err, rmErr)
		}
		return nil, err
	}
	in.reserved = reserved
	return in, nil
}

// Remove undoes exactly what Install did: it deletes the table and takes
// back out of ip_local_reserved_ports the ports Install added, provided the
// whole NAT range is still reserved (otherwise someone else has edited the
// list since, and their edit wins). Calling Remove again is a no-op; a
// Remove that failed may be retried.
func (i *Installed) Remove() error {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.removed {
		return nil
	}
	err := deleteTable(i.table)
	if len(i.reserved) > 0 {
		if relErr := releasePorts(i.rules.natRange(), i.reserved); relErr != nil {
			err = errors.Join(err, relErr)
		} else {
			i.reserved = nil // released: a retry after a table error must not release twice
		}
	}
	if err != nil {
		return err
	}
	i.removed = true
	return nil
}

// deleteTable removes t if it exists. Adding it first in the same batch
// turns "no such table" into success, which makes Remove idempotent across
// processes too (another run may already have cleaned up).
func deleteTable(t *nftables.Table) error {
	conn, err := nftables.New()
	if err != nil {
		return nftError("opening nftables netlink socket", err)
	}
	conn.AddTable(t)
	conn.DelTable(t)
	if err := conn.Flush(); err != nil {
		return nftError("deleting nftables table "+t.Name, err)
	}
	return nil
}

// addRules queues the two chains and their rules, mirroring what nft(8)
// generates for the equivalent text so that `nft list table` prints it back
// in the documented form:
//
//	chain prerouting { type filter hook prerouting priority raw
//	    ip daddr SRC tcp dport PORT drop
//	    ip daddr SRC tcp dport FIRST-LAST drop }
//	chain output { type filter hook output priority filter
//	    ip saddr SRC tcp sport PORT tcp flags & rst == rst drop
//	    ip saddr SRC tcp sport FIRST-LAST tcp flags & rst == rst drop }
func addRules(conn *nftables.Conn, t *nftables.Table, r Rules) {
	accept := nftables.ChainPolicyAccept
	// Priority raw runs before conntrack: dropped packets never create
	// conntrack entries and never reach routing or the socket lookup.
	pre := conn.AddChain(&nftables.Chain{
		Name: "prerouting", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRaw, Policy: &accept,
	})
	// The prerouting drops should leave the host nothing to reset; this
	// chain catches RSTs from anything that slips past (a packet that was
	// already in flight while the table was being swapped, a local socket
	// on the balancer port).
	out := conn.AddChain(&nftables.Chain{
		Name: "output", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityFilter, Policy: &accept,
	})

	ip := r.SrcIP.As4()
	comment := userdata.AppendString(nil, userdata.TypeComment, fmt.Sprintf("rawlb %s:%d", r.SrcIP, r.Port))
	ports := []PortRange{{r.Port, r.Port}, r.natRange()}
	for _, p := range ports {
		var e []expr.Any
		e = append(e, matchIP(ipv4DaddrOffset, ip)...)
		e = append(e, matchTCP()...)
		e = append(e, matchPort(tcpDportOffset, p)...)
		e = append(e, &expr.Verdict{Kind: expr.VerdictDrop})
		conn.AddRule(&nftables.Rule{Table: t, Chain: pre, Exprs: e, UserData: comment})
	}
	for _, p := range ports {
		var e []expr.Any
		e = append(e, matchIP(ipv4SaddrOffset, ip)...)
		e = append(e, matchTCP()...)
		e = append(e, matchPort(tcpSportOffset, p)...)
		e = append(e, matchRST()...)
		e = append(e, &expr.Verdict{Kind: expr.VerdictDrop})
		conn.AddRule(&nftables.Rule{Table: t, Chain: out, Exprs: e, UserData: comment})
	}
}

// Header offsets (RFC 791 section 3.1, RFC 9293 section 3.1).
const (
	ipv4SaddrOffset = 12
	ipv4DaddrOffset = 16
	tcpSportOffset  = 0
	tcpDportOffset  = 2
	tcpFlagsOffset  = 13
	tcpFlagRST      = 0x04
)

// matchIP compares the IPv4 address at offset in the network header.
func matchIP(offset uint32, ip [4]byte) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ip[:]},
	}
}

// matchTCP checks the layer 4 protocol with meta l4proto, as nft does for
// "tcp ..." in the ip family, so the transport header loads that follow
// only ever read TCP headers.
func matchTCP() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{syscall.IPPROTO_TCP}},
	}
}

// matchPort compares the port at offset in the TCP header with p. Register
// data is in network byte order, so big-endian compares order correctly.
func matchPort(offset uint32, p PortRange) []expr.Any {
	load := &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: offset, Len: 2}
	if p.First == p.Last {
		return []expr.Any{load, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: be16(p.First)}}
	}
	return []expr.Any{
		load,
		&expr.Cmp{Op: expr.CmpOpGte, Register: 1, Data: be16(p.First)},
		&expr.Cmp{Op: expr.CmpOpLte, Register: 1, Data: be16(p.Last)},
	}
}

// matchRST matches "tcp flags & rst == rst".
func matchRST() []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: tcpFlagsOffset, Len: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 1, Mask: []byte{tcpFlagRST}, Xor: []byte{0}},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{tcpFlagRST}},
	}
}

func be16(v uint16) []byte { return []byte{byte(v >> 8), byte(v)} }

// nftError wraps err from netlink with what to do about it.
func nftError(what string, err error) error {
	switch {
	case errors.Is(err, fs.ErrPermission):
		return fmt.Errorf("firewall: %s: %w: installing nftables rules needs CAP_NET_ADMIN (run as root or setcap cap_net_admin+ep on the binary)", what, err)
	case errors.Is(err, syscall.EOPNOTSUPP):
		return fmt.Errorf("firewall: %s: %w: the kernel refused an nftables expression: rawlb's expiring rules (meta time) need Linux 5.4 or later", what, err)
	case errors.Is(err, syscall.EPROTONOSUPPORT):
		return fmt.Errorf("firewall: %s: %w: the kernel lacks nfnetlink/nf_tables (modprobe nf_tables), or run rawlb with -firewall=false and use scripts/setup.sh", what, err)
	}
	return fmt.Errorf("firewall: %s: %w", what, err)
}

// reservePorts adds r to ip_local_reserved_ports and returns the ports that
// were not already reserved, which are the ones a later release takes back.
func reservePorts(r PortRange) (PortList, error) {
	before, err := readReservedPorts()
	if err != nil {
		return nil, err
	}
	added := PortList{r}.Minus(before)
	if len(added) == 0 {
		return nil, nil
	}
	if err := writeReservedPorts(before.Add(r)); err != nil {
		return nil, err
	}
	return added, nil
}

// releasePorts removes added from ip_local_reserved_ports if the whole of r
// is still reserved. Ports reserved before Install stay reserved because
// added excludes them, and anything reserved since is left alone.
func releasePorts(r PortRange, added PortList) error {
	cur, err := readReservedPorts()
	if err != nil {
		return err
	}
	if !cur.Contains(r) {
		return nil
	}
	return writeReservedPorts(cur.Minus(added))
}

func readReservedPorts() (PortList, error) {
	// Not os.ReadFile: it reads in pieces, and the kernel prints nothing
	// past offset 0, so a list longer than its first piece was truncated.
	f, err := os.Open(ReservedPortsPath)
	if err != nil {
		return nil, fmt.Errorf("firewall: reading %s: %w", ReservedPortsPath, err)
	}
	defer f.Close()
	return readSysctl(f)
}

func writeReservedPorts(l PortList) error {
	// The newline matters: the kernel ignores a zero-length write, so an
	// empty list must be written as "\n" to clear the bitmap.
	err := os.WriteFile(ReservedPortsPath, []byte(l.String()+"\n"), 0o644)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, fs.ErrPermission):
		return fmt.Errorf("firewall: writing %s: %w: reserving the NAT ports needs root (CAP_NET_ADMIN and write access to /proc/sys)", ReservedPortsPath, err)
	case errors.Is(err, syscall.EROFS):
		return fmt.Errorf("firewall: writing %s: %w: /proc/sys is read-only here (a container?): reserve the NAT ports before rawlb starts (docker run --sysctl net.ipv4.ip_local_reserved_ports=<first>-<last>, or sysctls: in compose) or run rawlb with -firewall=false", ReservedPortsPath, err)
	}
	return fmt.Errorf("firewall: writing %s: %w", ReservedPortsPath, err)
}
