package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lockstep/lockstep/internal/stripefake"
)

// countConns counts the connections a test server accepts.
func countConns(srv *httptest.Server) *atomic.Int64 {
	var n atomic.Int64
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			n.Add(1)
		}
	}
	return &n
}

func newTestConn(t *testing.T, base string) *httpConn {
	t.Helper()
	c, err := newHTTPConn(base)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// Many requests on one connection: each is the request net/http's server
// parses, each answer's status and body are read right, and the connection
// is kept.
func TestHTTPClientKeepAlive(t *testing.T) {
	t.Parallel()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		if err != nil || r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/json" ||
			r.ContentLength != int64(len(b)) || r.Host == "" || r.URL.Path != "/p/echo" {
			http.Error(w, fmt.Sprintf("bad request %s %s %q %d %v", r.Method, r.URL, r.Header, r.ContentLength, err), 400)
			return
		}
		code, _ := strconv.Atoi(r.Header.Get("X-Code"))
		w.WriteHeader(code)
		fmt.Fprintf(w, "%s|%s", r.Header.Get("X-Code"), b)
	}))
	conns := countConns(srv)
	srv.Start()
	defer srv.Close()

	c := newTestConn(t, srv.URL+"/p/")
	ctx := context.Background()
	codes := []int{200, 201, 409, 422, 500, 503, 204, 404}
	for i := range 200 {
		want := codes[i%len(codes)]
		body := []byte(strings.Repeat("x", i*37) + strconv.Itoa(i))
		code, got, err := c.Post(ctx, "/echo", "application/json", "X-Code", strconv.Itoa(want), body)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		wantBody := fmt.Sprintf("%d|%s", want, body)
		if want == 204 {
			wantBody = ""
		}
		if code != want || string(got) != wantBody {
			t.Fatalf("request %d: %d %.80q, want %d %.80q", i, code, got, want, wantBody)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("%d connections, want 1", n)
	}
}

// Bodies with a Content-Length, chunked ones (several chunks, big ones) and
// one past maxResponseBody, which is cut there, all on one connection.
func TestHTTPClientBodies(t *testing.T) {
	t.Parallel()
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<12) // 64 KiB
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/length":
			w.Header().Set("Content-Length", strconv.Itoa(len(big)))
			w.Write(big)
		case "/chunked":
			for i := 0; i < len(big); i += 5000 {
				w.Write(big[i:min(i+5000, len(big))])
				w.(http.Flusher).Flush()
			}
		case "/small-chunked":
			w.Write([]byte(`{"status":`))
			w.(http.Flusher).Flush()
			w.Write([]byte(`"duplicate"}`))
		case "/huge":
			w.Header().Set("Content-Length", strconv.Itoa(3*maxResponseBody/2))
			for range 3 {
				w.Write(bytes.Repeat([]byte("y"), maxResponseBody/2))
			}
		}
	}))
	conns := countConns(srv)
	srv.Start()
	defer srv.Close()

	c := newTestConn(t, srv.URL)
	for range 3 {
		for _, tc := range []struct {
			path string
			want []byte
		}{
			{"/length", big},
			{"/chunked", big},
			{"/small-chunked", []byte(`{"status":"duplicate"}`)},
			{"/huge", bytes.Repeat([]byte("y"), maxResponseBody)},
			{"/length", big},
		} {
			code, got, err := c.Post(context.Background(), tc.path, "application/json", "", "", []byte("{}"))
			if err != nil {
				t.Fatalf("%s: %v", tc.path, err)
			}
			if code != 200 || !bytes.Equal(got, tc.want) {
				t.Fatalf("%s: %d, %d bytes %.40q, want 200, %d bytes", tc.path, code, len(got), got, len(tc.want))
			}
		}
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("%d connections, want 1", n)
	}
}

// A server that answers "Connection: close" closes after each answer; the
// client reads the answer and connects again for the next request.
func TestHTTPClientConnectionClose(t *testing.T) {
	t.Parallel()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Connection", "close")
		io.WriteString(w, "bye")
	}))
	conns := countConns(srv)
	srv.Start()
	defer srv.Close()
	c := newTestConn(t, srv.URL)
	for i := range 20 {
		code, got, err := c.Post(context.Background(), "/", "application/json", "", "", nil)
		if err != nil || code != 200 || string(got) != "bye" {
			t.Fatalf("request %d: %d %q %v", i, code, got, err)
		}
	}
	if n := conns.Load(); n != 20 {
		t.Errorf("%d connections, want 20", n)
	}
}

