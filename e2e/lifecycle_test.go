package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Functions the shutdown tests keep busy.
const (
	// slowFn answers after 1.5 s.
	slowFn = `export default { async fetch() { await new Promise((r) => setTimeout(r, 1500)); return new Response("finished"); } }`
	// streamFn streams ten chunks 150 ms apart.
	streamFn = `export default { fetch() {
  let i = 0;
  return new Response(new ReadableStream({ async pull(c) {
    if (i > 0) await new Promise((r) => setTimeout(r, 150));
    if (i === 10) { c.close(); return; }
    c.enqueue(new TextEncoder().encode("chunk" + i++ + "\n"));
  } }));
} }`
	// endlessFn streams a chunk every 100 ms, for ever.
	endlessFn = `export default { fetch() {
  return new Response(new ReadableStream({ async pull(c) {
    await new Promise((r) => setTimeout(r, 100));
    c.enqueue(new TextEncoder().encode("tick\n"));
  } }));
} }`
	// jobFn counts its runs in ctx.kv, taking 1.5 s over each.
	jobFn = `export default { async fetch(req, ctx) {
  const id = req.headers.get("spry-invocation-id") ?? "sync";
  await ctx.kv.set("started:" + id, ((await ctx.kv.get("started:" + id)) ?? 0) + 1);
  await new Promise((r) => setTimeout(r, 1500));
  return new Response("done");
} }`
)

// stream is a response being read as it comes.
type stream struct {
	mu   sync.Mutex
	body bytes.Buffer
	err  error
	done chan struct{}
}

func (st *stream) String() string {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.body.String()
}

// openStream GETs path on a connection of its own and reads the body
// into a stream until it ends.
func (s *server) openStream(t *testing.T, path string) *stream {
	t.Helper()
	st := &stream{done: make(chan struct{})}
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	go func() {
		defer close(st.done)
		res, err := client.Get(s.url + path)
		if err != nil {
			st.err = err
			return
		}
		defer res.Body.Close()
		buf := make([]byte, 4096)
		for {
			n, err := res.Body.Read(buf)
			st.mu.Lock()
			st.body.Write(buf[:n])
			st.mu.Unlock()
			if err != nil {
				if err != io.EOF {
					st.mu.Lock()
					st.err = err
					st.mu.Unlock()
				}
				return
			}
		}
	}()
	return st
}

// signal sends sig to the server.
func (s *server) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := s.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
}

// waitExit waits up to d for the server to exit and returns how long
// that took and its exit code.
func (s *server) waitExit(t *testing.T, d time.Duration) (time.Duration, int) {
	t.Helper()
	t0 := time.Now()
	select {
	case <-s.done:
	case <-time.After(d):
		t.Fatalf("spry serve did not exit within %v", d)
	}
	return time.Since(t0), s.cmd.ProcessState.ExitCode()
}

// refusesConnections reports whether a new connection to the server's
// address is refused.
func (s *server) refusesConnections() bool {
	c, err := net.DialTimeout("tcp", s.addr, time.Second)
	if err != nil {
		return true
	}
	c.Close()
	return false
}

// slirps lists the server's slirp4netns processes (its children: one
// per sandbox with a network), as "pid cmdline".
func (s *server) slirps() []string {
	ppid := fmt.Sprintf("\nPPid:\t%d\n", s.cmd.Process.Pid)
	var out []string
	for _, p := range liveProcs(func(_ int, cmd string) bool { return strings.Contains(cmd, "slirp4netns") }) {
		var pid int
		if _, err := fmt.Sscanf(p, "pid %d", &pid); err != nil {
			continue
		}
		if status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid)); err == nil && strings.Contains(string(status), ppid) {
			out = append(out, p)
		}
	}
	return out
}

// stillLive lists those of procs (liveProcs' lines) that still run.
func stillLive(procs []string) []string {
	var out []string
	now := liveProcs(func(int, string) bool { return true })
	for _, p := range procs {
		if slices.Contains(now, p) {
			out = append(out, p)
		}
	}
	return out
}

// checkNoLeftovers fails t if anything of the stopped server's is left:
// a process of its uids, one of slirps (its slirp4netns processes, as
// slirps listed them while it ran), its cgroup subtree, its run
// directory (the instances' sockets and code).
func (s *server) checkNoLeftovers(t *testing.T, slirps []string) {
	t.Helper()
	s.checkNothingLeft()
	if left := stillLive(slirps); len(left) > 0 {
		t.Errorf("slirp4netns left behind:\n%s", strings.Join(left, "\n"))
	}
	run := s.runDir()
	if _, err := os.Stat(run); !os.IsNotExist(err) {
		t.Errorf("run dir %s left behind (%v)", run, err)
	}
	if dirs := s.cgroupDirs(t); len(dirs) > 0 {
		t.Errorf("cgroups left behind: %v", dirs)
	}
}

