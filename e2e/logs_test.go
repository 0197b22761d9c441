package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// TestLogs: a function's output, access lines and crash reasons are in
// its logs, filtered by version and time, followed live, kept across a
// restart, and gone with the function.
func TestLogs(t *testing.T) {
	s := startServer(t)
	code := func(v string) []byte {
		return []byte(`export default { async fetch(req) {
			const p = new URL(req.url).pathname;
			if (p === "/slow") {
				await new Promise((r) => setTimeout(r, 1500));
				console.log("` + v + ` late line");
				return new Response("late");
			}
			console.log("` + v + ` says " + p);
			console.error("` + v + ` warns");
			if (p === "/crash") Deno.exit(9);
			return new Response("ok");
		} }`)
	}
	s.deployCode(t, "talk", code("one"), "")
	s.get("/fn/admin/talk/hello")
	s.get("/fn/admin/talk/crash")
	eventually(t, 5*time.Second, "v1 lines", func() bool {
		out, _, _ := s.spry("", "logs", "talk")
		return strings.Contains(out, "stdout one says /hello") && strings.Contains(out, "stderr one warns") &&
			strings.Contains(out, "access GET /fn/admin/talk/hello 200") && strings.Contains(out, "cold") &&
			strings.Contains(out, "system instance ended") && strings.Contains(out, "exit status 9")
	})
	mark := time.Now()
	time.Sleep(20 * time.Millisecond)
	if r := s.putCode(s.token, "talk", code("two"), ""); r.status != 200 {
		t.Fatalf("%d %s", r.status, r.body)
	}

	// Follow: new lines arrive as they are written.
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, s.bin, "logs", "talk", "--follow", "--version", "2")
	cmd.Env = []string{"SPRY_URL=" + s.url, "SPRY_TOKEN=" + s.token, "HOME=" + t.TempDir()}
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			got <- sc.Text()
		}
		close(got)
	}()
	time.Sleep(300 * time.Millisecond)
	s.get("/fn/admin/talk/live")
	deadline := time.After(10 * time.Second)
wait:
	for {
		select {
		case l, ok := <-got:
			if !ok {
				t.Fatal("follow ended")
			}
			if strings.Contains(l, "one says") {
				t.Fatalf("--version 2 printed a version 1 line: %s", l)
			}
			if strings.Contains(l, "two says /live") {
				break wait
			}
		case <-deadline:
			t.Fatal("a live line did not arrive while following")
		}
	}
	cancel()
	cmd.Wait()

	// --since and --version filter.
	out := s.mustSpry("logs", "talk", "--since", time.Since(mark).Round(time.Millisecond).String())
	if strings.Contains(out, "one says") || !strings.Contains(out, "two says /live") {
		t.Fatalf("--since:\n%s", out)
	}
	if out := s.mustSpry("logs", "talk", "--version", "1"); strings.Contains(out, "two says") || !strings.Contains(out, "one says") {
		t.Fatalf("--version 1:\n%s", out)
	}

	// Kept across a restart; gone with the function.
	s.restart()
	if out := s.mustSpry("logs", "talk"); !strings.Contains(out, "one says /hello") {
		t.Fatalf("after restart:\n%s", out)
	}
	// A request still running when its function is deleted (the delete
	// kills its instance) may have lines on their way after the delete:
	// they must not land in a new function made under the same name.
	slow := make(chan struct{})
	go func() { defer close(slow); s.get("/fn/admin/talk/slow") }()
	time.Sleep(500 * time.Millisecond)
	s.mustSpry("rm", "talk")
	if r := s.putCode(s.token, "talk", code("three"), ""); r.status != 201 {
		t.Fatalf("%d", r.status)
	}
	<-slow
	s.get("/fn/admin/talk/new")
	eventually(t, 5*time.Second, "the new function's line", func() bool {
		out, _, _ := s.spry("", "logs", "talk")
		return strings.Contains(out, "three says /new")
	})
	time.Sleep(300 * time.Millisecond) // past a flush of the log store
	if out := s.mustSpry("logs", "talk"); strings.Contains(out, "one says") || strings.Contains(out, "late line") || strings.Contains(out, "/slow") {
		t.Fatalf("a deleted function's logs reached its successor:\n%s", out)
	}
}

