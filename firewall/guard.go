package firewall

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/google/nftables"
)

// TablePrefix starts the name of every nftables table (family ip) a Guard
// creates: the table of instance "web" is rawlb_web.
const TablePrefix = "rawlb_"

// Config is the traffic of one rawlb process: its services' listen
// addresses and the NAT source address and port range it talks to the
// backends from.
type Config struct {
	// Instance names the process's table, TablePrefix+Instance: 1 to 32 of
	// a-z, 0-9 and _. A restart keeps the name, so that the new process
	// finds and adopts the old one's table; two processes running at once
	// need two names.
	Instance string
	// NATSource and NATFirst..NATLast (inclusive) are the source address
	// and ports of the connections to the backends. They cannot change
	// while a Guard runs: the flows in the conntrack table use them.
	NATSource         netip.Addr
	NATFirst, NATLast uint16
	// Listen holds every service's listen address (IPv4). It may be empty.
	Listen []netip.AddrPort
}

// TableName is the nftables table (family ip) of c's instance.
func (c Config) TableName() string { return TablePrefix + c.Instance }

func (c Config) natRange() PortRange { return PortRange{c.NATFirst, c.NATLast} }

// Validate reports the first problem with c, phrased as what to fix.
func (c Config) Validate() error {
	if err := validInstance(c.Instance); err != nil {
		return fmt.Errorf("firewall: instance name %q: %v", c.Instance, err)
	}
	switch {
	case !c.NATSource.IsValid():
		return errors.New("firewall: no NAT source address: set the balancer's IPv4 address")
	case !c.NATSource.Unmap().Is4():
		return fmt.Errorf("firewall: NAT source address %s is not IPv4: rawlb balances IPv4 only", c.NATSource)
	case c.NATFirst == 0 || c.NATLast < c.NATFirst:
		return fmt.Errorf("firewall: NAT port range %d-%d is empty or starts at 0: use first-last with 1 <= first <= last", c.NATFirst, c.NATLast)
	}
	for _, l := range c.Listen {
		a := l.Addr().Unmap()
		switch {
		case !a.Is4():
			return fmt.Errorf("firewall: listen address %s is not IPv4: rawlb balances IPv4 only", l)
		case l.Port() == 0:
			return fmt.Errorf("firewall: listen address %s has port 0: pick a port between 1 and 65535", l)
		case a == c.NATSource.Unmap() && c.NATFirst <= l.Port() && l.Port() <= c.NATLast:
			return fmt.Errorf("firewall: listen port %d of %s lies inside the NAT port range %d-%d on the same address: move one of them", l.Port(), a, c.NATFirst, c.NATLast)
		}
	}
	return nil
}

func validInstance(s string) error {
	if s == "" || len(s) > 32 || strings.Trim(s, "abcdefghijklmnopqrstuvwxyz0123456789_") != "" {
		return errors.New("use 1 to 32 of a-z, 0-9 and _ (it names the nftables table " + TablePrefix + "<instance>)")
	}
	return nil
}

// normalize unmaps the addresses and sorts and deduplicates Listen, so
// that the rules and the record come out the same for the same services.
func (c Config) normalize() Config {
	c.NATSource = c.NATSource.Unmap()
	c.Listen = normalizeListen(c.Listen)
	return c
}

func normalizeListen(l []netip.AddrPort) []netip.AddrPort {
	out := make([]netip.AddrPort, 0, len(l))
	for _, a := range l {
		out = append(out, netip.AddrPortFrom(a.Addr().Unmap(), a.Port()))
	}
	slices.SortFunc(out, func(a, b netip.AddrPort) int { return a.Compare(b) })
	return slices.Compact(out)
}

// Options tune a Guard.
type Options struct {
	// Grace bounds how long the drop rules outlive the process that
	// installed them, after a crash or a Detach with no successor. The
	// rules are renewed every Grace/3 while the process runs, so a
	// renewal may fail twice in a row before anything lapses. Default
	// 10s, at least 1s.
	Grace time.Duration
	// Logger receives the renewal failures (once per run of failures)
	// and the recoveries. Default slog.Default().
	Logger *slog.Logger
}

// DefaultGrace is Options.Grace when unset.
const DefaultGrace = 10 * time.Second

// minGrace keeps the renewal interval (Grace/3) far above the few
// milliseconds a netlink round trip takes on a loaded machine.
const minGrace = time.Second

