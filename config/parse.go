package config

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// maxNodes bounds the values one file may expand to. Aliases let a small
// file name the same list many times over ("billion laughs"). 2^18 values
// is some 30,000 backends, far beyond a real file, and parses in about a
// quarter of a second on one core of the CI machine.
const maxNodes = 1 << 18

// maxReported bounds the problems listed at once: past it, the operator
// fixes the first ones and runs -check-config again.
const maxReported = 100

// Load reads and parses the file at path; errors name the file as path.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return Parse(data, path)
}

// Parse parses a configuration file's contents, applies the defaults and
// validates the result. name is the file name used in error messages. The
// error, if any, is an Errors listing every problem found, sorted by line.
func Parse(data []byte, name string) (*Config, error) {
	root, perr := parseYAML(data, name)
	if perr != nil {
		return nil, Errors{perr}
	}
	d := &decoder{file: name, lines: map[string]int{}, bad: map[string]bool{}, budget: maxNodes}
	c := Defaults()
	d.lines[""] = root.Line
	d.config(root, &c)
	errs := d.errs
	if !d.stopped {
		v := &validator{line: d.line}
		v.config(&c)
		for _, e := range v.errs {
			if d.suppressed(e.Field) {
				continue
			}
			e.File, e.Line = name, d.line(e.Field)
			errs = append(errs, e)
		}
	}
	if err := errs.sorted(); err != nil {
		if len(errs) > maxReported {
			more := len(errs) - maxReported
			errs = append(errs[:maxReported:maxReported], &Error{File: name,
				Msg: fmt.Sprintf("and %d more problems; fix the ones above first", more)})
		}
		return nil, errs
	}
	return &c, nil
}

var yamlLine = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// parseYAML returns the root node of the file's single document.
func parseYAML(data []byte, name string) (root *yaml.Node, failure *Error) {
	// yaml.v3 has panicked on hostile input before (CVE-2022-28948); a bad
	// file must never take down a running balancer on SIGHUP.
	defer func() {
		if r := recover(); r != nil {
			root, failure = nil, &Error{File: name, Msg: fmt.Sprintf("the YAML parser failed on this file (%v); check its syntax", r)}
		}
	}()
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, emptyFile(name)
		}
		return nil, syntaxError(err, data, name)
	}
	if len(doc.Content) == 0 || isNull(doc.Content[0]) {
		return nil, emptyFile(name)
	}
	var next yaml.Node
	switch err := dec.Decode(&next); {
	case errors.Is(err, io.EOF):
	case err != nil:
		return nil, syntaxError(err, data, name)
	case len(next.Content) > 0 && !isNull(next.Content[0]):
		return nil, &Error{File: name, Line: next.Line,
			Msg: "a second YAML document starts here (after ---): rawlb reads one document per file; merge them"}
	}
	return doc.Content[0], nil
}

func emptyFile(name string) *Error {
	return &Error{File: name, Msg: "the file is empty: it needs at least address: and services: (see the README's example)"}
}

// syntaxError turns yaml.v3's "yaml: line N: msg" into an Error on line N.
func syntaxError(err error, data []byte, name string) *Error {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	e := &Error{File: name}
	if m := yamlLine.FindStringSubmatch(err.Error()); m != nil {
		e.Line, _ = strconv.Atoi(m[1])
		msg = m[2]
		// yaml.v3 prints the 0-based line of a parser (not scanner) error:
		// the line where the unfinished list or mapping starts, minus one.
		if e.Line > 0 && isParserError(msg) {
			e.Line++
		}
		// ...and may point one past the last line at the end of input.
		e.Line = min(e.Line, countLines(data))
	}
	e.Msg = "YAML syntax: " + msg
	// A tab in indentation is the usual cause of "cannot start any token";
	// the scanner does not say so, and may not give the line.
	if strings.Contains(msg, "cannot start any token") {
		for i, l := range strings.Split(string(data), "\n") {
			indent := l[:len(l)-len(strings.TrimLeft(l, " \t"))]
			if strings.Contains(indent, "\t") && (e.Line == 0 || e.Line == i+1) {
				e.Line = i + 1
				e.Msg += " (a tab indents this line: YAML indents with spaces only)"
				break
			}
		}
	}
	return e
}

