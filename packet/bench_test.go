package packet

import "testing"

func BenchmarkParse(b *testing.B) {
	frame := build(b, natCases()["even payload"])
	var p Parser
	var f Frame
	b.ReportAllocs()
	b.SetBytes(int64(len(frame)))
	for b.Loop() {
		if err := p.Parse(frame, &f); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkRewriteTCP(b *testing.B) {
	frame := build(b, natCases()["even payload"])
	var p Parser
	var f Frame
	if err := p.Parse(frame, &f); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		f.RewriteTCP(ipLB, natPort, ipBackend, backendPort, CsumComplete)
	}
}

func BenchmarkParseRewrite(b *testing.B) {
	frame := build(b, natCases()["even payload"])
	var p Parser
	var f Frame
	b.ReportAllocs()
	for b.Loop() {
		if err := p.Parse(frame, &f); err != nil {
			b.Fatal(err)
		}
		f.RewriteTCP(ipLB, natPort, ipBackend, backendPort, CsumComplete)
	}
}
