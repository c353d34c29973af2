package netlab

import (
	"bytes"
	"io"
	"testing"
)

func TestParseSnmp(t *testing.T) {
	in := "Ip: Forwarding DefaultTTL\nIp: 1 64\n" +
		"Tcp: RtoAlgorithm MaxConn OutRsts\nTcp: 1 -1 7\n" +
		"TcpExt: SyncookiesSent ListenDrops\nTcpExt: 0 3\n"
	m, err := parseSnmp(in)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]int64{
		"Ip.Forwarding": 1, "Ip.DefaultTTL": 64,
		"Tcp.RtoAlgorithm": 1, "Tcp.MaxConn": -1, "Tcp.OutRsts": 7,
		"TcpExt.SyncookiesSent": 0, "TcpExt.ListenDrops": 3,
	}
	if len(m) != len(want) {
		t.Errorf("got %d counters, want %d: %v", len(m), len(want), m)
	}
	for k, v := range want {
		if m[k] != v {
			t.Errorf("%s = %d, want %d", k, m[k], v)
		}
	}
	for _, bad := range []string{"Tcp: A B\n", "Tcp: A B\nUdp: 1 2\n", "Tcp: A B\nTcp: 1\n", "Tcp: A\nTcp: x\n"} {
		if _, err := parseSnmp(bad); err == nil {
			t.Errorf("parseSnmp(%q) succeeded, want an error", bad)
		}
	}
}

// The backend writes the GET stream in 64 KiB chunks while sockets and
// ExpectedGET may read it in any other; the bytes must not depend on that.
func TestGETStreamChunking(t *testing.T) {
	const n = 200_003
	whole, err := io.ReadAll(GETStream(n))
	if err != nil || len(whole) != n {
		t.Fatalf("ReadAll: %d bytes, %v", len(whole), err)
	}
	var pieces bytes.Buffer
	src := GETStream(n)
	for size := 1; ; size = size*3 + 1 {
		buf := make([]byte, size%70_000+1)
		k, err := src.Read(buf)
		pieces.Write(buf[:k])
		if err == io.EOF {
			break
		}
	}
	if !bytes.Equal(whole, pieces.Bytes()) {
		t.Fatal("GETStream bytes depend on read sizes")
	}
	var chunked bytes.Buffer
	if err := writeGETStream(&chunked, n); err != nil || !bytes.Equal(whole, chunked.Bytes()) {
		t.Fatalf("writeGETStream differs from GETStream (err %v)", err)
	}
	if other, _ := io.ReadAll(GETStream(n - 1)); bytes.Equal(other, whole[:n-1]) {
		t.Fatal("GET streams of different sizes share a prefix")
	}
}

func TestCheckLiteral(t *testing.T) {
	for _, tc := range []struct {
		network, addr string
		ok            bool
	}{
		{"tcp", "198.18.0.11:8090", true},
		{"tcp4", ":8090", true},
		{"tcp", "[::1]:80", true},
		{"tcp", "localhost:80", false},
		{"udp", "backend:53", false},
		{"tcp", "198.18.0.11", false},
		{"unix", "/run/x.sock", true},
	} {
		if err := checkLiteral(tc.network, tc.addr); (err == nil) != tc.ok {
			t.Errorf("checkLiteral(%q, %q) = %v, want ok=%v", tc.network, tc.addr, err, tc.ok)
		}
	}
}
