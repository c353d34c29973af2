package packet

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/gopacket/gopacket/layers"
)

// Option constructors for gopacket's serializer (FixLengths sets each
// length from the data, so a wrong-length option is wrong-size data).
func optMSSOf(mss uint16) layers.TCPOption {
	return layers.TCPOption{OptionType: layers.TCPOptionKindMSS, OptionData: binary.BigEndian.AppendUint16(nil, mss)}
}

func optWSOf(ws byte) layers.TCPOption {
	return layers.TCPOption{OptionType: layers.TCPOptionKindWindowScale, OptionData: []byte{ws}}
}

func optTSOf(val, ecr uint32) layers.TCPOption {
	return layers.TCPOption{OptionType: layers.TCPOptionKindTimestamps, OptionData: binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(nil, val), ecr)}
}

func optRaw(kind layers.TCPOptionKind, data ...byte) layers.TCPOption {
	return layers.TCPOption{OptionType: kind, OptionData: data}
}

var (
	optSACKOK = layers.TCPOption{OptionType: layers.TCPOptionKindSACKPermitted}
	optNop    = layers.TCPOption{OptionType: layers.TCPOptionKindNop}
	optEOL    = layers.TCPOption{OptionType: layers.TCPOptionKindEndList}
)

// rawTCP is a TCP header built by hand, for option lists gopacket will not
// write: a fixed header, opts (a multiple of 4 bytes) and payload.
func rawTCP(opts, payload []byte) []byte {
	if len(opts)%4 != 0 {
		panic("rawTCP: options must fill whole words")
	}
	b := make([]byte, TCPMinLen, TCPMinLen+len(opts)+len(payload))
	binary.BigEndian.PutUint16(b[0:], 51000)
	binary.BigEndian.PutUint16(b[2:], 20000)
	b[12] = byte((TCPMinLen+len(opts))/4) << 4
	b[13] = FlagSYN
	return append(append(b, opts...), payload...)
}

type synOptionCase struct {
	name string
	tcp  []byte
	want TCPOptions
}

