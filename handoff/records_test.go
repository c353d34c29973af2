package handoff

import (
	"bytes"
	"math/rand/v2"
	"reflect"
	"testing"
	"time"

	"github.com/rawlb/rawlb/conntrack"
)

// randomize sets every leaf field of v (a pointer to a struct) to a random
// value, so that a field the codec forgets comes back different.
func randomize(rng *rand.Rand, v reflect.Value) {
	switch v.Kind() {
	case reflect.Pointer:
		randomize(rng, v.Elem())
	case reflect.Struct:
		for i := 0; i < v.NumField(); i++ {
			randomize(rng, v.Field(i))
		}
	case reflect.Array:
		for i := 0; i < v.Len(); i++ {
			randomize(rng, v.Index(i))
		}
	case reflect.Bool:
		v.SetBool(true) // false is the zero a forgotten field decodes to
	case reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		v.SetInt(int64(rng.Uint64()>>(64-v.Type().Bits())) | 1)
		if v.Type().Bits() < 64 {
			v.SetInt(v.Int() - int64(1)<<(v.Type().Bits()-1)) // both signs
		}
	case reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		v.SetUint(rng.Uint64()>>(64-v.Type().Bits()) | 1)
	default:
		panic("randomize: a field of kind " + v.Kind().String() + ": teach the codec and this test about it")
	}
}

// TestRecordsCoverEveryField round-trips flows and ports with every field
// set: a field added to conntrack.FlowState or PortState and not to the
// codec fails here.
func TestRecordsCoverEveryField(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	s := &State{Version: Version, Fingerprint: "fp", Written: time.Unix(1_700_000_000, 5), Workers: 2, NATFirst: 40000, NATLast: 59999,
		CookieKeys: []byte("k1"), ISNKeys: []byte("k2"), Rings: []Ring{{FD: 3, Frames: 8, FrameSize: 2048, Head: 5}}}
	for i := 0; i < 50; i++ {
		var f conntrack.FlowState
		randomize(rng, reflect.ValueOf(&f))
		s.Flows = append(s.Flows, f)
		var p conntrack.PortState
		randomize(rng, reflect.ValueOf(&p))
		s.Ports = append(s.Ports, p)
	}
	var buf bytes.Buffer
	if err := encode(&buf, s); err != nil {
		t.Fatal(err)
	}
	got, err := decode(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if got.Written.Equal(s.Written) {
		got.Written = s.Written // gob keeps the instant, not the location
	}
	if !reflect.DeepEqual(got, s) {
		for i := range s.Flows {
			if got.Flows[i] != s.Flows[i] {
				t.Fatalf("flow %d:\n got %+v\nwant %+v", i, got.Flows[i], s.Flows[i])
			}
		}
		for i := range s.Ports {
			if got.Ports[i] != s.Ports[i] {
				t.Fatalf("port %d:\n got %+v\nwant %+v", i, got.Ports[i], s.Ports[i])
			}
		}
		t.Fatalf("header:\n got %+v\nwant %+v", got, s)
	}
	if buf.Len() != 0 {
		t.Fatalf("%d bytes left after decoding", buf.Len())
	}
}

// FuzzDecode: any input is refused with an error or decodes to a state
// that encodes and decodes to itself. Never a panic, and no allocation
// beyond what the input's length justifies.
func FuzzDecode(f *testing.F) {
	var buf bytes.Buffer
	s := sample()
	s.Version = Version
	if err := encode(&buf, s); err != nil {
		f.Fatal(err)
	}
	f.Add(buf.Bytes())
	f.Add(buf.Bytes()[:len(buf.Bytes())-3])
	f.Add([]byte(magic))
	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := decode(bytes.NewReader(data))
		if err != nil {
			return
		}
		var again bytes.Buffer
		if err := encode(&again, got); err != nil {
			t.Fatalf("re-encoding a decoded state: %v", err)
		}
		back, err := decode(&again)
		if err != nil {
			t.Fatalf("decoding a re-encoded state: %v", err)
		}
		if len(back.Flows) != len(got.Flows) || len(back.Ports) != len(got.Ports) {
			t.Fatalf("round trip changed the counts")
		}
		for i := range got.Flows {
			if back.Flows[i] != got.Flows[i] {
				t.Fatalf("round trip changed flow %d", i)
			}
		}
	})
}
