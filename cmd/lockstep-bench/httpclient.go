package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// httpConn is a minimal HTTP/1.1 keep-alive client for loopback load, in the
// manner of wrk: one persistent TCP connection, each request written in one
// write from a reused buffer, each response read with a reused bufio.Reader
// into a reused body buffer. It is the load generator's and is meant to cost
// as little CPU as it can, so that the bench measures lockstep, not its
// client. No proxy, no TLS, no compression, no redirects.
//
// An httpConn is not safe for concurrent use: each load worker (one
// concurrent request stream) owns one.
type httpConn struct {
	addr    string        // host:port to dial
	host    string        // Host header
	prefix  string        // the base URL's path, prepended to each request's
	timeout time.Duration // per request, when ctx has no earlier deadline
	dialer  net.Dialer

	mu sync.Mutex // guards nc against interrupt; the owner reads it unlocked
	nc net.Conn   // nil: not connected
	br *bufio.Reader

	wbuf []byte // the request being written
	body []byte // the last response's body (up to maxResponseBody)

	watchDone <-chan struct{} // the Done of the ctx interrupt watches
	stopWatch func() bool
}

// maxResponseBody is how much of a response body is kept; the rest is read
// and dropped (as io.LimitReader did for the net/http client).
const maxResponseBody = 1 << 20

// maxLine bounds the status line and each header line.
const maxLine = 16 << 10

// newHTTPConn returns a client for base, an http:// URL (with an optional
// path prefix). It does not connect until the first request.
func newHTTPConn(base string) (*httpConn, error) {
	u, err := url.Parse(base)
	if err != nil {
		return nil, fmt.Errorf("bench http client: %w", err)
	}
	if u.Scheme != "http" {
		return nil, fmt.Errorf("bench http client: only http:// targets are supported (no TLS, no proxy), got %q", base)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("bench http client: no host in %q", base)
	}
	addr := u.Host
	if u.Port() == "" {
		addr = net.JoinHostPort(u.Hostname(), "80")
	}
	prefix := u.EscapedPath()
	for len(prefix) > 0 && prefix[len(prefix)-1] == '/' {
		prefix = prefix[:len(prefix)-1]
	}
	return &httpConn{addr: addr, host: u.Host, prefix: prefix, timeout: 30 * time.Second}, nil
}

// Close closes the connection, if any, and stops watching the last ctx.
func (c *httpConn) Close() error {
	if c.stopWatch != nil {
		c.stopWatch()
		c.stopWatch, c.watchDone = nil, nil
	}
	return c.drop()
}

func (c *httpConn) drop() error {
	c.mu.Lock()
	nc := c.nc
	c.nc = nil
	c.mu.Unlock()
	if nc == nil {
		return nil
	}
	return nc.Close()
}

func (c *httpConn) dial(ctx context.Context) error {
	nc, err := c.dialer.DialContext(ctx, "tcp", c.addr)
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.nc = nc
	c.mu.Unlock()
	if c.br == nil {
		c.br = bufio.NewReaderSize(nc, maxLine)
	} else {
		c.br.Reset(nc)
	}
	return nil
}

// interrupt runs when the watched ctx is done: it makes any read or write in
// flight fail at once.
func (c *httpConn) interrupt() {
	c.mu.Lock()
	if c.nc != nil {
		_ = c.nc.SetDeadline(time.Unix(1, 0))
	}
	c.mu.Unlock()
}

// watch arranges for ctx's end to interrupt the connection. A worker sends
// all its requests with one ctx, so this registers once, not per request.
func (c *httpConn) watch(ctx context.Context) {
	done := ctx.Done()
	if done == c.watchDone {
		return
	}
	if c.stopWatch != nil {
		c.stopWatch()
		c.stopWatch = nil
	}
	c.watchDone = done
	if done != nil {
		c.stopWatch = context.AfterFunc(ctx, c.interrupt)
	}
}

// Post sends a POST of body to path (relative to the base URL's) with
// Content-Type contentType and, when name is not empty, the header
// name: value. It returns the status code and the body, which stays valid
// until the next request. On a reused connection that turns out to be broken
// (EOF or a reset before any byte of the answer), it reconnects and sends
// the request again, once.
func (c *httpConn) Post(ctx context.Context, path, contentType, name, value string, body []byte) (int, []byte, error) {
	return c.do(ctx, "POST ", path, contentType, name, value, body)
}

// Get sends a GET of path (relative to the base URL's) with, when name is
// not empty, the header name: value; otherwise as Post.
func (c *httpConn) Get(ctx context.Context, path, name, value string) (int, []byte, error) {
	return c.do(ctx, "GET ", path, "", name, value, nil)
}

