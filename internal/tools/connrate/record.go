package main

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
)

// record is what one load run measured: connections completed and errors
// in fixed buckets from the start, the slowest connection of each second,
// errors by kind, and the marks scripts/bench.sh appends (the restart, the
// upgrade) as wall-clock times.
//
// Buckets of 10 ms are fine enough to see a forwarding gap of a few tens of
// milliseconds (at about 1,000 connections a second over 32 clients a
// bucket normally holds several completions) and coarse enough that a 30 s
// run is 3,000 lines.
type record struct {
	start   time.Time     // when the clients started, to the millisecond
	bucket  time.Duration // width of a bucket
	clients int
	addr    string
	conns   []int64         // completed connections per bucket
	errs    []int64         // failed attempts per bucket
	slowest []time.Duration // per second: the longest connection completed in it
	kinds   map[string]int64
	marks   []mark
}

// mark is an event during the run, at a wall-clock time.
type mark struct {
	name string
	at   time.Time
}

const formatLine = "connrate 1"

// seconds is how many whole or partial seconds the buckets cover.
func (r *record) seconds() int {
	per := int(time.Second / r.bucket)
	return (len(r.conns) + per - 1) / per
}

// perSecond sums a bucket series into seconds.
func (r *record) perSecond(series []int64) []int64 {
	per := int(time.Second / r.bucket)
	out := make([]int64, r.seconds())
	for i, v := range series {
		out[i/per] += v
	}
	return out
}

// offset is where t falls from the start of the run.
func (r *record) offset(t time.Time) time.Duration { return t.Sub(r.start) }

// write puts the record in its text form: a line per field, then a line
// per bucket ("b INDEX CONNS ERRORS"), per second ("slow SECOND MS"), per
// kind of error and per mark. Text, so that a shell script can append a
// mark with echo and a person can read it.
func (r *record) write(w io.Writer) error {
	bw := bufio.NewWriter(w)
	fmt.Fprintln(bw, formatLine)
	fmt.Fprintf(bw, "start_unix_ms %d\n", r.start.UnixMilli())
	fmt.Fprintf(bw, "bucket_ms %d\n", r.bucket.Milliseconds())
	fmt.Fprintf(bw, "clients %d\n", r.clients)
	if r.addr != "" {
		fmt.Fprintf(bw, "addr %s\n", r.addr)
	}
	for i := range r.conns {
		fmt.Fprintf(bw, "b %d %d %d\n", i, r.conns[i], r.errs[i])
	}
	for i, d := range r.slowest {
		fmt.Fprintf(bw, "slow %d %.1f\n", i, float64(d.Microseconds())/1000)
	}
	kinds := make([]string, 0, len(r.kinds))
	for k := range r.kinds {
		kinds = append(kinds, k)
	}
	slices.Sort(kinds)
	for _, k := range kinds {
		fmt.Fprintf(bw, "err %s %d\n", k, r.kinds[k])
	}
	for _, m := range r.marks {
		fmt.Fprintf(bw, "mark %s %d\n", m.name, m.at.UnixMilli())
	}
	return bw.Flush()
}

