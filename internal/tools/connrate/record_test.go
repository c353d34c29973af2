package main

import (
	"bytes"
	"reflect"
	"strings"
	"testing"
	"time"
)

var t0 = time.UnixMilli(1_765_000_000_000)

// steady is a run of secs seconds in 10 ms buckets with n connections in
// every bucket.
func steady(secs int, n int64) *record {
	r := &record{start: t0, bucket: 10 * time.Millisecond, clients: 32, addr: "198.18.0.2:20000", kinds: map[string]int64{}}
	for i := 0; i < secs*100; i++ {
		r.conns = append(r.conns, n)
		r.errs = append(r.errs, 0)
	}
	for i := 0; i < secs; i++ {
		r.slowest = append(r.slowest, 3*time.Millisecond)
	}
	return r
}

// gap empties the buckets of [from, to) and puts errs errors in the
// first of them.
func (r *record) gap(from, to time.Duration, errs int64) {
	for i := int(from / r.bucket); i < int(to/r.bucket); i++ {
		r.conns[i] = 0
	}
	r.errs[int(from/r.bucket)] += errs
}

func TestRoundTrip(t *testing.T) {
	r := steady(3, 2)
	r.gap(1500*time.Millisecond, 1800*time.Millisecond, 4)
	r.kinds["connect"], r.kinds["read"] = 3, 1
	r.slowest[1] = 1234500 * time.Microsecond
	r.marks = []mark{{"restart", t0.Add(1400 * time.Millisecond)}, {"upgrade", t0.Add(2500 * time.Millisecond)}}
	var b bytes.Buffer
	if err := r.write(&b); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(b.String(), "connrate 1\nstart_unix_ms 1765000000000\nbucket_ms 10\nclients 32\naddr 198.18.0.2:20000\nb 0 2 0\n") {
		t.Fatalf("head of the text form:\n%.200s", b.String())
	}
	for _, want := range []string{"\nb 150 0 4\n", "\nslow 1 1234.5\n", "\nerr connect 3\nerr read 1\n", "\nmark restart 1765000001400\nmark upgrade 1765000002500\n"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("text form lacks %q", want)
		}
	}
	got, err := parse(&b)
	if err != nil {
		t.Fatal(err)
	}
	if !got.start.Equal(r.start) || got.bucket != r.bucket || got.clients != r.clients || got.addr != r.addr ||
		!reflect.DeepEqual(got.conns, r.conns) || !reflect.DeepEqual(got.errs, r.errs) ||
		!reflect.DeepEqual(got.slowest, r.slowest) || !reflect.DeepEqual(got.kinds, r.kinds) || len(got.marks) != 2 ||
		got.marks[0].name != "restart" || !got.marks[1].at.Equal(r.marks[1].at) {
		t.Errorf("round trip changed the record:\n got %+v\nwant %+v", got, r)
	}
}

// A mark appended by the shell (echo "mark ..." >>file), out of time
// order and after a comment, is read and sorted.
func TestParseAppendedMarks(t *testing.T) {
	in := "connrate 1\nstart_unix_ms 1000\nbucket_ms 100\nclients 1\nb 0 1 0\nb 1 0 0\n# appended\nmark upgrade 1150\nmark restart 1050\n"
	r, err := parse(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	if len(r.marks) != 2 || r.marks[0].name != "restart" || r.offset(r.marks[1].at) != 150*time.Millisecond {
		t.Errorf("marks %+v", r.marks)
	}
}

func TestParseErrors(t *testing.T) {
	head := "connrate 1\nstart_unix_ms 1000\nbucket_ms 10\n"
	for _, tc := range []struct{ in, want string }{
		{"", "empty input"},
		{"connrate 2\n", `line 1: want "connrate 1"`},
		{"connrate 1\nbucket_ms 10\n", "missing start_unix_ms"},
		{"connrate 1\nstart_unix_ms 1000\nbucket_ms 7\n", "line 3: bucket_ms 7: want a divisor of 1000"},
		{head + "b 1 0 0\n", "line 4: bucket 1 out of order (want 0)"},
		{head + "b 0 1\n", "line 4: b: want 3 values, found 2"},
		{head + "b 0 -1 0\n", `line 4: b: "-1" is not a count`},
		{head + "slow 1 3.0\n", `line 4: slow: second "1" out of order`},
		{head + "slow 0 NaN\n", `line 4: slow: "NaN" is not milliseconds`},
		{head + "err connect x\n", `line 4: err: "x" is not a count`},
		{head + "mark restart\n", "line 4: mark: want a name and a unix time in ms"},
		{head + "addr\n", "line 4: addr: want one value"},
		{head + "nonsense 1\n", `line 4: unknown field "nonsense"`},
	} {
		_, err := parse(strings.NewReader(tc.in))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("parse(%q) = %v, want an error with %q", tc.in, err, tc.want)
		}
	}
}