// do writes the request into c.wbuf (Content-Type and Content-Length for a
// POST, whatever its body) and sends it.
func (c *httpConn) do(ctx context.Context, method, path, contentType, name, value string, body []byte) (int, []byte, error) {
	if err := ctx.Err(); err != nil {
		return 0, nil, err
	}
	c.watch(ctx)
	b := c.wbuf[:0]
	b = append(b, method...)
	b = append(b, c.prefix...)
	b = append(b, path...)
	b = append(b, " HTTP/1.1\r\nHost: "...)
	b = append(b, c.host...)
	if method == "POST " {
		b = append(b, "\r\nContent-Type: "...)
		b = append(b, contentType...)
		b = append(b, "\r\nContent-Length: "...)
		b = strconv.AppendInt(b, int64(len(body)), 10)
	}
	if name != "" {
		b = append(b, "\r\n"...)
		b = append(b, name...)
		b = append(b, ": "...)
		b = append(b, value...)
	}
	b = append(b, "\r\n\r\n"...)
	b = append(b, body...)
	c.wbuf = b
	return c.send(ctx)
}

// send sends c.wbuf and reads the answer, reconnecting once when a reused
// connection turns out to be broken.
func (c *httpConn) send(ctx context.Context) (int, []byte, error) {
	for attempt := 0; ; attempt++ {
		reused := c.nc != nil
		code, err := c.roundTrip(ctx, reused)
		if err == nil {
			return code, c.body, nil
		}
		c.drop()
		if ctx.Err() != nil {
			return 0, nil, fmt.Errorf("bench http client: %w (%v)", ctx.Err(), err)
		}
		if d, ok := ctx.Deadline(); ok && !time.Now().Before(d) {
			// The connection's deadline, ctx's, came before ctx's timer.
			return 0, nil, fmt.Errorf("bench http client: %w (%v)", context.DeadlineExceeded, err)
		}
		if !reused || attempt > 0 || !errors.Is(err, errBrokenIdle) {
			return 0, nil, err
		}
	}
}

// errBrokenIdle marks a failure on a kept-alive connection before any byte
// of the answer: the server closed it while idle, so the request may be sent
// again on a new one.
var errBrokenIdle = errors.New("connection closed before any response")

func (c *httpConn) roundTrip(ctx context.Context, reused bool) (int, error) {
	if !reused {
		if err := c.dial(ctx); err != nil {
			return 0, err
		}
	}
	deadline := time.Now().Add(c.timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	if err := c.nc.SetDeadline(deadline); err != nil {
		return 0, err
	}
	if err := ctx.Err(); err != nil {
		// Done before the deadline was set: interrupt may have come first.
		return 0, err
	}
	if _, err := c.nc.Write(c.wbuf); err != nil {
		if isBrokenConn(err) {
			return 0, fmt.Errorf("%w: write: %w", errBrokenIdle, err)
		}
		return 0, err
	}
	if _, err := c.br.Peek(1); err != nil {
		if isBrokenConn(err) {
			return 0, fmt.Errorf("%w: %w", errBrokenIdle, err)
		}
		return 0, err
	}
	return c.readResponse()
}

func isBrokenConn(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// readResponse reads one response: status line, headers and body. It drops
// the connection after a response that does not keep it alive.
func (c *httpConn) readResponse() (int, error) {
	for {
		code, keep, err := c.readOne()
		if err != nil {
			return 0, err
		}
		if code >= 100 && code < 200 && code != 101 {
			continue // informational (100 Continue, 103 Early Hints): the answer follows
		}
		if !keep {
			c.drop()
		}
		return code, nil
	}
}

func (c *httpConn) readOne() (code int, keep bool, err error) {
	line, err := c.line()
	if err != nil {
		return 0, false, fmt.Errorf("bench http client: reading the status line: %w", unexpected(err))
	}
	// HTTP/1.x SP 3DIGIT [SP reason]
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) || line[8] != ' ' || (len(line) > 12 && line[12] != ' ') {
		return 0, false, fmt.Errorf("bench http client: malformed status line %q", line)
	}
	http10 := line[7] == '0'
	for _, d := range line[9:12] {
		if d < '0' || d > '9' {
			return 0, false, fmt.Errorf("bench http client: malformed status line %q", line)
		}
		code = code*10 + int(d-'0')
	}

	length := int64(-1)
	chunked, closing, keepAlive := false, false, false
	for {
		h, err := c.line()
		if err != nil {
			return 0, false, fmt.Errorf("bench http client: reading headers: %w", unexpected(err))
		}
		if len(h) == 0 {
			break
		}
		name, value, ok := bytes.Cut(h, []byte(":"))
		if !ok {
			return 0, false, fmt.Errorf("bench http client: malformed header %q", h)
		}
		value = bytes.TrimSpace(value)
		switch {
		case bytes.EqualFold(name, []byte("Content-Length")):
			n, ok := parseUint(value, 10)
			if !ok || (length >= 0 && n != length) {
				return 0, false, fmt.Errorf("bench http client: bad Content-Length %q", value)
			}
			length = n
		case bytes.EqualFold(name, []byte("Transfer-Encoding")):
			chunked = hasToken(value, "chunked")
		case bytes.EqualFold(name, []byte("Connection")):
			closing = closing || hasToken(value, "close")
			keepAlive = keepAlive || hasToken(value, "keep-alive")
		}
	}
	keep = !closing && (!http10 || keepAlive)

	c.body = c.body[:0]
	switch {
	case code < 200 || code == 204 || code == 304:
		// no body
	case chunked:
		if err := c.readChunked(); err != nil {
			return 0, false, err
		}
	case length >= 0:
		if err := c.readBody(length); err != nil {
			return 0, false, err
		}
	default:
		// Neither length nor chunks: the body lasts until the server
		// closes the connection.
		if err := c.readBody(-1); err != nil {
			return 0, false, err
		}
		keep = false
	}
	return code, keep, nil
}

// line reads one CRLF- (or LF-) terminated line, without its terminator.
// It is valid until the next read.
func (c *httpConn) line() ([]byte, error) {
	l, err := c.br.ReadSlice('\n')
	if err != nil {
		if errors.Is(err, bufio.ErrBufferFull) {
			return nil, errors.New("line too long")
		}
		return nil, err
	}
	l = l[:len(l)-1]
	if len(l) > 0 && l[len(l)-1] == '\r' {
		l = l[:len(l)-1]
	}
	return l, nil
}

// readBody appends n bytes of body (n < 0: up to EOF) to c.body, keeping
// up to maxResponseBody and dropping the rest.
func (c *httpConn) readBody(n int64) error {
	if n < 0 {
		for len(c.body) < maxResponseBody {
			c.body = slices.Grow(c.body, min(max(512, len(c.body)), maxResponseBody-len(c.body)))
			m, err := c.br.Read(c.body[len(c.body):min(cap(c.body), maxResponseBody)])
			c.body = c.body[:len(c.body)+m]
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return fmt.Errorf("bench http client: reading the body: %w", err)
			}
		}
		if _, err := io.Copy(io.Discard, c.br); err != nil {
			return fmt.Errorf("bench http client: reading the body: %w", err)
		}
		return nil
	}
	keep := int(min(n, int64(maxResponseBody-len(c.body))))
	old := len(c.body)
	c.body = slices.Grow(c.body, keep)[:old+keep]
	if _, err := io.ReadFull(c.br, c.body[old:]); err != nil {
		c.body = c.body[:old]
		return fmt.Errorf("bench http client: reading the body: %w", unexpected(err))
	}
	for n -= int64(keep); n > 0; {
		d := int(min(n, 1<<30))
		if _, err := c.br.Discard(d); err != nil {
			return fmt.Errorf("bench http client: reading the body: %w", unexpected(err))
		}
		n -= int64(d)
	}
	return nil
}

