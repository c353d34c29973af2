// Package chat is the demo workload that rawlb balances: the line-based chat
// server and client of the original project (which took them from the chat
// example of "TCP/IP socket programming" by Yoon Sung-woo), rewritten in Go.
//
// The protocol is plain text lines. A client sends "[nickname] text\n"; the
// server sends every line it receives to every client connected to it, the
// sender included, exactly as the original server did. Servers do not talk to
// each other, so behind a load balancer a client hears only the clients that
// were sent to the same backend: that is what makes the balancing visible.
//
// cmd/chatserver and cmd/chatclient are thin wrappers around [Server] and
// [Client]. A Go test (an end-to-end test of rawlb, say) can drive either the
// types or the binaries.
//
// With the types, serve on a listener the test owns, in any network namespace
// the test has entered, and close the server when done:
//
//	ln, err := net.Listen("tcp", "10.0.0.2:8090")
//	srv := &chat.Server{Logger: logger}
//	go srv.Serve(ln) // returns chat.ErrServerClosed after srv.Close
//	defer srv.Close()
//
//	c, err := chat.Dial(ctx, "10.0.0.1:20000", "alice")
//	err = c.Send("hello")        // sends "[alice] hello\n"
//	line, err := c.ReadLine()    // "[alice] hello", echoed by the backend
//
// [Server.NumClients] lets a test poll until every client has joined before it
// broadcasts, instead of sleeping.
//
// With the binaries, start `chatserver -listen ADDR PORT` (it logs
// `msg="chat server listening" addr=...` on stderr, so port 0 works too) and
// `chatclient HOST PORT NICK` with pipes on stdin and stdout: every stdin line
// is sent, every received line is printed, a "q" line or closing stdin quits
// with exit status 0, and a connection dropped by the server exits with
// status 1 after printing "connection to HOST:PORT closed by the server" on
// stderr.
package chat
