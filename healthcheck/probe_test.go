package healthcheck

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// checkOnce runs one check of tg through a fresh Checker with the default
// dialer and returns its error, after checking that Healthy, Status and the
// event agree with it.
func checkOnce(t *testing.T, tg Target) error {
	t.Helper()
	tg.ID = 7
	tg.Name = "svc/probe"
	tg.Check.Rise, tg.Check.Fall = 1, 1
	r := newRecorder()
	var cfg Config
	r.attach(&cfg)
	c := New(cfg)
	if err := c.Set([]Target{tg}); err != nil {
		t.Fatalf("Set: %v", err)
	}
	c.CheckOnce(context.Background())
	up, _, err, _ := c.Status(7)
	if up != (err == nil) || c.Healthy(7) != up {
		t.Fatalf("Status up=%v err=%v, Healthy=%v: they disagree", up, err, c.Healthy(7))
	}
	ev := r.take()
	if len(ev) != 1 || ev[0].Up != up || ev[0].Err != err || ev[0].Addr != tg.Addr {
		t.Fatalf("events = %v, want one first-result event matching Status (up=%v, %v)", ev, up, err)
	}
	return err
}

// serve accepts on a fresh loopback listener and runs handle for every
// connection, closing it afterwards. Cleanup closes the listener and waits
// for every handler.
func serve(t *testing.T, handle func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer conn.Close()
				handle(conn)
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	return ln.Addr().String()
}

// closedPort returns a loopback address nothing listens on: a port that was
// just free, bound and closed again. Nothing else on a test machine picks
// this exact port in the meantime in practice.
func closedPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func TestTCPConnect(t *testing.T) {
	open := serve(t, func(net.Conn) {})
	if err := checkOnce(t, Target{Addr: open, Check: Check{Timeout: 5 * time.Second, Interval: 10 * time.Second}}); err != nil {
		t.Errorf("connect to listener %s: %v", open, err)
	}
	err := checkOnce(t, Target{Addr: closedPort(t), Check: Check{Timeout: 5 * time.Second, Interval: 10 * time.Second}})
	if err == nil || err.Error() != "connect: connection refused" || !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("connect to a closed port = %v, want \"connect: connection refused\" wrapping ECONNREFUSED", err)
	}
}

// TestTCPSendExpect runs send/expect checks against servers that answer
// right, wrong, late, in pieces, too much, or not at all; each server also
// checks that it received exactly Send.
func TestTCPSendExpect(t *testing.T) {
	const send = "PING\r\n"
	// replier reads Send, then writes each of parts with a short pause in
	// between, then waits for the client to close (or closes first if
	// closeAfter).
	replier := func(t *testing.T, closeAfter bool, parts ...string) string {
		return serve(t, func(conn net.Conn) {
			conn.SetDeadline(time.Now().Add(10 * time.Second))
			got := make([]byte, len(send))
			if _, err := io.ReadFull(conn, got); err != nil || string(got) != send {
				t.Errorf("server got %q, %v; want %q", got, err, send)
				return
			}
			for i, p := range parts {
				if i > 0 {
					time.Sleep(20 * time.Millisecond)
				}
				if _, err := io.WriteString(conn, p); err != nil {
					return // the check had seen enough and closed
				}
			}
			if !closeAfter {
				io.Copy(io.Discard, conn) // until the check closes
			}
		})
	}
	ck := Check{Interval: 10 * time.Second, Timeout: 5 * time.Second, Send: send, Expect: "+PONG"}
	short := ck
	short.Interval, short.Timeout = time.Second, 200*time.Millisecond

	tests := []struct {
		name string
		addr func(*testing.T) string
		ck   Check
		want string // "" = pass
	}{
		{"pong", func(t *testing.T) string { return replier(t, false, "+PONG\r\n") }, ck, ""},
		{"pong in pieces", func(t *testing.T) string { return replier(t, false, "+P", "ON", "G\r\n") }, ck, ""},
		{"pong after other lines", func(t *testing.T) string { return replier(t, false, "# banner\r\n", "+PONG\r\n") }, ck, ""},
		{"wrong reply then close", func(t *testing.T) string { return replier(t, true, "-ERR") }, ck, `expect "+PONG": got "-ERR"`},
		{"close without reply", func(t *testing.T) string { return replier(t, true) }, ck, `expect "+PONG": connection closed without a reply`},
		{"no reply", func(t *testing.T) string { return replier(t, false) }, short, "expect: timeout after 200ms"},
		{"partial reply then silence", func(t *testing.T) string { return replier(t, false, "+PO") }, short, `expect "+PONG": got "+PO", then timeout after 200ms`},
		{"too much without it", func(t *testing.T) string {
			return replier(t, false, strings.Repeat("x", 3000), strings.Repeat("y", 3000)+"+PONG")
		}, ck,
			`expect "+PONG": not in the first 4096 bytes of the reply, which begins "xxxx`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := checkOnce(t, Target{Addr: tt.addr(t), Check: tt.ck})
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("check failed: %v", err)
			case tt.want != "" && (err == nil || !strings.HasPrefix(err.Error(), tt.want)):
				t.Errorf("check = %v, want an error starting %q", err, tt.want)
			case strings.Contains(tt.want, "timeout") && !errors.Is(err, context.DeadlineExceeded):
				t.Errorf("timeout %v does not wrap context.DeadlineExceeded", err)
			}
		})
	}

	// Send without Expect: writing is enough, and the server gets the bytes.
	got := make(chan string, 1)
	addr := serve(t, func(conn net.Conn) {
		b, _ := io.ReadAll(conn)
		got <- string(b)
	})
	if err := checkOnce(t, Target{Addr: addr, Check: Check{Send: "QUIT\r\n"}}); err != nil {
		t.Errorf("send-only check: %v", err)
	}
	if s := <-got; s != "QUIT\r\n" {
		t.Errorf("send-only server got %q, want %q", s, "QUIT\r\n")
	}
}