// countLines counts lines as YAML does: \n, \r\n and a lone \r end one.
func countLines(data []byte) int {
	n := 1 + bytes.Count(data, []byte("\n")) + bytes.Count(data, []byte("\r")) - bytes.Count(data, []byte("\r\n"))
	if len(data) > 0 && (data[len(data)-1] == '\n' || data[len(data)-1] == '\r') {
		n-- // a final line break ends the last line rather than starting one
	}
	return max(n, 1)
}

// isParserError recognises the messages of yaml.v3's parserc.go, as
// opposed to its scanner's.
func isParserError(msg string) bool {
	for _, p := range []string{"did not find expected", "found undefined tag handle", "found duplicate %", "found incompatible YAML document"} {
		if strings.HasPrefix(msg, p) {
			return true
		}
	}
	return false
}

// decoder walks the YAML node tree along the schema, so every value's line
// is known, every key is checked, and types are checked before Go sees them.
type decoder struct {
	file    string
	errs    Errors
	lines   map[string]int  // field path -> line of its value (or key, for an empty value)
	bad     map[string]bool // field paths whose value could not be decoded
	budget  int
	stopped bool
}

// line is the line of field, or of its closest ancestor the file has: a
// missing field is reported where its enclosing mapping starts.
func (d *decoder) line(field string) int {
	for {
		if l, ok := d.lines[field]; ok {
			return l
		}
		if field == "" {
			return 0
		}
		field = parent(field)
	}
}

// parent is the path one step up: services[0].name -> services[0] -> services -> "".
func parent(field string) string {
	i := strings.LastIndexAny(field, ".[")
	if i < 0 {
		return ""
	}
	return field[:i]
}

// suppressed reports whether field is or lies under a field that already
// failed to decode: its zero value would only produce a second, misleading
// message about the same mistake.
func (d *decoder) suppressed(field string) bool {
	for {
		if d.bad[field] {
			return true
		}
		if field == "" {
			return false
		}
		field = parent(field)
	}
}

func (d *decoder) fail(n *yaml.Node, field, format string, args ...any) {
	d.bad[field] = true
	d.errs = append(d.errs, &Error{File: d.file, Line: n.Line, Field: field, Msg: fmt.Sprintf(format, args...)})
}

// spend counts one visited node and stops the walk once the budget is gone.
func (d *decoder) spend(n *yaml.Node) bool {
	if d.stopped {
		return false
	}
	if d.budget--; d.budget < 0 {
		d.stopped = true
		d.errs = append(d.errs, &Error{File: d.file, Line: n.Line,
			Msg: fmt.Sprintf("the file expands to more than %d values (through aliases?): write it out plainly", maxNodes)})
		return false
	}
	return true
}

