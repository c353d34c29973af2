package firewall

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
)

// The layout of a Guard's table, and reading it back.

// scanned is one rawlb table of the namespace and its record, or why it
// has none.
type scanned struct {
	name string
	rec  *record
	err  error
}

// describe names a table's owner for an error message.
func describe(t scanned) string {
	if t.rec == nil {
		return "a table without rawlb record"
	}
	state := "not running"
	switch {
	case t.rec.Detached:
		state = "detached"
	case process{t.rec.PID, t.rec.Start}.alive():
		state = "running"
	}
	return fmt.Sprintf("instance %s, pid %d, %s", t.rec.Instance, t.rec.PID, state)
}

const recordChain = "record"

// scan reads the record of every rawlb table in the namespace.
func scan(c *nftables.Conn) ([]scanned, error) {
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return nil, nftError("listing nftables tables", err)
	}
	var out []scanned
	for _, t := range tables {
		if !strings.HasPrefix(t.Name, TablePrefix) {
			continue
		}
		rec, _, err := readRecord(c, t)
		out = append(out, scanned{t.Name, rec, err})
	}
	return out, nil
}

// readRecord returns t's record; found says whether t exists at all. A
// table without a valid record gives a nil record and an error saying why,
// unless the table is missing.
func readRecord(c *nftables.Conn, t *nftables.Table) (rec *record, found bool, err error) {
	if _, err := c.ListTableOfFamily(t.Name, nftables.TableFamilyIPv4); err != nil {
		if errors.Is(err, syscall.ENOENT) {
			return nil, false, nil
		}
		return nil, false, nftError("reading nftables table "+t.Name, err)
	}
	rules, err := c.GetRules(t, &nftables.Chain{Name: recordChain, Table: t})
	if err != nil {
		return nil, true, nftError("reading the record of nftables table "+t.Name, err)
	}
	var comments []string
	for _, r := range rules {
		s, ok := userdata.GetString(r.UserData, userdata.TypeComment)
		if !ok {
			return nil, true, errors.New("a record rule without comment")
		}
		comments = append(comments, s)
	}
	r, err := parseRecord(comments)
	if err != nil {
		return nil, true, err
	}
	if TablePrefix+r.Instance != t.Name {
		return nil, true, fmt.Errorf("record of instance %s in table %s", r.Instance, t.Name)
	}
	elems, err := c.GetSetElements(serviceSet(t))
	if err != nil {
		return nil, true, nftError("reading the services of nftables table "+t.Name, err)
	}
	for _, e := range elems {
		a, ok := keyService(e.Key)
		if !ok {
			return nil, true, fmt.Errorf("set %s of table %s holds the key %x, not an IPv4 address and port", servicesSetName, t.Name, e.Key)
		}
		r.Listen = append(r.Listen, a)
	}
	r.Listen = normalizeListen(r.Listen)
	return &r, true, nil
}

const servicesSetName = "services"

// serviceSet is the set of the services' listen addresses, "type
// ipv4_addr . inet_service": one hash lookup per packet whatever the
// number of services, and one set element per service, where a rule per
// service would make a reload of a few hundred services overflow the
// netlink socket with acknowledgements.
func serviceSet(t *nftables.Table) *nftables.Set {
	return &nftables.Set{
		Table: t, Name: servicesSetName,
		// A fixed transaction id: the library's own allocator is a
		// global counter shared by every Conn, unguarded.
		ID:            1,
		KeyType:       nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetService),
		Concatenation: true,
	}
}

// serviceKey is a's set key: the address, then the port padded to a
// 32-bit register, as nft lays out a concatenation.
func serviceKey(a netip.AddrPort) []byte {
	ip := a.Addr().As4()
	return []byte{ip[0], ip[1], ip[2], ip[3], byte(a.Port() >> 8), byte(a.Port()), 0, 0}
}

func keyService(k []byte) (netip.AddrPort, bool) {
	if len(k) != 8 || k[6] != 0 || k[7] != 0 {
		return netip.AddrPort{}, false
	}
	port := uint16(k[4])<<8 | uint16(k[5])
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte(k[:4])), port), port != 0
}

// elementsPerMessage keeps each set element message far below the
// netlink socket's buffers.
const elementsPerMessage = 256

// queueElements queues adding add to set and deleting del from it.
func queueElements(c *nftables.Conn, set *nftables.Set, add, del []netip.AddrPort) error {
	for _, op := range []struct {
		addrs []netip.AddrPort
		queue func(*nftables.Set, []nftables.SetElement) error
	}{{del, c.SetDeleteElements}, {add, c.SetAddElements}} {
		for chunk := range slices.Chunk(op.addrs, elementsPerMessage) {
			elems := make([]nftables.SetElement, len(chunk))
			for i, a := range chunk {
				elems[i] = nftables.SetElement{Key: serviceKey(a)}
			}
			if err := op.queue(set, elems); err != nil {
				return nftError("queueing the set of services", err)
			}
		}
	}
	return nil
}

// minus returns the addresses of a that are not in b.
func minus(a, b []netip.AddrPort) []netip.AddrPort {
	in := make(map[netip.AddrPort]bool, len(b))
	for _, x := range b {
		in[x] = true
	}
	var out []netip.AddrPort
	for _, x := range a {
		if !in[x] {
			out = append(out, x)
		}
	}
	return out
}

