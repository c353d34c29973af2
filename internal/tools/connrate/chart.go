package main

import (
	"bufio"
	"encoding/xml"
	"fmt"
	"io"
	"math"
	"strings"
	"time"
)

// series is one named run in a chart or a table.
type series struct {
	name string
	rec  *record
}

// The chart's geometry, in SVG user units (pixels at 100%).
const (
	chartW, chartH           = 880, 420
	padLeft, padRight        = 72, 24
	padTop, padBottom        = 78, 52
	plotW                    = chartW - padLeft - padRight
	plotH                    = chartH - padTop - padBottom
	markLabelGap, legendStep = 13, 150
)

// palette is distinguishable in colour and in greyscale, light and dark
// enough to read on white.
var palette = []string{"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"}

// binned returns the connections and errors of each bin as rates per
// second; bin is a whole number of buckets.
func binned(r *record, bin time.Duration) (conns, errs []float64) {
	per := max(1, int(bin/r.bucket))
	for i := 0; i < len(r.conns); i += per {
		var c, e int64
		for j := i; j < i+per && j < len(r.conns); j++ {
			c += r.conns[j]
			e += r.errs[j]
		}
		// A partial last bin is left out rather than drawn as a dip.
		if i+per > len(r.conns) {
			break
		}
		conns = append(conns, float64(c)/bin.Seconds())
		errs = append(errs, float64(e)/bin.Seconds())
	}
	return conns, errs
}

// niceStep is the smallest 1, 2 or 5 times a power of ten at least x.
func niceStep(x float64) float64 {
	if x <= 0 || math.IsNaN(x) || math.IsInf(x, 0) {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(x)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= x*(1-1e-9) {
			return m * p
		}
	}
	return 10 * p
}

func esc(s string) string {
	var b strings.Builder
	_ = xml.EscapeText(&b, []byte(s))
	return b.String()
}

