package config

import (
	"errors"
	"reflect"
	"testing"
)

// FuzzParse feeds Parse hostile files. Whatever the input, Parse returns
// either located errors or a Config that passes Validate and survives a
// Marshal/Parse round trip unchanged; it never panics. The seed corpus in
// testdata/fuzz/FuzzParse holds the example and one file per rule.
func FuzzParse(f *testing.F) {
	f.Add([]byte(base))
	f.Add([]byte(diffBase))
	f.Add([]byte(formsFile))
	for _, tc := range badFiles {
		if len(tc.file) < 4096 {
			f.Add([]byte(tc.file))
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data, "fuzz.yaml")
		if err != nil {
			if c != nil {
				t.Fatalf("Parse returned a Config and an error")
			}
			var errs Errors
			if !errors.As(err, &errs) || len(errs) == 0 {
				t.Fatalf("error %T %v is not a non-empty Errors", err, err)
			}
			lines := countLines(data)
			for i, e := range errs {
				if e.Msg == "" || e.File != "fuzz.yaml" || e.Line < 0 || e.Line > lines {
					t.Fatalf("bad error %+v (file has %d lines)", e, lines)
				}
				if i > 0 && e.Line != 0 && e.Line < errs[i-1].Line {
					t.Fatalf("errors not sorted by line:\n%v", err)
				}
			}
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("Parse accepted a Config that Validate rejects:\n%v\ninput:\n%s", err, data)
		}
		out, err := c.Marshal()
		if err != nil {
			t.Fatalf("Marshal: %v", err)
		}
		back, err := Parse(out, "marshalled.yaml")
		if err != nil {
			t.Fatalf("Parse(Marshal()):\n%v\nmarshalled:\n%s\ninput:\n%s", err, out, data)
		}
		if !reflect.DeepEqual(back, c) {
			t.Fatalf("round trip changed the Config:\n%+v\nwant\n%+v", back, c)
		}
		if d := Diff(c, back); !d.Empty() || c.Fingerprint() != back.Fingerprint() {
			t.Fatalf("round trip shows changes:\n%v", d)
		}
	})
}
