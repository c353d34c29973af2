package config

import (
	"sort"
	"strconv"
	"strings"
)

// Error is one problem in a configuration. Parse and Load set File and
// Line; Validate on a Config built in Go leaves them empty and zero.
type Error struct {
	File  string // the name given to Parse or Load
	Line  int    // 1-based; 0 when unknown
	Field string // the field path, e.g. services[0].backends[1].address; "" for the whole file
	Msg   string
}

// Error formats e as "file:line: field: message", leaving out the parts
// that are empty, so that editors and grep can jump to the line.
func (e *Error) Error() string {
	var b strings.Builder
	if e.File != "" {
		b.WriteString(e.File)
		if e.Line > 0 {
			b.WriteByte(':')
			b.WriteString(strconv.Itoa(e.Line))
		}
		b.WriteString(": ")
	} else if e.Line > 0 {
		b.WriteString("line ")
		b.WriteString(strconv.Itoa(e.Line))
		b.WriteString(": ")
	}
	if e.Field != "" {
		b.WriteString(e.Field)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Errors is every problem found, sorted by line. It prints one per line,
// and errors.As finds its first *Error.
type Errors []*Error

// Error prints one problem per line.
func (l Errors) Error() string {
	parts := make([]string, len(l))
	for i, e := range l {
		parts[i] = e.Error()
	}
	return strings.Join(parts, "\n")
}

// Unwrap lets errors.As and errors.Is see each *Error, first one first.
func (l Errors) Unwrap() []error {
	out := make([]error, len(l))
	for i, e := range l {
		out[i] = e
	}
	return out
}

// sorted orders l by line, keeping the order of discovery within a line,
// and returns nil for an empty list so callers can return it as an error.
func (l Errors) sorted() error {
	if len(l) == 0 {
		return nil
	}
	sort.SliceStable(l, func(i, j int) bool { return l[i].Line < l[j].Line })
	return l
}