// readChunked reads a chunked body and its trailers.
func (c *httpConn) readChunked() error {
	for {
		l, err := c.line()
		if err != nil {
			return fmt.Errorf("bench http client: reading a chunk size: %w", unexpected(err))
		}
		if i := bytes.IndexByte(l, ';'); i >= 0 {
			l = l[:i] // chunk extensions
		}
		size, ok := parseUint(bytes.TrimSpace(l), 16)
		if !ok {
			return fmt.Errorf("bench http client: bad chunk size %q", l)
		}
		if size == 0 {
			for { // trailers, up to the empty line
				t, err := c.line()
				if err != nil {
					return fmt.Errorf("bench http client: reading trailers: %w", unexpected(err))
				}
				if len(t) == 0 {
					return nil
				}
			}
		}
		if err := c.readBody(size); err != nil {
			return err
		}
		if l, err := c.line(); err != nil || len(l) != 0 {
			if err == nil {
				err = fmt.Errorf("no CRLF after a chunk")
			}
			return fmt.Errorf("bench http client: reading a chunk: %w", unexpected(err))
		}
	}
}

// parseUint parses a decimal or hexadecimal number without allocating; it
// refuses empty input and values past 2^62.
func parseUint(b []byte, base int64) (int64, bool) {
	if len(b) == 0 {
		return 0, false
	}
	var n int64
	for _, ch := range b {
		var d int64
		switch {
		case '0' <= ch && ch <= '9':
			d = int64(ch - '0')
		case base == 16 && 'a' <= ch && ch <= 'f':
			d = int64(ch-'a') + 10
		case base == 16 && 'A' <= ch && ch <= 'F':
			d = int64(ch-'A') + 10
		default:
			return 0, false
		}
		if n > (1<<62)/base {
			return 0, false
		}
		n = n*base + d
	}
	return n, true
}

// unexpected turns an EOF in the middle of a response into
// io.ErrUnexpectedEOF, which never passes for a broken idle connection.
func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// hasToken reports whether a comma-separated header value holds token,
// case-insensitively.
func hasToken(v []byte, token string) bool {
	for len(v) > 0 {
		var t []byte
		t, v, _ = bytes.Cut(v, []byte(","))
		if bytes.EqualFold(bytes.TrimSpace(t), []byte(token)) {
			return true
		}
	}
	return false
}
