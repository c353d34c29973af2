package packet

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/gopacket/gopacket/layers"
)

// seedFrames are well-formed frames of every shape Parse accepts; the
// checked-in corpus under testdata/fuzz holds these and mangled variants.
func seedFrames(t testing.TB) [][]byte {
	var seeds [][]byte
	for _, spec := range natCases() {
		seeds = append(seeds, build(t, spec))
	}
	withTS := synSpec()
	withTS.tcpOptions = append(withTS.tcpOptions, layers.TCPOption{OptionType: layers.TCPOptionKindNop}, layers.TCPOption{OptionType: layers.TCPOptionKindNop},
		layers.TCPOption{OptionType: layers.TCPOptionKindTimestamps, OptionLength: 10, OptionData: []byte{1, 2, 3, 4, 5, 6, 7, 8}})
	seeds = append(seeds, build(t, withTS))
	// A backend's ACK with a SACK option at an odd offset, for AddSACK.
	withSACK := segSpec{src: ipBackend, dst: ipLB, sport: 8090, dport: 40001, seq: 7, ack: 9, ackf: true, tcpOptions: []layers.TCPOption{
		{OptionType: layers.TCPOptionKindNop},
		{OptionType: layers.TCPOptionKindSACK, OptionLength: 18, OptionData: []byte{0, 0, 1, 0, 0, 0, 2, 0, 0xff, 0xff, 0xff, 0xf0, 0, 0, 0, 4}},
		{OptionType: layers.TCPOptionKindNop}, {OptionType: layers.TCPOptionKindNop}, {OptionType: layers.TCPOptionKindNop}}}
	seeds = append(seeds, build(t, withSACK))
	sent := build(t, segSpec{src: ipLB, dst: ipBackend, sport: 40001, dport: 8090, seq: 1, ackf: true, payload: []byte("x")})[14:]
	seeds = append(seeds,
		icmpFrame(t, ipBackend, ipLB, ICMPDestUnreachable, ICMPCodeFragNeeded, 1280, sent, 28),
		icmpFrame(t, ipBackend, ipLB, ICMPDestUnreachable, ICMPCodePortUnreachable, 0, sent, len(sent)),
	)
	return seeds
}

// FuzzParse: any input gives a Reason or views that stay inside the input
// and agree with each other. Never a panic.
func FuzzParse(f *testing.F) {
	for _, s := range seedFrames(f) {
		f.Add(s)
	}
	var p Parser
	f.Fuzz(func(t *testing.T, data []byte) {
		var fr Frame
		err := p.Parse(data, &fr)
		if err != nil {
			if _, ok := err.(Reason); !ok {
				t.Fatalf("error %v is not a Reason", err)
			}
			return
		}
		if fr.Len() > len(data) || !bytes.Equal(data[:len(fr.Eth)], fr.Eth) || !bytes.Equal(data[len(fr.Eth):fr.Len()], fr.IP) {
			t.Fatal("views do not lie within the frame in order")
		}
		if fr.IP.TotalLen() != len(fr.IP) || fr.IP.HeaderLen() < IPv4MinLen || fr.IP.IsFragment() {
			t.Fatal("accepted an IP header that does not describe the view")
		}
		if fr.IsICMP() == (len(fr.TCP) != 0) {
			t.Fatal("a frame must be exactly one of TCP or ICMP")
		}
		if len(fr.TCP) != 0 && (fr.TCP.HeaderLen() < TCPMinLen || fr.TCP.HeaderLen() > len(fr.TCP)) {
			t.Fatal("accepted a TCP header that does not fit")
		}
		if fr.IsICMP() && len(fr.InnerTCP) < 8 {
			t.Fatal("accepted an ICMP quote without ports")
		}
	})
}

