package rawlb

import (
	"html/template"
	"net/http"
	"time"
)

// The status page: services, backends, health, live flows and rates, in
// the spirit of HAProxy's stats page. Server-rendered, no script, no
// external asset; it refreshes itself every five seconds.
var statusTmpl = template.Must(template.New("status").Funcs(template.FuncMap{
	"bits":  humanBits,
	"bytes": humanBytes,
}).Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="5">
<title>rawlb status</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#1b1f23;background:#fafbfc}
h1{font-size:1.4em;margin:0 0 .2em} .meta{color:#586069;margin-bottom:1.2em}
h2{font-size:1.1em;margin:1.4em 0 .4em} h2 small{font-weight:normal;color:#586069}
table{border-collapse:collapse;background:#fff;min-width:60em}
th,td{border:1px solid #d1d5da;padding:.3em .6em;text-align:right;white-space:nowrap}
th{background:#f1f3f5} td.l,th.l{text-align:left}
tr.up td.state{background:#dcffe4} tr.down td.state{background:#ffdce0}
tr.drain td.state,tr.disabled td.state,tr.removed td.state{background:#fff5b1}
.why{color:#86181d;white-space:normal}
</style></head><body>
<h1>rawlb</h1>
<div class="meta">version {{.Version}} · up {{.Uptime}} · {{.Flows}} flows ({{.HalfOpen}} half-open){{if .Cookies}} · <b>SYN cookies on</b>{{end}} · generated {{.Now}}</div>
{{range .Services}}
<h2 id="svc-{{.Name}}">{{.Name}} <small>{{.Listen}} · {{.Scheduler}} · {{.Flows}} flows</small></h2>
<table>
<tr><th class="l">backend</th><th class="l">address</th><th class="l">state</th><th>weight</th><th>flows</th><th>flows total</th><th>new/s</th><th>in</th><th>out</th><th>rate in</th><th>rate out</th><th>checks ok/failed</th><th class="l">why not usable</th></tr>
{{range .Backends}}<tr class="{{if .Usable}}up{{else if eq .State "active"}}down{{else}}{{.State}}{{end}}">
<td class="l">{{.Name}}{{if .Backup}} (backup){{end}}</td><td class="l">{{.Address}}</td><td class="l state">{{.State}}, {{.Health}}</td>
<td>{{.Weight}}</td><td>{{.Flows}}</td><td>{{.FlowsTotal}}</td><td>{{printf "%.1f" .FlowRate}}</td>
<td>{{bytes .BytesIn}}</td><td>{{bytes .BytesOut}}</td><td>{{bits .BitRateIn}}</td><td>{{bits .BitRateOut}}</td>
<td>{{.Checks}}/{{.CheckFails}}</td><td class="l why">{{.Why}}</td></tr>
{{end}}</table>
{{end}}
</body></html>
`))

// statusPage serves the status page.
func (b *Balancer) statusPage(w http.ResponseWriter, r *http.Request) {
	data := struct {
		Version, Uptime, Now string
		Flows, HalfOpen      int64
		Cookies              bool
		Services             []StatusService
	}{
		Version:  b.opts.Version,
		Uptime:   time.Since(b.started).Round(time.Second).String(),
		Now:      time.Now().Format(time.RFC3339),
		Flows:    int64(b.shared.Len()),
		HalfOpen: b.dp.halfOpen(),
		Services: b.status(),
	}
	if len(b.workers) > 0 {
		data.Cookies = b.workers[0].cookiesOn()
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_ = statusTmpl.Execute(w, data)
}
