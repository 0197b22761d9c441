package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spry-run/spry/internal/nettest"
)

// attack is one hostile function. Its code answers JSON {"ok": bool,
// "detail": string}: ok means the attack was contained. Some attacks kill
// their own instance instead; want then names the status the caller must
// get.
type attack struct {
	name     string
	code     string
	query    string // settings for the deploy
	status   int    // expected status; 0 means 200 with ok=true
	errCode  string // expected error code when status is not 200
	logWants string // a line the function's logs must hold afterwards
}

// contained wraps a body that throws when the attack succeeds.
func contained(body string) string {
	return `export default { async fetch(req, ctx) {
		try {
			const detail = await (async () => { ` + body + ` })();
			return Response.json({ ok: false, detail: String(detail) });
		} catch (e) {
			return Response.json({ ok: true, detail: e.name + ": " + e.message });
		}
	} }`
}

// hostTargets are what the test puts on the host for the attacks to
// try: a TCP listener on its loopback, an abstract Unix socket, and the
// server's pid.
type hostTargets struct {
	port      string
	udpPort   string
	abstract  string // without its leading NUL
	serverPid int
}

// nodeConnect is a Node function's body that connects with net.connect
// options opts (a JavaScript object) and says so.
func nodeConnect(opts string) string {
	return `const net = await import("node:net");
		return await new Promise((resolve, reject) => {
			const c = net.connect(` + opts + `, () => { c.destroy(); resolve("connected"); });
			c.on("error", reject);
			setTimeout(() => { c.destroy(); reject(new Error("no answer in 3 s")); }, 3000);
		});`
}

// nodeUDP is a Node function's body that sends a datagram to port on the
// host's loopback and through slirp4netns's gateway (the host), then
// throws: whether any arrived, the host's listener tells.
func nodeUDP(port string) string {
	return `const dgram = await import("node:dgram");
		const s = dgram.createSocket("udp4");
		const errs = [];
		for (const to of ["127.0.0.1", "10.0.2.2"]) {
			await new Promise((resolve) => s.send("x", ` + port + `, to, (err) => { if (err) errs.push(to + ": " + err.code); resolve(); }));
		}
		s.close();
		throw new Error("sent (" + errs.join(", ") + "); the host counts what arrives");`
}

