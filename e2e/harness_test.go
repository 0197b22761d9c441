// Package e2e tests the real spry binary end to end: it starts `spry serve`
// on loopback with a fresh data directory, deploys functions through the
// CLI and the raw API, calls them over HTTP, and checks that nothing is
// left running afterwards.
package e2e

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
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
	"syscall"
	"testing"
	"time"

	"github.com/spry-run/spry/internal/runtime"
)

var (
	buildOnce sync.Once
	spryBin   string
	buildErr  error
	repoRoot  string
)

func TestMain(m *testing.M) {
	if os.Getuid() != 0 {
		fmt.Println("e2e: skipped, spry serve needs root (cgroups and instance uids)")
		os.Exit(0)
	}
	wd, _ := os.Getwd()
	repoRoot = filepath.Dir(wd)
	code := m.Run()
	os.Exit(code)
}

// binary returns the spry binary under test: $SPRY_BIN (make test builds
// it), or one built now.
func binary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		if p := os.Getenv("SPRY_BIN"); p != "" {
			spryBin = p
			return
		}
		dir, err := os.MkdirTemp("", "spry-e2e-bin-")
		if err != nil {
			buildErr = err
			return
		}
		spryBin = filepath.Join(dir, "spry")
		cmd := exec.Command("go", "build", "-o", spryBin, "./cmd/spry")
		cmd.Dir = repoRoot
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return spryBin
}

// uidBases hands each server its own instance uid range, so the leak
// check can tell one server's sandboxes from another's.
var uidBases atomic.Int64

// server is one running `spry serve`.
type server struct {
	t       *testing.T
	bin     string
	data    string
	addr    string
	url     string
	token   string
	uidBase int
	args    []string
	env     []string // more of spry serve's environment (TMPDIR=...)
	cmd     *exec.Cmd
	logs    *syncBuffer
	done    chan struct{}
	// ca, for a server started with --tls-cert (startTLSServer), is the
	// file of the CA that signed its certificate: its URL is https, and
	// httpc and the CLI (SPRY_CA_CERT) trust the CA.
	ca    string
	httpc *http.Client
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// startServer starts spry serve on a fresh data dir with extra flags.
func startServer(t *testing.T, extra ...string) *server {
	t.Helper()
	return startServerCA(t, "", extra...)
}

// startTLSServer starts spry serve serving HTTPS with the certificate
// and key in certFile and keyFile, signed by the CA whose certificate is
// in caFile.
func startTLSServer(t *testing.T, certFile, keyFile, caFile string, extra ...string) *server {
	t.Helper()
	return startServerCA(t, caFile, append([]string{"--tls-cert", certFile, "--tls-key", keyFile}, extra...)...)
}

func startServerCA(t *testing.T, caFile string, extra ...string) *server {
	t.Helper()
	return startServerOn(t, filepath.Join(t.TempDir(), "data"), caFile, extra...)
}

// startServerOn starts spry serve on the data dir data (one restored
// from a backup), trusting the CA in caFile if it is not "".
func startServerOn(t *testing.T, data, caFile string, extra ...string) *server {
	t.Helper()
	s := &server{
		t:       t,
		bin:     binary(t),
		data:    data,
		uidBase: 3000000 + int(uidBases.Add(1))*20000,
		args:    extra,
		ca:      caFile,
		httpc:   http.DefaultClient,
	}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			t.Fatal(err)
		}
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(pem)
		s.httpc = &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
		t.Cleanup(s.httpc.CloseIdleConnections)
	}
	s.launch()
	return s
}

// launch starts s, to be stopped when the test ends, with nothing of it
// left behind.
func (s *server) launch() {
	t := s.t
	t.Helper()
	s.start()
	t.Cleanup(func() {
		s.stop()
		s.checkNothingLeft()
		if t.Failed() {
			t.Logf("server log:\n%s", s.logs.String())
		}
	})
}