// TestShutdownDrains: on SIGTERM the server refuses new connections at
// once, and lets what is in flight finish: a slow request, a streamed
// response, an asynchronous invocation's attempt and a deploy whose body
// is still coming; a `spry logs --follow` ends. Then it exits 0 as soon
// as the last one ended (well before --shutdown-timeout), leaving nothing
// behind; the next start runs nothing again that had finished.
func TestShutdownDrains(t *testing.T) {
	s := startServer(t, "--shutdown-timeout", "20s")
	s.deployCode(t, "slow", []byte(slowFn), "")
	s.deployCode(t, "stream", []byte(streamFn), "")
	s.deployCode(t, "job", []byte(jobFn), "")
	// Warm: each call below is in its function by the time of the signal.
	for _, fn := range []string{"slow", "stream"} {
		if r := s.get("/fn/admin/" + fn + "/"); r.status != 200 {
			t.Fatalf("%s: %d %s", fn, r.status, r.body)
		}
	}

	// spry logs --follow, once it has printed what is there.
	follow := exec.Command(s.bin, "logs", "slow", "--follow")
	follow.Env = []string{"SPRY_URL=" + s.url, "SPRY_TOKEN=" + s.token, "HOME=" + t.TempDir()}
	var followOut syncBuffer
	follow.Stdout, follow.Stderr = &followOut, &followOut
	if err := follow.Start(); err != nil {
		t.Fatal(err)
	}
	followDone := make(chan error, 1)
	go func() { followDone <- follow.Wait() }()
	t.Cleanup(func() { _ = follow.Process.Kill() })
	eventually(t, 10*time.Second, "logs --follow to print the access line", func() bool {
		return strings.Contains(followOut.String(), "GET /")
	})

	// An asynchronous invocation, running.
	job := strings.TrimSpace(s.mustSpry("invoke", "job", "--async", "-d", "x"))
	eventually(t, 10*time.Second, "the invocation to run", func() bool {
		return s.do("GET", "/api/v1/functions/job/kv/started:"+job, s.token, nil, nil).status == 200
	})

	// A deploy whose body has half arrived.
	code := []byte(`export default { fetch() { return new Response("deployed during shutdown"); } }`)
	deploy := s.dial(t)
	fmt.Fprintf(deploy, "PUT /api/v1/functions/late HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Type: application/typescript\r\nContent-Length: %d\r\n\r\n", s.token, len(code))
	half := len(code) / 2
	if _, err := deploy.Write(code[:half]); err != nil {
		t.Fatal(err)
	}

	// A slow request and a stream, in their functions.
	var slow response
	slowDone := make(chan struct{})
	go func() {
		defer close(slowDone)
		res, err := (&http.Client{Transport: &http.Transport{DisableKeepAlives: true}}).Get(s.url + "/fn/admin/slow/")
		if err != nil {
			t.Errorf("the slow request: %v", err)
			return
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		slow = response{status: res.StatusCode, body: b}
	}()
	st := s.openStream(t, "/fn/admin/stream/")
	eventually(t, 10*time.Second, "the slow request inside its function and the stream under way", func() bool {
		return s.metric(t, "spry_instances{", `function="slow"`, `state="busy"`) == 1 && strings.Contains(st.String(), "chunk0")
	})

	slirps := s.slirps()
	if len(slirps) == 0 {
		t.Error("no slirp4netns to see gone: the functions have no network")
	}
	s.signal(t, syscall.SIGTERM)
	t0 := time.Now()
	eventually(t, 5*time.Second, "new connections to be refused", s.refusesConnections)
	if _, err := deploy.Write(code[half:]); err != nil {
		t.Fatalf("the rest of the deploy's body: %v", err)
	}
	deployRes, err := http.ReadResponse(bufio.NewReader(deploy), nil)
	if err != nil {
		t.Fatalf("the deploy's response: %v", err)
	}
	deployBody, _ := io.ReadAll(deployRes.Body)
	if deployRes.StatusCode != 201 {
		t.Errorf("the deploy under way: %d %s", deployRes.StatusCode, deployBody)
	}
	<-slowDone
	if slow.status != 200 || string(slow.body) != "finished" {
		t.Errorf("the slow request: %d %q", slow.status, slow.body)
	}
	<-st.done
	if want := "chunk0\nchunk1\nchunk2\nchunk3\nchunk4\nchunk5\nchunk6\nchunk7\nchunk8\nchunk9\n"; st.String() != want || st.err != nil {
		t.Errorf("the stream: %q (%v), want all ten chunks", st.String(), st.err)
	}
	select {
	case <-followDone:
	case <-time.After(5 * time.Second):
		t.Errorf("logs --follow still runs 5s after SIGTERM")
	}
	if !strings.Contains(followOut.String(), "shutting down") {
		t.Errorf("logs --follow did not say why it ended: %q", followOut.String())
	}
	if _, exit := s.waitExit(t, 15*time.Second); exit != 0 {
		t.Errorf("exit code %d", exit)
	}
	t.Logf("exited %v after SIGTERM", time.Since(t0))
	s.checkNoLeftovers(t, slirps)

	// The next start: the invocation finished (once), the deploy is there.
	s.start()
	if v := s.waitInvocation(t, "job", job, "succeeded"); v["attempts"] != 1.0 {
		t.Errorf("the invocation after the restart: %v", v)
	}
	if r := s.do("GET", "/api/v1/functions/job/kv/started:"+job, s.token, nil, nil); r.json(t)["value"] != 1.0 {
		t.Errorf("the invocation ran more than once: %s", r.body)
	}
	if r := s.get("/fn/admin/late/"); r.status != 200 || string(r.body) != "deployed during shutdown" {
		t.Errorf("the function deployed during the drain: %d %q", r.status, r.body)
	}
}

// cgroupDirs lists the server's cgroup subtrees that exist: on cgroup
// v2 /sys/fs/cgroup/spry/<id>; on v1 one per controller, nested in this
// process's own group of that controller.
func (s *server) cgroupDirs(t *testing.T) []string {
	t.Helper()
	id := filepath.Base(s.runDir())
	var dirs []string
	if _, err := os.Stat("/sys/fs/cgroup/spry/" + id); err == nil {
		dirs = append(dirs, "/sys/fs/cgroup/spry/"+id)
	}
	own, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(own)), "\n") {
		f := strings.SplitN(line, ":", 3)
		if len(f) != 3 || f[1] == "" || strings.HasPrefix(f[1], "name=") {
			continue
		}
		for _, ctrl := range strings.Split(f[1], ",") {
			d := filepath.Join("/sys/fs/cgroup", ctrl, f[2], "spry", id)
			if _, err := os.Stat(d); err == nil && !slices.Contains(dirs, d) {
				dirs = append(dirs, d)
			}
		}
	}
	return dirs
}