// parse reads the text form back. Buckets must come in order from 0, and
// a name (an error kind, a mark) is one word.
func parse(rd io.Reader) (*record, error) {
	r := &record{kinds: map[string]int64{}}
	sc := bufio.NewScanner(rd)
	sc.Buffer(make([]byte, 4096), 1<<20)
	line := 0
	bad := func(format string, a ...any) error {
		return fmt.Errorf("line %d: %s", line, fmt.Sprintf(format, a...))
	}
	var haveStart, haveBucket bool
	for sc.Scan() {
		line++
		text := strings.TrimSpace(sc.Text())
		if line == 1 {
			if text != formatLine {
				return nil, bad("want %q, found %q", formatLine, text)
			}
			continue
		}
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		f := strings.Fields(text)
		ints := func(want int) ([]int64, error) {
			if len(f) != want+1 {
				return nil, bad("%s: want %d values, found %d", f[0], want, len(f)-1)
			}
			out := make([]int64, want)
			for i := range out {
				v, err := strconv.ParseInt(f[i+1], 10, 64)
				if err != nil || v < 0 {
					return nil, bad("%s: %q is not a count", f[0], f[i+1])
				}
				out[i] = v
			}
			return out, nil
		}
		switch f[0] {
		case "start_unix_ms":
			v, err := ints(1)
			if err != nil {
				return nil, err
			}
			r.start, haveStart = time.UnixMilli(v[0]), true
		case "bucket_ms":
			v, err := ints(1)
			if err != nil {
				return nil, err
			}
			if v[0] < 1 || v[0] > 1000 || 1000%v[0] != 0 {
				return nil, bad("bucket_ms %d: want a divisor of 1000", v[0])
			}
			r.bucket, haveBucket = time.Duration(v[0])*time.Millisecond, true
		case "clients":
			v, err := ints(1)
			if err != nil {
				return nil, err
			}
			r.clients = int(v[0])
		case "addr":
			if len(f) != 2 {
				return nil, bad("addr: want one value")
			}
			r.addr = f[1]
		case "b":
			v, err := ints(3)
			if err != nil {
				return nil, err
			}
			if v[0] != int64(len(r.conns)) {
				return nil, bad("bucket %d out of order (want %d)", v[0], len(r.conns))
			}
			if len(r.conns) >= 1_000_000 {
				return nil, bad("more than a million buckets")
			}
			r.conns, r.errs = append(r.conns, v[1]), append(r.errs, v[2])
		case "slow":
			if len(f) != 3 {
				return nil, bad("slow: want a second and milliseconds")
			}
			sec, err := strconv.Atoi(f[1])
			if err != nil || sec != len(r.slowest) {
				return nil, bad("slow: second %q out of order (want %d)", f[1], len(r.slowest))
			}
			ms, err := strconv.ParseFloat(f[2], 64)
			if err != nil || ms < 0 || ms > 1e9 || math.IsNaN(ms) {
				return nil, bad("slow: %q is not milliseconds", f[2])
			}
			r.slowest = append(r.slowest, time.Duration(ms*float64(time.Millisecond)))
		case "err":
			if len(f) != 3 {
				return nil, bad("err: want a kind and a count")
			}
			v, err := strconv.ParseInt(f[2], 10, 64)
			if err != nil || v < 0 {
				return nil, bad("err: %q is not a count", f[2])
			}
			r.kinds[f[1]] += v
		case "mark":
			if len(f) != 3 {
				return nil, bad("mark: want a name and a unix time in ms")
			}
			v, err := strconv.ParseInt(f[2], 10, 64)
			if err != nil || v < 0 {
				return nil, bad("mark: %q is not a unix time in ms", f[2])
			}
			r.marks = append(r.marks, mark{name: f[1], at: time.UnixMilli(v)})
		default:
			return nil, bad("unknown field %q", f[0])
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("line %d: %w", line+1, err)
	}
	if line == 0 {
		return nil, fmt.Errorf("empty input: want %q first", formatLine)
	}
	if !haveStart || !haveBucket {
		return nil, fmt.Errorf("missing start_unix_ms or bucket_ms")
	}
	slices.SortStableFunc(r.marks, func(a, b mark) int { return a.at.Compare(b.at) })
	return r, nil
}

// segment is the rate between two marks, in whole seconds [from, to).
type segment struct {
	name     string // the mark that opens it, or "start"
	from, to int
	rate     float64
}

// stall is the longest time without a completed connection that overlaps
// a window after a mark (or, named "before", within the time before the
// first mark).
type stall struct {
	name string
	gap  time.Duration
}

// summary is what bench.sh reports of a run.
type summary struct {
	seconds       int
	conns, errors int64
	rate          float64 // over the whole run
	lowest        int64   // the lowest one-second count, after the first second
	lowestAt      int
	segments      []segment
	stalls        []stall
}

// stallWindow is how long after a mark a stall is looked for: a restart's
// new process is up within a second or two here, and a SYN lost in the gap
// is retransmitted after 1 s, then 3 s.
const stallWindow = 5 * time.Second

// summarize computes the rate over the whole run and between marks, and
// the longest stall around each mark. The first second is left out of the
// segments and of the lowest second: the clients are still starting.
func (r *record) summarize() summary {
	s := summary{seconds: r.seconds(), lowestAt: -1}
	for i := range r.conns {
		s.conns += r.conns[i]
		s.errors += r.errs[i]
	}
	total := time.Duration(len(r.conns)) * r.bucket
	if total > 0 {
		s.rate = float64(s.conns) / total.Seconds()
	}
	perSec := r.perSecond(r.conns)
	per := int(time.Second / r.bucket)
	for i := 1; i < len(perSec); i++ {
		if (i+1)*per > len(r.conns) {
			break // a partial last second
		}
		if s.lowestAt < 0 || perSec[i] < s.lowest {
			s.lowest, s.lowestAt = perSec[i], i
		}
	}
	full := len(r.conns) / per
	bounds := []int{1}
	names := []string{"start"}
	for _, m := range r.marks {
		sec := int(math.Floor(r.offset(m.at).Seconds()))
		if sec < 1 || sec >= full {
			continue
		}
		bounds, names = append(bounds, sec), append(names, m.name)
	}
	bounds = append(bounds, full)
	for i := 0; i+1 < len(bounds); i++ {
		seg := segment{name: names[i], from: bounds[i], to: bounds[i+1]}
		if seg.to > seg.from {
			var n int64
			for _, v := range perSec[seg.from:seg.to] {
				n += v
			}
			seg.rate = float64(n) / float64(seg.to-seg.from)
		}
		s.segments = append(s.segments, seg)
	}
	// Stalls: "before" within [1 s, first mark), then each mark's window
	// up to stallWindow or the next mark.
	end := total
	if len(r.marks) > 0 {
		end = min(end, r.offset(r.marks[0].at))
	}
	s.stalls = append(s.stalls, stall{name: "before", gap: r.longestGap(time.Second, end, true)})
	for i, m := range r.marks {
		from := r.offset(m.at)
		to := from + stallWindow
		if i+1 < len(r.marks) {
			to = min(to, r.offset(r.marks[i+1].at))
		}
		s.stalls = append(s.stalls, stall{name: m.name, gap: r.longestGap(from, min(to, total), false)})
	}
	return s
}

// longestGap is the longest run of buckets without a completed
// connection among the runs that overlap [from, to); with within, only
// the part of a run inside [from, to) counts. A run that reaches the end
// of the record counts too (the load ended inside a gap).
func (r *record) longestGap(from, to time.Duration, within bool) time.Duration {
	if to <= from || len(r.conns) == 0 {
		return 0
	}
	lo := max(0, int(from/r.bucket))
	hi := min(len(r.conns), int((to+r.bucket-1)/r.bucket))
	best := 0
	for i := lo; i < hi; i++ {
		if r.conns[i] != 0 {
			continue
		}
		a, b := i, i
		if !within {
			for a > 0 && r.conns[a-1] == 0 {
				a--
			}
		}
		limit := len(r.conns)
		if within {
			limit = hi
		}
		for b+1 < limit && r.conns[b+1] == 0 {
			b++
		}
		best = max(best, b-a+1)
		i = b
	}
	return time.Duration(best) * r.bucket
}

// writeSummary prints s as lines a shell script reads with awk:
//
//	seconds N
//	conns N
//	errors N
//	rate R                  connections/s over the whole run
//	lowest N SECOND         the lowest one-second count
//	segment NAME FROM TO R  connections/s over whole seconds [FROM, TO)
//	stall NAME MS           longest time without a completed connection
func writeSummary(w io.Writer, s summary) error {
	bw := bufio.NewWriter(w)
	fmt.Fprintf(bw, "seconds %d\nconns %d\nerrors %d\nrate %.1f\n", s.seconds, s.conns, s.errors, s.rate)
	fmt.Fprintf(bw, "lowest %d %d\n", s.lowest, s.lowestAt)
	for _, g := range s.segments {
		fmt.Fprintf(bw, "segment %s %d %d %.1f\n", g.name, g.from, g.to, g.rate)
	}
	for _, st := range s.stalls {
		fmt.Fprintf(bw, "stall %s %d\n", st.name, st.gap.Milliseconds())
	}
	return bw.Flush()
}