func (s *server) start() {
	t := s.t
	t.Helper()
	deno, err := runtime.FindDeno("")
	if err != nil {
		t.Fatal(err)
	}
	s.addr = freePort(t)
	s.url = "http://" + s.addr
	if s.ca != "" {
		s.url = "https://" + s.addr
	}
	args := append([]string{"serve", "--listen", s.addr, "--data", s.data, "--deno", deno,
		"--uid-base", strconv.Itoa(s.uidBase), "--log-level", "debug"}, s.args...)
	s.cmd = exec.Command(s.bin, args...)
	s.cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir()}, s.env...)
	s.logs = &syncBuffer{}
	s.cmd.Stdout = s.logs
	s.cmd.Stderr = s.logs
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s.done = make(chan struct{})
	go func() { _ = s.cmd.Wait(); close(s.done) }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		res, err := s.httpc.Get(s.url + "/readyz")
		if err == nil {
			res.Body.Close()
			if res.StatusCode == 200 {
				break
			}
		}
		select {
		case <-s.done:
			t.Fatalf("spry serve exited while starting:\n%s", s.logs.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("spry serve did not become ready:\n%s", s.logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	tok, err := os.ReadFile(filepath.Join(s.data, "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	s.token = strings.TrimSpace(string(tok))
}

// stop sends SIGTERM and waits for a clean exit.
func (s *server) stop() {
	s.t.Helper()
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	select {
	case <-s.done:
		return
	default:
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
		if code := s.cmd.ProcessState.ExitCode(); code != 0 {
			s.t.Errorf("spry serve exited with %d", code)
		}
	case <-time.After(40 * time.Second):
		// Go prints every goroutine's stack on SIGQUIT: the log then says
		// where the shutdown is stuck.
		_ = s.cmd.Process.Signal(syscall.SIGQUIT)
		select {
		case <-s.done:
		case <-time.After(5 * time.Second):
			_ = s.cmd.Process.Kill()
			<-s.done
		}
		s.t.Errorf("spry serve did not stop within 40s of SIGTERM")
	}
}

// runDir is where the server keeps instance sockets and code.
func (s *server) runDir() string {
	sum := sha256.Sum256([]byte(s.data))
	return filepath.Join("/run/spry", hex.EncodeToString(sum[:6]))
}

// kill9 kills the server the hard way.
func (s *server) kill9() {
	_ = s.cmd.Process.Kill()
	<-s.done
}

// restart stops (or has stopped) the server and starts it again on the
// same data dir.
func (s *server) restart() {
	s.stop()
	s.start()
}

// sandboxProcs lists live processes running as one of this server's
// instance uids.
func (s *server) sandboxProcs() []string {
	return liveProcs(func(uid int, _ string) bool { return uid >= s.uidBase && uid < s.uidBase+10000 })
}

// liveProcs lists live processes (zombies excepted: they are dead, waiting
// for a reaper that, after a kill -9, is init and not ours) for which match
// says yes, given their uid and command line.
func liveProcs(match func(uid int, cmdline string) bool) []string {
	var out []string
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil || strings.Contains(string(status), "\nState:\tZ") {
			continue
		}
		uid := -1
		for _, line := range strings.Split(string(status), "\n") {
			if f := strings.Fields(line); len(f) > 1 && f[0] == "Uid:" {
				uid, _ = strconv.Atoi(f[1])
			}
		}
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		cmd := strings.TrimSpace(strings.ReplaceAll(string(cmdline), "\x00", " "))
		if match(uid, cmd) {
			out = append(out, fmt.Sprintf("pid %d uid %d: %s", pid, uid, cmd))
		}
	}
	return out
}

func (s *server) checkNothingLeft() {
	s.t.Helper()
	// Killed processes may take a moment to be reaped by the kernel.
	deadline := time.Now().Add(5 * time.Second)
	for {
		left := s.sandboxProcs()
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			s.t.Errorf("processes left behind after the server stopped:\n%s", strings.Join(left, "\n"))
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// spry runs the CLI against this server with the given token (the
// admin's if empty) and returns stdout, stderr and the exit code.
func (s *server) spry(token string, args ...string) (string, string, int) {
	s.t.Helper()
	return s.spryIn(token, nil, args...)
}

func (s *server) spryIn(token string, stdin io.Reader, args ...string) (string, string, int) {
	s.t.Helper()
	if token == "" {
		token = s.token
	}
	cmd := exec.Command(s.bin, args...)
	cmd.Dir = repoRoot
	cmd.Env = []string{"SPRY_URL=" + s.url, "SPRY_TOKEN=" + token, "HOME=" + s.t.TempDir(), "PATH=" + os.Getenv("PATH")}
	if s.ca != "" {
		cmd.Env = append(cmd.Env, "SPRY_CA_CERT="+s.ca)
	}
	cmd.Stdin = stdin
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			s.t.Fatalf("run spry %v: %v", args, err)
		}
		code = ee.ExitCode()
	}
	return stdout.String(), stderr.String(), code
}

// mustSpry runs the CLI and fails the test on a non-zero exit.
func (s *server) mustSpry(args ...string) string {
	s.t.Helper()
	out, errOut, code := s.spry("", args...)
	if code != 0 {
		s.t.Fatalf("spry %v: exit %d\nstdout: %s\nstderr: %s", args, code, out, errOut)
	}
	return out
}

// response is a finished HTTP exchange.
type response struct {
	status int
	header http.Header
	body   []byte
}

func (r response) json(t *testing.T) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.body, &m); err != nil {
		t.Fatalf("response is not a JSON object: %v\n%s", err, r.body)
	}
	return m
}

// errorCode returns the code of a JSON error body, failing if the body is
// not one.
func (r response) errorCode(t *testing.T) string {
	t.Helper()
	var b struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if err := json.Unmarshal(r.body, &b); err != nil || b.Error.Code == "" || b.Error.Message == "" {
		t.Fatalf("status %d: body is not a JSON error: %q", r.status, r.body)
	}
	if ct := r.header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Fatalf("error content type %q", ct)
	}
	return b.Error.Code
}