// rawServer serves each connection with serve, for answers net/http's
// server would not give.
func rawServer(t *testing.T, serve func(n int, c net.Conn, br *bufio.Reader)) (string, *atomic.Int64) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var accepted atomic.Int64
	var mu sync.Mutex
	var open []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range open {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n := int(accepted.Add(1))
			mu.Lock()
			open = append(open, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				serve(n, c, bufio.NewReader(c))
			}()
		}
	}()
	return "http://" + ln.Addr().String(), &accepted
}

// readRequest reads one request as a server would, body included.
func readRequest(br *bufio.Reader) (*http.Request, []byte, error) {
	req, err := http.ReadRequest(br)
	if err != nil {
		return nil, nil, err
	}
	b, err := io.ReadAll(req.Body)
	return req, b, err
}

// A server that closes a kept-alive connection while it is idle (its idle
// timeout), without saying so: the client sends the request again on a new
// connection, once, and the caller sees only the answer.
func TestHTTPClientReconnectsIdleClosed(t *testing.T) {
	t.Parallel()
	url, accepted := rawServer(t, func(n int, c net.Conn, br *bufio.Reader) {
		// Each connection answers two requests, then closes.
		for range 2 {
			_, b, err := readRequest(br)
			if err != nil {
				return
			}
			fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(b), b)
		}
		// Wait for the next request, so that its write succeeds and the
		// client sees the close only on reading the answer.
		br.Peek(1)
		if n%2 == 0 {
			// Reset rather than FIN: ECONNRESET, not EOF.
			c.(*net.TCPConn).SetLinger(0)
		}
	})
	c := newTestConn(t, url)
	for i := range 12 {
		body := []byte("req" + strconv.Itoa(i))
		code, got, err := c.Post(context.Background(), "/", "application/json", "", "", body)
		if err != nil || code != 200 || !bytes.Equal(got, body) {
			t.Fatalf("request %d: %d %q %v", i, code, got, err)
		}
	}
	if n := accepted.Load(); n != 6 {
		t.Errorf("%d connections, want 6", n)
	}
}

// A server that takes requests and closes without answering: the client
// tries once more on a new connection, then reports the error.
func TestHTTPClientNoAnswer(t *testing.T) {
	t.Parallel()
	url, accepted := rawServer(t, func(n int, c net.Conn, br *bufio.Reader) {
		if n == 1 {
			// The first connection answers once, so that it is reused.
			if _, _, err := readRequest(br); err != nil {
				return
			}
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		}
		readRequest(br)
	})
	c := newTestConn(t, url)
	if code, _, err := c.Post(context.Background(), "/", "application/json", "", "", nil); err != nil || code != 200 {
		t.Fatalf("first request: %d %v", code, err)
	}
	_, _, err := c.Post(context.Background(), "/", "application/json", "", "", nil)
	if err == nil {
		t.Fatal("no error from a server that does not answer")
	}
	if n := accepted.Load(); n != 2 {
		t.Errorf("%d connections, want 2 (one retry)", n)
	}
	// A fresh connection is not retried.
	_, _, err = c.Post(context.Background(), "/", "application/json", "", "", nil)
	if err == nil {
		t.Fatal("no error from a server that does not answer")
	}
	if n := accepted.Load(); n != 3 {
		t.Errorf("%d connections, want 3", n)
	}
}