// synOptionCases are segments whose options SYNOptions must read, built by
// gopacket where it can build them and by hand where it cannot.
func synOptionCases(t testing.TB) []synOptionCase {
	seg := func(payload []byte, opts ...layers.TCPOption) []byte {
		s := segSpec{src: ipClient, dst: ipLB, sport: 51000, dport: 20000, seq: 1, syn: true, tcpOptions: opts, payload: payload}
		return build(t, s)[EthernetLen+IPv4MinLen:]
	}
	none := TCPOptions{WScale: -1}
	// A valid window scale option in the payload: any read past the header
	// shows up as WScale 5.
	wsPayload := []byte{optWScale, optWScaleLen, 5, optNOP}
	return []synOptionCase{
		{"no options", seg(nil), none},
		{"linux order", seg(nil, optMSSOf(1460), optSACKOK, optTSOf(0xdeadbeef, 0), optNop, optWSOf(7)),
			TCPOptions{MSS: 1460, WScale: 7, SACKPermitted: true, Timestamp: true, TSval: 0xdeadbeef}},
		{"reversed", seg(nil, optWSOf(3), optTSOf(1, 2), optSACKOK, optMSSOf(1380)),
			TCPOptions{MSS: 1380, WScale: 3, SACKPermitted: true, Timestamp: true, TSval: 1, TSecr: 2}},
		{"odd offsets", seg(nil, optNop, optMSSOf(1200), optWSOf(0), optTSOf(0xffffffff, 0x80000000), optSACKOK),
			TCPOptions{MSS: 1200, WScale: 0, SACKPermitted: true, Timestamp: true, TSval: 0xffffffff, TSecr: 0x80000000}},
		{"unknown kinds between", seg(nil, optRaw(34, 1, 2, 3, 4, 5, 6, 7, 8), optMSSOf(1440), optRaw(253, 0xf9, 0x89), optWSOf(9), optRaw(30, 0, 0x81, 1, 2, 3, 4, 5, 6, 7, 8)),
			TCPOptions{MSS: 1440, WScale: 9}},
		{"end of list", seg(wsPayload, optMSSOf(1400), optEOL, optWSOf(5), optSACKOK), TCPOptions{MSS: 1400, WScale: -1}},
		{"last copy wins", seg(nil, optMSSOf(1000), optWSOf(2), optMSSOf(1200), optWSOf(9)), TCPOptions{MSS: 1200, WScale: 9}},
		{"wrong lengths skipped", seg(nil, optRaw(layers.TCPOptionKindMSS, 5, 0xb4, 0), optRaw(layers.TCPOptionKindWindowScale, 7, 0),
			optRaw(layers.TCPOptionKindSACKPermitted, 0), optRaw(layers.TCPOptionKindTimestamps, 1, 2, 3, 4, 5, 6, 7, 8, 9), optMSSOf(1300)),
			TCPOptions{MSS: 1300, WScale: -1}},
		{"window scale above 14", seg(nil, optWSOf(15)), TCPOptions{WScale: 14}},
		{"window scale 255", seg(nil, optWSOf(255)), TCPOptions{WScale: 14}},
		{"MSS 0 is none", seg(nil, optMSSOf(1460), optMSSOf(0)), TCPOptions{MSS: 1460, WScale: -1}},
		{"SACK blocks and timestamps", seg(nil, optNop, optNop, optTSOf(7, 8), optNop, optNop, optRaw(layers.TCPOptionKindSACK, 0, 0, 0, 1, 0, 0, 0, 9)),
			TCPOptions{WScale: -1, Timestamp: true, TSval: 7, TSecr: 8}},
		{"payload is not options", seg(wsPayload, optMSSOf(536)), TCPOptions{MSS: 536, WScale: -1}},

		{"length 0 stops", rawTCP([]byte{optMSS, 4, 0x05, 0xb4, 99, 0, optWScale, 3, 2, 0, 0, 0}, nil), TCPOptions{MSS: 1460, WScale: -1}},
		{"length 1 stops", rawTCP([]byte{optWScale, 3, 4, 99, 1, optMSS, 4, 1, 0, 0, 0, 0}, nil), TCPOptions{WScale: 4}},
		{"option past the header", rawTCP([]byte{optMSS, 4, 0x05, 0xb4, optNOP, optNOP, optTimestamp, optTSLen}, []byte{0, 0, 0, 1, 0, 0, 0, 2}),
			TCPOptions{MSS: 1460, WScale: -1}},
		{"kind in the last byte", rawTCP([]byte{optNOP, optWScale, 3, 6, optNOP, optNOP, optNOP, optWScale}, wsPayload), TCPOptions{WScale: 6}},
		{"data offset past the view", func() []byte {
			b := rawTCP([]byte{optMSS, 4, 0x05, 0x00, optWScale, 3, 1, optSACKPerm}, nil)
			b[12] = 15 << 4
			return b
		}(), TCPOptions{MSS: 1280, WScale: 1}},
		{"data offset below 5", func() []byte {
			b := rawTCP(nil, []byte{optMSS, 4, 0x05, 0xb4})
			b[12] = 4 << 4
			return b
		}(), none},
		{"shorter than a header", rawTCP(nil, nil)[:19], none},
		{"empty", nil, none},
	}
}

func TestSYNOptions(t *testing.T) {
	for _, c := range synOptionCases(t) {
		if got := TCP(c.tcp).SYNOptions(); got != c.want {
			t.Errorf("%s: got %+v, want %+v", c.name, got, c.want)
		}
	}
}

func TestSYNOptionsNoAllocs(t *testing.T) {
	tcp := TCP(synOptionCases(t)[1].tcp)
	if n := testing.AllocsPerRun(100, func() { tcp.SYNOptions() }); n != 0 {
		t.Errorf("SYNOptions allocates %v times", n)
	}
}