// TestShutdownDrainBounded: what is still in flight at --shutdown-timeout
// (a stream that never ends) is cut off with the instances, and the
// server exits 0 then, leaving nothing behind.
func TestShutdownDrainBounded(t *testing.T) {
	s := startServer(t, "--shutdown-timeout", "2s")
	s.deployCode(t, "endless", []byte(endlessFn), "")
	st := s.openStream(t, "/fn/admin/endless/")
	eventually(t, 10*time.Second, "the stream under way", func() bool { return strings.Contains(st.String(), "tick") })
	slirps := s.slirps()
	s.signal(t, syscall.SIGTERM)
	took, exit := s.waitExit(t, 15*time.Second)
	if exit != 0 {
		t.Errorf("exit code %d", exit)
	}
	// The drain's bound, and then a little for the instances' stop.
	if took < 2*time.Second || took > 8*time.Second {
		t.Errorf("exited %v after SIGTERM, want a little over --shutdown-timeout 2s", took)
	}
	select {
	case <-st.done:
	case <-time.After(5 * time.Second):
		t.Fatal("the stream goes on after the server exited")
	}
	s.checkNoLeftovers(t, slirps)
}

// TestShutdownSecondSignal: a second SIGTERM or SIGINT during the drain
// ends it at once: the server does not wait out --shutdown-timeout for
// what is in flight, yet still stops every instance, leaving nothing
// behind, and exits 0.
func TestShutdownSecondSignal(t *testing.T) {
	for _, second := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		t.Run(second.String(), func(t *testing.T) {
			s := startServer(t, "--shutdown-timeout", "60s")
			s.deployCode(t, "endless", []byte(endlessFn), "")
			st := s.openStream(t, "/fn/admin/endless/")
			eventually(t, 10*time.Second, "the stream under way", func() bool { return strings.Contains(st.String(), "tick") })
			slirps := s.slirps()
			s.signal(t, syscall.SIGTERM)
			// Draining: the stream goes on.
			eventually(t, 5*time.Second, "new connections to be refused", s.refusesConnections)
			n := strings.Count(st.String(), "tick")
			eventually(t, 5*time.Second, "the stream to go on during the drain", func() bool { return strings.Count(st.String(), "tick") > n+2 })
			s.signal(t, second)
			took, exit := s.waitExit(t, 30*time.Second)
			if exit != 0 {
				t.Errorf("exit code %d", exit)
			}
			if took > 5*time.Second {
				t.Errorf("exited %v after the second signal, want at once", took)
			}
			<-st.done
			s.checkNoLeftovers(t, slirps)
		})
	}
}