// withDefaults fills in the defaults and checks the grace.
func (o Options) withDefaults() (Options, error) {
	if o.Grace == 0 {
		o.Grace = DefaultGrace
	}
	if o.Grace < minGrace {
		return o, fmt.Errorf("firewall: grace %v is below %v: the rules are renewed every grace/3", o.Grace, minGrace)
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o, nil
}

// Guard is the firewall of one running rawlb instance: its table of drop
// rules, renewed in the background, and its NAT port reservation.
type Guard struct {
	log   *slog.Logger
	grace time.Duration
	ns    *namespace
	table *nftables.Table
	clock *clockWatch

	stop    chan struct{}
	stopped sync.WaitGroup
	once    sync.Once
	// clockSet wakes the renewals when the wall clock was set.
	clockSet chan struct{}

	mu       sync.Mutex
	cfg      Config
	rec      record // what the table's record says, as last written
	deadline time.Time
	closed   bool
	// loOn are the settings of lo this Guard turned on (see
	// loopbackSysctls), turned off again by Remove.
	loOn []string
}

// Start silences the host stack for c's traffic in the calling thread's
// network namespace, and keeps it silenced until Remove or Detach:
//
//   - a table TablePrefix+c.Instance whose raw-priority prerouting chain
//     drops TCP to every listen address and to the NAT source's NAT
//     ports, and whose output chain drops any RST the host still sends
//     from them. Every rule stops matching at a deadline ("meta time <")
//     that a goroutine of the Guard pushes forward every Grace/3, so
//     after a crash the host answers normally again within Grace;
//   - the NAT range in ip_local_reserved_ports, so that no local program
//     binds or auto-picks one of its ports;
//   - lo's accept_local and route_localnet on, if they were off, so that
//     the frames rawlb sends into lo (to a backend or a client on this
//     host) are not dropped as martians (see loopbackSysctls). A clean
//     Remove by the namespace's last instance turns them off again; after
//     a crash or a handoff they stay on, which is harmless;
//   - a record in the table (see record) of the owner and of which ports
//     of the range the administrator had reserved before rawlb did.
//
// A table of the same instance left by a crashed or detached process is
// adopted: replaced in the same transaction that installs the new rules,
// so the drops never pause, and its record carried forward, so that a
// later Remove restores the reserved ports as they were before the first
// rawlb started. Start refuses if that table's owner still runs, and if c
// overlaps another instance's table of the namespace (a NAT range on the
// same source address, or a listen address). On error nothing is changed.
func Start(c Config, o Options) (*Guard, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	c = c.normalize()
	o, err := o.withDefaults()
	if err != nil {
		return nil, err
	}
	me, err := self()
	if err != nil {
		return nil, fmt.Errorf("firewall: reading this process's start time: %w", err)
	}
	ns, err := openNamespace()
	if err != nil {
		return nil, err
	}
	clock, err := newClockWatch()
	if err != nil {
		ns.close()
		return nil, err
	}
	g := &Guard{
		log:      o.Logger.With("instance", c.Instance),
		grace:    o.Grace,
		ns:       ns,
		table:    &nftables.Table{Family: nftables.TableFamilyIPv4, Name: c.TableName()},
		clock:    clock,
		stop:     make(chan struct{}),
		clockSet: make(chan struct{}, 1),
		cfg:      c,
	}
	if err := g.install(me); err != nil {
		clock.close()
		ns.close()
		return nil, err
	}
	g.stopped.Add(2)
	go g.watchClock()
	go g.renewLoop()
	return g, nil
}

// install does Start's work under the namespace lock.
func (g *Guard) install(me process) error {
	unlock, err := g.ns.lock()
	if err != nil {
		return err
	}
	defer unlock()
	tables, err := scan(g.ns.nft)
	if err != nil {
		return err
	}
	var leftover *record
	var others []record
	for _, t := range tables {
		switch {
		case t.name == g.table.Name && t.err != nil:
			// An older rawlb's or a hand-made table: nothing says which
			// reserved ports it took, so they count as the administrator's.
			g.log.Warn("firewall: replacing a table that has no rawlb record; ports it may have reserved stay reserved", "table", t.name, "err", t.err)
		case t.name == g.table.Name:
			leftover = t.rec
		case t.err != nil:
			g.log.Warn("firewall: ignoring a table without a valid rawlb record", "table", t.name, "err", t.err)
		default:
			others = append(others, *t.rec)
		}
	}
	if leftover != nil && !leftover.Detached {
		if owner := (process{leftover.PID, leftover.Start}); owner.alive() {
			return fmt.Errorf("firewall: instance %s already runs as pid %d: stop it first, or start this one under another instance name", g.cfg.Instance, owner.PID)
		}
	}
	if err := conflict(g.cfg, others); err != nil {
		return err
	}

	cur, err := g.ns.readReserved()
	if err != nil {
		return err
	}
	cl := claimsOf(others)
	id, err := newID()
	if err != nil {
		return err
	}
	rec := record{
		Instance:  g.cfg.Instance,
		NATSource: g.cfg.NATSource,
		NAT:       g.cfg.natRange(),
		Listen:    g.cfg.Listen,
		Admin:     adminPorts(cur, g.cfg.natRange(), leftover, cl),
		PID:       me.PID,
		Start:     me.Start,
		ID:        id,
	}
	if n := len(rec.comments()); n > maxRecordLines {
		return fmt.Errorf("firewall: the administrator's reservations inside the NAT range %s (%s) are too fragmented to record (%d lines, at most %d): reserve whole ranges or pick another NAT range",
			g.cfg.natRange(), rec.Admin, n, maxRecordLines)
	}
	// The ports first: if the rules then fail, the old list is written
	// back and nothing has changed, the leftover table included, since a
	// failed nftables transaction changes nothing.
	next := reservedAfterStart(cur, g.cfg.natRange(), leftover, cl)
	changed := !slices.Equal(next, cur)
	if changed {
		if err := g.ns.writeReserved(next); err != nil {
			return err
		}
	}
	deadline := time.Now().Add(g.grace)
	c := g.ns.nft
	// Add-delete-add in one batch: the first add makes the delete succeed
	// whether or not a leftover exists, and the kernel applies the batch
	// atomically, so a leftover is swapped for the new table (its rules
	// match until the very generation in which ours start to), and
	// anything foreign in it goes.
	c.AddTable(g.table)
	c.DelTable(g.table)
	c.AddTable(g.table)
	for _, ch := range chains(g.table) {
		c.AddChain(ch)
	}
	// Queueing fails only on a netlink attribute over 64 KiB, which a
	// set of fixed 8-byte keys cannot reach; the checks are for form.
	set := serviceSet(g.table)
	if err := c.AddSet(set, nil); err != nil {
		return nftError("queueing the set of services", err)
	}
	if err := queueElements(c, set, rec.Listen, nil); err != nil {
		return err
	}
	queueRules(c, g.table, rec, deadline)
	if err := c.Flush(); err != nil {
		err = nftError("installing nftables table "+g.table.Name, err)
		if changed {
			if rerr := g.ns.writeReserved(cur); rerr != nil {
				err = errors.Join(err, rerr)
			}
		}
		return err
	}
	g.rec, g.deadline = rec, deadline
	on, err := g.ns.enableLoopback()
	if err != nil {
		g.log.Warn("firewall: lo's settings could not be turned on: clients on this host, and backends on it, are not reached (see docs/one-machine.md)", "err", err)
	}
	if len(on) > 0 {
		g.log.Info("firewall: turned on lo's settings that frames rawlb sends into lo need; they go off again when rawlb stops for good", "net.ipv4.conf.lo", strings.Join(on, ","))
	}
	g.loOn = on
	return nil
}

// Update replaces the listen addresses, for a reload: the rules for the
// new set replace the old ones in one nftables transaction, so a kept
// service is dropped without a pause and a removed one is answered by the
// host from the next packet on. The instance and the NAT source and range
// cannot change.
func (g *Guard) Update(c Config) error {
	if err := c.Validate(); err != nil {
		return err
	}
	c = c.normalize()
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return errors.New("firewall: Update after Remove or Detach")
	}
	if c.Instance != g.cfg.Instance || c.NATSource != g.cfg.NATSource || c.natRange() != g.cfg.natRange() {
		return fmt.Errorf("firewall: a reload cannot change the instance or the NAT source and range (from %s %s:%s to %s %s:%s): restart rawlb instead",
			g.cfg.Instance, g.cfg.NATSource, g.cfg.natRange(), c.Instance, c.NATSource, c.natRange())
	}
	unlock, err := g.ns.lock()
	if err != nil {
		return err
	}
	defer unlock()
	tables, err := scan(g.ns.nft)
	if err != nil {
		return err
	}
	var others []record
	for _, t := range tables {
		if t.name != g.table.Name && t.err == nil {
			others = append(others, *t.rec)
		}
	}
	if err := conflict(c, others); err != nil {
		return err
	}
	rec := g.rec
	rec.Listen = c.Listen
	if err := g.rewrite(rec); err != nil {
		return err
	}
	g.cfg = c
	return nil
}

