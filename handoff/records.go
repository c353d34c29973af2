package handoff

import (
	"bytes"
	"encoding/binary"
	"encoding/gob"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/rawlb/rawlb/conntrack"
)

// The wire format of a State, in a file and over an upgrade's pipe:
//
//	magic
//	u32 length of the header, then the header: the State without its
//	    flows and ports, in gob (it changes shape more often, and is small)
//	u32 flows, u32 ports
//	the flows, then the ports: fixed-size little-endian records
//
// Fixed records because gob took 55 ms to encode and decode 14,000 flows
// and 14,000 ports (3.9 µs a record), most of a 180 ms upgrade gap under a
// busy close load, whose state holds 14,000 flows and 60,000 remembered
// ports (BenchmarkEncodeDecode has the figures now). A field added to
// FlowState or PortState must be added here, in both directions:
// TestRecordsCoverEveryField fails until it is.

// enc appends fixed-size values.
type enc struct{ b []byte }

func (e *enc) u8(v uint8)   { e.b = append(e.b, v) }
func (e *enc) u16(v uint16) { e.b = binary.LittleEndian.AppendUint16(e.b, v) }
func (e *enc) u32(v uint32) { e.b = binary.LittleEndian.AppendUint32(e.b, v) }
func (e *enc) u64(v uint64) { e.b = binary.LittleEndian.AppendUint64(e.b, v) }
func (e *enc) bool(v bool) {
	if v {
		e.u8(1)
	} else {
		e.u8(0)
	}
}
func (e *enc) ep(p conntrack.Endpoint) { e.b = append(e.b, p.IP[:]...); e.u16(p.Port) }
func (e *enc) dur(d time.Duration)     { e.u64(uint64(d)) }

// dec reads what enc wrote; the caller has checked the length.
type dec struct{ b []byte }

func (d *dec) u8() uint8 { v := d.b[0]; d.b = d.b[1:]; return v }
func (d *dec) u16() uint16 {
	v := binary.LittleEndian.Uint16(d.b)
	d.b = d.b[2:]
	return v
}
func (d *dec) u32() uint32 {
	v := binary.LittleEndian.Uint32(d.b)
	d.b = d.b[4:]
	return v
}
func (d *dec) u64() uint64 {
	v := binary.LittleEndian.Uint64(d.b)
	d.b = d.b[8:]
	return v
}
func (d *dec) bool() bool { return d.u8() != 0 }
func (d *dec) ep() (p conntrack.Endpoint) {
	copy(p.IP[:], d.b)
	d.b = d.b[4:]
	p.Port = d.u16()
	return p
}
func (d *dec) mac() (m [6]byte)   { copy(m[:], d.b); d.b = d.b[6:]; return m }
func (d *dec) dur() time.Duration { return time.Duration(d.u64()) }

func putFlow(e *enc, f *conntrack.FlowState) {
	e.ep(f.Client)
	e.ep(f.VIP)
	e.ep(f.Backend)
	e.u16(f.NATPort)
	e.b = append(e.b, f.ClientMAC[:]...)
	e.b = append(e.b, f.LocalMAC[:]...)
	e.u32(uint32(f.ClientIf))
	e.u8(uint8(f.State))
	e.bool(f.Proxied)
	e.bool(f.Established)
	e.u32(f.TSOff)
	e.u32(f.SeqOff)
	e.u32(f.BTSOff)
	e.u32(f.BSeqOff)
	e.u8(uint8(f.WinShift))
	s := &f.Syn
	e.u32(s.Seq)
	e.u32(s.TSval)
	e.bool(s.HasTS)
	e.u16(s.MSS)
	e.u8(uint8(s.WScale))
	e.bool(s.SACKPerm)
	e.u16(s.Window)
	for i := range f.Peers {
		p := &f.Peers[i]
		e.u32(p.End)
		e.u32(p.MaxEnd)
		e.u32(p.MaxWin)
		e.u32(p.MaxAck)
		e.u16(p.Win)
		e.u8(p.Scale)
		e.u8(p.Flags)
	}
	e.dur(f.Created)
	e.dur(f.Idle)
	e.u32(f.TSLast)
	e.u32(f.SeqEnd)
	e.bool(f.HasTS)
	e.u32(f.Cookie)
	e.u32(f.CookieTS)
}

