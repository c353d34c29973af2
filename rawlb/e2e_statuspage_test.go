package rawlb_test

import (
	"bytes"
	"context"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/html"

	"github.com/rawlb/rawlb/internal/netlab"
)

// chromiumPath is Debian's Chromium, which scripts/deps.sh installs.
const chromiumPath = "/usr/bin/chromium"

// chromium runs headless Chromium inside the balancer's namespace, where
// the status page is served on metricsAddr, and returns its standard
// output and how long it ran. Its profile, cache and HOME are in a
// directory of the test's own, so it writes nothing outside it; the flags
// keep it from reaching for the network on its own account (updates,
// sync, QUIC probes). A missing Chromium fails the test: CI installs it,
// so a skip there would hide the status page.
func (s *setup) chromium(t *testing.T, args ...string) ([]byte, time.Duration) {
	t.Helper()
	if _, err := os.Stat(chromiumPath); err != nil {
		t.Fatalf("%v: the status page test renders the page in Chromium; run scripts/deps.sh, which installs it", err)
	}
	home := t.TempDir()
	flags := []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir=" + filepath.Join(home, "profile")}
	// Chromium starts slowly on two busy cores; a minute is only the
	// bound past which the test gives up.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := s.lab.Balancer.Command(ctx, chromiumPath, append(flags, args...)...)
	cmd.Env = append(os.Environ(), "HOME="+home, "XDG_CONFIG_HOME="+filepath.Join(home, "config"), "XDG_CACHE_HOME="+filepath.Join(home, "cache"))
	// Chromium forks a zygote and renderers: on a timeout end them all.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	took := time.Since(start)
	if err != nil {
		t.Fatalf("chromium %s: %v after %v\n%s", strings.Join(args, " "), err, took.Round(time.Millisecond), lastLines(stderr.String(), 20))
	}
	return stdout.Bytes(), took
}

// lastLines returns the last n lines of s.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// htmlWalk calls fn for n and every node below it, in document order.
func htmlWalk(n *html.Node, fn func(*html.Node)) {
	fn(n)
	for c := n.FirstChild; c != nil; c = c.NextSibling {
		htmlWalk(c, fn)
	}
}

// htmlAttr returns n's attribute key, or "".
func htmlAttr(n *html.Node, key string) string {
	for _, a := range n.Attr {
		if a.Key == key {
			return a.Val
		}
	}
	return ""
}

// htmlText is the text below n with runs of white space made one space,
// as a reader sees it.
func htmlText(n *html.Node) string {
	var b strings.Builder
	htmlWalk(n, func(c *html.Node) {
		if c.Type == html.TextNode {
			b.WriteString(c.Data)
			b.WriteByte(' ')
		}
	})
	return strings.Join(strings.Fields(b.String()), " ")
}

// htmlElements returns the elements named tag below n.
func htmlElements(n *html.Node, tag string) []*html.Node {
	var out []*html.Node
	htmlWalk(n, func(c *html.Node) {
		if c.Type == html.ElementNode && c.Data == tag {
			out = append(out, c)
		}
	})
	return out
}

// pageRow is one backend row of a service's table, by column heading.
type pageRow struct {
	class string
	cells map[string]string
}

// pageService is what the status page shows of one service: its heading
// and its table's rows, in order.
type pageService struct {
	heading string
	rows    []pageRow
}

