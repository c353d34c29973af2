package firewall

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// record is what a Guard keeps about itself inside its own table, as the
// comments of the rules of the chain "record" (a regular chain no hook
// jumps to, so its rules never run). Keeping it in the table rather than in
// a file makes it exactly as per-namespace as the rules and the sysctl it
// describes, and it goes away with the table.
type record struct {
	Instance  string
	NATSource netip.Addr
	NAT       PortRange
	// Listen is not in the comments: it is read from the table's set of
	// services, which is what the rules match.
	Listen []netip.AddrPort
	// Admin are the ports of NAT the administrator had reserved before
	// the first rawlb of this instance did; Remove leaves them reserved.
	Admin PortList
	// PID and Start (the process's start time in clock ticks after boot,
	// field 22 of /proc/PID/stat) identify the owner, so that a reused pid
	// is not taken for a live owner.
	PID   int
	Start uint64
	// ID tells this Guard's writes from any other's: a Guard renews its
	// table only while the record still carries its ID.
	ID string
	// Detached marks a handoff exit: the owner may still be alive, but it
	// has given the table up for a successor to adopt.
	Detached bool
}

const (
	recordMagic = "rawlb v1"
	// commentMax keeps each comment well inside NFT_USERDATA_MAXLEN (256
	// bytes for the whole TLV, include/uapi/linux/netfilter/nf_tables.h).
	commentMax = 200
	keyAdmin   = "admin-reserved="
	emptyList  = "none"
	// maxRecordLines bounds the rules of the record chain, and so the
	// messages of a renewal: each rule's acknowledgement takes room in the
	// netlink socket's receive buffer, and some 200 of them overflow it
	// (ENOBUFS, measured). 63 lines hold well over 1,000 ranges.
	maxRecordLines = 64
	stateRunning   = "running"
	stateHandoff   = "detached"
)

// comments encodes r as the comments of the record chain's rules: a header
// line, then the administrator's ports, split over as many lines as they
// need.
func (r record) comments() []string {
	state := stateRunning
	if r.Detached {
		state = stateHandoff
	}
	out := []string{fmt.Sprintf("%s instance=%s nat=%s:%s pid=%d start=%d id=%s state=%s",
		recordMagic, r.Instance, r.NATSource, r.NAT, r.PID, r.Start, r.ID, state)}
	admin := make([]string, len(r.Admin))
	for i, p := range r.Admin {
		admin[i] = p.String()
	}
	return append(out, chunk(keyAdmin, admin)...)
}

// chunk joins items with commas into lines "key=a,b,c" of at most
// commentMax bytes, or one line "key=none" if there are none.
func chunk(key string, items []string) []string {
	if len(items) == 0 {
		return []string{key + emptyList}
	}
	var out []string
	line := key
	for _, it := range items {
		if line != key && len(line)+1+len(it) > commentMax {
			out = append(out, line)
			line = key
		}
		if line != key {
			line += ","
		}
		line += it
	}
	return append(out, line)
}

// parseRecord decodes the comments of a record chain. The table may have
// been edited by hand, so anything unexpected is an error rather than a
// guess: a table whose record does not parse is never adopted.
func parseRecord(comments []string) (record, error) {
	var r record
	if len(comments) == 0 {
		return r, errors.New("no record")
	}
	head, ok := strings.CutPrefix(comments[0], recordMagic+" ")
	if !ok {
		return r, fmt.Errorf("record header %q does not start with %q", comments[0], recordMagic)
	}
	seen := map[string]bool{}
	for _, field := range strings.Fields(head) {
		k, v, ok := strings.Cut(field, "=")
		if !ok || seen[k] {
			return r, fmt.Errorf("record header field %q is malformed or repeated", field)
		}
		seen[k] = true
		var err error
		switch k {
		case "instance":
			if err = validInstance(v); err == nil {
				r.Instance = v
			}
		case "nat":
			r.NATSource, r.NAT, err = parseNAT(v)
		case "pid":
			r.PID, err = strconv.Atoi(v)
			if err == nil && r.PID <= 0 {
				err = errors.New("not positive")
			}
		case "start":
			r.Start, err = strconv.ParseUint(v, 10, 64)
		case "id":
			if v == "" || strings.Trim(v, "0123456789abcdef") != "" {
				err = errors.New("not lower-case hex")
			}
			r.ID = v
		case "state":
			switch v {
			case stateRunning:
			case stateHandoff:
				r.Detached = true
			default:
				err = errors.New("unknown state")
			}
		default:
			// A newer rawlb may record more; what this one needs is
			// checked below.
		}
		if err != nil {
			return r, fmt.Errorf("record header field %q: %w", field, err)
		}
	}
	for _, k := range []string{"instance", "nat", "pid", "start", "id", "state"} {
		if !seen[k] {
			return r, fmt.Errorf("record header %q lacks %s=", comments[0], k)
		}
	}
	haveAdmin := false
	for _, c := range comments[1:] {
		v, ok := strings.CutPrefix(c, keyAdmin)
		if !ok {
			continue // a newer rawlb's line
		}
		haveAdmin = true
		if v == emptyList {
			continue
		}
		l, err := ParsePortList(v)
		if err != nil || len(l) == 0 {
			return r, fmt.Errorf("record line %q: %v", c, err)
		}
		r.Admin = r.Admin.Union(l)
	}
	if !haveAdmin {
		return r, errors.New("record lacks the admin-reserved= line")
	}
	if len(r.Admin.Minus(PortList{r.NAT})) > 0 {
		return r, fmt.Errorf("record's admin-reserved ports %s lie outside its NAT range %s", r.Admin, r.NAT)
	}
	return r, nil
}

// parseNAT parses "198.18.0.2:40000-59999".
func parseNAT(s string) (netip.Addr, PortRange, error) {
	i := strings.LastIndexByte(s, ':')
	if i < 0 {
		return netip.Addr{}, PortRange{}, errors.New("want address:first-last")
	}
	a, err := netip.ParseAddr(s[:i])
	if err != nil || !a.Is4() {
		return netip.Addr{}, PortRange{}, errors.New("address is not IPv4")
	}
	l, err := ParsePortList(s[i+1:])
	if err != nil || len(l) != 1 || l[0].First == 0 {
		return netip.Addr{}, PortRange{}, errors.New("want one port range first-last, first >= 1")
	}
	return a, l[0], nil
}