// refSYNOptions is a second reading of the rules in SYNOptions' doc
// comment, written apart from it: cut the option area out first, then
// consume it from the front.
func refSYNOptions(b []byte) TCPOptions {
	o := TCPOptions{WScale: -1}
	if len(b) < 20 {
		return o
	}
	end := int(b[12]>>4) * 4
	if end > len(b) {
		end = len(b)
	}
	if end < 20 {
		return o
	}
	area := b[20:end]
	for len(area) > 0 {
		if area[0] == 0 {
			break
		}
		if area[0] == 1 {
			area = area[1:]
			continue
		}
		if len(area) < 2 || area[1] < 2 || int(area[1]) > len(area) {
			break
		}
		opt := area[:area[1]]
		area = area[area[1]:]
		switch {
		case opt[0] == 2 && len(opt) == 4 && (opt[2] != 0 || opt[3] != 0):
			o.MSS = uint16(opt[2])<<8 | uint16(opt[3])
		case opt[0] == 3 && len(opt) == 3:
			o.WScale = int8(opt[2])
			if opt[2] > 14 {
				o.WScale = 14
			}
		case opt[0] == 4 && len(opt) == 2:
			o.SACKPermitted = true
		case opt[0] == 8 && len(opt) == 10:
			o.Timestamp, o.TSval, o.TSecr = true, binary.BigEndian.Uint32(opt[2:]), binary.BigEndian.Uint32(opt[6:])
		}
	}
	return o
}

// FuzzSYNOptions: any bytes give options that agree with the reference
// reading, and what lies past the header changes nothing. Never a panic.
func FuzzSYNOptions(f *testing.F) {
	for _, c := range synOptionCases(f) {
		f.Add(c.tcp)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		got := TCP(data).SYNOptions()
		if want := refSYNOptions(data); got != want {
			t.Fatalf("SYNOptions %+v, reference %+v", got, want)
		}
		if got.WScale < -1 || got.WScale > MaxWScale {
			t.Fatalf("window scale %d out of range", got.WScale)
		}
		if hl := declaredLen(data); hl >= 0 && hl <= len(data) {
			// Cut at the header, then extend with bytes that would parse
			// as a window scale option if they were read. (A view shorter
			// than its data offset claims is not extended: the new bytes
			// would be inside the header.)
			cut := append(append([]byte(nil), data[:hl]...), optWScale, optWScaleLen, 3, optNOP)
			if other := TCP(cut).SYNOptions(); other != got {
				t.Fatalf("bytes past the header changed the options: %+v, then %+v", got, other)
			}
		}
	})
}

// declaredLen is the header length the data offset claims, or -1 for a
// view too short to hold the field.
func declaredLen(t TCP) int {
	if len(t) < TCPMinLen {
		return -1
	}
	return t.HeaderLen()
}

// TestWriteSYNOptionsCorpus regenerates testdata/fuzz/FuzzSYNOptions from
// synOptionCases and truncations of each. It runs only with
// RAWLB_WRITE_CORPUS=1.
func TestWriteSYNOptionsCorpus(t *testing.T) {
	if os.Getenv("RAWLB_WRITE_CORPUS") != "1" {
		t.Skip("set RAWLB_WRITE_CORPUS=1 to regenerate testdata/fuzz/FuzzSYNOptions")
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzSYNOptions")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for i, c := range synOptionCases(t) {
		variants := [][]byte{c.tcp}
		if len(c.tcp) > TCPMinLen+1 {
			variants = append(variants, c.tcp[:len(c.tcp)-1], c.tcp[:TCPMinLen+1])
		}
		for j, v := range variants {
			body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", v)
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("seed-%02d-%d", i, j)), []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func BenchmarkSYNOptions(b *testing.B) {
	tcp := TCP(synOptionCases(b)[1].tcp)
	b.ReportAllocs()
	for b.Loop() {
		if tcp.SYNOptions().MSS != 1460 {
			b.Fatal("wrong MSS")
		}
	}
}