// A run of 30 s at 10 connections a bucket (1,000/s) with a 340 ms gap
// after the restart at 10.2 s and a 30 ms one after the upgrade at
// 20.5 s; a 20 ms gap before them is the noise the "before" stall shows.
func TestSummarize(t *testing.T) {
	r := steady(30, 10)
	r.gap(5*time.Second, 5020*time.Millisecond, 0)
	r.gap(10200*time.Millisecond, 10540*time.Millisecond, 7)
	r.gap(20530*time.Millisecond, 20560*time.Millisecond, 0)
	r.marks = []mark{{"restart", t0.Add(10200 * time.Millisecond)}, {"upgrade", t0.Add(20500 * time.Millisecond)}}
	s := r.summarize()
	if s.seconds != 30 || s.conns != 30*1000-34*10-3*10-2*10 || s.errors != 7 {
		t.Errorf("seconds %d conns %d errors %d", s.seconds, s.conns, s.errors)
	}
	if s.lowest != 1000-340 || s.lowestAt != 10 {
		t.Errorf("lowest %d at %d, want 660 at 10", s.lowest, s.lowestAt)
	}
	wantSeg := []segment{{"start", 1, 10, float64(9000-20) / 9}, {"restart", 10, 20, 1000 - 34}, {"upgrade", 20, 30, 1000 - 3}}
	if !reflect.DeepEqual(s.segments, wantSeg) {
		t.Errorf("segments\n got %+v\nwant %+v", s.segments, wantSeg)
	}
	wantStall := []stall{{"before", 20 * time.Millisecond}, {"restart", 340 * time.Millisecond}, {"upgrade", 30 * time.Millisecond}}
	if !reflect.DeepEqual(s.stalls, wantStall) {
		t.Errorf("stalls %+v, want %+v", s.stalls, wantStall)
	}
	var b bytes.Buffer
	if err := writeSummary(&b, s); err != nil {
		t.Fatal(err)
	}
	want := "seconds 30\nconns 29610\nerrors 7\nrate 987.0\nlowest 660 10\n" +
		"segment start 1 10 997.8\nsegment restart 10 20 966.0\nsegment upgrade 20 30 997.0\n" +
		"stall before 20\nstall restart 340\nstall upgrade 30\n"
	if b.String() != want {
		t.Errorf("summary text\n got %q\nwant %q", b.String(), want)
	}
}

// A gap that began just before the mark (the SIGTERM was sent while the
// old process was already winding down, say) is measured whole; one that
// lasts to the end of the run counts to the end.
func TestLongestGapAroundMark(t *testing.T) {
	r := steady(10, 1)
	r.gap(4900*time.Millisecond, 5400*time.Millisecond, 0)
	r.gap(9600*time.Millisecond, 10*time.Second, 0)
	r.marks = []mark{{"restart", t0.Add(5 * time.Second)}, {"end", t0.Add(9500 * time.Millisecond)}}
	s := r.summarize()
	if s.stalls[1].gap != 500*time.Millisecond || s.stalls[2].gap != 400*time.Millisecond {
		t.Errorf("stalls %+v, want restart 500ms and end 400ms", s.stalls)
	}
	// "before" counts only what lies inside [1 s, the first mark).
	if s.stalls[0].gap != 100*time.Millisecond {
		t.Errorf("before %v, want the 100 ms of the gap before the mark", s.stalls[0].gap)
	}
}

// Marks before the run or after its end open no segment.
func TestSummarizeMarksOutside(t *testing.T) {
	r := steady(5, 1)
	r.marks = []mark{{"early", t0.Add(-time.Second)}, {"late", t0.Add(9 * time.Second)}}
	s := r.summarize()
	if len(s.segments) != 1 || s.segments[0] != (segment{"start", 1, 5, 100}) {
		t.Errorf("segments %+v", s.segments)
	}
}

func FuzzParse(f *testing.F) {
	var b bytes.Buffer
	r := steady(2, 3)
	r.marks = []mark{{"restart", t0.Add(time.Second)}}
	r.kinds["read"] = 2
	_ = r.write(&b)
	f.Add(b.String())
	f.Add("connrate 1\nstart_unix_ms 0\nbucket_ms 1000\n")
	f.Fuzz(func(t *testing.T, in string) {
		r, err := parse(strings.NewReader(in))
		if err != nil {
			return
		}
		// Whatever parses summarizes, charts and writes back to the same.
		_ = r.summarize()
		_ = writeTable(&bytes.Buffer{}, []series{{"x", r}})
		_ = writeChart(&bytes.Buffer{}, "t", time.Second, []series{{"x", r}})
		var out bytes.Buffer
		if err := r.write(&out); err != nil {
			t.Fatal(err)
		}
		again, err := parse(&out)
		if err != nil {
			t.Fatalf("the written form does not parse: %v\n%s", err, out.String())
		}
		if !reflect.DeepEqual(again.conns, r.conns) || !reflect.DeepEqual(again.errs, r.errs) || len(again.marks) != len(r.marks) {
			t.Fatalf("write and parse changed the record")
		}
	})
}