// do sends one request; token "" sends none.
func (s *server) do(method, path, token string, body io.Reader, header map[string]string) response {
	s.t.Helper()
	req, err := http.NewRequest(method, s.url+path, body)
	if err != nil {
		s.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	res, err := s.httpc.Do(req)
	if err != nil {
		s.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	data, err := io.ReadAll(res.Body)
	if err != nil {
		s.t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	return response{status: res.StatusCode, header: res.Header, body: data}
}

// dial opens a raw connection to the server, for requests written by
// hand (a body sent in part, a hang-up); it is closed after the test.
func (s *server) dial(t *testing.T) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", s.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func (s *server) get(path string) response { return s.do("GET", path, "", nil, nil) }

// putCode deploys raw code the way the seed's curl did.
func (s *server) putCode(token, name string, code []byte, query string) response {
	s.t.Helper()
	p := "/api/v1/functions/" + name
	if query != "" {
		p += "?" + query
	}
	return s.do("PUT", p, token, bytes.NewReader(code), map[string]string{"Content-Type": "application/typescript"})
}

// deployCode deploys raw code as putCode does and fails t unless the
// function was created.
func (s *server) deployCode(t testing.TB, name string, code []byte, query string) {
	t.Helper()
	if r := s.putCode(s.token, name, code, query); r.status != 201 {
		t.Fatalf("deploy %s: %d %s", name, r.status, r.body)
	}
}

func example(t *testing.T, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repoRoot, "examples", name))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// eventually polls cond until it holds or the timeout passes. It is for
// observing the real server, not for waiting on policy in unit tests.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

func lines(s string) []string {
	var out []string
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		out = append(out, sc.Text())
	}
	return out
}
