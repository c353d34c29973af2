package rawlb

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// The HTTP side, on the metrics address: /metrics, the JSON API under
// /api/, the status page at /, and /debug/pprof with -pprof.
//
// A change made through the API (drain, enable, disable) lasts until the
// next reload, which applies the file as it is: write it to the file to
// keep it.

// StatusBackend is one backend in GET /api/services.
type StatusBackend struct {
	Name       string  `json:"name"`
	Address    string  `json:"address"`
	State      string  `json:"state"`  // admin state: active, drain, disabled, removed
	Health     string  `json:"health"` // up, down, unknown
	Usable     bool    `json:"usable"` // takes new flows now
	Why        string  `json:"why,omitempty"`
	Weight     int     `json:"weight"`
	Backup     bool    `json:"backup"`
	MaxFlows   int64   `json:"max_flows"`
	Flows      int64   `json:"flows"`       // live
	FlowsTotal uint64  `json:"flows_total"` // created
	FlowRate   float64 `json:"flow_rate"`   // new flows per second, over the last second
	BytesIn    uint64  `json:"bytes_in"`    // toward the backend
	BytesOut   uint64  `json:"bytes_out"`   // toward clients
	BitRateIn  float64 `json:"bit_rate_in"` // bits per second toward the backend
	BitRateOut float64 `json:"bit_rate_out"`
	Checks     uint64  `json:"checks_ok"`
	CheckFails uint64  `json:"checks_failed"`
}

// StatusService is one service in GET /api/services.
type StatusService struct {
	Name      string            `json:"name"`
	Listen    string            `json:"listen"`
	Scheduler string            `json:"scheduler"`
	Flows     int64             `json:"flows"`
	Refused   map[string]uint64 `json:"refused"`
	Backends  []StatusBackend   `json:"backends"`
}

// rates keeps the previous second's counters per backend, to report rates.
type rates struct {
	mu   sync.Mutex
	at   time.Time
	prev map[*Backend][3]uint64 // flows, bytes in, bytes out
	rate map[*Backend][3]float64
}

// update takes a sample; the control plane calls it once a second.
func (r *rates) update(reg *registry) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	dt := now.Sub(r.at).Seconds()
	cur := map[*Backend][3]uint64{}
	rate := map[*Backend][3]float64{}
	for _, svc := range reg.list {
		for _, be := range *svc.backends.Load() {
			var v [3]uint64
			for i := range be.stats {
				v[0] += be.stats[i].flows.Load()
				v[1] += be.stats[i].bytes[dirToBackend].Load()
				v[2] += be.stats[i].bytes[dirToClient].Load()
			}
			cur[be] = v
			if p, ok := r.prev[be]; ok && dt > 0 {
				rate[be] = [3]float64{float64(v[0]-p[0]) / dt, 8 * float64(v[1]-p[1]) / dt, 8 * float64(v[2]-p[2]) / dt}
			}
		}
	}
	r.at, r.prev, r.rate = now, cur, rate
}

func (r *rates) get(be *Backend) [3]float64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.rate[be]
}

// status returns every service's state for the API and the status page.
func (b *Balancer) status() []StatusService {
	reg := b.dp.reg.Load()
	var out []StatusService
	for _, svc := range reg.list {
		s := StatusService{Name: svc.Name, Listen: svc.Config.Listen.String(), Scheduler: string(svc.Config.Scheduler), Refused: map[string]uint64{}}
		for r, name := range refusalNames {
			var n uint64
			for i := range svc.stats {
				n += svc.stats[i].refused[r].Load()
			}
			s.Refused[name] = n
		}
		for _, be := range *svc.backends.Load() {
			ok, why := be.usable()
			health := "unknown"
			switch {
			case be.healthy.Load():
				health = "up"
			case be.down.Load():
				health = "down"
			}
			st := StatusBackend{
				Name: be.Name, Address: be.Addr.String(), State: adminNames[be.admin.Load()], Health: health, Usable: ok, Why: why,
				Weight: int(be.weight.Load()), Backup: be.backup.Load(), MaxFlows: be.maxFlows.Load(), Flows: b.dp.live.Live(be.ID),
				Checks: b.hcOK[be.ID].Load(), CheckFails: b.hcFail[be.ID].Load(),
			}
			for i := range be.stats {
				st.FlowsTotal += be.stats[i].flows.Load()
				st.BytesIn += be.stats[i].bytes[dirToBackend].Load()
				st.BytesOut += be.stats[i].bytes[dirToClient].Load()
			}
			r := b.rates.get(be)
			st.FlowRate, st.BitRateIn, st.BitRateOut = r[0], r[1], r[2]
			s.Flows += st.Flows
			s.Backends = append(s.Backends, st)
		}
		out = append(out, s)
	}
	return out
}