// httpRequest is what the test server saw of a check's request.
type httpRequest struct {
	method, path, host, userAgent, proto string
	close                                bool
}

// httpServer serves handler and records every request it gets.
func httpServer(t *testing.T, handler http.HandlerFunc) (string, func() []httpRequest) {
	t.Helper()
	var mu sync.Mutex
	var reqs []httpRequest
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		reqs = append(reqs, httpRequest{r.Method, r.URL.RequestURI(), r.Host, r.UserAgent(), r.Proto, r.Close})
		mu.Unlock()
		handler(w, r)
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://"), func() []httpRequest {
		mu.Lock()
		defer mu.Unlock()
		return append([]httpRequest(nil), reqs...)
	}
}

func TestHTTPCheck(t *testing.T) {
	ck := Check{Kind: HTTP, Interval: 10 * time.Second, Timeout: 5 * time.Second, Path: "/health"}
	t.Run("200", func(t *testing.T) {
		addr, reqs := httpServer(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok\n") })
		if err := checkOnce(t, Target{Addr: addr, Check: ck}); err != nil {
			t.Errorf("check: %v", err)
		}
		want := httpRequest{"GET", "/health", addr, UserAgent, "HTTP/1.1", true}
		if got := reqs(); len(got) != 1 || got[0] != want {
			t.Errorf("server saw %+v, want one request %+v", got, want)
		}
	})
	t.Run("host and path", func(t *testing.T) {
		addr, reqs := httpServer(t, func(w http.ResponseWriter, r *http.Request) {})
		c := ck
		c.Host, c.Path = "app.example", "/status?full=1"
		if err := checkOnce(t, Target{Addr: addr, Check: c}); err != nil {
			t.Errorf("check: %v", err)
		}
		if got := reqs(); len(got) != 1 || got[0].host != "app.example" || got[0].path != "/status?full=1" {
			t.Errorf("server saw %+v, want Host app.example and /status?full=1", got)
		}
	})
	t.Run("503", func(t *testing.T) {
		addr, _ := httpServer(t, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(503) })
		err := checkOnce(t, Target{Addr: addr, Check: ck})
		if err == nil || err.Error() != "GET /health: status 503, want 200" {
			t.Errorf("check = %v, want GET /health: status 503, want 200", err)
		}
	})
	t.Run("other expected status", func(t *testing.T) {
		addr, _ := httpServer(t, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(204) })
		c := ck
		c.Status = 204
		if err := checkOnce(t, Target{Addr: addr, Check: c}); err != nil {
			t.Errorf("204 with Status 204: %v", err)
		}
		c.Status = 200
		if err := checkOnce(t, Target{Addr: addr, Check: c}); err == nil || err.Error() != "GET /health: status 204, want 200" {
			t.Errorf("204 with Status 200 = %v", err)
		}
	})
	t.Run("redirect not followed", func(t *testing.T) {
		addr, reqs := httpServer(t, func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/health" {
				http.Redirect(w, r, "/elsewhere", http.StatusMovedPermanently)
			}
		})
		err := checkOnce(t, Target{Addr: addr, Check: ck})
		if err == nil || err.Error() != "GET /health: status 301, want 200" {
			t.Errorf("check = %v, want GET /health: status 301, want 200", err)
		}
		if got := reqs(); len(got) != 1 {
			t.Errorf("server saw %+v, want only the one GET /health", got)
		}
	})
	t.Run("interim 103 then 200", func(t *testing.T) {
		addr, _ := httpServer(t, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Link", "</style.css>; rel=preload")
			w.WriteHeader(http.StatusEarlyHints)
			w.WriteHeader(200)
		})
		if err := checkOnce(t, Target{Addr: addr, Check: ck}); err != nil {
			t.Errorf("check: %v", err)
		}
	})
	t.Run("slow", func(t *testing.T) {
		addr, _ := httpServer(t, func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-r.Context().Done(): // the check gave up and closed
			case <-time.After(10 * time.Second):
			}
		})
		c := ck
		c.Interval, c.Timeout = time.Second, 100*time.Millisecond
		start := time.Now()
		err := checkOnce(t, Target{Addr: addr, Check: c})
		if err == nil || err.Error() != "GET /health: timeout after 100ms" || !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("check = %v, want GET /health: timeout after 100ms", err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("a 100ms check took %v", d)
		}
	})
	t.Run("not http", func(t *testing.T) {
		addr := serve(t, func(conn net.Conn) { io.WriteString(conn, "SSH-2.0-OpenSSH_9.6\r\n") })
		err := checkOnce(t, Target{Addr: addr, Check: ck})
		if err == nil || !strings.HasPrefix(err.Error(), "GET /health: malformed HTTP") {
			t.Errorf("check of an ssh banner = %v, want GET /health: malformed HTTP ...", err)
		}
	})
	t.Run("closed before response", func(t *testing.T) {
		addr := serve(t, func(conn net.Conn) {
			bufio.NewReader(conn).ReadString('\n') // read the request line, then hang up
		})
		err := checkOnce(t, Target{Addr: addr, Check: ck})
		if err == nil || err.Error() != "GET /health: connection closed before a complete response" {
			t.Errorf("check = %v, want GET /health: connection closed before a complete response", err)
		}
	})
	t.Run("refused", func(t *testing.T) {
		err := checkOnce(t, Target{Addr: closedPort(t), Check: ck})
		if err == nil || err.Error() != "connect: connection refused" {
			t.Errorf("check = %v, want connect: connection refused", err)
		}
	})
	t.Run("the request on the wire", func(t *testing.T) {
		got := make(chan string, 1)
		addr := serve(t, func(conn net.Conn) {
			br := bufio.NewReader(conn)
			var head strings.Builder
			for {
				line, err := br.ReadString('\n')
				head.WriteString(line)
				if err != nil || line == "\r\n" {
					break
				}
			}
			got <- head.String()
			io.WriteString(conn, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
		})
		if err := checkOnce(t, Target{Addr: addr, Check: Check{Kind: HTTP}}); err != nil {
			t.Errorf("check: %v", err)
		}
		want := "GET / HTTP/1.1\r\nHost: " + addr + "\r\nUser-Agent: rawlb-healthcheck\r\nAccept: */*\r\nConnection: close\r\n\r\n"
		if s := <-got; s != want {
			t.Errorf("request = %q, want %q", s, want)
		}
	})
}