func hostileAttacks(dataDir, spryAddr, otherSocket string, host hostTargets) []attack {
	return []attack{
		{name: "read-shadow", code: contained(`return await Deno.readTextFile("/etc/shadow");`)},
		{name: "read-passwd", code: contained(`return await Deno.readTextFile("/etc/passwd");`)},
		{name: "read-proc1-environ", code: contained(`return await Deno.readTextFile("/proc/1/environ");`)},
		{name: "read-self-environ", code: contained(`return await Deno.readTextFile("/proc/self/environ");`)},
		{name: "read-data-dir-db", code: contained(`return (await Deno.readFile("` + filepath.Join(dataDir, "spry.db") + `")).length;`)},
		{name: "read-admin-token", code: contained(`return await Deno.readTextFile("` + filepath.Join(dataDir, "admin.token") + `");`)},
		{name: "list-root", code: contained(`const names = []; for await (const e of Deno.readDir("/")) names.push(e.name); return names.join(",");`)},
		{name: "list-code-dir", code: contained(`const names = []; for await (const e of Deno.readDir("/code")) names.push(e.name); if (names.length !== 1) return names.join(","); throw new Error("only its own bundle: " + names);`)},
		{name: "read-other-code", code: contained(`for await (const e of Deno.readDir("/run")) return e.name; throw new Error("no other instance visible");`)},
		{name: "read-env", code: contained(`return JSON.stringify(Deno.env.toObject());`)},
		{name: "spawn-subprocess", code: contained(`const o = await new Deno.Command("/bin/sh", { args: ["-c", "id"] }).output(); return new TextDecoder().decode(o.stdout);`)},
		{name: "ffi-dlopen-libc", code: contained(`return Deno.dlopen("libc.so.6", { getpid: { parameters: [], result: "i32" } });`)},
		{name: "write-outside-tmp", code: contained(`await Deno.writeTextFile("/code/pwned.js", "x"); return "wrote /code";`)},
		{name: "write-root", code: contained(`await Deno.writeTextFile("/pwned", "x"); return "wrote /";`)},
		{name: "connect-spry-api", code: contained(`const c = await Deno.connect({ hostname: "127.0.0.1", port: ` + spryPort(spryAddr) + ` }); c.close(); return "connected to spry";`)},
		{name: "fetch-spry-api-egress", query: "network=egress", code: contained(`const r = await fetch("http://127.0.0.1:` + spryPort(spryAddr) + `/api/v1/functions", { signal: AbortSignal.timeout(3000) }); return "status " + r.status;`)},
		{name: "connect-other-instance-socket", code: contained(`const c = await Deno.connect({ transport: "unix", path: "` + otherSocket + `" }); c.close(); return "connected to another instance";`)},
		{name: "metadata-service", query: "network=egress", code: contained(`const r = await fetch("http://169.254.169.254:8080/", { signal: AbortSignal.timeout(3000) }); return await r.text();`)},
		{name: "private-range", query: "network=egress", code: contained(`const r = await fetch("http://10.213.0.1:8080/", { signal: AbortSignal.timeout(3000) }); return await r.text();`)},
		{name: "no-network", query: "network=none", code: contained(`const r = await fetch("http://198.51.100.20:8080/", { signal: AbortSignal.timeout(3000) }); return await r.text();`)},
		{name: "raw-udp-to-host", query: "network=egress", code: contained(`const l = Deno.listenDatagram({ transport: "udp", hostname: "0.0.0.0", port: 0 }); await l.send(new Uint8Array([1]), { transport: "udp", hostname: "127.0.0.1", port: 53 }); return "sent";`)},
		// The host's loopback, where the test listens: Deno's permissions
		// stop it first, the network namespace and the egress rules after.
		{name: "connect-host-listener", code: contained(`const c = await Deno.connect({ hostname: "127.0.0.1", port: ` + host.port + ` }); c.close(); return "connected";`)},
		{name: "fetch-host-listener-egress", query: "network=egress", code: contained(`const r = await fetch("http://127.0.0.1:` + host.port + `/", { signal: AbortSignal.timeout(3000) }); return "status " + r.status;`)},
		{name: "connect-abstract-socket", code: contained(`const c = await Deno.connect({ transport: "unix", path: "\0` + host.abstract + `" }); c.close(); return "connected";`)},
		{name: "read-neighbour-tmp", code: contained(`return await Deno.readTextFile("/tmp/spry-neighbour");`)},
		// Node's permission model has no network scope: only the sandbox
		// stands between a Node function and the host's sockets.
		{name: "node-connect-spry-api", query: "runtime=node&network=none", code: contained(nodeConnect(`{ host: "127.0.0.1", port: ` + spryPort(spryAddr) + ` }`))},
		{name: "node-connect-spry-api-egress", query: "runtime=node&network=egress", code: contained(nodeConnect(`{ host: "127.0.0.1", port: ` + spryPort(spryAddr) + ` }`))},
		{name: "node-connect-host-listener", query: "runtime=node&network=none", code: contained(nodeConnect(`{ host: "127.0.0.1", port: ` + host.port + ` }`))},
		{name: "node-connect-host-listener-egress", query: "runtime=node&network=egress", code: contained(nodeConnect(`{ host: "127.0.0.1", port: ` + host.port + ` }`))},
		{name: "node-connect-gateway-egress", query: "runtime=node&network=egress", code: contained(nodeConnect(`{ host: "10.0.2.2", port: ` + host.port + ` }`))},
		{name: "node-connect-abstract-socket", query: "runtime=node&network=none", code: contained(nodeConnect(`{ path: "\0` + host.abstract + `" }`))},
		{name: "node-connect-abstract-socket-egress", query: "runtime=node&network=egress", code: contained(nodeConnect(`{ path: "\0` + host.abstract + `" }`))},
		{name: "node-connect-other-instance-socket", query: "runtime=node", code: contained(nodeConnect(`{ path: "` + otherSocket + `" }`))},
		{name: "node-connect-metadata", query: "runtime=node&network=egress", code: contained(nodeConnect(`{ host: "169.254.169.254", port: 8080 }`))},
		// UDP says nothing of where a datagram went: the host counts what
		// arrives at its listener.
		{name: "node-udp-to-host", query: "runtime=node&network=none", code: contained(nodeUDP(host.udpPort))},
		{name: "node-udp-to-host-egress", query: "runtime=node&network=egress", code: contained(nodeUDP(host.udpPort))},
		{name: "node-signal-everyone", query: "runtime=node", code: contained(`process.kill(-1, 0); return "another process is in reach";`)},
		{name: "node-signal-server", query: "runtime=node", code: contained(`process.kill(` + strconv.Itoa(host.serverPid) + `, 0); return "the server is in reach";`)},
		{name: "node-read-proc-cgroups", query: "runtime=node", code: contained(`const fs = await import("node:fs"); return fs.readFileSync("/proc/cgroups", "utf8");`)},
		{name: "node-read-mountinfo", query: "runtime=node", code: contained(`const fs = await import("node:fs"); return fs.readFileSync("/proc/self/mountinfo", "utf8");`)},
		{name: "node-list-fds", query: "runtime=node", code: contained(`const fs = await import("node:fs"); return fs.readdirSync("/proc/self/fd").join(",");`)},
		{name: "node-lower-oom-score", query: "runtime=node", code: contained(`const fs = await import("node:fs"); fs.writeFileSync("/proc/self/oom_score_adj", "0"); return "lowered";`)},
		{name: "node-symlink-out", query: "runtime=node", code: contained(`const fs = await import("node:fs"); fs.symlinkSync("/proc/self/environ", "/tmp/env"); return fs.readFileSync("/tmp/env", "utf8");`)},
		{name: "node-v8-natives", query: "runtime=node", code: contained(`const v8 = await import("node:v8"); v8.setFlagsFromString("--allow-natives-syntax");
			return "natives: " + new Function("return %GetOptimizationStatus(function () {})")();`)},
		{name: "node-read-neighbour-tmp", query: "runtime=node", code: contained(`const fs = await import("node:fs"); return fs.readFileSync("/tmp/spry-neighbour", "utf8");`)},
		{name: "node-list-other-code", query: "runtime=node", code: contained(`const fs = await import("node:fs"); return fs.readdirSync("/run").join(",");`)},
		{name: "node-fill-tmp", query: "runtime=node", code: contained(`const fs = await import("node:fs"); const chunk = Buffer.alloc(1 << 20);
			const fd = fs.openSync("/tmp/fill", "w"); for (let i = 0; i < 1024; i++) fs.writeSync(fd, chunk); return "wrote 1 GiB to /tmp";`)},
		{name: "fill-tmp", code: contained(`const chunk = new Uint8Array(1 << 20); const f = await Deno.open("/tmp/fill", { write: true, create: true });
			for (let i = 0; i < 1024; i++) await f.write(chunk); return "wrote 1 GiB to /tmp";`)},
		{name: "worker-bomb", code: contained(`const ws = []; for (let i = 0; i < 2000; i++) ws.push(new Worker("data:text/javascript,setInterval(()=>{},1000)", { type: "module" }));
			await new Promise((r) => setTimeout(r, 3000)); return "2000 workers";`), status: 502},
		{name: "out-of-memory", query: "memory=64Mi", code: `const keep = []; export default { fetch() { for (;;) keep.push(new Uint8Array(1 << 20).fill(1)); } }`,
			status: 502, errCode: "function_failed", logWants: "out of memory"},
		// V8 aborts at its heap limit before the cgroup kills: the user is
		// told it was memory, not "exit status 133" (Deno) or 134 (Node).
		{name: "heap-out-of-memory", query: "memory=64Mi", code: `const keep = []; export default { fetch() { for (;;) keep.push(new Array(100000).fill({ x: 1 })); } }`,
			status: 502, errCode: "function_failed", logWants: "JavaScript heap reached its limit"},
		{name: "node-heap-out-of-memory", query: "memory=64Mi&runtime=node", code: `const keep = []; export default { fetch() { for (;;) keep.push(new Array(100000).fill({ x: 1 })); } }`,
			status: 502, errCode: "function_failed", logWants: "JavaScript heap reached its limit"},
		{name: "spin-forever", query: "timeout=1s", code: `export default { fetch() { for (;;) {} } }`,
			status: 504, errCode: "timeout", logWants: "timeout"},
		{name: "huge-response", query: "timeout=3s", code: `export default { fetch() {
			const chunk = new Uint8Array(1 << 20);
			return new Response(new ReadableStream({ pull(c) { c.enqueue(chunk); } }));
		} }`, status: 200},
		{name: "slow-headers", query: "timeout=1s", code: `export default { async fetch() { await new Promise((r) => setTimeout(r, 60000)); return new Response("late"); } }`,
			status: 504, errCode: "timeout"},
	}
}