// FuzzRewrite: whatever parses can be rewritten without a panic, the new
// fields read back, and checksums that verified before verify after.
func FuzzRewrite(f *testing.F) {
	for i, s := range seedFrames(f) {
		f.Add(s, uint32(0xc6120000+i), uint16(40000+i), uint32(0xc613ffff), uint16(8090), i%2 == 0)
	}
	var p Parser
	f.Fuzz(func(t *testing.T, data []byte, srcN uint32, sport uint16, dstN uint32, dport uint16, partial bool) {
		var src, dst [4]byte
		binary.BigEndian.PutUint32(src[:], srcN)
		binary.BigEndian.PutUint32(dst[:], dstN)
		var fr Frame
		if p.Parse(data, &fr) != nil {
			return
		}
		ipOK := ipHeaderOK(fr.IP)
		if fr.IsICMP() {
			innerOK := ipHeaderOK(fr.Inner)
			seq := binary.BigEndian.Uint32(fr.InnerTCP[4:8])
			fr.AddInnerSeq(srcN)
			if binary.BigEndian.Uint32(fr.InnerTCP[4:8]) != seq+srcN {
				t.Fatal("inner sequence number does not read back")
			}
			fr.TranslateICMP(dst, src, src, sport, dst, dport)
			if fr.IP.Source() != dst || fr.Inner.Source() != src || fr.InnerSourcePort() != sport || fr.InnerDestinationPort() != dport {
				t.Fatal("translated fields do not read back")
			}
			if refSum(fr.ICMP) != 0xffff {
				t.Fatal("ICMP checksum does not verify after translation")
			}
			if ipOK && !ipHeaderOK(fr.IP) || innerOK && !ipHeaderOK(fr.Inner) {
				t.Fatal("an IPv4 checksum that verified no longer does")
			}
			return
		}
		state := CsumComplete
		if partial {
			state = CsumPartial
			makePartial(fr.IP)
		}
		tcpWasOK := partial || tcpOK(fr.IP)
		fr.RewriteTCP(src, sport, dst, dport, state)
		if ts := fr.TCP.TimestampOption(); ts >= 0 {
			val, ecr := fr.TCP.TSval(ts), fr.TCP.TSecr(ts)
			fr.TCP.AddTimestamps(ts, srcN, dstN, state)
			if fr.TCP.TSval(ts) != val+srcN || fr.TCP.TSecr(ts) != ecr+dstN {
				t.Fatal("timestamps do not read back")
			}
		}
		seq, ack := fr.TCP.Seq(), fr.TCP.Ack()
		fr.TCP.AddSeqAck(dstN, srcN, state)
		if fr.TCP.Seq() != seq+dstN || fr.TCP.Ack() != ack+srcN {
			t.Fatal("sequence and acknowledgment numbers do not read back")
		}
		fr.TCP.AddSACK(srcN^dstN, state)
		if partial {
			completePartial(fr.IP)
		}
		if fr.IP.Source() != src || fr.IP.Destination() != dst || fr.TCP.SourcePort() != sport || fr.TCP.DestinationPort() != dport {
			t.Fatal("rewritten fields do not read back")
		}
		if ipOK && !ipHeaderOK(fr.IP) {
			t.Fatal("IPv4 checksum verified before the rewrite and not after")
		}
		if tcpWasOK && !tcpOK(fr.IP) {
			t.Fatal("TCP checksum verified before the rewrite and not after")
		}
	})
}

// TestWriteSeedCorpus regenerates testdata/fuzz from seedFrames plus
// truncated and mangled variants. It runs only with RAWLB_WRITE_CORPUS=1.
func TestWriteSeedCorpus(t *testing.T) {
	if os.Getenv("RAWLB_WRITE_CORPUS") != "1" {
		t.Skip("set RAWLB_WRITE_CORPUS=1 to regenerate testdata/fuzz")
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzParse")
	rdir := filepath.Join("testdata", "fuzz", "FuzzRewrite")
	for _, d := range []string{dir, rdir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for i, s := range seedFrames(t) {
		variants := [][]byte{s, s[:len(s)/2], s[:15]}
		m := append([]byte(nil), s...)
		m[14] = 0x4f // IHL 15
		variants = append(variants, m)
		m = append([]byte(nil), s...)
		m[20] |= 0x20 // more fragments
		variants = append(variants, m)
		for j, v := range variants {
			body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", v)
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("seed-%02d-%d", i, j)), []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
			body = fmt.Sprintf("go test fuzz v1\n[]byte(%q)\nuint32(%d)\nuint16(%d)\nuint32(%d)\nuint16(8090)\nbool(%v)\n",
				v, 0xc6120002, 40000+j, 0xc612000b, j%2 == 0)
			if err := os.WriteFile(filepath.Join(rdir, fmt.Sprintf("seed-%02d-%d", i, j)), []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}