// TestLogFollowLimit: a user keeps at most MaxFollowsPerUser follows open
// at once, and each gets its response head at once, before any line.
func TestLogFollowLimit(t *testing.T) {
	s := startServer(t)
	s.deployCode(t, "quiet", []byte(`export default { fetch() { return new Response("ok") } }`), "")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	follow := func() *http.Response {
		req, _ := http.NewRequestWithContext(ctx, "GET", s.url+"/api/v1/functions/quiet/logs?follow=1", nil)
		req.Header.Set("Authorization", "Bearer "+s.token)
		// Without a head the client would wait for it: bound that.
		c := &http.Client{Transport: &http.Transport{ResponseHeaderTimeout: 5 * time.Second}}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("follow: %v", err)
		}
		return resp
	}
	var open []*http.Response
	for range 16 {
		resp := follow()
		if resp.StatusCode != 200 {
			t.Fatalf("follow %d: %d", len(open)+1, resp.StatusCode)
		}
		open = append(open, resp)
	}
	resp := follow()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 429 || !strings.Contains(string(body), "rate_limited") {
		t.Fatalf("follow 17: %d %s", resp.StatusCode, body)
	}
	open[0].Body.Close()
	eventually(t, 5*time.Second, "a follow after one ended", func() bool {
		resp := follow()
		if resp.StatusCode == 200 {
			open[0] = resp
			return true
		}
		resp.Body.Close()
		return false
	})
	for _, r := range open {
		r.Body.Close()
	}
}

// TestClientHangUpDuringUpload: a client that hangs up while its upload
// is still on its way to a function that has not read it is noticed too
// (the router, blocked sending the body, cannot read the client): the
// access line says 499 at once, not at the function's timeout, and the
// instance serves on. (Deno aborts req.signal for such a request only
// once the function reads its body or answers.)
func TestClientHangUpDuringUpload(t *testing.T) {
	s := startServer(t)
	code := []byte(`export default { async fetch(req) {
		if (req.method !== "POST") return new Response("still here");
		console.log("waiting");
		await new Promise((resolve) => setTimeout(resolve, 30000));
		return new Response("late");
	} }`)
	s.deployCode(t, "upload", code, "")
	c := s.dial(t)
	fmt.Fprintf(c, "POST /fn/admin/upload/ HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n", 64<<20)
	var sent atomic.Int64
	go func() {
		chunk := make([]byte, 32<<10)
		for {
			n, err := c.Write(chunk)
			sent.Add(int64(n))
			if err != nil {
				return
			}
		}
	}()
	eventually(t, 10*time.Second, "the function to start waiting", func() bool {
		out, _, _ := s.spry("", "logs", "upload")
		return strings.Contains(out, "waiting")
	})
	// Until every buffer on the way is full: the function reads nothing.
	for last := int64(-1); sent.Load() != last; time.Sleep(200 * time.Millisecond) {
		last = sent.Load()
	}
	c.(*net.TCPConn).SetLinger(0) // a FIN would queue behind the unsent body
	c.Close()
	eventually(t, 5*time.Second, "a 499 access line", func() bool {
		out, _, _ := s.spry("", "logs", "upload")
		return strings.Contains(out, "access POST /fn/admin/upload/ 499")
	})
	if r := s.get("/fn/admin/upload/"); r.status != 200 || string(r.body) != "still here" || r.header.Get("Spry-Cold-Start") != "" {
		t.Fatalf("after the hang-up: %d %q cold=%q; want the same instance to answer", r.status, r.body, r.header.Get("Spry-Cold-Start"))
	}
}