func getFlow(d *dec, f *conntrack.FlowState) {
	f.Client, f.VIP, f.Backend = d.ep(), d.ep(), d.ep()
	f.NATPort = d.u16()
	f.ClientMAC, f.LocalMAC = d.mac(), d.mac()
	f.ClientIf = int32(d.u32())
	f.State = conntrack.State(d.u8())
	f.Proxied, f.Established = d.bool(), d.bool()
	f.TSOff, f.SeqOff, f.BTSOff, f.BSeqOff = d.u32(), d.u32(), d.u32(), d.u32()
	f.WinShift = int8(d.u8())
	s := &f.Syn
	s.Seq, s.TSval, s.HasTS, s.MSS = d.u32(), d.u32(), d.bool(), d.u16()
	s.WScale, s.SACKPerm, s.Window = int8(d.u8()), d.bool(), d.u16()
	for i := range f.Peers {
		p := &f.Peers[i]
		p.End, p.MaxEnd, p.MaxWin, p.MaxAck = d.u32(), d.u32(), d.u32(), d.u32()
		p.Win, p.Scale, p.Flags = d.u16(), d.u8(), d.u8()
	}
	f.Created, f.Idle = d.dur(), d.dur()
	f.TSLast, f.SeqEnd, f.HasTS = d.u32(), d.u32(), d.bool()
	f.Cookie, f.CookieTS = d.u32(), d.u32()
}

func putPort(e *enc, p *conntrack.PortState) {
	e.ep(p.Backend)
	e.u16(p.Port)
	e.u32(p.TS)
	e.u32(p.SeqEnd)
	e.bool(p.HasTS)
	e.bool(p.HasSeq)
	e.dur(p.Freed)
}

func getPort(d *dec, p *conntrack.PortState) {
	p.Backend, p.Port = d.ep(), d.u16()
	p.TS, p.SeqEnd = d.u32(), d.u32()
	p.HasTS, p.HasSeq = d.bool(), d.bool()
	p.Freed = d.dur()
}

// Record sizes, from encoding zero values once.
var flowSize, portSize = func() (int, int) {
	var e enc
	putFlow(&e, &conntrack.FlowState{})
	f := len(e.b)
	e.b = e.b[:0]
	putPort(&e, &conntrack.PortState{})
	return f, len(e.b)
}()

// maxRecords is more than any table holds (flows are capped by max_flows,
// ports by MaxBackends x 65,536): a count beyond is corruption.
const maxRecords = 1 << 26

// encode writes s in the wire format.
func encode(w io.Writer, s *State) error {
	head := *s
	head.Flows, head.Ports = nil, nil
	var hb bytes.Buffer
	if err := gob.NewEncoder(&hb).Encode(&head); err != nil {
		return err
	}
	e := enc{b: make([]byte, 0, len(magic)+12+hb.Len()+len(s.Flows)*flowSize+len(s.Ports)*portSize)}
	e.b = append(e.b, magic...)
	e.u32(uint32(hb.Len()))
	e.b = append(e.b, hb.Bytes()...)
	e.u32(uint32(len(s.Flows)))
	e.u32(uint32(len(s.Ports)))
	for i := range s.Flows {
		putFlow(&e, &s.Flows[i])
	}
	for i := range s.Ports {
		putPort(&e, &s.Ports[i])
	}
	_, err := w.Write(e.b)
	return err
}

// decode reads a State in the wire format and checks its version.
func decode(r io.Reader) (*State, error) {
	head := make([]byte, len(magic)+4)
	if _, err := io.ReadFull(r, head); err != nil || string(head[:len(magic)]) != magic {
		return nil, errors.New("not a rawlb state file")
	}
	n := binary.LittleEndian.Uint32(head[len(magic):])
	if n > 1<<24 {
		return nil, fmt.Errorf("decoding the state: a header of %d bytes", n)
	}
	hb := make([]byte, n+8)
	if _, err := io.ReadFull(r, hb); err != nil {
		return nil, fmt.Errorf("decoding the state: %w", err)
	}
	var s State
	if err := gob.NewDecoder(bytes.NewReader(hb[:n])).Decode(&s); err != nil {
		return nil, fmt.Errorf("decoding the state: %w", err)
	}
	if s.Version != Version {
		return nil, fmt.Errorf("state format version %d, this rawlb reads %d", s.Version, Version)
	}
	nf, np := binary.LittleEndian.Uint32(hb[n:]), binary.LittleEndian.Uint32(hb[n+4:])
	if nf > maxRecords || np > maxRecords {
		return nil, fmt.Errorf("decoding the state: %d flows and %d ports claimed", nf, np)
	}
	// Read as it comes rather than allocate what the counts claim: a
	// corrupt count then costs what the input holds, not gigabytes.
	want := int64(nf)*int64(flowSize) + int64(np)*int64(portSize)
	body, err := io.ReadAll(io.LimitReader(r, want))
	if err != nil || int64(len(body)) != want {
		return nil, fmt.Errorf("decoding the state: %d flows and %d ports claimed, %d of %d bytes there (%v)", nf, np, len(body), want, err)
	}
	d := dec{b: body}
	s.Flows = make([]conntrack.FlowState, nf)
	for i := range s.Flows {
		getFlow(&d, &s.Flows[i])
	}
	s.Ports = make([]conntrack.PortState, np)
	for i := range s.Ports {
		getPort(&d, &s.Ports[i])
	}
	return &s, nil
}
