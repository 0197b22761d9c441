package e2e

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	bin "encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"
)

// wsConn is a minimal WebSocket client (RFC 6455), enough to test
// functions' WebSockets through the router: masked frames out, pings
// answered, fragments joined, close codes seen.
type wsConn struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

const (
	wsText   = 1
	wsBinary = 2
	wsClose  = 8
	wsPing   = 9
	wsPong   = 10
)

// wsDial opens a WebSocket to path at the server, with header's fields
// (Host, Authorization) too. A refused upgrade fails t unless wantStatus
// is that status; then the answer is returned and the conn is nil.
func (s *server) wsDial(t *testing.T, path string, header map[string]string, wantStatus int) (*wsConn, response) {
	t.Helper()
	c := s.dial(t)
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	key := make([]byte, 16)
	_, _ = rand.Read(key)
	k := base64.StdEncoding.EncodeToString(key)
	var b strings.Builder
	fmt.Fprintf(&b, "GET %s HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n", path, k)
	if _, ok := header["Host"]; !ok {
		fmt.Fprintf(&b, "Host: %s\r\n", s.addr)
	}
	for name, v := range header {
		fmt.Fprintf(&b, "%s: %s\r\n", name, v)
	}
	b.WriteString("\r\n")
	if _, err := io.WriteString(c, b.String()); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("upgrade %s: %v", path, err)
	}
	if res.StatusCode != http.StatusSwitchingProtocols {
		body, _ := io.ReadAll(res.Body)
		r := response{status: res.StatusCode, header: res.Header, body: body}
		if res.StatusCode != wantStatus {
			t.Fatalf("upgrade %s: %d %s", path, res.StatusCode, body)
		}
		return nil, r
	}
	if wantStatus != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade %s: switched, want %d", path, wantStatus)
	}
	sum := sha1.Sum([]byte(k + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	if got := res.Header.Get("Sec-WebSocket-Accept"); got != base64.StdEncoding.EncodeToString(sum[:]) {
		t.Fatalf("upgrade %s: Sec-WebSocket-Accept %q", path, got)
	}
	return &wsConn{t: t, c: c, br: br}, response{status: res.StatusCode, header: res.Header}
}

func (w *wsConn) write(op byte, payload []byte) {
	w.t.Helper()
	var h []byte
	h = append(h, 0x80|op)
	switch n := len(payload); {
	case n < 126:
		h = append(h, 0x80|byte(n))
	case n < 1<<16:
		h = append(h, 0x80|126)
		h = bin.BigEndian.AppendUint16(h, uint16(n))
	default:
		h = append(h, 0x80|127)
		h = bin.BigEndian.AppendUint64(h, uint64(n))
	}
	mask := make([]byte, 4)
	_, _ = rand.Read(mask)
	h = append(h, mask...)
	masked := make([]byte, len(payload))
	for i, c := range payload {
		masked[i] = c ^ mask[i%4]
	}
	if _, err := w.c.Write(append(h, masked...)); err != nil {
		w.t.Fatalf("write: %v", err)
	}
}

func (w *wsConn) send(text string) { w.write(wsText, []byte(text)) }

// frame reads one frame: its opcode and payload.
func (w *wsConn) frame() (fin bool, op byte, payload []byte, err error) {
	var h [2]byte
	if _, err = io.ReadFull(w.br, h[:]); err != nil {
		return
	}
	if h[1]&0x80 != 0 {
		return false, 0, nil, fmt.Errorf("a masked frame from the server")
	}
	n := uint64(h[1] & 0x7f)
	switch n {
	case 126:
		var l [2]byte
		_, err = io.ReadFull(w.br, l[:])
		n = uint64(bin.BigEndian.Uint16(l[:]))
	case 127:
		var l [8]byte
		_, err = io.ReadFull(w.br, l[:])
		n = bin.BigEndian.Uint64(l[:])
	}
	if err != nil {
		return
	}
	payload = make([]byte, n)
	_, err = io.ReadFull(w.br, payload)
	return h[0]&0x80 != 0, h[0] & 0x0f, payload, err
}

// message reads the next data or close message, answering pings.
func (w *wsConn) message() (op byte, payload []byte, err error) {
	for {
		fin, fop, p, err := w.frame()
		if err != nil {
			return 0, nil, err
		}
		switch fop {
		case wsPing:
			w.write(wsPong, p)
			continue
		case wsPong:
			continue
		case 0: // a continuation
			payload = append(payload, p...)
		default:
			op, payload = fop, p
		}
		if fin {
			return op, payload, nil
		}
	}
}

// expect reads the next message and fails unless it is op with want.
func (w *wsConn) expect(op byte, want []byte) {
	w.t.Helper()
	gop, got, err := w.message()
	if err != nil || gop != op || !bytes.Equal(got, want) {
		if len(got) > 80 {
			got = append(got[:80:80], "..."...)
		}
		w.t.Fatalf("got op %d %q (%v), want op %d of %d bytes %.80q", gop, got, err, op, len(want), want)
	}
}

// expectClose reads the next message and fails unless it is a close
// with code.
func (w *wsConn) expectClose(code uint16) {
	w.t.Helper()
	op, p, err := w.message()
	if err != nil || op != wsClose || len(p) < 2 || bin.BigEndian.Uint16(p) != code {
		w.t.Fatalf("got op %d %q (%v), want a close with code %d", op, p, err, code)
	}
}

// closing is a close frame's payload: code and reason.
func closing(code uint16, reason string) []byte {
	return append(bin.BigEndian.AppendUint16(nil, code), reason...)
}

// wsFunction is a Deno function that speaks first, echoes text ("echo: "
// before it) and binary, closes with a code when asked, and counts what
// it has seen in ctx.kv.
const wsFunction = `export default { fetch(req, ctx) {
  if (req.headers.get("upgrade") !== "websocket") return new Response("plain " + ctx.version);
  const { socket, response } = Deno.upgradeWebSocket(req);
  socket.binaryType = "arraybuffer";
  socket.onopen = () => socket.send("hello " + ctx.version + " " + new URL(req.url).pathname);
  socket.onmessage = (e) => {
    if (typeof e.data !== "string") return socket.send(e.data);
    if (e.data.startsWith("close ")) return socket.close(Number(e.data.slice(6)), "server bye");
    if (e.data === "auth?") return socket.send("auth: " + (req.headers.get("authorization") ?? "none"));
    socket.send("echo: " + e.data);
  };
  socket.onclose = (e) => console.log("websocket closed", e.code, e.reason);
  return response;
} }`

// TestWebSocket: a Deno function's WebSocket through the router, at each
// of a function's addresses: the server speaks first, text and binary
// (1 MiB too) echo both ways, and either side closes with its code.
func TestWebSocket(t *testing.T) {
	s := startServer(t, "--function-domain", "fn.test")
	_, port, _ := net.SplitHostPort(s.addr)
	s.deployCode(t, "ws", []byte(wsFunction), "")
	if r := s.putCode(s.token, "ws", []byte(strings.Replace(wsFunction, `"hello "`, `"hi "`, 1)), ""); r.status != 200 {
		t.Fatalf("deploy ws again: %d %s", r.status, r.body)
	}
	s.mustSpry("tag", "ws", "canary", "1")
	if r := s.get("/fn/admin/ws/"); r.status != 200 || string(r.body) != "plain 2" {
		t.Fatalf("a plain request: %d %q", r.status, r.body)
	}
	big := make([]byte, 1<<20)
	_, _ = rand.Read(big)
	bigText := strings.Repeat("0123456789abcdef", 1<<16)
	for _, tt := range []struct {
		name, path, host, hello string
	}{
		// Version 2, live, says "hi"; version 1 "hello".
		{"path", "/fn/admin/ws/room", "", "hi 2 /room"},
		{"version", "/fn/admin/ws@1/room", "", "hello 1 /room"},
		{"tag", "/fn/admin/ws@canary/room", "", "hello 1 /room"},
		{"host", "/room", "ws.admin.fn.test:" + port, "hi 2 /room"},
		{"tag's host", "/room", "canary.ws.admin.fn.test:" + port, "hello 1 /room"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			hello := tt.hello
			h := map[string]string{}
			if tt.host != "" {
				h["Host"] = tt.host
			}
			w, _ := s.wsDial(t, tt.path, h, 101)
			w.expect(wsText, []byte(hello))
			for i := range 5 {
				w.send(fmt.Sprintf("m%d", i))
			}
			for i := range 5 {
				w.expect(wsText, fmt.Appendf(nil, "echo: m%d", i))
			}
			w.write(wsBinary, []byte{0, 1, 2, 255})
			w.expect(wsBinary, []byte{0, 1, 2, 255})
			w.write(wsBinary, big)
			w.expect(wsBinary, big)
			w.send(bigText)
			w.expect(wsText, []byte("echo: "+bigText))
			// The client closes: the function answers with its code.
			w.write(wsClose, closing(4001, "client bye"))
			w.expectClose(4001)
			if _, err := w.br.ReadByte(); err != io.EOF {
				t.Fatalf("after the close: %v, want EOF", err)
			}
		})
	}
	t.Run("server closes", func(t *testing.T) {
		w, _ := s.wsDial(t, "/fn/admin/ws/", nil, 101)
		w.expect(wsText, []byte("hi 2 /"))
		w.send("close 4002")
		w.expectClose(4002)
		w.write(wsClose, closing(4002, ""))
		if _, err := w.br.ReadByte(); err != io.EOF {
			t.Fatalf("after the close: %v, want EOF", err)
		}
	})
	var logs string
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("the function's logs:\n%s", logs)
		}
	})
	eventually(t, 10*time.Second, "the closes in the function's logs", func() bool {
		logs, _, _ = s.spry("", "logs", "ws")
		return strings.Contains(logs, "websocket closed 4001 client bye") && strings.Contains(logs, "websocket closed 4002")
	})
}