// TestSlowUploadDoesNotKillTheInstance: when a function's time runs out
// while its body is still coming, the client gets 408 and the instance,
// which was only waiting for the body, serves the next request.
func TestSlowUploadDoesNotKillTheInstance(t *testing.T) {
	s := startServer(t)
	code := []byte(`export default { async fetch(req) {
		if (req.method !== "POST") return new Response("still here");
		return new Response(String((await req.arrayBuffer()).byteLength));
	} }`)
	s.deployCode(t, "slowup", code, "timeout=1s")
	// A warm instance first: the 1 s covers the wait for an instance too,
	// and a cold start on a slow host (an emulated one) can take longer.
	eventually(t, 30*time.Second, "a warm instance", func() bool {
		return s.get("/fn/admin/slowup/").status == 200
	})
	c := s.dial(t)
	fmt.Fprintf(c, "POST /fn/admin/slowup/ HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
	c.Write(make([]byte, 50000)) // half, then nothing
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusRequestTimeout {
		t.Fatalf("status %d, want 408", res.StatusCode)
	}
	if r := s.get("/fn/admin/slowup/"); r.status != 200 || string(r.body) != "still here" || r.header.Get("Spry-Cold-Start") != "" {
		t.Fatalf("after the timeout: %d %q cold=%q; want the same instance to answer", r.status, r.body, r.header.Get("Spry-Cold-Start"))
	}
}

// TestClientHangUp: a client that hangs up while its function computes
// aborts the function's request.signal (Deno and Node), the access line
// says 499, and the instance stays to serve the next request.
func TestClientHangUp(t *testing.T) {
	s := startServer(t)
	code := []byte(`export default { async fetch(req) {
		if (new URL(req.url).pathname !== "/wait") return new Response("still here");
		console.log("waiting");
		await new Promise((resolve) => {
			req.signal.addEventListener("abort", () => { console.log("aborted by the client"); resolve(); });
			setTimeout(resolve, 20000);
		});
		return new Response("late");
	} }`)
	for _, rt := range []string{"deno", "node"} {
		t.Run(rt, func(t *testing.T) {
			name := "hang-" + rt
			s.deployCode(t, name, code, "runtime="+rt)
			c := s.dial(t)
			fmt.Fprintf(c, "GET /fn/admin/%s/wait HTTP/1.1\r\nHost: x\r\n\r\n", name)
			eventually(t, 10*time.Second, "the function to start waiting", func() bool {
				out, _, _ := s.spry("", "logs", name)
				return strings.Contains(out, "waiting")
			})
			c.Close()
			eventually(t, 5*time.Second, "the abort and a 499 access line", func() bool {
				out, _, _ := s.spry("", "logs", name)
				return strings.Contains(out, "aborted by the client") && strings.Contains(out, "access GET /fn/admin/"+name+"/wait 499")
			})
			if r := s.get("/fn/admin/" + name + "/"); r.status != 200 || string(r.body) != "still here" || r.header.Get("Spry-Cold-Start") != "" {
				t.Fatalf("after the hang-up: %d %q cold=%q; want the same instance to answer", r.status, r.body, r.header.Get("Spry-Cold-Start"))
			}
		})
	}
}

// A function whose import fails: the instance is handed out before its
// import ends, so the runtime answers the waiting request with the error,
// the instance's end is logged with it, and a fixed version serves.
func TestImportFailureIsAnswered(t *testing.T) {
	s := startServer(t)
	for _, rt := range []string{"deno", "node"} {
		t.Run(rt, func(t *testing.T) {
			name := "broken-" + rt
			s.deployCode(t, name, []byte(`if (globalThis.fetch) throw new Error("no config found"); export default { fetch() { return new Response("never"); } }`), "runtime="+rt)
			for i := 0; i < 2; i++ {
				r := s.get("/fn/admin/" + name + "/")
				if r.status != 502 || r.errorCode(t) != "function_failed" || !strings.Contains(string(r.body), "the function failed to load: no config found") {
					t.Fatalf("call %d: %d %s", i, r.status, r.body)
				}
			}
			eventually(t, 10*time.Second, "the instance's end, with the cause, in the logs", func() bool {
				out, _, _ := s.spry("", "logs", name)
				return strings.Contains(out, "instance ended: the function failed to load: no config found")
			})
			if r := s.putCode(s.token, name, []byte(`export default { fetch() { return new Response("fixed"); } }`), "runtime="+rt); r.status != 200 {
				t.Fatalf("redeploy: %d %s", r.status, r.body)
			}
			if r := s.get("/fn/admin/" + name + "/"); r.status != 200 || string(r.body) != "fixed" {
				t.Fatalf("fixed version: %d %s", r.status, r.body)
			}
		})
	}
}

// A top level slower than the function's timeout: the requests that
// waited for it time out (504), but the instance is not taken for stuck,
// and once loaded it serves, warm.
func TestSlowImportOutlivesTimeouts(t *testing.T) {
	s := startServer(t)
	for _, rt := range []string{"deno", "node"} {
		t.Run(rt, func(t *testing.T) {
			name := "slow-init-" + rt
			s.deployCode(t, name, []byte(`await new Promise((r) => setTimeout(r, 2500)); export default { fetch() { return new Response("ready"); } }`), "timeout=1s&runtime="+rt)
			r := s.get("/fn/admin/" + name + "/")
			if r.status != 504 || r.errorCode(t) != "timeout" {
				t.Fatalf("first call: %d %s, want 504 while the module loads", r.status, r.body)
			}
			eventually(t, 10*time.Second, "the loaded instance to answer", func() bool {
				r = s.get("/fn/admin/" + name + "/")
				return r.status == 200
			})
			if string(r.body) != "ready" || r.header.Get("Spry-Cold-Start") != "" {
				t.Fatalf("%q cold=%q, want the first instance to answer, warm", r.body, r.header.Get("Spry-Cold-Start"))
			}
		})
	}
}

// TestLogFollowEnds: `spry logs -f` says why its follow ended, with the
// exit code of the reason: the function was deleted (4), or the server is
// shutting down (6), which a follow no longer holds up.
func TestLogFollowEnds(t *testing.T) {
	s := startServer(t)
	code := []byte(`export default { fetch() { console.log("hi"); return new Response("ok") } }`)
	// follow starts `spry logs NAME -f` and waits until it prints the
	// function's line, so that the follow is under way.
	follow := func(name string) (*exec.Cmd, *syncBuffer) {
		s.deployCode(t, name, code, "")
		s.get("/fn/admin/" + name + "/")
		cmd := exec.Command(s.bin, "logs", name, "--follow")
		cmd.Env = []string{"SPRY_URL=" + s.url, "SPRY_TOKEN=" + s.token, "HOME=" + t.TempDir()}
		var out, errOut syncBuffer
		cmd.Stdout, cmd.Stderr = &out, &errOut
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill() })
		eventually(t, 10*time.Second, "the follow to print the line", func() bool { return strings.Contains(out.String(), "stdout hi") })
		return cmd, &errOut
	}
	exit := func(cmd *exec.Cmd) int {
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("spry logs -f did not end")
		}
		return cmd.ProcessState.ExitCode()
	}

	cmd, stderr := follow("doomed")
	s.mustSpry("rm", "doomed")
	if code := exit(cmd); code != 4 || !strings.Contains(stderr.String(), "was deleted") {
		t.Errorf("after a delete: exit %d, stderr %q", code, stderr.String())
	}

	cmd, stderr = follow("kept")
	start := time.Now()
	s.stop()
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("the server took %v to stop with a follow open", d)
	}
	if code := exit(cmd); code != 6 || !strings.Contains(stderr.String(), "shutting down") {
		t.Errorf("after a shutdown: exit %d, stderr %q", code, stderr.String())
	}
}

