package firewall

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

// TestReservationBookkeeping is the arithmetic of Start and Remove over
// ip_local_reserved_ports, as "state before + operation = state after"
// cases: what the administrator reserved before the first rawlb always
// comes back, and another instance's ports always stay.
func TestReservationBookkeeping(t *testing.T) {
	nat := PortRange{40000, 59999}
	src := netip.MustParseAddr("198.18.0.2")
	rec := func(n PortRange, admin string) *record {
		return &record{Instance: "old", NATSource: src, NAT: n, Admin: mustParse(t, admin)}
	}
	for _, tt := range []struct {
		name     string
		cur      string // the sysctl when Start runs
		leftover *record
		others   []record
		// wantAdmin is the record's administrator part, wantStarted the
		// sysctl after Start, wantRemoved after a Remove right after.
		wantAdmin, wantStarted, wantRemoved string
	}{
		{
			name: "fresh, administrator's ports inside and outside the range",
			cur:  "1000,40000-40010,60000", wantAdmin: "40000-40010",
			wantStarted: "1000,40000-60000", wantRemoved: "1000,40000-40010,60000",
		},
		{
			name: "adopting a crashed run: its reservations are rawlb's",
			cur:  "1000,40000-60000", leftover: rec(nat, "40000-40010"), wantAdmin: "40000-40010",
			wantStarted: "1000,40000-60000", wantRemoved: "1000,40000-40010,60000",
		},
		{
			name: "administrator unreserved a recorded port since",
			cur:  "40001-59999", leftover: rec(nat, "40000"), wantAdmin: "",
			wantStarted: "40000-59999", wantRemoved: "",
		},
		{
			name: "leftover used another range: its own ports go, the administrator's stay",
			cur:  "30000-39999", leftover: rec(PortRange{30000, 39999}, "30000"), wantAdmin: "",
			wantStarted: "30000,40000-59999", wantRemoved: "30000",
		},
		{
			name: "another instance on another address shares part of the range",
			cur:  "45000-64999", others: []record{*rec(PortRange{45000, 64999}, "")}, wantAdmin: "",
			wantStarted: "40000-64999", wantRemoved: "45000-64999",
		},
		{
			name: "another instance counted a shared port as the administrator's",
			cur:  "50000-50010", others: []record{*rec(PortRange{50000, 50010}, "50000")}, wantAdmin: "50000",
			wantStarted: "40000-59999", wantRemoved: "50000-50010",
		},
	} {
		t.Run(strings.ReplaceAll(tt.name, " ", "_"), func(t *testing.T) {
			cur := mustParse(t, tt.cur)
			cl := claimsOf(tt.others)
			admin := adminPorts(cur, nat, tt.leftover, cl)
			if admin.String() != tt.wantAdmin {
				t.Errorf("admin = %q, want %q", admin, tt.wantAdmin)
			}
			started := reservedAfterStart(cur, nat, tt.leftover, cl)
			if started.String() != tt.wantStarted {
				t.Errorf("after Start = %q, want %q", started, tt.wantStarted)
			}
			removed := started.Minus(releasable(nat, admin, cl))
			if removed.String() != tt.wantRemoved {
				t.Errorf("after Remove = %q, want %q", removed, tt.wantRemoved)
			}
		})
	}
}

func TestIntersectUnion(t *testing.T) {
	a, b := mustParse(t, "1-10,20-30,65535"), mustParse(t, "5-25,65535")
	if got, want := a.Intersect(b).String(), "5-10,20-25,65535"; got != want {
		t.Errorf("Intersect = %q, want %q", got, want)
	}
	if got, want := a.Union(b).String(), "1-30,65535"; got != want {
		t.Errorf("Union = %q, want %q", got, want)
	}
	if got := a.Intersect(nil); len(got) != 0 {
		t.Errorf("Intersect(nil) = %q, want empty", got)
	}
}