func spryPort(addr string) string { return addr[strings.LastIndex(addr, ":")+1:] }

// TestHostileFunctions deploys functions that each try one attack, and
// checks every attack fails while an innocent function keeps answering,
// the server stays healthy, and nothing is left behind.
func TestHostileFunctions(t *testing.T) {
	mountsBefore := countMounts(t)
	s := startServer(t)
	// Test hosts for the network attacks: a "public" one, the metadata
	// address and a private address, all inside a namespace this test
	// owns, so no packet can leave the machine.
	host := nettest.New(t, 8080, "198.51.100.20", "169.254.169.254", "10.213.0.1")

	// A listener on the host's loopback and an abstract Unix socket,
	// which no function may reach.
	var hostHits atomic.Int64
	accept := func(ln net.Listener) { nettest.CountAccepts(t, ln, &hostHits) }
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	accept(tcp)
	abstract := fmt.Sprintf("spry-hostile-%d", os.Getpid())
	aln, err := net.Listen("unix", "@"+abstract)
	if err != nil {
		t.Fatal(err)
	}
	accept(aln)
	udp, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { udp.Close() })
	go func() {
		b := make([]byte, 64)
		for {
			if _, _, err := udp.ReadFrom(b); err != nil {
				return
			}
			hostHits.Add(1)
		}
	}()
	targets := hostTargets{port: spryPort(tcp.Addr().String()), udpPort: spryPort(udp.LocalAddr().String()), abstract: abstract, serverPid: s.cmd.Process.Pid}

	s.deployCode(t, "innocent", example(t, "hello.ts"), "")
	// A neighbour leaves a file in its /tmp, which no other function sees.
	s.deployCode(t, "neighbour", []byte(`export default { async fetch() { await Deno.writeTextFile("/tmp/spry-neighbour", "secret"); return new Response("wrote"); } }`), "")
	if r := s.get("/fn/admin/neighbour"); r.status != 200 || string(r.body) != "wrote" {
		t.Fatalf("neighbour: %d %s", r.status, r.body)
	}
	// The innocent function answers throughout the attacks.
	stop := make(chan struct{})
	var innocentFailures, innocentCalls atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		c := &http.Client{Timeout: 10 * time.Second}
		for {
			select {
			case <-stop:
				return
			default:
			}
			res, err := c.Get(s.url + "/fn/admin/innocent?name=x")
			innocentCalls.Add(1)
			if err != nil {
				innocentFailures.Add(1)
				continue
			}
			b, _ := io.ReadAll(res.Body)
			res.Body.Close()
			if res.StatusCode != 200 || string(b) != "Hello, x\n" {
				innocentFailures.Add(1)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()

	// The innocent function's instance socket, as the host sees it: an
	// attacker who guessed it still must not reach it.
	s.get("/fn/admin/innocent")
	socks, _ := filepath.Glob(filepath.Join(s.runDir(), "i", "*", "sock", "http.sock"))
	if len(socks) == 0 {
		t.Fatal("found no instance socket")
	}
	attacks := hostileAttacks(s.data, s.addr, socks[0], targets)
	for _, a := range attacks {
		a := a
		t.Run(a.name, func(t *testing.T) {
			if r := s.putCode(s.token, a.name, []byte(a.code), a.query); r.status/100 != 2 {
				t.Fatalf("deploy: %d %s", r.status, r.body)
			}
			client := &http.Client{Timeout: 30 * time.Second}
			res, err := client.Get(s.url + "/fn/admin/" + a.name + "/")
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			if a.name == "huge-response" {
				// Read some, then hang up: the server must cope, and the
				// function's timeout bounds the stream anyway.
				n, _ := io.CopyN(io.Discard, res.Body, 64<<20)
				if res.StatusCode != 200 || n != 64<<20 {
					t.Fatalf("huge response: %d, read %d", res.StatusCode, n)
				}
				return
			}
			body, _ := io.ReadAll(io.LimitReader(res.Body, 1<<20))
			want := a.status
			if want == 0 {
				want = 200
			}
			if res.StatusCode != want {
				t.Fatalf("status %d, want %d: %s", res.StatusCode, want, body)
			}
			if want == 200 {
				var out struct {
					OK     bool   `json:"ok"`
					Detail string `json:"detail"`
				}
				if err := json.Unmarshal(body, &out); err != nil {
					t.Fatalf("bad answer %q", body)
				}
				if !out.OK {
					t.Fatalf("attack succeeded: %s", out.Detail)
				}
				t.Logf("contained: %s", out.Detail)
			} else if a.errCode != "" {
				r := response{status: res.StatusCode, header: res.Header, body: body}
				if code := r.errorCode(t); code != a.errCode {
					t.Fatalf("error code %q, want %q: %s", code, a.errCode, body)
				}
			}
			if a.logWants != "" {
				eventually(t, 5*time.Second, "the logs to say "+a.logWants, func() bool {
					out, _, _ := s.spry("", "logs", a.name)
					return strings.Contains(out, a.logWants)
				})
			}
		})
	}
	if n := host.Hits.Load(); n != 0 {
		t.Errorf("%d connections reached the test hosts", n)
	}
	if n := hostHits.Load(); n != 0 {
		t.Errorf("%d connections reached the host's listeners", n)
	}
	close(stop)
	wg.Wait()
	if f := innocentFailures.Load(); f != 0 {
		t.Errorf("the innocent function failed %d of %d calls during the attacks", f, innocentCalls.Load())
	}
	if r := s.get("/healthz"); r.status != 200 {
		t.Fatalf("healthz %d", r.status)
	}
	s.stop()
	s.checkNothingLeft()
	if after := countMounts(t); after != mountsBefore {
		t.Errorf("host mounts: %d before, %d after", mountsBefore, after)
	}
}

func countMounts(t *testing.T) int {
	t.Helper()
	data, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, l := range strings.Split(string(data), "\n") {
		// Other tests' network namespaces come and go under /run/netns.
		if l != "" && !strings.Contains(l, "/run/netns") {
			n++
		}
	}
	return n
}

// TestGVisorIsolation: a function deployed with --isolation gvisor runs
// under gVisor's user-space kernel, with the same contract; gVisor has no
// network for it, so egress is refused at deploy time.
func TestGVisorIsolation(t *testing.T) {
	if _, err := exec.LookPath("runsc"); err != nil {
		t.Skip("runsc is not installed")
	}
	s := startServer(t)
	code := []byte(`export default { async fetch(req) {
		let passwd;
		try { passwd = await Deno.readTextFile("/etc/passwd"); } catch (e) { passwd = e.name; }
		return new Response("gvisor " + new URL(req.url).pathname + " " + passwd);
	} }`)
	if r := s.putCode(s.token, "kernel", code, "isolation=gvisor"); r.status != 201 {
		t.Fatalf("deploy: %d %s", r.status, r.body)
	}
	r := s.get("/fn/admin/kernel/inside")
	if r.status != 200 || string(r.body) != "gvisor /inside NotCapable" {
		t.Fatalf("got %d %q", r.status, r.body)
	}
	if out := s.mustSpry("ls"); !strings.Contains(out, "admin/kernel") {
		t.Fatalf("ls:\n%s", out)
	}
	if r := s.putCode(s.token, "kernel2", code, "isolation=gvisor&network=egress"); r.status != 400 {
		t.Fatalf("gvisor with egress: %d %s", r.status, r.body)
	}
}

// TestDeleteEndsTheFunctionAtOnce: deleting a function (or its user) ends
// its instances at once, requests in flight on them included. They were
// drained as after a deploy, so a deleted function streamed, waited or
// reached out for as long as its timeout allowed (up to --max-timeout).
func TestDeleteEndsTheFunctionAtOnce(t *testing.T) {
	s := startServer(t)
	s.deployCode(t, "streamer", []byte(`export default { fetch() {
		const body = new ReadableStream({ async pull(c) {
			await new Promise((r) => setTimeout(r, 100));
			c.enqueue(new TextEncoder().encode("tick\n"));
		} });
		return new Response(body);
	} }`), "timeout=60s")
	s.deployCode(t, "waiter", []byte(`export default { async fetch() {
		await new Promise((r) => setTimeout(r, 60000));
		return new Response("late");
	} }`), "timeout=60s")

	res, err := http.Get(s.url + "/fn/admin/streamer/")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if _, err := io.ReadFull(res.Body, make([]byte, 5)); err != nil {
		t.Fatalf("the stream's first tick: %v", err)
	}
	streamEnded := make(chan time.Time, 1)
	go func() {
		_, _ = io.Copy(io.Discard, res.Body)
		streamEnded <- time.Now()
	}()
	waiterDone := make(chan int, 1)
	go func() {
		r, err := http.Get(s.url + "/fn/admin/waiter/")
		if err != nil {
			waiterDone <- 0
			return
		}
		r.Body.Close()
		waiterDone <- r.StatusCode
	}()
	eventually(t, 10*time.Second, "the waiter's instance to run", func() bool {
		r := s.do("GET", "/api/v1/functions/waiter", s.token, nil, nil)
		return strings.Contains(string(r.body), `"state":"running"`) || strings.Contains(string(r.body), `"state": "running"`)
	})

	for _, name := range []string{"streamer", "waiter"} {
		if r := s.do("DELETE", "/api/v1/functions/"+name, s.token, nil, nil); r.status != 204 {
			t.Fatalf("delete %s: %d %s", name, r.status, r.body)
		}
	}
	deleted := time.Now()
	select {
	case at := <-streamEnded:
		t.Logf("the stream ended %s after the delete", at.Sub(deleted).Round(time.Millisecond))
	case <-time.After(10 * time.Second):
		t.Fatal("a deleted function's response still streams 10s after the delete")
	}
	select {
	case status := <-waiterDone:
		if status == 200 {
			t.Fatal("a deleted function's request was answered by its function")
		}
		t.Logf("the waiting request got %d", status)
	case <-time.After(10 * time.Second):
		t.Fatal("a deleted function's request still runs 10s after the delete")
	}
}

// TestHugeControlAnswer: a function's code runs in the runtime that answers
// the server on its control socket, so it can make that answer huge (a
// Node function patches http.ServerResponse from its top level; a Deno one
// can replace Response.json). The server read the answer's head whole:
// 100 MiB of headers grew it by hundreds of MiB, outside every limit of
// the instance, once per cold start. It reads at most 64 KiB now, and the
// instance ends saying why.
func TestHugeControlAnswer(t *testing.T) {
	s := startServer(t)
	hwm := func() int {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", s.cmd.Process.Pid))
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(string(data), "\n") {
			if f := strings.Fields(l); len(f) > 1 && f[0] == "VmHWM:" {
				n, _ := strconv.Atoi(f[1])
				return n << 10
			}
		}
		t.Fatal("no VmHWM")
		return 0
	}
	s.deployCode(t, "huge-answer", []byte(`import http from "node:http";
		const big = "y".repeat(1 << 20);
		const writeHead = http.ServerResponse.prototype.writeHead;
		let first = true;
		http.ServerResponse.prototype.writeHead = function (...args) {
			// The first answer after the import is the control socket's.
			if (first) { first = false; for (let i = 0; i < 100; i++) this.setHeader("x" + i, big); }
			return writeHead.apply(this, args);
		};
		export default { fetch() { return new Response("ok"); } };`), "runtime=node&memory=512Mi")
	before := hwm()
	s.get("/fn/admin/huge-answer/")
	// Whichever comes first: the instance ends for its answer, or the
	// server holds it.
	eventually(t, 20*time.Second, "the instance to end for its answer", func() bool {
		if hwm()-before > 32<<20 {
			return true
		}
		out, _, _ := s.spry("", "logs", "huge-answer")
		return strings.Contains(out, "answer to its specialization was over")
	})
	if grew := hwm() - before; grew > 32<<20 {
		t.Errorf("the server's peak memory grew by %d MiB", grew>>20)
	}
	if r := s.get("/healthz"); r.status != 200 {
		t.Fatalf("healthz %d", r.status)
	}
}