// TestLogReadLimit: a user has at most MaxReadsPerUser log reads in
// progress at once. A read holds its entries (up to 8 MiB of lines) until
// the client has taken them, so clients that read nothing pinned the
// server's memory 8 MiB a connection, as many as they opened.
func TestLogReadLimit(t *testing.T) {
	s := startServer(t)
	s.deployCode(t, "chatty", []byte(`export default { fetch() {
		const l = "z".repeat(16000);
		for (let i = 0; i < 400; i++) console.log(i + " " + l);
		return new Response("ok");
	} }`), "")
	for i := 0; i < 25; i++ {
		s.get("/fn/admin/chatty/")
	}
	eventually(t, 10*time.Second, "megabytes of logs", func() bool {
		r := s.do("GET", "/api/v1/functions/chatty/logs?limit=10000", s.token, nil, nil)
		return len(r.body) > 6<<20
	})
	// Clients that take nothing of their answers but its status line.
	// A read the server has sent whole may still count for a moment after
	// its client has it all, so a stuck read refused for that is made
	// again.
	var stuck []net.Conn
	for i := 0; i < 4; i++ {
		eventually(t, 10*time.Second, "a stuck read to start", func() bool {
			d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
				return c.Control(func(fd uintptr) { _ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
			}}
			c, err := d.Dial("tcp", s.addr)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.WriteString(c, "GET /api/v1/functions/chatty/logs?limit=10000 HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer "+s.token+"\r\n\r\n"); err != nil {
				t.Fatal(err)
			}
			status := make([]byte, len("HTTP/1.1 200"))
			if _, err := io.ReadFull(c, status); err != nil || string(status) != "HTTP/1.1 200" {
				t.Logf("stuck read %d: %q %v; again", i, status, err)
				c.Close()
				return false
			}
			stuck = append(stuck, c)
			return true
		})
	}
	defer func() {
		for _, c := range stuck {
			c.Close()
		}
	}()
	eventually(t, 10*time.Second, "one read too many to be refused", func() bool {
		r := s.do("GET", "/api/v1/functions/chatty/logs?limit=1", s.token, nil, nil)
		return r.status == 429
	})
	// Once a stuck client goes, a read may start again.
	stuck[0].Close()
	eventually(t, 10*time.Second, "a read after one ended", func() bool {
		r := s.do("GET", "/api/v1/functions/chatty/logs?limit=1", s.token, nil, nil)
		return r.status == 200
	})
}
