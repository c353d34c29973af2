package healthcheck

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// Kind is the protocol of a check, as configuration spells it.
type Kind string

// Check kinds.
const (
	// TCP connects, optionally writes Send and waits for Expect, then
	// closes: it proves the backend's kernel accepts connections on the
	// port, and with Expect that the program behind it answers.
	TCP Kind = "tcp"
	// HTTP sends one HTTP/1.1 GET and compares the status code.
	HTTP Kind = "http"
)

// Defaults for the zero fields of Check.
const (
	DefaultInterval = 2 * time.Second
	DefaultTimeout  = 1 * time.Second
	DefaultRise     = 2
	DefaultFall     = 3
	DefaultPath     = "/"
	DefaultStatus   = 200
)

// MaxReply is how much of a tcp check's reply is searched for Expect. A
// banner or a PONG arrives in the first segment; a backend that streams
// more without the expected bytes has failed the check, and the bound keeps
// a hostile one from making the balancer buffer without limit.
const MaxReply = 4096

// UserAgent is the User-Agent of http checks, so a backend's access log
// tells health checks from clients.
const UserAgent = "rawlb-healthcheck"

// Check says how a target is checked and how many results in a row change
// its state. The zero value is a tcp connect every DefaultInterval.
type Check struct {
	// Kind is TCP or HTTP; "" means TCP.
	Kind Kind
	// Interval is the time between the starts of two checks of a target,
	// give or take 5% of jitter. 0 means DefaultInterval.
	Interval time.Duration
	// Timeout bounds a whole check (connect, send, expect, or the HTTP
	// exchange). It may not exceed Interval, so a check ends before the
	// next one is due. 0 means DefaultTimeout or Interval, whichever is
	// shorter.
	Timeout time.Duration
	// Rise is how many passed checks in a row bring a down target up; 0
	// means DefaultRise.
	Rise int
	// Fall is how many failed checks in a row take an up target down; 0
	// means DefaultFall.
	Fall int

	// Send is written after connecting (tcp only); "" writes nothing.
	Send string
	// Expect is a substring the reply must contain within Timeout and the
	// first MaxReply bytes (tcp only); "" means connecting is enough.
	Expect string

	// Path is the GET request target (http only); "" means DefaultPath.
	Path string
	// Status is the status code that passes (http only); 0 means
	// DefaultStatus. Any other code fails, including a redirect, which is
	// not followed: a backend that redirects its health URL is not serving
	// it.
	Status int
	// Host is the Host header (http only); "" means the target's address.
	Host string
}

// withDefaults returns ck with its zero fields filled in, or an error that
// names the field and says what to change.
func (ck Check) withDefaults() (Check, error) {
	if ck.Kind == "" {
		ck.Kind = TCP
	}
	if ck.Interval == 0 {
		ck.Interval = DefaultInterval
	}
	if ck.Timeout == 0 {
		// A short Interval alone must not fail validation against the
		// default Timeout.
		ck.Timeout = min(DefaultTimeout, ck.Interval)
	}
	if ck.Rise == 0 {
		ck.Rise = DefaultRise
	}
	if ck.Fall == 0 {
		ck.Fall = DefaultFall
	}
	switch {
	case ck.Interval < 0:
		return ck, fmt.Errorf("interval %v is negative", ck.Interval)
	case ck.Timeout < 0:
		return ck, fmt.Errorf("timeout %v is negative", ck.Timeout)
	case ck.Timeout > ck.Interval:
		return ck, fmt.Errorf("timeout %v exceeds interval %v: lower the timeout or raise the interval", ck.Timeout, ck.Interval)
	case ck.Rise < 0:
		return ck, fmt.Errorf("rise %d is negative: it counts passed checks in a row, at least 1", ck.Rise)
	case ck.Fall < 0:
		return ck, fmt.Errorf("fall %d is negative: it counts failed checks in a row, at least 1", ck.Fall)
	}
	switch ck.Kind {
	case TCP:
		switch {
		case ck.Path != "" || ck.Status != 0 || ck.Host != "":
			return ck, errors.New("path, status and host are for http checks: set kind http, or clear them")
		case len(ck.Expect) > MaxReply:
			return ck, fmt.Errorf("expect is %d bytes, more than the %d bytes of reply a check reads", len(ck.Expect), MaxReply)
		}
	case HTTP:
		if ck.Path == "" {
			ck.Path = DefaultPath
		}
		if ck.Status == 0 {
			ck.Status = DefaultStatus
		}
		switch {
		case ck.Send != "" || ck.Expect != "":
			return ck, errors.New("send and expect are for tcp checks: set kind tcp, or clear them")
		case !strings.HasPrefix(ck.Path, "/"):
			return ck, fmt.Errorf("path %q must start with \"/\", e.g. /health", ck.Path)
		case !headerSafe(ck.Path):
			return ck, fmt.Errorf("path %q has a space or control character: percent-encode it", ck.Path)
		case !headerSafe(ck.Host):
			return ck, fmt.Errorf("host %q has a space or control character", ck.Host)
		case ck.Status < 100 || ck.Status > 599:
			return ck, fmt.Errorf("status %d is not an HTTP status: use 100-599, e.g. 200", ck.Status)
		}
	default:
		return ck, fmt.Errorf("unknown kind %q: use tcp or http", ck.Kind)
	}
	return ck, nil
}

// headerSafe reports whether s can go into the request line or a header
// without ending it early (RFC 9112 section 3: the request line is split on
// spaces and ends at CRLF).
func headerSafe(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c == 0x7f {
			return false
		}
	}
	return true
}

// Target is one backend to check.
type Target struct {
	// ID is the engine's stable backend id; Healthy and events use it.
	ID uint32
	// Name is for logs and events, e.g. "service/backend".
	Name string
	// Addr is the ip:port to check. It must be an IP literal: the engine
	// resolves names, so a check never waits on DNS.
	Addr string
	// Check says how.
	Check Check
}

// withDefaults validates tg and fills in its check's defaults.
func (tg Target) withDefaults() (Target, error) {
	ap, err := netip.ParseAddrPort(tg.Addr)
	if err != nil {
		return tg, fmt.Errorf("address %q is not ip:port (the engine resolves names before checking): %w", tg.Addr, err)
	}
	if ap.Port() == 0 {
		return tg, fmt.Errorf("address %q has port 0", tg.Addr)
	}
	// The canonical form, so that "198.18.0.10:80" and an equal address
	// written differently count as unchanged across a reload.
	tg.Addr = ap.String()
	tg.Check, err = tg.Check.withDefaults()
	return tg, err
}