// TestWebSocketOutlivesTheTimeout: an open WebSocket is bounded by the
// function's timeout only until its 101, and its instance is neither
// scaled to zero nor stopped while it is open; once neither side sends
// anything for --websocket-idle-timeout, the router closes it.
func TestWebSocketOutlivesTheTimeout(t *testing.T) {
	const idle = 2 * time.Second
	s := startServer(t, "--timeout", "1s", "--scale-to-zero-after", "1s", "--autoscale-window", "6s",
		"--websocket-idle-timeout", idle.String())
	// Deno pings a quiet peer after its own idleTimeout (30 s by
	// default): none here, so that the router's idle bound shows.
	s.deployCode(t, "ws", []byte(strings.Replace(wsFunction, "Deno.upgradeWebSocket(req)", "Deno.upgradeWebSocket(req, { idleTimeout: 0 })", 1)), "")
	w, first := s.wsDial(t, "/fn/admin/ws/", nil, 101)
	w.expect(wsText, []byte("hello 1 /"))
	start := time.Now()
	for i := 0; time.Since(start) < 4*time.Second; i++ {
		w.send(fmt.Sprintf("m%d", i))
		w.expect(wsText, fmt.Appendf(nil, "echo: m%d", i))
		time.Sleep(100 * time.Millisecond)
	}
	// The same instance served all along: a plain request now is no cold
	// start (the WebSocket's instance was kept, and has room).
	if first.header.Get("Spry-Cold-Start") == "" {
		t.Fatal("the first upgrade was no cold start")
	}
	if r := s.get("/fn/admin/ws/"); r.status != 200 || r.header.Get("Spry-Cold-Start") != "" {
		t.Fatalf("a plain request while the WebSocket is open: %d %q, cold start %q", r.status, r.body, r.header.Get("Spry-Cold-Start"))
	}
	// Quiet both ways: the router closes the connection.
	quiet := time.Now()
	_ = w.c.SetReadDeadline(time.Now().Add(idle + 10*time.Second))
	if _, _, err := w.message(); err != io.EOF {
		t.Fatalf("a quiet WebSocket: %v, want the router's close", err)
	}
	if d := time.Since(quiet); d < idle-200*time.Millisecond {
		t.Fatalf("closed %v after the last message; the idle bound is %v", d, idle)
	}
	eventually(t, 10*time.Second, "the function to see its socket closed", func() bool {
		out, _, _ := s.spry("", "logs", "ws")
		return strings.Contains(out, "websocket closed")
	})
}