// parseStatusPage reads the services off the status page's DOM: each
// <h2 id="svc-NAME"> and the table after it, whose first row names the
// columns.
func parseStatusPage(t *testing.T, doc *html.Node) map[string]pageService {
	t.Helper()
	out := map[string]pageService{}
	for _, h2 := range htmlElements(doc, "h2") {
		name, ok := strings.CutPrefix(htmlAttr(h2, "id"), "svc-")
		if !ok {
			continue
		}
		table := h2.NextSibling
		for table != nil && table.Type != html.ElementNode {
			table = table.NextSibling
		}
		if table == nil || table.Data != "table" {
			t.Fatalf("status page: no table after the heading of service %s", name)
		}
		ps := pageService{heading: htmlText(h2)}
		var cols []string
		for _, tr := range htmlElements(table, "tr") {
			if ths := htmlElements(tr, "th"); len(ths) > 0 {
				for _, th := range ths {
					cols = append(cols, htmlText(th))
				}
				continue
			}
			tds := htmlElements(tr, "td")
			if len(tds) != len(cols) {
				t.Fatalf("status page, service %s: a row of %d cells under %d headings %q", name, len(tds), len(cols), cols)
			}
			row := pageRow{class: htmlAttr(tr, "class"), cells: map[string]string{}}
			for i, td := range tds {
				row.cells[cols[i]] = htmlText(td)
			}
			ps.rows = append(ps.rows, row)
		}
		out[name] = ps
	}
	return out
}

// externalRefs lists what in the document would load from elsewhere:
// attributes that name an http(s) or scheme-relative URL, scripts,
// stylesheet links, and url() or @import in inline CSS. The page must
// work on a balancer with no way out to the internet.
func externalRefs(doc *html.Node) []string {
	var out []string
	htmlWalk(doc, func(n *html.Node) {
		if n.Type != html.ElementNode {
			return
		}
		for _, a := range n.Attr {
			switch a.Key {
			case "src", "href", "srcset", "action", "formaction", "data", "poster", "background":
				v := strings.ToLower(strings.TrimSpace(a.Val))
				if strings.HasPrefix(v, "http:") || strings.HasPrefix(v, "https:") || strings.HasPrefix(v, "//") {
					out = append(out, fmt.Sprintf("<%s %s=%q>", n.Data, a.Key, a.Val))
				}
			}
		}
		switch n.Data {
		case "script", "link", "iframe", "object", "embed":
			out = append(out, "<"+n.Data+">")
		case "style":
			if css := strings.ToLower(htmlText(n)); strings.Contains(css, "url(") || strings.Contains(css, "@import") {
				out = append(out, "url() or @import in <style>")
			}
		}
	})
	return out
}

