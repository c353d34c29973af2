package firewall

import (
	"slices"
	"testing"
)

func TestParsePortList(t *testing.T) {
	tests := []struct {
		in   string
		want PortList
		str  string // String() of the result: what the kernel would print back
	}{
		{"", nil, ""},
		{"\n", nil, ""},
		{"8080\n", PortList{{8080, 8080}}, "8080"},
		{"0,65535", PortList{{0, 0}, {65535, 65535}}, "0,65535"},
		{"40000-59999", PortList{{40000, 59999}}, "40000-59999"},
		// The kernel keeps a bitmap, so it prints sorted, merged ranges
		// whatever order and overlap were written (checked against a 6.x
		// kernel: "1000,2000-3000,2999-3005,3006,5" reads back as below).
		{"1000,2000-3000,2999-3005,3006,5", PortList{{5, 5}, {1000, 1000}, {2000, 3006}}, "5,1000,2000-3006"},
		{"10-20,1-9", PortList{{1, 20}}, "1-20"},
		{"7-7", PortList{{7, 7}}, "7"},
		{"1-65535,65535", PortList{{1, 65535}}, "1-65535"},
	}
	for _, tt := range tests {
		got, err := ParsePortList(tt.in)
		if err != nil {
			t.Errorf("ParsePortList(%q): %v", tt.in, err)
			continue
		}
		if !slices.Equal(got, tt.want) {
			t.Errorf("ParsePortList(%q) = %v, want %v", tt.in, got, tt.want)
		}
		if s := got.String(); s != tt.str {
			t.Errorf("ParsePortList(%q).String() = %q, want %q", tt.in, s, tt.str)
		}
	}
}

func TestParsePortListRejects(t *testing.T) {
	// Everything here the kernel answers with EINVAL; we must refuse it
	// before writing rather than half-apply it.
	for _, in := range []string{
		"65536", "-1", "1-", "-5", "5-1", "a", "1,,2", "1 , 2", " 1,2 3", "+5", "0x10", "1-2-3",
	} {
		if got, err := ParsePortList(in); err == nil {
			t.Errorf("ParsePortList(%q) = %v, want an error", in, got)
		}
	}
}

func TestPortListAdd(t *testing.T) {
	tests := []struct {
		list string
		add  PortRange
		want string
	}{
		{"", PortRange{40000, 59999}, "40000-59999"},
		{"1000", PortRange{40000, 59999}, "1000,40000-59999"},
		{"40000-40010,50000", PortRange{40000, 59999}, "40000-59999"},
		{"39999", PortRange{40000, 59999}, "39999-59999"},
		{"60000,1", PortRange{40000, 59999}, "1,40000-60000"},
		{"1-65535", PortRange{5, 6}, "1-65535"},
		{"65535", PortRange{65534, 65535}, "65534-65535"},
	}
	for _, tt := range tests {
		l := mustParse(t, tt.list)
		before := slices.Clone(l)
		if got := l.Add(tt.add).String(); got != tt.want {
			t.Errorf("%q.Add(%v) = %q, want %q", tt.list, tt.add, got, tt.want)
		}
		if !slices.Equal(l, before) {
			t.Errorf("%q.Add(%v) modified its receiver to %v", tt.list, tt.add, l)
		}
	}
}

func TestPortListRemove(t *testing.T) {
	tests := []struct {
		list string
		rm   PortRange
		want string
	}{
		{"", PortRange{1, 2}, ""},
		{"40000-59999", PortRange{40000, 59999}, ""},
		{"1000,40000-59999,60001", PortRange{40000, 59999}, "1000,60001"},
		{"39000-61000", PortRange{40000, 59999}, "39000-39999,60000-61000"},
		{"40000-40010", PortRange{40005, 50000}, "40000-40004"},
		{"0-65535", PortRange{0, 0}, "1-65535"},
		{"0-65535", PortRange{65535, 65535}, "0-65534"},
		{"5,7,9", PortRange{6, 8}, "5,9"},
	}
	for _, tt := range tests {
		l := mustParse(t, tt.list)
		before := slices.Clone(l)
		if got := l.Remove(tt.rm).String(); got != tt.want {
			t.Errorf("%q.Remove(%v) = %q, want %q", tt.list, tt.rm, got, tt.want)
		}
		if !slices.Equal(l, before) {
			t.Errorf("%q.Remove(%v) modified its receiver to %v", tt.list, tt.rm, l)
		}
	}
}

func TestPortListContains(t *testing.T) {
	tests := []struct {
		list string
		r    PortRange
		want bool
	}{
		{"", PortRange{1, 1}, false},
		{"40000-59999", PortRange{40000, 59999}, true},
		{"1,39000-60000", PortRange{40000, 59999}, true},
		{"40000-49999,50001-59999", PortRange{40000, 59999}, false},
		{"40000-59998", PortRange{40000, 59999}, false},
	}
	for _, tt := range tests {
		if got := mustParse(t, tt.list).Contains(tt.r); got != tt.want {
			t.Errorf("%q.Contains(%v) = %v, want %v", tt.list, tt.r, got, tt.want)
		}
	}
}

// TestReserveReleaseRoundTrip is the arithmetic Install and Remove do on
// ip_local_reserved_ports: whatever was reserved before comes back exactly,
// including ports inside the NAT range that someone else had reserved.
func TestReserveReleaseRoundTrip(t *testing.T) {
	nat := PortRange{40000, 59999}
	for _, prior := range []string{
		"", "1000", "40000", "45000-46000,8080", "39999-40001,59999-60001", "40000-59999", "1-65535",
	} {
		before := mustParse(t, prior)
		added := PortList{nat}.Minus(before)
		installed := before.Add(nat)
		if !installed.Contains(nat) {
			t.Errorf("prior %q: after adding, %v does not contain %v", prior, installed, nat)
		}
		if got := installed.Minus(added); !slices.Equal(got, before) {
			t.Errorf("prior %q: round trip gave %q", prior, got)
		}
		// Another program reserving port 7 meanwhile keeps it.
		if got, want := installed.Add(PortRange{7, 7}).Minus(added), before.Add(PortRange{7, 7}); !slices.Equal(got, want) {
			t.Errorf("prior %q: concurrent reservation of 7 lost: got %v, want %v", prior, got, want)
		}
	}
}

func mustParse(t *testing.T, s string) PortList {
	t.Helper()
	l, err := ParsePortList(s)
	if err != nil {
		t.Fatalf("ParsePortList(%q): %v", s, err)
	}
	return l
}