// Deadline is when the rules stop matching unless renewed.
func (g *Guard) Deadline() time.Time {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.deadline
}

// Remove undoes Start for a clean exit: it takes out of
// ip_local_reserved_ports the ports of the NAT range that neither the
// administrator had reserved before rawlb nor another instance's table
// still claims, and deletes the table. Calling it again is a no-op. A
// Remove that failed may be retried; the renewals have stopped by then, so
// the rules lapse within Grace meanwhile.
func (g *Guard) Remove() error {
	g.stopRenewing()
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return nil
	}
	unlock, err := g.ns.lock()
	if err != nil {
		return err
	}
	defer unlock()
	tables, err := scan(g.ns.nft)
	if err != nil {
		return err
	}
	var others []record
	for _, t := range tables {
		switch {
		case t.name == g.table.Name && (t.rec == nil || t.rec.ID != g.rec.ID):
			// Adopted by another process (which pid namespaces can hide
			// from the liveness check): the table and ports are its now.
			g.closed = true
			g.ns.close()
			return fmt.Errorf("firewall: table %s was taken over by another process (%v): left it and its ports alone", g.table.Name, describe(t))
		case t.name != g.table.Name && t.err == nil:
			others = append(others, *t.rec)
		}
	}
	cur, err := g.ns.readReserved()
	if err != nil {
		return err
	}
	// Ports first, table second: a failure in between leaves the record
	// in place, so a retry (or a successor) still knows the ports.
	next := cur.Minus(releasable(g.cfg.natRange(), g.rec.Admin, claimsOf(others)))
	if !slices.Equal(next, cur) {
		if err := g.ns.writeReserved(next); err != nil {
			return err
		}
	}
	if err := deleteTableOn(g.ns.nft, g.table); err != nil {
		return err
	}
	// Another instance of the namespace may hand frames to lo as well: the
	// last one out turns the settings off, if it was the one that turned
	// them on.
	if len(others) == 0 {
		if err := g.ns.restoreLoopback(g.loOn); err != nil {
			g.log.Warn("firewall: turning lo's settings off again failed", "err", err)
		}
	}
	g.closed = true
	g.ns.close()
	return nil
}