func TestConflict(t *testing.T) {
	ap := netip.MustParseAddrPort
	c := Config{Instance: "a", NATSource: netip.MustParseAddr("198.18.0.2"), NATFirst: 40000, NATLast: 49999,
		Listen: []netip.AddrPort{ap("198.18.0.2:80")}}
	other := func(src string, first, last uint16, listen ...string) record {
		r := record{Instance: "b", NATSource: netip.MustParseAddr(src), NAT: PortRange{first, last}, PID: 1}
		for _, l := range listen {
			r.Listen = append(r.Listen, ap(l))
		}
		return r
	}
	for _, tt := range []struct {
		name  string
		other record
		want  string // "" for no conflict
	}{
		{"disjoint ranges, same source", other("198.18.0.2", 50000, 59999, "198.18.0.2:81"), ""},
		{"same range, other source", other("198.18.0.3", 40000, 49999, "198.18.0.3:80"), ""},
		{"touching ranges", other("198.18.0.2", 49999, 50000), "overlaps"},
		{"range inside", other("198.18.0.2", 41000, 41000), "overlaps"},
		{"same listen address", other("198.18.0.3", 1, 2, "198.18.0.2:80"), "also a service"},
		{"listen in other's NAT range", other("198.18.0.2", 70, 90), "lies in the NAT range"},
		{"listen in other's NAT range, other address", other("198.18.0.9", 70, 90), ""},
		{"other listens in our NAT range", other("198.18.0.3", 1, 2, "198.18.0.2:45000"), "holds 198.18.0.2:45000"},
	} {
		err := conflict(c, []record{tt.other})
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("%s: conflict = %v, want none", tt.name, err)
		case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("%s: conflict = %v, want one mentioning %q", tt.name, err, tt.want)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	good := Config{Instance: "web_2", NATSource: netip.MustParseAddr("::ffff:198.18.0.2"), NATFirst: 40000, NATLast: 59999,
		Listen: []netip.AddrPort{netip.MustParseAddrPort("198.18.0.2:80"), netip.MustParseAddrPort("198.18.0.3:45000")}}
	if err := good.Validate(); err != nil {
		t.Fatalf("Validate(%+v): %v", good, err)
	}
	if n := good.normalize(); n.NATSource.String() != "198.18.0.2" || n.TableName() != "rawlb_web_2" {
		t.Errorf("normalize: source %s, table %s", n.NATSource, n.TableName())
	}
	for _, tt := range []struct {
		name string
		edit func(*Config)
		want string
	}{
		{"no instance", func(c *Config) { c.Instance = "" }, "instance name"},
		{"upper case", func(c *Config) { c.Instance = "Web" }, "instance name"},
		{"dash", func(c *Config) { c.Instance = "a-b" }, "instance name"},
		{"too long", func(c *Config) { c.Instance = strings.Repeat("a", 33) }, "instance name"},
		{"no source", func(c *Config) { c.NATSource = netip.Addr{} }, "no NAT source"},
		{"ipv6 source", func(c *Config) { c.NATSource = netip.MustParseAddr("2001:db8::1") }, "not IPv4"},
		{"empty range", func(c *Config) { c.NATFirst, c.NATLast = 2, 1 }, "NAT port range"},
		{"ipv6 listen", func(c *Config) { c.Listen = []netip.AddrPort{netip.MustParseAddrPort("[2001:db8::1]:80")} }, "not IPv4"},
		{"port 0", func(c *Config) { c.Listen = []netip.AddrPort{netip.MustParseAddrPort("198.18.0.2:0")} }, "port 0"},
		{"listen in own range", func(c *Config) { c.Listen = []netip.AddrPort{netip.MustParseAddrPort("198.18.0.2:45000")} }, "inside the NAT port range"},
	} {
		c := good
		tt.edit(&c)
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: Validate = %v, want an error mentioning %q", tt.name, err, tt.want)
		}
	}
	if _, err := (Options{Grace: 500 * time.Millisecond}).withDefaults(); err == nil || !strings.Contains(err.Error(), "grace") {
		t.Errorf("grace 500ms: %v, want an error about the grace", err)
	}
	if o, err := (Options{}).withDefaults(); err != nil || o.Grace != DefaultGrace || o.Logger == nil {
		t.Errorf("defaults: %+v, %v", o, err)
	}
}

func TestNormalizeListen(t *testing.T) {
	ap := netip.MustParseAddrPort
	got := normalizeListen([]netip.AddrPort{ap("198.18.0.3:80"), ap("[::ffff:198.18.0.2]:80"), ap("198.18.0.2:80"), ap("198.18.0.2:7")})
	want := []netip.AddrPort{ap("198.18.0.2:7"), ap("198.18.0.2:80"), ap("198.18.0.3:80")}
	if len(got) != len(want) {
		t.Fatalf("normalizeListen = %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("normalizeListen = %v, want %v", got, want)
		}
	}
}

func TestProcStat(t *testing.T) {
	me, err := self()
	if err != nil {
		t.Fatal(err)
	}
	if !me.alive() {
		t.Errorf("this process %+v is not alive", me)
	}
	if (process{me.PID, me.Start + 1}).alive() {
		t.Errorf("a reused pid (other start time) counts as alive")
	}
	if (process{1 << 30, 0}).alive() {
		t.Errorf("a pid that does not exist counts as alive")
	}
}
