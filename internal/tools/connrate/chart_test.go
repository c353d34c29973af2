package main

import (
	"bytes"
	"encoding/xml"
	"io"
	"math"
	"strconv"
	"strings"
	"testing"
	"time"
)

type svgElem struct {
	name  string
	attrs map[string]string
	text  string
}

// decodeSVG checks that the chart is well-formed XML and returns its
// elements in order.
func decodeSVG(t *testing.T, b []byte) []svgElem {
	t.Helper()
	d := xml.NewDecoder(bytes.NewReader(b))
	var out []svgElem
	depth := 0
	for {
		tok, err := d.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("not well-formed: %v\n%s", err, b)
		}
		switch tok := tok.(type) {
		case xml.StartElement:
			if depth == 0 && (tok.Name.Local != "svg" || tok.Name.Space != "http://www.w3.org/2000/svg") {
				t.Fatalf("root element %v, want svg in the SVG namespace", tok.Name)
			}
			depth++
			e := svgElem{name: tok.Name.Local, attrs: map[string]string{}}
			for _, a := range tok.Attr {
				e.attrs[a.Name.Local] = a.Value
			}
			out = append(out, e)
		case xml.EndElement:
			depth--
		case xml.CharData:
			if len(out) > 0 {
				out[len(out)-1].text += string(tok)
			}
		}
	}
	if depth != 0 {
		t.Fatalf("unbalanced elements")
	}
	return out
}

func attrF(t *testing.T, e svgElem, name string) float64 {
	t.Helper()
	v, err := strconv.ParseFloat(e.attrs[name], 64)
	if err != nil {
		t.Fatalf("%s %s=%q: %v", e.name, name, e.attrs[name], err)
	}
	return v
}

func TestChart(t *testing.T) {
	a := steady(30, 10) // 1,000/s
	a.gap(10*time.Second, 10500*time.Millisecond, 6)
	a.marks = []mark{{"restart", t0.Add(10 * time.Second)}, {"upgrade", t0.Add(20 * time.Second)}}
	b := steady(20, 5) // 500/s, shorter, no errors, and a name to escape
	b.start = t0.Add(time.Hour)
	b.marks = []mark{{"restart", b.start.Add(15 * time.Second)}}
	var out bytes.Buffer
	if err := writeChart(&out, "restart & upgrade <test>", 500*time.Millisecond, []series{{"rawlb", a}, {"base<old>", b}}); err != nil {
		t.Fatal(err)
	}
	els := decodeSVG(t, out.Bytes())
	var conns, errs, marks []svgElem
	texts := map[string]bool{}
	for _, e := range els {
		switch {
		case e.name == "polyline" && e.attrs["class"] == "conns":
			conns = append(conns, e)
		case e.name == "polyline" && e.attrs["class"] == "errors":
			errs = append(errs, e)
		case e.name == "line" && e.attrs["class"] == "mark":
			marks = append(marks, e)
		case e.name == "text":
			texts[strings.TrimSpace(e.text)] = true
		}
	}
	if len(conns) != 2 || len(errs) != 1 || len(marks) != 3 {
		t.Fatalf("%d lines, %d error lines, %d marks; want 2, 1 (only rawlb had errors), 3", len(conns), len(errs), len(marks))
	}
	for _, want := range []string{"restart & upgrade <test>", "rawlb", "base<old>", "restart", "upgrade", "0", "30", "seconds since the load started"} {
		if !texts[want] {
			t.Errorf("no text %q in the chart", want)
		}
	}
	// x: 30 s over the plot's width; the marks sit at 10, 20 and 15 s of
	// their own runs.
	x := func(sec float64) float64 { return padLeft + sec/30*plotW }
	for i, sec := range []float64{10, 20, 15} {
		if got := attrF(t, marks[i], "x1"); math.Abs(got-x(sec)) > 0.06 {
			t.Errorf("mark %d at x=%v, want %.1f (%v s)", i, got, x(sec), sec)
		}
	}
	if marks[2].attrs["stroke"] != palette[1] {
		t.Errorf("the second series' mark is %s, want its colour %s", marks[2].attrs["stroke"], palette[1])
	}
	// rawlb's line: 60 half-second points; the one of [10, 10.5 s) is at
	// zero (the plot's bottom), its neighbours at 1,000/s.
	pts := strings.Fields(conns[0].attrs["points"])
	if len(pts) != 60 {
		t.Fatalf("%d points, want 60", len(pts))
	}
	yOf := func(p string) float64 {
		_, ys, _ := strings.Cut(p, ",")
		v, _ := strconv.ParseFloat(ys, 64)
		return v
	}
	bottom := float64(padTop + plotH)
	if y := yOf(pts[20]); math.Abs(y-bottom) > 0.06 {
		t.Errorf("the gap's point at y=%v, want the bottom %v", y, bottom)
	}
	// The y axis ends at a round number above 1,000 (1,200 with steps of
	// 200), so 1,000/s sits at 1000/1200 of the height.
	if y, want := yOf(pts[19]), bottom-plotH*1000.0/1200; math.Abs(y-want) > 0.06 {
		t.Errorf("1,000/s at y=%v, want %.1f", y, want)
	}
	if n := len(strings.Fields(conns[1].attrs["points"])); n != 40 {
		t.Errorf("the 20 s run has %d points, want 40", n)
	}
	if !texts["1200"] || texts["1400"] {
		t.Errorf("y axis labels: want the last at 1200")
	}
}

func TestChartErrors(t *testing.T) {
	r := steady(2, 1)
	if err := writeChart(io.Discard, "t", 15*time.Millisecond, []series{{"x", r}}); err == nil {
		t.Error("a bin of 15 ms over 10 ms buckets was accepted")
	}
	if err := writeChart(io.Discard, "t", 5*time.Second, []series{{"x", r}}); err == nil {
		t.Error("a bin longer than the run was accepted")
	}
	if err := writeChart(io.Discard, "t", time.Second, nil); err == nil {
		t.Error("no series was accepted")
	}
}

func TestNiceStep(t *testing.T) {
	for _, tc := range []struct{ in, want float64 }{
		{0, 1}, {0.3, 0.5}, {1, 1}, {1.01, 2}, {3, 5}, {7, 10}, {210, 500}, {199.99, 200}, {1e6, 1e6},
	} {
		if got := niceStep(tc.in); math.Abs(got-tc.want) > 1e-9*tc.want {
			t.Errorf("niceStep(%v) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

func TestTable(t *testing.T) {
	a := steady(3, 2) // 200/s
	a.gap(1200*time.Millisecond, 1300*time.Millisecond, 5)
	a.slowest[1] = 1045 * time.Millisecond
	a.marks = []mark{{"restart", t0.Add(1200 * time.Millisecond)}}
	b := steady(2, 1)
	var out bytes.Buffer
	if err := writeTable(&out, []series{{"rawlb", a}, {"base", b}}); err != nil {
		t.Fatal(err)
	}
	want := "| s | rawlb conns | errors | slowest ms | base conns | errors | slowest ms | marks |\n" +
		"|--:|--:|--:|--:|--:|--:|--:|---|\n" +
		"| 0 | 200 | 0 | 3 | 100 | 0 | 3 |  |\n" +
		"| 1 | 180 | 5 | 1045 | 100 | 0 | 3 | rawlb restart at 1.20 s |\n" +
		"| 2 | 200 | 0 | 3 | - | - | - |  |\n"
	if out.String() != want {
		t.Errorf("table\n got:\n%s\nwant:\n%s", out.String(), want)
	}
}
