package handoff

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rawlb/rawlb/conntrack"
)

func sample() *State {
	return &State{
		Fingerprint: "abc", Workers: 2, NATFirst: 40000, NATLast: 59999,
		Flows: []conntrack.FlowState{{
			Client: conntrack.Endpoint{IP: [4]byte{198, 18, 0, 10}, Port: 51000}, VIP: conntrack.Endpoint{IP: [4]byte{198, 18, 0, 2}, Port: 20000},
			Backend: conntrack.Endpoint{IP: [4]byte{198, 18, 0, 11}, Port: 8090}, NATPort: 40001, State: conntrack.StateEstablished,
			SeqOff: 7, TSOff: 9, Idle: time.Second,
		}},
		Ports:      []conntrack.PortState{{Backend: conntrack.Endpoint{IP: [4]byte{198, 18, 0, 11}, Port: 8090}, Port: 40003, TS: 5, HasTS: true, Freed: time.Second}},
		CookieKeys: []byte("0123456789abcdef0123456789abcdef"),
	}
}

func TestWriteRead(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "x.state")
	if err := Write(path, sample()); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Dir(path)); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("state directory mode %v, %v: the keys are secrets", fi.Mode(), err)
	}
	got, err := Read(path, time.Minute, "abc")
	if err != nil || got == nil {
		t.Fatalf("Read: %v %v", got, err)
	}
	if len(got.Flows) != 1 || got.Flows[0].SeqOff != 7 || got.Flows[0].Idle != time.Second || got.Ports[0].Port != 40003 || string(got.CookieKeys) != string(sample().CookieKeys) {
		t.Fatalf("round trip changed the state: %+v", got)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatal("a state read once is left for the next start to take again")
	}
	if got, err := Read(path, time.Minute, "abc"); got != nil || err != nil {
		t.Fatalf("no state file: %v %v, want nil, nil", got, err)
	}
}

func TestReadRefuses(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		name   string
		mod    func(*State)
		fp     string
		maxAge time.Duration
		want   string
	}{
		{"stale", func(s *State) { s.Written = time.Now().Add(-time.Hour) }, "abc", time.Minute, "ago"},
		{"another configuration", nil, "xyz", time.Minute, "another configuration"},
	}
	for _, c := range cases {
		path := filepath.Join(dir, c.name)
		s := sample()
		if c.mod != nil {
			c.mod(s)
		}
		if err := Write(path, s); err != nil {
			t.Fatal(err)
		}
		got, err := Read(path, c.maxAge, c.fp)
		if got != nil || err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v %v, want an error containing %q", c.name, got, err, c.want)
		}
		if _, err := os.Stat(path); !os.IsNotExist(err) {
			t.Errorf("%s: a refused state file stays", c.name)
		}
	}
	// Not a state file at all, and another format version.
	junk := filepath.Join(dir, "junk")
	os.WriteFile(junk, []byte("hello"), 0o600)
	if _, err := Read(junk, time.Minute, "abc"); err == nil || !strings.Contains(err.Error(), "not a rawlb state file") {
		t.Errorf("junk: %v", err)
	}
}

// BenchmarkEncodeDecode is the state of a busy close load (14,000 flows,
// 14,000 remembered ports) written and read back: part of a restart's and
// an upgrade's forwarding gap.
func BenchmarkEncodeDecode(b *testing.B) {
	s := sample()
	s.Version = Version // as Write sets it
	f, p := s.Flows[0], s.Ports[0]
	for i := 0; i < 14000; i++ {
		f.Client.Port, f.NATPort, p.Port = uint16(i), uint16(40000+i), uint16(40000+i)
		s.Flows = append(s.Flows, f)
		s.Ports = append(s.Ports, p)
	}
	var buf bytes.Buffer
	b.ReportAllocs()
	for b.Loop() {
		buf.Reset()
		if err := encode(&buf, s); err != nil {
			b.Fatal(err)
		}
		if _, err := decode(&buf); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(buf.Cap())/1e6, "MB")
}