// A server that dies in the middle of an answer (in the headers, in a
// Content-Length body, in a chunk): an error at once, no retry, no hang; the
// next request works on a new connection.
func TestHTTPClientClosedMidResponse(t *testing.T) {
	t.Parallel()
	partial := []string{
		"HTTP/1.1 200 OK\r\nContent-Len",
		"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten..",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n40\r\nshort",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
		"HTTP/1.1 2",
	}
	url, accepted := rawServer(t, func(n int, c net.Conn, br *bufio.Reader) {
		for {
			req, _, err := readRequest(br)
			if err != nil {
				return
			}
			if i, err := strconv.Atoi(strings.TrimPrefix(req.URL.Path, "/")); err == nil {
				io.WriteString(c, partial[i])
				return
			}
			io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		}
	})
	c := newTestConn(t, url)
	for i := range partial {
		// A good answer first, so that the broken one comes on a reused
		// connection: even so it is not sent again.
		if code, got, err := c.Post(context.Background(), "/ok", "application/json", "", "", nil); err != nil || code != 200 || string(got) != "ok" {
			t.Fatalf("case %d: good request: %d %q %v", i, code, got, err)
		}
		before := accepted.Load()
		start := time.Now()
		code, _, err := c.Post(context.Background(), "/"+strconv.Itoa(i), "application/json", "", "", nil)
		if err == nil {
			t.Errorf("case %d: %d and no error from a cut answer", i, code)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("case %d: took %s", i, d)
		}
		if n := accepted.Load(); n != before {
			t.Errorf("case %d: %d new connections, want none (no retry)", i, n-before)
		}
	}
}

// The request's ctx bounds it: its deadline, its cancellation, and without
// either the client's own timeout.
func TestHTTPClientContext(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			select {
			case <-release:
			case <-r.Context().Done():
			}
		}
		io.WriteString(w, "ok")
	}))
	defer srv.Close()
	defer close(release)

	c := newTestConn(t, srv.URL)
	post := func(ctx context.Context, path string) error {
		_, _, err := c.Post(ctx, path, "application/json", "", "", nil)
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := post(ctx, "/slow"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("past the deadline: %v, want DeadlineExceeded", err)
	}
	if d := time.Since(start); d < 150*time.Millisecond || d > 5*time.Second {
		t.Errorf("deadline of 200ms: took %s", d)
	}
	if err := post(ctx, "/fast"); err == nil {
		t.Error("no error from a done ctx")
	}

	// A cancel without a deadline, with the ctx the client watches already
	// in use.
	ctx2, cancel2 := context.WithCancel(context.Background())
	if err := post(ctx2, "/fast"); err != nil {
		t.Fatal(err)
	}
	time.AfterFunc(100*time.Millisecond, cancel2)
	start = time.Now()
	if err := post(ctx2, "/slow"); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v, want Canceled", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("cancel after 100ms: took %s", d)
	}

	// The client's timeout, for a ctx without a deadline.
	c.timeout = 150 * time.Millisecond
	start = time.Now()
	if err := post(context.Background(), "/slow"); err == nil {
		t.Error("no error past the client's timeout")
	}
	if d := time.Since(start); d < 100*time.Millisecond || d > 5*time.Second {
		t.Errorf("timeout of 150ms: took %s", d)
	}
	c.timeout = 30 * time.Second
	if err := post(context.Background(), "/fast"); err != nil {
		t.Errorf("after the timeout: %v", err)
	}
}

// Only plain http:// targets: anything else is refused with a clear error,
// and the load falls back to net/http for them.
func TestHTTPClientSchemes(t *testing.T) {
	t.Parallel()
	for _, base := range []string{"https://127.0.0.1:8443", "ftp://127.0.0.1", "127.0.0.1:8080", "http://"} {
		if _, err := newHTTPConn(base); err == nil {
			t.Errorf("%s: no error", base)
		} else if !strings.Contains(err.Error(), "bench http client") {
			t.Errorf("%s: unclear error %v", base, err)
		}
	}
	if s := (&target{base: "https://127.0.0.1:8443"}).newSender(); s.conn != nil {
		t.Error("an https target got the plain client")
	}
	c, err := newHTTPConn("http://localhost")
	if err != nil || c.addr != "localhost:80" || c.host != "localhost" || c.prefix != "" {
		t.Errorf("http://localhost: %+v %v", c, err)
	}
}