// TestStatusPage renders the status page in headless Chromium, as an
// operator's browser would, over two services: one with a drained
// backend, one with a backend whose server is not running, both with live
// connections. It checks what the page says against the metrics and the
// JSON API, that it loads nothing from elsewhere, and that its screenshot
// is a real rendering (the three state colours are on it). With
// RAWLB_WRITE_SCREENSHOT=1 the screenshot is also written to
// docs/status-page.png.
func TestStatusPage(t *testing.T) {
	t.Parallel()
	skipE2E(t)
	lab := netlab.New(t, netlab.Options{Backends: 3})
	for i, h := range lab.Backends {
		h.StartBackend(t, backendPort, fmt.Sprintf("web%d", i+1))
		if i != 1 { // alt2's server is down: nothing listens on its port
			h.StartBackend(t, backendPort+1, fmt.Sprintf("alt%d", i+1))
		}
	}
	web := svcSpec{name: "web", listen: lbPort, bePort: backendPort}
	alt := svcSpec{name: "alt", listen: lbPort + 1, bePort: backendPort + 1, extra: "    scheduler: lc\n"}
	yaml := servicesYAML(lab, web, alt)
	web2 := fmt.Sprintf("{name: web2, address: \"%s:%d\"}", lab.Backends[1].IP, backendPort)
	if !strings.Contains(yaml, web2) {
		t.Fatalf("servicesYAML wrote no %s", web2)
	}
	yaml = strings.Replace(yaml, web2, strings.TrimSuffix(web2, "}")+", drain: true}", 1)
	s := launchConfig(t, lab, yaml)
	s.waitUp(t, 4) // web2 is drained, alt2 fails its checks

	altAddr := fmt.Sprintf("%s:%d", lab.Balancer.IP, lbPort+1)
	// Two finished connections first, so that a backend's flows total
	// and its live flows differ and the page cannot show one for the
	// other.
	for i := 0; i < 2; i++ {
		conn, _ := dialName(t, s, s.vip)
		if err := netlab.EchoRoundTrip(conn, []byte("done")); err != nil {
			t.Fatal(err)
		}
		conn.Close()
	}
	held := map[string]int{}
	for _, c := range []struct {
		addr string
		n    int
	}{{s.vip, 3}, {altAddr, 2}} {
		for i := 0; i < c.n; i++ {
			conn, name := dialName(t, s, c.addr)
			defer conn.Close()
			held[name]++
		}
	}
	if held["web2"] != 0 || held["alt2"] != 0 || held["web1"]+held["web3"] != 3 || held["alt1"]+held["alt3"] != 2 {
		t.Fatalf("connections reached %v: the drained web2 or the dead alt2 took one", held)
	}
	netlab.WaitFor(t, 10*time.Second, fmt.Sprintf("live flows %v", held), func() bool {
		for _, name := range []string{"web1", "web2", "web3", "alt1", "alt2", "alt3"} {
			if int(s.metric(t, "rawlb_backend_flows", "service", name[:3], "backend", name)) != held[name] {
				return false
			}
		}
		return true
	})
	// rawlb_backend_up counts alt2 out before its first check ends (it is
	// "unknown" until then); the page must show it down.
	var alt2 apiBackend
	netlab.WaitFor(t, 10*time.Second, "alt2's health checks to fail", func() bool {
		alt2 = s.apiBackendState(t, "alt", "alt2")
		return alt2.Health == "down"
	})
	if !strings.Contains(alt2.Why, "health check") || !strings.Contains(alt2.Why, "refused") {
		t.Fatalf("GET /api/services: dead alt2 is %+v; want why to name the failing health check", alt2)
	}

	// One page load gives both the DOM and the screenshot: each Chromium
	// start costs one to four seconds here.
	shot := filepath.Join(t.TempDir(), "status.png")
	dom, took := s.chromium(t, "--dump-dom", "--screenshot="+shot, "--window-size=1280,800", "http://"+metricsAddr+"/")
	t.Logf("chromium --dump-dom --screenshot took %v (%d bytes of DOM)", took.Round(time.Millisecond), len(dom))
	doc, err := html.Parse(bytes.NewReader(dom))
	if err != nil {
		t.Fatalf("parse the DOM: %v", err)
	}
	if refs := externalRefs(doc); len(refs) > 0 {
		t.Errorf("the status page loads from elsewhere: %v", refs)
	}
	page := parseStatusPage(t, doc)
	if len(page) != 2 {
		t.Fatalf("the status page shows services %v, want web and alt", page)
	}
	for _, sv := range []struct {
		name, listen, sched string
		addr                func(i int) string
	}{
		{"web", s.vip, "rr", func(i int) string { return fmt.Sprintf("%s:%d", lab.Backends[i].IP, backendPort) }},
		{"alt", altAddr, "lc", func(i int) string { return fmt.Sprintf("%s:%d", lab.Backends[i].IP, backendPort+1) }},
	} {
		ps := page[sv.name]
		flows := s.metric(t, "rawlb_service_flows", "service", sv.name)
		if want := fmt.Sprintf("%s %s · %s · %v flows", sv.name, sv.listen, sv.sched, flows); ps.heading != want {
			t.Errorf("service heading %q, want %q", ps.heading, want)
		}
		if len(ps.rows) != 3 {
			t.Errorf("service %s: %d rows, want one per backend (3)", sv.name, len(ps.rows))
			continue
		}
		for i, row := range ps.rows {
			name := fmt.Sprintf("%s%d", sv.name, i+1)
			class, state, why := "up", "active, up", ""
			switch name {
			case "web2":
				class, state, why = "drain", "drain, up", "draining"
			case "alt2":
				class, state, why = "down", "active, down", alt2.Why
			}
			c := row.cells
			if c["backend"] != name || c["address"] != sv.addr(i) {
				t.Errorf("service %s row %d: backend %q at %q, want %s at %s", sv.name, i, c["backend"], c["address"], name, sv.addr(i))
			}
			if row.class != class || c["state"] != state || c["why not usable"] != why {
				t.Errorf("%s: row class %q, state %q, why not usable %q; want %q, %q, %q", name, row.class, c["state"], c["why not usable"], class, state, why)
			}
			m := s.metric(t, "rawlb_backend_flows", "service", sv.name, "backend", name)
			if f, err := strconv.Atoi(c["flows"]); err != nil || float64(f) != m || f != held[name] {
				t.Errorf("%s: the page shows %q live flows; rawlb_backend_flows says %v, and %d connections are open", name, c["flows"], m, held[name])
			}
			total := s.metric(t, "rawlb_backend_flows_total", "service", sv.name, "backend", name)
			if c["flows total"] != strconv.Itoa(int(total)) {
				t.Errorf("%s: the page shows %q flows in total; rawlb_backend_flows_total says %v", name, c["flows total"], total)
			}
		}
	}

	data, err := os.ReadFile(shot)
	if err != nil {
		t.Fatalf("chromium wrote no screenshot: %v", err)
	}
	img, err := png.Decode(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("the screenshot is not a PNG: %v", err)
	}
	if b := img.Bounds(); b.Dx() != 1280 || b.Dy() != 800 {
		t.Errorf("the screenshot is %dx%d, want 1280x800", b.Dx(), b.Dy())
	}
	colours, states := screenshotColours(img)
	t.Logf("screenshot: %d bytes, %d distinct colours, state cell pixels %v", len(data), colours, states)
	// Text is anti-aliased, so a rendered page has hundreds of colours;
	// a blank or error page has a handful.
	if colours < 100 {
		t.Errorf("the screenshot has %d distinct colours: not a rendered page", colours)
	}
	for name, n := range states {
		// A state cell is about 80x20 pixels; web has four up and one
		// drain, alt two up and one down.
		if n < 500 {
			t.Errorf("the screenshot has %d pixels of the %s state colour, want a cell's worth", n, name)
		}
	}
	// The page must fit the window: an overflowing table (a long "why
	// not usable" reason that does not wrap) cuts the reason off and puts
	// a horizontal scrollbar along the bottom, where the page's own
	// background (body, #fafbfc) should be.
	if n := offBackground(img, 12); n > 0 {
		t.Errorf("the bottom 12 rows of the screenshot have %d pixels that are not the page's background: a horizontal scrollbar, so the page is wider than 1280 pixels", n)
	}
	if os.Getenv("RAWLB_WRITE_SCREENSHOT") == "1" {
		if err := os.WriteFile(filepath.Join("..", "docs", "status-page.png"), data, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote ../docs/status-page.png")
	}
}

// screenshotColours counts the distinct colours of img, and its pixels in
// each of the status page's state backgrounds (statuspage.go's CSS).
func screenshotColours(img image.Image) (int, map[string]int) {
	stateRGB := map[color.RGBA]string{
		{0xdc, 0xff, 0xe4, 0xff}: "up",
		{0xff, 0xdc, 0xe0, 0xff}: "down",
		{0xff, 0xf5, 0xb1, 0xff}: "drain",
	}
	seen := map[color.RGBA]bool{}
	states := map[string]int{"up": 0, "down": 0, "drain": 0}
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			c := color.RGBAModel.Convert(img.At(x, y)).(color.RGBA)
			seen[c] = true
			if name, ok := stateRGB[c]; ok {
				states[name]++
			}
		}
	}
	return len(seen), states
}

// offBackground counts the pixels of img's bottom rows rows that are not
// the status page's background colour.
func offBackground(img image.Image, rows int) int {
	bg := color.RGBA{0xfa, 0xfb, 0xfc, 0xff}
	n := 0
	b := img.Bounds()
	for y := max(b.Min.Y, b.Max.Y-rows); y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			if color.RGBAModel.Convert(img.At(x, y)).(color.RGBA) != bg {
				n++
			}
		}
	}
	return n
}