// pipeDialer returns a Dialer whose connections are net.Pipes served by
// serve: every byte the check sends is drained, and serve writes the reply.
func pipeDialer(serve func(net.Conn)) func(context.Context, string, string) (net.Conn, error) {
	return func(ctx context.Context, _, _ string) (net.Conn, error) {
		a, b := net.Pipe()
		go io.Copy(io.Discard, b) // the request, until the check closes
		go func() {
			defer b.Close()
			serve(b)
		}()
		return a, nil
	}
}

// pipeCheck runs one check of ck against a pipe served by serve.
func pipeCheck(t testing.TB, ck Check, serve func(net.Conn)) error {
	ck.Rise, ck.Fall = 1, 1
	c := New(Config{Dialer: pipeDialer(serve)})
	if err := c.Set([]Target{{ID: 1, Name: "svc/fuzz", Addr: "198.18.0.10:80", Check: ck}}); err != nil {
		t.Fatal(err)
	}
	c.CheckOnce(context.Background())
	_, _, err, _ := c.Status(1)
	return err
}

// FuzzExpect: a tcp check passes exactly when the reply, however it is cut
// into writes, contains Expect within its first MaxReply bytes.
func FuzzExpect(f *testing.F) {
	f.Add([]byte("+PONG\r\n"), "+PONG", uint16(2))
	f.Add([]byte("-ERR unknown\r\n"), "+PONG", uint16(0))
	f.Add(bytes.Repeat([]byte("x"), 5000), "xy", uint16(4095))
	f.Add(append(bytes.Repeat([]byte("x"), 4092), "PONG"...), "PONG", uint16(4094))
	f.Add([]byte("SSH-2.0-"), "SSH-2.0-OpenSSH", uint16(3))
	f.Fuzz(func(t *testing.T, reply []byte, expect string, cut uint16) {
		if expect == "" || len(expect) > MaxReply || len(reply) > 3*MaxReply {
			return
		}
		at := int(cut) % (len(reply) + 1)
		err := pipeCheck(t, Check{Interval: 10 * time.Second, Timeout: 5 * time.Second, Expect: expect}, func(conn net.Conn) {
			conn.Write(reply[:at])
			conn.Write(reply[at:])
		})
		want := bytes.Contains(reply[:min(len(reply), MaxReply)], []byte(expect))
		if (err == nil) != want {
			t.Fatalf("reply %q in writes of %d+%d, expect %q: err = %v, want pass=%v", reply, at, len(reply)-at, expect, err, want)
		}
		if err != nil && errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("reply then close ran into the timeout: %v", err)
		}
	})
}

