package firewall

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// PortRange is an inclusive range of ports, First <= Last.
type PortRange struct {
	First, Last uint16
}

// String formats r the way the kernel prints it in ip_local_reserved_ports:
// a lone port for a one-port range, "first-last" otherwise.
func (r PortRange) String() string {
	if r.First == r.Last {
		return strconv.Itoa(int(r.First))
	}
	return fmt.Sprintf("%d-%d", r.First, r.Last)
}

// PortList is a set of ports in the syntax of
// /proc/sys/net/ipv4/ip_local_reserved_ports. It is kept sorted with
// overlapping and adjacent ranges merged, because that is the canonical form
// the kernel reads back (it stores a bitmap): String of a list parsed from any
// accepted input equals what the kernel prints after that input is written.
// The methods never modify their receiver.
type PortList []PortRange

// ParsePortList parses the comma-separated list of ports and first-last
// ranges found in ip_local_reserved_ports. Surrounding whitespace (the
// kernel's trailing newline) is ignored; an empty string is the empty list.
func ParsePortList(s string) (PortList, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, nil
	}
	var rs []PortRange
	for _, field := range strings.Split(s, ",") {
		first, last, isRange := strings.Cut(field, "-")
		lo, err := parsePort(first)
		if err != nil {
			return nil, fmt.Errorf("port list %q: %w", s, err)
		}
		hi := lo
		if isRange {
			if hi, err = parsePort(last); err != nil {
				return nil, fmt.Errorf("port list %q: %w", s, err)
			}
			if hi < lo {
				return nil, fmt.Errorf("port list %q: range %s is backwards", s, field)
			}
		}
		rs = append(rs, PortRange{lo, hi})
	}
	return normalize(rs), nil
}

// parsePort is strict (no signs, no spaces) because the kernel rejects
// anything else with EINVAL and we would rather fail before writing.
func parsePort(s string) (uint16, error) {
	if s == "" || strings.TrimLeft(s, "0123456789") != "" {
		return 0, fmt.Errorf("%q is not a port number", s)
	}
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil {
		return 0, fmt.Errorf("%q is not a port number (0-65535)", s)
	}
	return uint16(n), nil
}

// normalize sorts rs and merges ranges that overlap or touch.
func normalize(rs []PortRange) PortList {
	if len(rs) == 0 {
		return nil
	}
	sorted := append([]PortRange(nil), rs...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].First < sorted[j].First })
	out := PortList{sorted[0]}
	for _, r := range sorted[1:] {
		cur := &out[len(out)-1]
		// uint32 so that a range ending at 65535 does not wrap.
		if uint32(r.First) <= uint32(cur.Last)+1 {
			cur.Last = max(cur.Last, r.Last)
			continue
		}
		out = append(out, r)
	}
	return out
}

// String formats l as the kernel prints ip_local_reserved_ports (without the
// trailing newline); the empty list is "".
func (l PortList) String() string {
	parts := make([]string, len(l))
	for i, r := range l {
		parts[i] = r.String()
	}
	return strings.Join(parts, ",")
}

// Add returns l with every port of r in it.
func (l PortList) Add(r PortRange) PortList {
	return normalize(append(append([]PortRange(nil), l...), r))
}

// Remove returns l without any port of r.
func (l PortList) Remove(r PortRange) PortList {
	var out PortList
	for _, have := range l {
		if have.Last < r.First || have.First > r.Last {
			out = append(out, have)
			continue
		}
		if have.First < r.First {
			out = append(out, PortRange{have.First, r.First - 1})
		}
		if have.Last > r.Last {
			out = append(out, PortRange{r.Last + 1, have.Last})
		}
	}
	return out
}

// Contains reports whether every port of r is in l.
func (l PortList) Contains(r PortRange) bool {
	// l is merged, so r is covered only if a single range covers it.
	for _, have := range l {
		if have.First <= r.First && r.Last <= have.Last {
			return true
		}
	}
	return false
}

// Minus returns the ports of l that are not in other.
func (l PortList) Minus(other PortList) PortList {
	out := l
	for _, r := range other {
		out = out.Remove(r)
	}
	return out
}

// Intersect returns the ports that are both in l and in other.
func (l PortList) Intersect(other PortList) PortList {
	return l.Minus(l.Minus(other))
}

// Union returns the ports that are in l or in other.
func (l PortList) Union(other PortList) PortList {
	out := l
	for _, r := range other {
		out = out.Add(r)
	}
	return out
}