// Detach ends the Guard for a handoff exit: the renewals stop, the record
// is marked detached (so a successor adopts the table even while this
// process is still exiting) and the rules keep matching until Grace from
// now, bridging the gap until the successor's Start; if none comes, they
// lapse and the host answers normally. The reserved ports stay, recorded
// in the table for the successor's eventual Remove.
func (g *Guard) Detach() error {
	g.stopRenewing()
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return nil
	}
	rec := g.rec
	rec.Detached = true
	err := g.rewrite(rec)
	g.closed = true
	g.ns.close()
	return err
}

// stopRenewing stops the background goroutines and waits for them, so no
// renewal races the final write.
func (g *Guard) stopRenewing() {
	g.once.Do(func() {
		close(g.stop)
		g.clock.close()
	})
	g.stopped.Wait()
}

// errTakenOver ends the renewals: another process owns the table now.
var errTakenOver = errors.New("taken over")

// rewrite replaces the rules and the record with rec's, with the deadline
// Grace from now, in one transaction, after checking the table is still
// ours. A table deleted by hand is created again: the host must stay
// quiet while rawlb runs. Called with g.mu held.
func (g *Guard) rewrite(rec record) error {
	current, found, err := readRecord(g.ns.nft, g.table)
	if err != nil {
		return err
	}
	if found && current.ID != g.rec.ID {
		return fmt.Errorf("firewall: table %s: %w by %v", g.table.Name, errTakenOver, describe(scanned{g.table.Name, current, nil}))
	}
	if !found {
		g.log.Warn("firewall: table was deleted while rawlb runs; creating it again", "table", g.table.Name)
	}
	deadline := time.Now().Add(g.grace)
	c := g.ns.nft
	// No table or chain is deleted: adding an existing one is a no-op, so
	// this works on a table deleted by hand, and the flushes plus adds
	// become visible to packets at the transaction's generation flip, all
	// at once.
	c.AddTable(g.table)
	for _, ch := range chains(g.table) {
		c.AddChain(ch)
		c.FlushChain(ch)
	}
	// Only the services that come or go change in the set: a kept
	// service's element is never touched.
	var have []netip.AddrPort
	if found {
		have = current.Listen
	}
	set := serviceSet(g.table)
	if err := c.AddSet(set, nil); err != nil {
		return nftError("queueing the set of services", err)
	}
	if err := queueElements(c, set, minus(rec.Listen, have), minus(have, rec.Listen)); err != nil {
		return err
	}
	queueRules(c, g.table, rec, deadline)
	if err := c.Flush(); err != nil {
		return nftError("renewing nftables table "+g.table.Name, err)
	}
	g.rec, g.deadline = rec, deadline
	return nil
}