// deref follows aliases to the anchored node.
func deref(n *yaml.Node) *yaml.Node {
	for i := 0; n.Kind == yaml.AliasNode && n.Alias != nil && i < 100; i++ {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	n = deref(n)
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// describe names what a node is, for "must be X, not Y" messages.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		return strconv.Quote(n.Value)
	}
	return "an alias"
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// field is one key a mapping accepts, with what decodes its value.
type field struct {
	name string
	set  func(v *yaml.Node, path string)
}

// mapping decodes a mapping node key by key. Empty values (key: or ~) are
// treated as absent, so the field keeps its default.
func (d *decoder) mapping(n *yaml.Node, path string, fields []field) bool {
	if !d.spend(n) {
		return false
	}
	if n.Kind != yaml.MappingNode {
		if path == "" {
			d.fail(n, path, "the file must be a mapping of key: value lines (address:, services:, ...), not %s", describe(n))
		} else {
			d.fail(n, path, "must be a mapping of key: value lines, not %s", describe(n))
		}
		return false
	}
	seen := map[string]int{}
	var meant []string // keys suggested for misspelt ones
	for i := 0; i+1 < len(n.Content) && !d.stopped; i += 2 {
		k, v := deref(n.Content[i]), deref(n.Content[i+1])
		if k.Kind != yaml.ScalarNode {
			d.fail(k, path, "a key must be a plain name, not %s", describe(k))
			continue
		}
		p := join(path, k.Value)
		if k.ShortTag() == "!!merge" {
			d.fail(k, p, "merge keys (<<) are not supported: write the fields out")
			d.bad[path] = true // the fields it would have brought are missing
			continue
		}
		if first, dup := seen[k.Value]; dup {
			d.fail(k, p, "duplicate key %q (first at line %d): keep one", k.Value, first)
			continue
		}
		seen[k.Value] = k.Line
		if path == "" && strings.HasPrefix(k.Value, "x-") {
			continue // extension keys, as in Compose files: a place for anchors
		}
		var f *field
		for j := range fields {
			if fields[j].name == k.Value {
				f = &fields[j]
			}
		}
		if f == nil {
			msg, s := unknownKey(k.Value, fields)
			d.fail(k, p, "%s", msg)
			if s != "" {
				meant = append(meant, s)
			}
			continue
		}
		if isNull(v) {
			d.lines[p] = k.Line
			continue
		}
		d.lines[p] = v.Line
		f.set(v, p)
	}
	// "adress" was reported; "address: required" would be the same mistake.
	for _, s := range meant {
		if _, ok := seen[s]; !ok {
			d.bad[join(path, s)] = true
		}
	}
	return true
}

// unknownKey explains an unknown key, suggesting the known key the
// operator most likely meant, which it also returns.
func unknownKey(key string, fields []field) (msg, suggestion string) {
	names := make([]string, len(fields))
	for i, f := range fields {
		names[i] = f.name
	}
	if s := suggest(key, names); s != "" {
		return fmt.Sprintf("unknown key %q; did you mean %q?", key, s), s
	}
	return fmt.Sprintf("unknown key %q; known keys here: %s", key, strings.Join(names, ", ")), ""
}

// suggest returns the name closest to key: the same once case, '-' and '_'
// are ignored (maxFlows, max-flows), or within a small edit distance
// (schedular).
func suggest(key string, names []string) string {
	norm := func(s string) string {
		return strings.NewReplacer("_", "", "-", "", " ", "").Replace(strings.ToLower(s))
	}
	best, bestDist := "", 0
	for _, n := range names {
		if norm(n) == norm(key) {
			return n
		}
		limit := 2
		if len(n) < 6 {
			limit = 1
		}
		if dist := editDistance(strings.ToLower(key), n); dist <= limit && (best == "" || dist < bestDist) {
			best, bestDist = n, dist
		}
	}
	return best
}

// editDistance is the Levenshtein distance, for short keys only.
func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return 1 << 30
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// seq decodes a list item by item.
func (d *decoder) seq(n *yaml.Node, path, example string, item func(i int, v *yaml.Node, path string)) {
	if !d.spend(n) {
		return
	}
	if n.Kind != yaml.SequenceNode {
		d.fail(n, path, "must be a list (- item lines, or [a, b]), not %s; e.g. %s", describe(n), example)
		return
	}
	for i, v := range n.Content {
		if d.stopped {
			return
		}
		v = deref(v)
		p := fmt.Sprintf("%s[%d]", path, i)
		d.lines[p] = v.Line
		item(i, v, p)
	}
}

// scalar checks that n is a single value of one of the given tags.
func (d *decoder) scalar(n *yaml.Node, path, what string, tags ...string) bool {
	if !d.spend(n) {
		return false
	}
	if n.Kind == yaml.ScalarNode {
		for _, t := range tags {
			if n.ShortTag() == t {
				return true
			}
		}
	}
	if n.Kind == yaml.ScalarNode && what == "a string" && n.ShortTag() != "!!binary" {
		d.fail(n, path, "must be a string, not %s; quote it: \"%s\"", strings.TrimLeft(n.ShortTag(), "!"), n.Value)
		return false
	}
	d.fail(n, path, "must be %s, not %s", what, describe(n))
	return false
}

func (d *decoder) str(dst *string) func(*yaml.Node, string) { return d.text(dst, "a string") }

// text reads a string whose form what describes, e.g. "host:port".
func (d *decoder) text(dst *string, what string) func(*yaml.Node, string) {
	return func(n *yaml.Node, path string) {
		if d.scalar(n, path, what, "!!str") {
			*dst = n.Value
		}
	}
}

// bytes accepts a string, or !!binary (base64) for bytes that are not
// text: YAML's \x escapes name Unicode code points, not bytes.
func (d *decoder) bytes(dst *string) func(*yaml.Node, string) {
	return func(n *yaml.Node, path string) {
		if !d.scalar(n, path, "a string (or !!binary base64)", "!!str", "!!binary") {
			return
		}
		if n.ShortTag() == "!!str" {
			*dst = n.Value
			return
		}
		b, err := base64.StdEncoding.DecodeString(strings.Join(strings.Fields(n.Value), ""))
		if err != nil {
			d.fail(n, path, "!!binary value is not valid base64: %v", err)
			return
		}
		*dst = string(b)
	}
}

func (d *decoder) boolean(dst *bool) func(*yaml.Node, string) {
	return func(n *yaml.Node, path string) {
		if d.scalar(n, path, "true or false", "!!bool") {
			if err := n.Decode(dst); err != nil {
				d.fail(n, path, "must be true or false, not %s", describe(n))
			}
		}
	}
}

func (d *decoder) integer(dst *int) func(*yaml.Node, string) {
	return func(n *yaml.Node, path string) {
		if !d.scalar(n, path, "a whole number", "!!int") {
			return
		}
		var v int64
		if err := n.Decode(&v); err != nil || v > 1<<40 || v < -(1<<40) {
			d.fail(n, path, "%s is too large", n.Value)
			return
		}
		*dst = int(v)
	}
}

// port decodes a port number where 0 has a meaning (health.port).
func (d *decoder) port(dst *uint16, zero string) func(*yaml.Node, string) {
	return func(n *yaml.Node, path string) {
		var v int
		d.integer(&v)(n, path)
		if d.bad[path] {
			return
		}
		if v < 0 || v > 65535 {
			d.fail(n, path, "port %d is out of range: use 1-65535, or 0 for %s", v, zero)
			return
		}
		*dst = uint16(v)
	}
}

// duration requires a unit: a bare 30 could be seconds or milliseconds, and
// guessing wrong by a factor of a thousand is how outages start. A bare 0
// is unambiguous and accepted.
func (d *decoder) duration(dst *time.Duration) func(*yaml.Node, string) {
	return func(n *yaml.Node, path string) {
		if !d.scalar(n, path, "a duration such as 2s, 500ms or 1h", "!!str", "!!int", "!!float") {
			return
		}
		if n.ShortTag() != "!!str" {
			if v, err := strconv.ParseFloat(n.Value, 64); err == nil && v == 0 {
				*dst = 0
				return
			}
			d.fail(n, path, "%s has no unit: write %ss (or ms, m, h)", n.Value, n.Value)
			return
		}
		v, err := time.ParseDuration(strings.TrimSpace(n.Value))
		if err != nil {
			d.fail(n, path, "%q is not a duration: write a number with a unit, such as 2s, 500ms, 1m or 1h30m", n.Value)
			return
		}
		*dst = v
	}
}

func (d *decoder) ipv4(dst *netip.Addr) func(*yaml.Node, string) {
	return func(n *yaml.Node, path string) {
		if !d.scalar(n, path, "an IPv4 address", "!!str") {
			return
		}
		a, err := netip.ParseAddr(strings.TrimSpace(n.Value))
		if err != nil || !a.Is4() {
			d.fail(n, path, "%q is not an IPv4 address: write four numbers such as 192.168.1.10", n.Value)
			return
		}
		*dst = a
	}
}

func (d *decoder) portRange(dst *PortRange) func(*yaml.Node, string) {
	return func(n *yaml.Node, path string) {
		if !d.scalar(n, path, "a port range such as "+DefaultNATPorts, "!!str") {
			return
		}
		r, err := ParsePortRange(n.Value)
		if err != nil {
			// The zero range keeps Validate from checking listen ports
			// against the default the file meant to replace.
			*dst = PortRange{}
			d.fail(n, path, "%v", err)
			return
		}
		*dst = r
	}
}

func (d *decoder) stringList(dst *[]string, example string) func(*yaml.Node, string) {
	return func(n *yaml.Node, path string) {
		*dst = []string{}
		d.seq(n, path, example, func(_ int, v *yaml.Node, p string) {
			var s string
			d.str(&s)(v, p)
			*dst = append(*dst, s)
		})
		if len(*dst) == 0 {
			*dst = nil
		}
	}
}

// config decodes the whole file. Listen addresses and drain timeouts are
// resolved at the end, since address: and timeouts: may come after
// services:.
func (d *decoder) config(root *yaml.Node, c *Config) {
	var logLevel string
	var portOnly, drainSet []bool
	ok := d.mapping(root, "", []field{
		{"address", d.ipv4(&c.Address)},
		{"interfaces", d.stringList(&c.Interfaces, "[eth0]")},
		{"nat_ports", d.portRange(&c.NATPorts)},
		{"metrics", d.text(&c.Metrics, "host:port such as 127.0.0.1:9120")},
		{"pprof", d.boolean(&c.Pprof)},
		{"log_level", func(n *yaml.Node, p string) {
			d.str(&logLevel)(n, p)
			if !d.bad[p] {
				lv, ok := parseLevel(logLevel)
				if !ok {
					d.fail(n, p, "unknown log level %q: use debug, info, warn or error", logLevel)
				}
				c.LogLevel = lv
			}
		}},
		{"workers", d.integer(&c.Workers)},
		{"ring_frames", d.integer(&c.RingFrames)},
		{"firewall", d.boolean(&c.Firewall)},
		{"fastpath", d.enum((*string)(&c.Fastpath))},
		{"state_dir", d.str(&c.StateDir)},
		{"max_flows", d.integer(&c.MaxFlows)},
		{"max_flows_per_client", d.integer(&c.MaxFlowsPerClient)},
		{"syn_cookies", d.enum((*string)(&c.SYNCookies))},
		{"syn_cookie_threshold", d.integer(&c.SYNCookieThreshold)},
		{"rate_limits", func(n *yaml.Node, p string) {
			rl := &c.RateLimits
			d.mapping(n, p, []field{
				{"resets", d.integer(&rl.Resets)},
				{"challenge_acks", d.integer(&rl.ChallengeACKs)},
				{"syn_acks", d.integer(&rl.SYNACKs)},
			})
		}},
		{"timeouts", func(n *yaml.Node, p string) {
			t := &c.Timeouts
			d.mapping(n, p, []field{
				{"half_open", d.duration(&t.HalfOpen)},
				{"established", d.duration(&t.Established)},
				{"closing", d.duration(&t.Closing)},
				{"nat_port_quiet", d.duration(&t.NATPortQuiet)},
				{"drain", d.duration(&t.Drain)},
			})
		}},
		{"services", func(n *yaml.Node, p string) {
			c.Services = []Service{}
			d.seq(n, p, "- name: web", func(_ int, v *yaml.Node, p string) {
				s, only, drain := d.service(v, p)
				c.Services = append(c.Services, s)
				portOnly = append(portOnly, only)
				drainSet = append(drainSet, drain)
			})
		}},
	})
	if !ok {
		return
	}
	for i := range c.Services {
		s := &c.Services[i]
		if portOnly[i] {
			s.Listen = netip.AddrPortFrom(c.Address, s.Listen.Port())
		}
		if !drainSet[i] {
			s.DrainTimeout = c.Timeouts.Drain
		}
	}
}

// enum reads a keyword as a string; Validate checks it against the allowed
// values, so a Config built in Go gets the same message. (yaml.v3 follows
// YAML 1.2 and keeps a bare on/off a string, so syn_cookies: on works.)
func (d *decoder) enum(dst *string) func(*yaml.Node, string) { return d.str(dst) }

// service decodes one service and reports whether its listen was a bare
// port and whether it set drain_timeout.
func (d *decoder) service(n *yaml.Node, path string) (s Service, portOnly, drainSet bool) {
	s = Service{Scheduler: DefaultScheduler, OnBackendDown: DefaultOnBackendDown, Health: DefaultHealth()}
	d.mapping(n, path, []field{
		{"name", d.str(&s.Name)},
		{"listen", func(n *yaml.Node, p string) { portOnly = d.listen(n, p, &s.Listen) }},
		{"scheduler", d.enum((*string)(&s.Scheduler))},
		{"max_flows", d.integer(&s.MaxFlows)},
		{"drain_timeout", func(n *yaml.Node, p string) {
			drainSet = true
			d.duration(&s.DrainTimeout)(n, p)
		}},
		{"on_backend_down", d.enum((*string)(&s.OnBackendDown))},
		{"health", func(n *yaml.Node, p string) { d.health(n, p, &s.Health) }},
		{"backends", func(n *yaml.Node, p string) {
			s.Backends = []Backend{}
			d.seq(n, p, "- {name: s1, address: 192.168.1.21:8090}", func(_ int, v *yaml.Node, p string) {
				b := Backend{Weight: DefaultWeight}
				d.mapping(v, p, []field{
					{"name", d.str(&b.Name)},
					{"address", d.text(&b.Address, "host:port such as 192.168.1.21:8090")},
					{"weight", d.integer(&b.Weight)},
					{"drain", d.boolean(&b.Drain)},
					{"disabled", d.boolean(&b.Disabled)},
					{"backup", d.boolean(&b.Backup)},
					{"max_flows", d.integer(&b.MaxFlows)},
				})
				s.Backends = append(s.Backends, b)
			})
		}},
	})
	return s, portOnly, drainSet
}

// listen reads a bare port (on address) or ip:port, and reports which.
func (d *decoder) listen(n *yaml.Node, path string, dst *netip.AddrPort) (portOnly bool) {
	if !d.scalar(n, path, "a port (20000) or ip:port (192.168.1.10:20000)", "!!int", "!!str") {
		return false
	}
	v := strings.TrimSpace(n.Value)
	if n.ShortTag() == "!!int" || (v != "" && strings.Trim(v, "0123456789") == "") {
		p, err := strconv.Atoi(v)
		if n.ShortTag() == "!!int" {
			var p64 int64
			err = n.Decode(&p64)
			p = int(max(min(p64, 1<<20), -1))
		}
		if err != nil || p < 1 || p > 65535 {
			d.fail(n, path, "port %s is out of range: use 1-65535", n.Value)
			return false
		}
		*dst = netip.AddrPortFrom(netip.Addr{}, uint16(p))
		return true
	}
	ap, err := netip.ParseAddrPort(v)
	if err != nil {
		d.fail(n, path, "%q is not a port or ip:port: write 20000 (a port on address), or 192.168.1.10:20000", n.Value)
		return false
	}
	*dst = ap
	return false
}

// health decodes a health check over the defaults; an http check's path and
// status default only when the kind is http, so a tcp check that names them
// is caught by Validate.
func (d *decoder) health(n *yaml.Node, path string, h *Health) {
	var pathSet, statusSet bool
	d.mapping(n, path, []field{
		{"kind", d.enum((*string)(&h.Kind))},
		{"interval", d.duration(&h.Interval)},
		{"timeout", d.duration(&h.Timeout)},
		{"rise", d.integer(&h.Rise)},
		{"fall", d.integer(&h.Fall)},
		{"port", d.port(&h.Port, "the backend's own port")},
		{"send", d.bytes(&h.Send)},
		{"expect", d.bytes(&h.Expect)},
		{"path", func(n *yaml.Node, p string) { pathSet = true; d.str(&h.Path)(n, p) }},
		{"status", func(n *yaml.Node, p string) { statusSet = true; d.integer(&h.Status)(n, p) }},
		{"host", d.str(&h.Host)},
	})
	if h.Kind == HealthHTTP {
		if !pathSet {
			h.Path = DefaultHTTPPath
		}
		if !statusSet {
			h.Status = DefaultHTTPStatus
		}
	}
}