// writeChart draws connections per second over time for each series as
// a line, errors per second as a dotted line of the same colour where
// there were any, and each series' marks as dashed vertical lines. It
// uses nothing but SVG 1.1 elements, so that a browser, GitHub's markdown
// view and an image viewer all show it alike.
func writeChart(w io.Writer, title string, bin time.Duration, ss []series) error {
	if len(ss) == 0 {
		return fmt.Errorf("no series to draw")
	}
	type drawn struct {
		conns, errs []float64
		anyErr      bool
	}
	var ds []drawn
	var xmax, ymax float64
	for _, s := range ss {
		if bin < s.rec.bucket || bin%s.rec.bucket != 0 {
			return fmt.Errorf("%s: a bin of %v is not a whole number of its %v buckets", s.name, bin, s.rec.bucket)
		}
		c, e := binned(s.rec, bin)
		d := drawn{conns: c, errs: e}
		for i := range c {
			ymax = max(ymax, c[i], e[i])
			d.anyErr = d.anyErr || e[i] > 0
		}
		xmax = max(xmax, float64(len(c))*bin.Seconds())
		ds = append(ds, d)
	}
	if xmax == 0 {
		return fmt.Errorf("the runs are shorter than one bin of %v", bin)
	}
	ystep := niceStep(max(ymax, 1) * 1.05 / 6)
	ytop := math.Ceil(max(ymax, 1)*1.05/ystep) * ystep
	xstep := niceStep(xmax / 10)
	x := func(t float64) float64 { return padLeft + t/xmax*plotW }
	y := func(v float64) float64 { return padTop + plotH - v/ytop*plotH }

	b := bufio.NewWriter(w)
	fmt.Fprintf(b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n",
		chartW, chartH, chartW, chartH)
	fmt.Fprintf(b, `<rect width="%d" height="%d" fill="#ffffff"/>`+"\n", chartW, chartH)
	fmt.Fprintf(b, `<text x="%d" y="22" font-size="15" font-weight="bold" fill="#222222">%s</text>`+"\n", padLeft, esc(title))
	fmt.Fprintf(b, `<text x="%d" y="40" fill="#555555">connections completed per %v bin, as connections/s; dashed lines: each run's marks; dotted: errors/s</text>`+"\n",
		padLeft, bin)
	// Grid and axes.
	for k := 0; float64(k)*ystep <= ytop*(1+1e-9); k++ {
		v := float64(k) * ystep
		fmt.Fprintf(b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#e5e5e5"/>`+"\n", padLeft, y(v), padLeft+plotW, y(v))
		fmt.Fprintf(b, `<text x="%d" y="%.1f" text-anchor="end" fill="#444444">%s</text>`+"\n", padLeft-6, y(v)+4, number(v))
	}
	for k := 0; float64(k)*xstep <= xmax*(1+1e-9); k++ {
		t := float64(k) * xstep
		fmt.Fprintf(b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#e5e5e5"/>`+"\n", x(t), padTop, x(t), padTop+plotH)
		fmt.Fprintf(b, `<text x="%.1f" y="%d" text-anchor="middle" fill="#444444">%s</text>`+"\n", x(t), padTop+plotH+16, number(t))
	}
	fmt.Fprintf(b, `<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#888888"/>`+"\n", padLeft, padTop, plotW, plotH)
	fmt.Fprintf(b, `<text x="%d" y="%d" text-anchor="middle" fill="#444444">seconds since the load started</text>`+"\n",
		padLeft+plotW/2, chartH-12)
	fmt.Fprintf(b, `<text x="16" y="%d" text-anchor="middle" fill="#444444" transform="rotate(-90 16 %d)">connections/s</text>`+"\n",
		padTop+plotH/2, padTop+plotH/2)
	// Legend, above the plot.
	lx := padLeft
	for i, s := range ss {
		col := palette[i%len(palette)]
		fmt.Fprintf(b, `<line x1="%d" y1="58" x2="%d" y2="58" stroke="%s" stroke-width="3"/>`+"\n", lx, lx+18, col)
		fmt.Fprintf(b, `<text x="%d" y="62" fill="#222222">%s</text>`+"\n", lx+24, esc(s.name))
		lx += legendStep
	}
	// Marks, then the lines over them.
	for i, s := range ss {
		col := palette[i%len(palette)]
		for _, m := range s.rec.marks {
			t := s.rec.offset(m.at).Seconds()
			if t < 0 || t > xmax {
				continue
			}
			fmt.Fprintf(b, `<line class="mark" x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="%s" stroke-dasharray="6 4"/>`+"\n",
				x(t), padTop, x(t), padTop+plotH, col)
			fmt.Fprintf(b, `<text x="%.1f" y="%d" fill="%s">%s</text>`+"\n", x(t)+4, padTop+markLabelGap*(i+1), col, esc(m.name))
		}
	}
	for i, d := range ds {
		col := palette[i%len(palette)]
		fmt.Fprintf(b, `<polyline class="conns" fill="none" stroke="%s" stroke-width="1.8" stroke-linejoin="round" points="%s"/>`+"\n",
			col, points(d.conns, bin, x, y))
		if d.anyErr {
			fmt.Fprintf(b, `<polyline class="errors" fill="none" stroke="%s" stroke-width="1.4" stroke-dasharray="2 3" points="%s"/>`+"\n",
				col, points(d.errs, bin, x, y))
		}
	}
	fmt.Fprintln(b, `</svg>`)
	return b.Flush()
}

// points lays a bin series out at the middle of each bin.
func points(v []float64, bin time.Duration, x, y func(float64) float64) string {
	var b strings.Builder
	for i, r := range v {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%.1f,%.1f", x((float64(i)+0.5)*bin.Seconds()), y(r))
	}
	return b.String()
}

// number prints an axis value without a needless fraction.
func number(v float64) string {
	if v == math.Trunc(v) {
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%g", math.Round(v*1000)/1000)
}

// writeTable prints a markdown table with a row per second: for each
// series its connections, errors and slowest connection in that second,
// and which marks fell in it.
func writeTable(w io.Writer, ss []series) error {
	if len(ss) == 0 {
		return fmt.Errorf("no series to tabulate")
	}
	b := bufio.NewWriter(w)
	secs := 0
	conns := make([][]int64, len(ss))
	errs := make([][]int64, len(ss))
	for i, s := range ss {
		conns[i], errs[i] = s.rec.perSecond(s.rec.conns), s.rec.perSecond(s.rec.errs)
		secs = max(secs, len(conns[i]))
	}
	b.WriteString("| s |")
	for _, s := range ss {
		fmt.Fprintf(b, " %s conns | errors | slowest ms |", s.name)
	}
	b.WriteString(" marks |\n|--:|")
	for range ss {
		b.WriteString("--:|--:|--:|")
	}
	b.WriteString("---|\n")
	for sec := range secs {
		fmt.Fprintf(b, "| %d |", sec)
		var events []string
		for i, s := range ss {
			if sec >= len(conns[i]) {
				b.WriteString(" - | - | - |")
				continue
			}
			slow := "-"
			if sec < len(s.rec.slowest) && s.rec.slowest[sec] > 0 {
				slow = fmt.Sprintf("%.0f", float64(s.rec.slowest[sec])/float64(time.Millisecond))
			}
			fmt.Fprintf(b, " %d | %d | %s |", conns[i][sec], errs[i][sec], slow)
			for _, m := range s.rec.marks {
				if int(math.Floor(s.rec.offset(m.at).Seconds())) == sec {
					at := s.rec.offset(m.at).Seconds()
					if len(ss) > 1 {
						events = append(events, fmt.Sprintf("%s %s at %.2f s", s.name, m.name, at))
					} else {
						events = append(events, fmt.Sprintf("%s at %.2f s", m.name, at))
					}
				}
			}
		}
		fmt.Fprintf(b, " %s |\n", strings.Join(events, "; "))
	}
	return b.Flush()
}