// renewLoop pushes the deadline forward every Grace/3, and at once when
// the wall clock is set.
func (g *Guard) renewLoop() {
	defer g.stopped.Done()
	interval, retry := g.grace/3, g.grace/10
	timer := time.NewTimer(interval)
	defer timer.Stop()
	failing := false
	for {
		select {
		case <-g.stop:
			return
		case <-timer.C:
		case <-g.clockSet:
			g.log.Info("firewall: wall clock was set; renewing the rules' deadline now")
		}
		g.mu.Lock()
		err := g.rewrite(g.rec)
		g.mu.Unlock()
		switch {
		case errors.Is(err, errTakenOver):
			g.log.Error("firewall: stopped renewing the rules", "err", err)
			return
		case err != nil:
			if !failing {
				g.log.Error("firewall: renewing the rules failed; retrying", "err", err, "every", retry, "rules_lapse_at", g.Deadline())
			}
			failing = true
			timer.Reset(retry)
		default:
			if failing {
				g.log.Info("firewall: renewing the rules works again")
			}
			failing = false
			timer.Reset(interval)
		}
	}
}

// watchClock signals clockSet whenever the wall clock is set.
func (g *Guard) watchClock() {
	defer g.stopped.Done()
	for {
		if err := g.clock.wait(); err != nil {
			select {
			case <-g.stop:
			default:
				g.log.Error("firewall: watching for wall clock changes failed; a clock jump may make the rules lapse until the next renewal", "err", err)
			}
			return
		}
		select {
		case g.clockSet <- struct{}{}:
		default:
		}
	}
}

// Clean removes a table left by a dead instance that will not run again:
// it releases the reserved ports the table's record says rawlb took (and
// no other table still claims) and deletes the table, in the calling
// thread's network namespace. It refuses if the owner still runs. Adopting
// the table (Start, then Remove) does the same.
func Clean(instance string) error {
	if err := validInstance(instance); err != nil {
		return fmt.Errorf("firewall: instance name %q: %v", instance, err)
	}
	ns, err := openNamespace()
	if err != nil {
		return err
	}
	defer ns.close()
	unlock, err := ns.lock()
	if err != nil {
		return err
	}
	defer unlock()
	tables, err := scan(ns.nft)
	if err != nil {
		return err
	}
	name := TablePrefix + instance
	var own *scanned
	var others []record
	for i, t := range tables {
		switch {
		case t.name == name:
			own = &tables[i]
		case t.err == nil:
			others = append(others, *t.rec)
		}
	}
	if own == nil {
		return nil
	}
	if own.err != nil {
		return fmt.Errorf("firewall: table %s has no valid rawlb record (%v): if it is no rawlb's, delete it with nft delete table ip %s", name, own.err, name)
	}
	rec := own.rec
	if owner := (process{rec.PID, rec.Start}); !rec.Detached && owner.alive() {
		return fmt.Errorf("firewall: instance %s runs as pid %d: stop it instead", instance, rec.PID)
	}
	cur, err := ns.readReserved()
	if err != nil {
		return err
	}
	next := cur.Minus(releasable(rec.NAT, rec.Admin, claimsOf(others)))
	if !slices.Equal(next, cur) {
		if err := ns.writeReserved(next); err != nil {
			return err
		}
	}
	return deleteTableOn(ns.nft, &nftables.Table{Family: nftables.TableFamilyIPv4, Name: name})
}

// newID is the Guard's mark in its record: the pid and start time say who
// owns a table, the ID which of that process's Guards wrote it last.
func newID() (string, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("firewall: random id: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}