// serveHTTP starts the metrics, API and status page server, on the
// listener an upgrade inherited if there is one.
func (b *Balancer) serveHTTP() error {
	addr := b.cfg.Metrics
	if addr == "" {
		return nil
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(newCollector(b))
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /api/services", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(b.status())
	})
	mux.HandleFunc("POST /api/services/{svc}/backends/{be}/{action}", b.apiAction)
	mux.HandleFunc("GET /{$}", b.statusPage)
	if b.cfg.Pprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	var ln net.Listener
	if b.opts.Upgrade != nil && len(b.opts.Upgrade.Extra) > 0 {
		l, err := net.FileListener(b.opts.Upgrade.Extra[0])
		if err != nil {
			return fmt.Errorf("metrics listener from the upgrade: %w", err)
		}
		ln = l
	} else {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("metrics listener: %w", err)
		}
		ln = l
	}
	if tl, ok := ln.(*net.TCPListener); ok {
		b.ln = tl
	}
	b.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = b.srv.Serve(ln) }()
	return nil
}

// apiAction applies POST /api/services/{svc}/backends/{be}/{drain|enable|disable}.
func (b *Balancer) apiAction(w http.ResponseWriter, r *http.Request) {
	svcName, beName, action := r.PathValue("svc"), r.PathValue("be"), r.PathValue("action")
	var admin int32
	switch action {
	case "drain":
		admin = adminDrain
	case "enable":
		admin = adminActive
	case "disable":
		admin = adminDisabled
	default:
		http.Error(w, fmt.Sprintf("unknown action %q: use drain, enable or disable", action), http.StatusNotFound)
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	reg := b.dp.reg.Load()
	for _, svc := range reg.list {
		if svc.Name != svcName {
			continue
		}
		for _, be := range *svc.backends.Load() {
			if be.Name != beName {
				continue
			}
			// A removed backend (or one of a removed service) only drains:
			// enabling it would bring back what the file no longer has.
			if be.admin.Load() == adminRemoved || svc.removed.Load() {
				http.Error(w, fmt.Sprintf("backend %s of service %s was removed from the configuration: its remaining flows drain", beName, svcName), http.StatusConflict)
				return
			}
			old := be.admin.Swap(admin)
			if old != admin {
				be.drainUntil.Store(0)
				if admin == adminDrain && svc.Config.DrainTimeout > 0 {
					be.drainUntil.Store(b.tables[0].Now() + int64(svc.Config.DrainTimeout))
				}
				if err := svc.rebuild(); err != nil {
					http.Error(w, err.Error(), http.StatusInternalServerError)
					return
				}
				b.wakeWorkers() // a disabled backend's flows are reset at the sweep
				b.log.Info("backend state changed through the API (until the next reload)", "service", svc.Name, "backend", be.Name,
					"from", adminNames[old], "to", adminNames[admin])
			}
			w.Header().Set("Content-Type", "application/json")
			for _, s := range b.status() {
				if s.Name == svc.Name {
					for _, sb := range s.Backends {
						if sb.Name == be.Name {
							_ = json.NewEncoder(w).Encode(sb)
						}
					}
				}
			}
			return
		}
		http.Error(w, fmt.Sprintf("service %s has no backend %q", svcName, beName), http.StatusNotFound)
		return
	}
	http.Error(w, fmt.Sprintf("no service %q", svcName), http.StatusNotFound)
}

// humanBits formats a bit rate.
func humanBits(v float64) string {
	switch {
	case v >= 1e9:
		return fmt.Sprintf("%.2f Gbit/s", v/1e9)
	case v >= 1e6:
		return fmt.Sprintf("%.2f Mbit/s", v/1e6)
	case v >= 1e3:
		return fmt.Sprintf("%.1f kbit/s", v/1e3)
	}
	return fmt.Sprintf("%.0f bit/s", v)
}

func humanBytes(v uint64) string {
	f := float64(v)
	switch {
	case f >= 1<<30:
		return fmt.Sprintf("%.2f GiB", f/(1<<30))
	case f >= 1<<20:
		return fmt.Sprintf("%.2f MiB", f/(1<<20))
	case f >= 1<<10:
		return fmt.Sprintf("%.1f KiB", f/(1<<10))
	}
	return fmt.Sprintf("%d B", v)
}