// FuzzHTTPReply feeds arbitrary bytes to an http check as the response: it
// must end (no hang past the bytes and EOF), never panic, and pass only if
// the bytes are an HTTP/1.x response whose final status is 200.
func FuzzHTTPReply(f *testing.F) {
	f.Add([]byte("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"))
	f.Add([]byte("HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\n\r\n"))
	f.Add([]byte("HTTP/1.0 503 Service Unavailable\r\n\r\n"))
	f.Add([]byte("HTTP/1.1 301 Moved\r\nLocation: /x\r\n\r\n"))
	f.Add([]byte("HTTP/1.1 200"))
	f.Add([]byte("HTTP/1.1 100 Continue\r\n\r\n"))
	f.Add([]byte("+PONG\r\n"))
	f.Fuzz(func(t *testing.T, reply []byte) {
		if len(reply) > maxResponseHead*2 {
			return
		}
		err := pipeCheck(t, Check{Kind: HTTP, Interval: 10 * time.Second, Timeout: 5 * time.Second}, func(conn net.Conn) { conn.Write(reply) })
		if errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("reply %q then EOF ran into the timeout: %v", reply, err)
		}
		if err != nil {
			return
		}
		// Passing: the last status line read must say 200.
		if !bytes.HasPrefix(reply, []byte("HTTP/1.")) {
			t.Fatalf("reply %q passed, but it is not an HTTP/1.x response", reply)
		}
		br := bufio.NewReader(bytes.NewReader(reply))
		for {
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("reply %q passed, but has no final 200 status: %v", reply, err)
			}
			if resp.StatusCode == 200 {
				break
			}
		}
	})
}
