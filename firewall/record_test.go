package firewall

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

func testRecord() record {
	return record{
		Instance:  "web_1",
		NATSource: netip.MustParseAddr("198.18.0.2"),
		NAT:       PortRange{40000, 59999},
		Listen:    []netip.AddrPort{netip.MustParseAddrPort("198.18.0.2:80"), netip.MustParseAddrPort("198.18.0.3:443")},
		Admin:     PortList{{40000, 40010}, {45000, 45000}},
		PID:       4242,
		Start:     123456789,
		ID:        "0123456789abcdef",
	}
}

func TestRecordComments(t *testing.T) {
	r := testRecord()
	want := []string{
		"rawlb v1 instance=web_1 nat=198.18.0.2:40000-59999 pid=4242 start=123456789 id=0123456789abcdef state=running",
		"admin-reserved=40000-40010,45000",
	}
	if got := r.comments(); !reflect.DeepEqual(got, want) {
		t.Errorf("comments() =\n%q\nwant\n%q", got, want)
	}
	r.Detached, r.Admin = true, nil
	want = []string{
		"rawlb v1 instance=web_1 nat=198.18.0.2:40000-59999 pid=4242 start=123456789 id=0123456789abcdef state=detached",
		"admin-reserved=none",
	}
	if got := r.comments(); !reflect.DeepEqual(got, want) {
		t.Errorf("detached, empty lists: comments() =\n%q\nwant\n%q", got, want)
	}
}

// TestRecordRoundTrip includes a list far too long for one comment: every
// other port of 40000-40999 reserved by the administrator.
func TestRecordRoundTrip(t *testing.T) {
	long := testRecord()
	long.Admin = nil
	for p := uint16(40000); p < 41000; p += 2 {
		long.Admin = append(long.Admin, PortRange{p, p})
	}
	empty := testRecord()
	empty.Admin, empty.Detached = nil, true
	for _, r := range []record{testRecord(), long, empty} {
		cs := r.comments()
		for _, c := range cs {
			if len(c) > commentMax {
				t.Errorf("comment of %d bytes exceeds the limit: %.60q...", len(c), c)
			}
		}
		got, err := parseRecord(cs)
		if err != nil {
			t.Fatalf("parseRecord(comments()): %v", err)
		}
		if !reflect.DeepEqual(got.comments(), cs) {
			t.Errorf("round trip changed the record:\n%q\n%q", got.comments(), cs)
		}
		if got.Detached != r.Detached || got.PID != r.PID || got.Start != r.Start || got.ID != r.ID || got.Admin.String() != r.Admin.String() {
			t.Errorf("round trip: got %+v, want %+v", got, r)
		}
	}
	if n := len(long.comments()); n < 10 {
		t.Errorf("a long record fit in %d comments: the test does not exercise chunking", n)
	}
}

func TestParseRecordRejects(t *testing.T) {
	good := testRecord().comments()
	edit := func(i int, s string) []string {
		c := append([]string(nil), good...)
		c[i] = s
		return c
	}
	for _, tt := range []struct {
		name     string
		comments []string
		want     string
	}{
		{"empty", nil, "no record"},
		{"other magic", edit(0, "rawlb v2 instance=x"), "does not start"},
		{"no pid", edit(0, strings.Replace(good[0], " pid=4242", "", 1)), "lacks pid="},
		{"pid 0", edit(0, strings.Replace(good[0], "pid=4242", "pid=0", 1)), "not positive"},
		{"repeated", edit(0, good[0]+" pid=1"), "repeated"},
		{"bad instance", edit(0, strings.Replace(good[0], "web_1", "Web", 1)), "instance"},
		{"ipv6 nat", edit(0, strings.Replace(good[0], "198.18.0.2:", "::1:", 1)), "not IPv4"},
		{"bad state", edit(0, strings.Replace(good[0], "running", "sleeping", 1)), "unknown state"},
		{"bad id", edit(0, strings.Replace(good[0], "0123456789abcdef", "XYZ", 1)), "hex"},
		{"admin outside nat", edit(1, "admin-reserved=1000"), "outside its NAT range"},
		{"admin garbage", edit(1, "admin-reserved=12-x"), "record line"},
		{"no admin line", good[:1], "lacks"},
		{"no admin line, another instead", append(good[:1:1], "listen=198.18.0.2:80"), "lacks"},
	} {
		_, err := parseRecord(tt.comments)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: parseRecord = %v, want an error mentioning %q", tt.name, err, tt.want)
		}
	}
}

// FuzzParseRecord feeds hand-edited tables' comments (one per line): the
// parser must not panic, and whatever it accepts must encode to comments
// it parses back to the same record.
func FuzzParseRecord(f *testing.F) {
	f.Add(strings.Join(testRecord().comments(), "\n"))
	r := testRecord()
	r.Detached, r.Admin = true, nil
	f.Add(strings.Join(r.comments(), "\n"))
	f.Add("rawlb v1 instance=a nat=1.2.3.4:1 pid=1 start=0 id=0 state=running extra=1\nadmin-reserved=1\nadmin-reserved=1\nnewer=x")
	f.Fuzz(func(t *testing.T, s string) {
		r, err := parseRecord(strings.Split(s, "\n"))
		if err != nil {
			return
		}
		again, err := parseRecord(r.comments())
		if err != nil {
			t.Fatalf("accepted %q but not its re-encoding %q: %v", s, r.comments(), err)
		}
		if !reflect.DeepEqual(again.comments(), r.comments()) {
			t.Fatalf("re-encoding changed the record: %q vs %q", again.comments(), r.comments())
		}
	})
}