// TestRestartAfterKill: after a clean stop and after kill -9, the next
// start on the data dir clears what the last one left, has min
// instances warm again, runs the schedule again, and runs no finished
// asynchronous invocation or scheduled time twice.
func TestRestartAfterKill(t *testing.T) {
	s := startServer(t)
	// Each scheduled time counted under its own key.
	s.deployCode(t, "ticker", []byte(`export default {
  fetch() { return new Response("hi"); },
  async scheduled(event, ctx) {
    const k = "at:" + event.scheduledTime;
    await ctx.kv.set(k, ((await ctx.kv.get(k)) ?? 0) + 1);
  },
}`), "min=1&cron="+"*+*+*+*+*+*")
	s.deployCode(t, "job", []byte(jobFn), "")
	job := strings.TrimSpace(s.mustSpry("invoke", "job", "--async", "-d", "x"))
	s.waitInvocation(t, "job", job, "succeeded")
	ticks := func() map[string]float64 {
		t.Helper()
		r := s.do("GET", "/api/v1/functions/ticker/kv?limit=1000&prefix=at:", s.token, nil, nil)
		if r.status != 200 {
			t.Fatalf("kv: %d %s", r.status, r.body)
		}
		var l struct {
			Entries []struct {
				Key   string
				Value float64
			}
		}
		if err := json.Unmarshal(r.body, &l); err != nil {
			t.Fatal(err)
		}
		out := map[string]float64{}
		for _, e := range l.Entries {
			out[e.Key] = e.Value
		}
		return out
	}
	for _, how := range []string{"SIGTERM", "kill -9"} {
		eventually(t, 10*time.Second, "a warm instance", func() bool { return s.running(t, "ticker") == 1 })
		before := len(ticks())
		eventually(t, 10*time.Second, "two more scheduled runs", func() bool { return len(ticks()) >= before+2 })
		left := append(s.sandboxProcs(), s.slirps()...)
		if how == "kill -9" {
			s.kill9()
		} else {
			s.stop()
			s.checkNoLeftovers(t, left)
		}
		s.start()
		eventually(t, 10*time.Second, "the last server's sandboxes and slirp4netns to be gone", func() bool { return len(stillLive(left)) == 0 })
		eventually(t, 10*time.Second, "a warm instance after the "+how, func() bool { return s.running(t, "ticker") == 1 })
		n := len(ticks())
		eventually(t, 10*time.Second, "scheduled runs after the "+how, func() bool { return len(ticks()) >= n+2 })
		for k, v := range ticks() {
			if v != 1 {
				t.Errorf("after the %s: scheduled time %s ran %v times", how, k, v)
			}
		}
		if v := s.invocation(t, "job", job); v["status"] != "succeeded" || v["attempts"] != 1.0 {
			t.Errorf("after the %s: the finished invocation: %v", how, v)
		}
		if r := s.do("GET", "/api/v1/functions/job/kv/started:"+job, s.token, nil, nil); r.json(t)["value"] != 1.0 {
			t.Errorf("after the %s: the finished invocation ran again: %s", how, r.body)
		}
	}
}

// TestHangUpDoesNotKill: without TLS, SIGHUP has nothing to reload; the
// server serves on (it used to die of it, with no drain and nothing
// cleared), and SIGTERM then stops it cleanly.
func TestHangUpDoesNotKill(t *testing.T) {
	s := startServer(t)
	s.deployCode(t, "hello", example(t, "hello.ts"), "")
	if r := s.get("/fn/admin/hello?name=A"); r.status != 200 {
		t.Fatalf("%d %s", r.status, r.body)
	}
	slirps := s.slirps()
	s.signal(t, syscall.SIGHUP)
	died := false
	eventually(t, 5*time.Second, "the SIGHUP to be logged", func() bool {
		select {
		case <-s.done:
			died = true
			return true
		default:
		}
		return strings.Contains(s.logs.String(), "SIGHUP: nothing to reload")
	})
	if died {
		t.Fatalf("spry serve died of SIGHUP: %v", s.cmd.ProcessState)
	}
	if r := s.get("/fn/admin/hello?name=B"); r.status != 200 || string(r.body) != "Hello, B\n" {
		t.Fatalf("after SIGHUP: %d %q", r.status, r.body)
	}
	s.signal(t, syscall.SIGTERM)
	if _, exit := s.waitExit(t, 15*time.Second); exit != 0 {
		t.Errorf("exit code %d", exit)
	}
	s.checkNoLeftovers(t, slirps)
}