// The load's requests, as the server sees them: a webhook signed for its
// body, the checkout-success call with its token, and "duplicate" read off
// the answer; on the lean client and on the net/http fallback alike.
func TestHTTPClientSender(t *testing.T) {
	t.Parallel()
	const secret, token = "whsec_test", "tok_test"
	var seen atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		switch r.URL.Path {
		case "/webhooks/stripe":
			sig := r.Header.Get("Stripe-Signature")
			ts, _, _ := strings.Cut(strings.TrimPrefix(sig, "t="), ",")
			unix, _ := strconv.ParseInt(ts, 10, 64)
			if sig != stripefake.SignatureHeader(b, secret, time.Unix(unix, 0)) || time.Since(time.Unix(unix, 0)) > time.Minute {
				http.Error(w, "bad signature", 400)
				return
			}
			if seen.Add(1)%2 == 0 {
				io.WriteString(w, `{"status":"duplicate"}`)
			} else {
				io.WriteString(w, `{"status":"processed"}`)
			}
		case "/api/checkout/success":
			if r.Header.Get("Authorization") != "Bearer "+token || string(b) != `{"session_id":"cs_1","user_id":"user_1"}` {
				http.Error(w, "bad call", 401)
				return
			}
			io.WriteString(w, `{"ok":true}`)
		}
	}))
	defer srv.Close()

	w := &workload{run: "x", idPrefix: "evt_bench_x_", tmpl: newEventTemplate(), customers: make([]customer, 1)}
	w.customers[0].id, w.customers[0].sub = "cus_1", "sub_1"
	cu := &customer{session: "cs_1", user: "user_1"}
	ev := sentEvent{n: 42, customer: 0, created: 1234567890}
	if got, want := w.body(ev), w.tmpl.render(nil, "evt_bench_x_", 42, "cus_1", "sub_1", 1234567890); !bytes.Equal(got, want) {
		t.Fatalf("body\n%s\nwant\n%s", got, want)
	}

	tg := &target{base: srv.URL, secret: secret, token: token, client: newHTTPClient(1)}
	defer tg.client.CloseIdleConnections()
	lean := tg.newSender()
	defer lean.close()
	if lean.conn == nil {
		t.Fatal("no lean client for an http target")
	}
	fallback := &sender{t: tg, auth: lean.auth}
	for _, s := range []*sender{lean, fallback} {
		for i := range 4 {
			s.body = w.appendBody(s.body[:0], ev)
			a := s.webhook(context.Background())
			if a.code != 200 || a.dup != (seen.Load()%2 == 0) {
				t.Errorf("webhook %d (lean %v): %+v", i, s.conn != nil, a)
			}
			if a := s.checkoutSuccess(context.Background(), cu); a.code != 200 || a.dup {
				t.Errorf("success %d (lean %v): %+v", i, s.conn != nil, a)
			}
		}
	}
}

// A request on a kept-alive connection allocates nothing in the client, nor
// does rendering an event into a worker's buffer. (Not parallel: the count
// is the process's. The server is raw for the same reason.)
func TestHTTPClientAllocs(t *testing.T) {
	answer := []byte("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 22\r\n\r\n{\"status\":\"processed\"}")
	url, _ := rawServer(t, func(_ int, c net.Conn, br *bufio.Reader) {
		body := make([]byte, 7)
		for {
			for { // headers, up to the blank line
				l, err := br.ReadSlice('\n')
				if err != nil {
					return
				}
				if len(l) == 2 {
					break
				}
			}
			if _, err := io.ReadFull(br, body); err != nil {
				return
			}
			if _, err := c.Write(answer); err != nil {
				return
			}
		}
	})
	c := newTestConn(t, url)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	body := []byte(`{"a":1}`)
	n := testing.AllocsPerRun(200, func() {
		code, b, err := c.Post(ctx, "/x", "application/json", "Authorization", "Bearer t", body)
		if err != nil || code != 200 || !bytes.Contains(b, []byte("processed")) {
			t.Fatalf("%d %q %v", code, b, err)
		}
	})
	if n > 0 {
		t.Errorf("%v allocations per request", n)
	}

	w := &workload{run: "x", idPrefix: "evt_bench_x_", tmpl: newEventTemplate(), customers: make([]customer, 1)}
	w.customers[0].id, w.customers[0].sub = "cus_1", "sub_1"
	var buf []byte
	if n := testing.AllocsPerRun(100, func() { buf = w.appendBody(buf[:0], sentEvent{n: 7, created: 99}) }); n != 0 {
		t.Errorf("%v allocations per event body", n)
	}
}