// deleteTableOn removes t if it exists (adding it first turns "no such
// table" into success).
func deleteTableOn(c *nftables.Conn, t *nftables.Table) error {
	c.AddTable(t)
	c.DelTable(t)
	if err := c.Flush(); err != nil {
		return nftError("deleting nftables table "+t.Name, err)
	}
	return nil
}

// chains are t's chains: prerouting and output as in addRules, plus the
// record.
func chains(t *nftables.Table) []*nftables.Chain {
	accept := nftables.ChainPolicyAccept
	return []*nftables.Chain{
		// Priority raw runs before conntrack: dropped packets never
		// create conntrack entries and never reach routing or the socket
		// lookup.
		{Name: "prerouting", Table: t, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRaw, Policy: &accept},
		// A safety net for RSTs from anything that slips past: a packet
		// in flight when the rules changed, a local socket on a port.
		{Name: "output", Table: t, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityFilter, Policy: &accept},
		{Name: recordChain, Table: t},
	}
}

// queueRules queues the rules of rec with their deadline, which nft(8)
// lists as
//
//	chain prerouting { type filter hook prerouting priority raw
//	    ip daddr . tcp dport @services meta time < "DEADLINE" drop comment "rawlb I: services"
//	    ip daddr S tcp dport F-L meta time < "DEADLINE" drop comment "rawlb I: NAT S:F-L" }
//	chain output { type filter hook output priority filter
//	    ip saddr . tcp sport @services tcp flags & rst == rst meta time < "DEADLINE" drop ...
//	    ip saddr S tcp sport F-L tcp flags & rst == rst meta time < "DEADLINE" drop ... }
//	chain record { continue comment "rawlb v1 instance=I ..." ... }
//
// The time comparison comes last, so that other traffic fails on the
// address and port before the clock is read.
func queueRules(c *nftables.Conn, t *nftables.Table, rec record, deadline time.Time) {
	ch := chains(t)
	pre, out, recCh := ch[0], ch[1], ch[2]
	svcComment := userdata.AppendString(nil, userdata.TypeComment, fmt.Sprintf("rawlb %s: services", rec.Instance))
	natComment := userdata.AppendString(nil, userdata.TypeComment, fmt.Sprintf("rawlb %s: NAT %s:%s", rec.Instance, rec.NATSource, rec.NAT))
	ip := rec.NATSource.As4()
	before := matchBefore(deadline)
	drop := &expr.Verdict{Kind: expr.VerdictDrop}
	for _, dir := range []struct {
		chain      *nftables.Chain
		addr, port uint32
		rst        bool
	}{
		{pre, ipv4DaddrOffset, tcpDportOffset, false},
		{out, ipv4SaddrOffset, tcpSportOffset, true},
	} {
		var rst []expr.Any
		if dir.rst {
			rst = matchRST()
		}
		// The set lookup: the address into the first 32-bit register and
		// the port into the next (NFT_REG32_01 is 9), as nft does for a
		// concatenation; meta l4proto first, so that the port is only
		// ever read from a TCP header.
		svc := matchTCP()
		svc = append(svc,
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: dir.addr, Len: 4},
			&expr.Payload{DestRegister: 9, Base: expr.PayloadBaseTransportHeader, Offset: dir.port, Len: 2},
			&expr.Lookup{SourceRegister: 1, SetName: servicesSetName, SetID: 1},
		)
		svc = append(append(append(svc, rst...), before...), drop)
		c.AddRule(&nftables.Rule{Table: t, Chain: dir.chain, Exprs: svc, UserData: svcComment})

		var nat []expr.Any
		nat = append(nat, matchIP(dir.addr, ip)...)
		nat = append(nat, matchTCP()...)
		nat = append(nat, matchPort(dir.port, rec.NAT)...)
		nat = append(append(append(nat, rst...), before...), drop)
		c.AddRule(&nftables.Rule{Table: t, Chain: dir.chain, Exprs: nat, UserData: natComment})
	}
	// "continue" rather than an empty rule: nft lists an empty rule as a
	// bare comment, which `nft -f` cannot read back from a saved ruleset.
	for _, s := range rec.comments() {
		c.AddRule(&nftables.Rule{Table: t, Chain: recCh, Exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictContinue}},
			UserData: userdata.AppendString(nil, userdata.TypeComment, s)})
	}
}

// metaKeyTimeNS is NFT_META_TIME_NS (include/uapi/linux/netfilter/
// nf_tables.h; Linux 5.4, commit 63d10e12b00d), which x/sys/unix lacks:
// the packet's arrival in wall-clock nanoseconds since the epoch.
const metaKeyTimeNS = expr.MetaKey(30)

// matchBefore matches while the wall clock is before deadline. The meta
// value is a host-order u64 and cmp compares bytes, so, as nft does for
// "meta time <", it is turned big-endian first.
func matchBefore(deadline time.Time) []expr.Any {
	d := make([]byte, 8)
	binary.BigEndian.PutUint64(d, uint64(deadline.UnixNano()))
	return []expr.Any{
		&expr.Meta{Key: metaKeyTimeNS, Register: 1},
		&expr.Byteorder{SourceRegister: 1, DestRegister: 1, Op: expr.ByteorderHton, Len: 8, Size: 8},
		&expr.Cmp{Op: expr.CmpOpLt, Register: 1, Data: d},
	}
}