// TestWebSocketPrivate: a private function's token is checked before
// the upgrade, and the function never sees it.
func TestWebSocketPrivate(t *testing.T) {
	s := startServer(t)
	s.deployCode(t, "ws", []byte(wsFunction), "")
	s.mustSpry("config", "ws", "--access", "private")
	for _, tok := range []string{"", "wrong"} {
		h := map[string]string{}
		if tok != "" {
			h["Authorization"] = "Bearer " + tok
		}
		if _, r := s.wsDial(t, "/fn/admin/ws/", h, 401); r.errorCode(t) != "unauthenticated" {
			t.Fatalf("token %q: %d %s", tok, r.status, r.body)
		}
	}
	w, _ := s.wsDial(t, "/fn/admin/ws/", map[string]string{"Authorization": "Bearer " + s.token}, 101)
	if op, p, err := w.message(); err != nil || op != wsText || !strings.HasPrefix(string(p), "hello ") {
		t.Fatalf("%d %q %v", op, p, err)
	}
	w.send("auth?")
	w.expect(wsText, []byte("auth: none"))

	// Revoking the token that opened one closes it; the admin's stays.
	tok, stderr, code := s.spry("", "token", "create", "svc", "--scope", "invoke")
	id := regexp.MustCompile(`created token ([0-9a-f]{16})`).FindStringSubmatch(stderr)
	if code != 0 || id == nil {
		t.Fatalf("token create: %d %s", code, stderr)
	}
	svc, _ := s.wsDial(t, "/fn/admin/ws/", map[string]string{"Authorization": "Bearer " + strings.TrimSpace(tok)}, 101)
	if _, _, err := svc.message(); err != nil {
		t.Fatal(err)
	}
	s.mustSpry("token", "revoke", id[1])
	_ = svc.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if op, p, err := svc.message(); err == nil {
		t.Fatalf("the revoked token's WebSocket is open: %d %q", op, p)
	} else if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal("the revoked token's WebSocket was not closed")
	}
	w.send("auth?")
	w.expect(wsText, []byte("auth: none"))
}

// TestWebSocketNode: Node's fetch contract has no way to accept a
// WebSocket; an upgrade gets a platform error that says so, at once.
func TestWebSocketNode(t *testing.T) {
	s := startServer(t)
	s.deployCode(t, "wsn", []byte(wsFunction), "runtime=node")
	begun := time.Now()
	_, r := s.wsDial(t, "/fn/admin/wsn/", nil, 501)
	if r.errorCode(t) != "not_implemented" || !strings.Contains(string(r.body), "Deno") {
		t.Fatalf("%d %s", r.status, r.body)
	}
	if d := time.Since(begun); d > 10*time.Second {
		t.Fatalf("the 501 took %v", d)
	}
	if r := s.get("/fn/admin/wsn/"); r.status != 200 || string(r.body) != "plain 1" {
		t.Fatalf("a plain request: %d %q", r.status, r.body)
	}
}
