package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttputil"

	"github.com/spry-run/spry/internal/async"
	"github.com/spry-run/spry/internal/errdefs"
	"github.com/spry-run/spry/internal/httpserve"
	"github.com/spry-run/spry/internal/logstore"
	"github.com/spry-run/spry/internal/router"
)

// InvocationsFile is the data directory's database of asynchronous
// invocations.
const InvocationsFile = "invocations.db"

// asyncGrace is how long an attempt waits past its function's timeout
// for the router's own answer (a 504) before it gives up itself.
const asyncGrace = 5 * time.Second

// asyncHost is the Host an attempt is sent with when its enqueue had
// none.
const asyncHost = "localhost"

// openAsync opens the invocation store and makes the worker that runs
// them (it runs with Run).
func (s *Server) openAsync(ctx context.Context, dataDir string) error {
	st, err := async.Open(ctx, filepath.Join(dataDir, InvocationsFile))
	if err != nil {
		return err
	}
	s.invocations = st
	delay := s.cfg.AsyncRetryDelay
	if delay <= 0 {
		delay = async.DefaultRetryDelay
	}
	s.async = async.NewWorker(st, async.Config{
		Send:               s.sendAsync,
		Workers:            s.cfg.AsyncWorkers,
		WorkersPerOwner:    s.cfg.AsyncWorkersPerUser,
		MaxPendingPerOwner: s.cfg.AsyncMaxPerUser,
		MaxBytesPerOwner:   s.cfg.AsyncMaxBytesPerUser,
		Retention:          s.cfg.AsyncRetention,
		Policy:             async.DefaultPolicy(delay),
		OnAttempt:          s.asyncAttempt,
		Destination:        s.asyncDestination,
		OnForward:          s.asyncForward,
		MaxBody:            s.asyncMaxBody(),
		Logger:             s.log,
	})
	return nil
}

// asyncMaxBody bounds an asynchronous invocation's body, the one
// enqueued and a failure's event alike: async.MaxBody, or the router's
// own bound if lower, since a larger one could never run.
func (s *Server) asyncMaxBody() int64 { return min(async.MaxBody, s.cfg.MaxBodyBytes) }

// serveAsync gives the worker its way to the router: an in-memory
// listener served by a fasthttp server of its own, whose every request
// is a function's. Attempts so take the path a request takes (the
// router: resolution, cold start, queueing, the function's timeout, the
// one retry of a request no instance took) with nothing of the public
// listener's in between (its TLS, address, event loops and host
// routing), and nothing else than functions is reachable this way.
func (s *Server) serveAsync(rt *router.Router) {
	s.asyncLn = fasthttputil.NewInmemoryListener()
	s.asyncHTTP = httpserve.New(func(ctx *fasthttp.RequestCtx) {
		path, _, _ := strings.Cut(string(ctx.Request.Header.RequestURI()), "?")
		owner, name, rest, err := router.SplitPath(path)
		if err != nil {
			httpserve.WriteError(ctx, err)
			return
		}
		// Enqueued with a token that may deploy the function, so
		// that may call it if it is private.
		rt.ServeAdmitted(ctx, owner, name, rest)
	}, s.log)
	loopback := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}
	s.asyncClient = &http.Client{
		Transport: &http.Transport{
			DialContext: func(context.Context, string, string) (net.Conn, error) {
				return s.asyncLn.DialWithLocalAddr(loopback)
			},
			// The function sees the body as it was enqueued, and no
			// Accept-Encoding it did not ask for.
			DisableCompression:  true,
			MaxIdleConnsPerHost: max(s.cfg.AsyncWorkers, async.DefaultWorkers),
			IdleConnTimeout:     time.Minute,
		},
		// A redirect is the function's answer, not a place to go.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// sendAsync makes one attempt of inv: a POST of its body to its path on
// the function's live version (its traffic split), bounded by the
// function's timeout.
func (s *Server) sendAsync(ctx context.Context, inv *async.Invocation) async.Result {
	sp, err := s.fns.Live(ctx, inv.Owner, inv.Function)
	switch {
	case errors.Is(err, errdefs.ErrNotFound) || err == nil && sp.FunctionID != inv.FunctionID:
		return async.Result{Error: "the function was deleted", Final: true}
	case err != nil:
		return async.Result{Error: err.Error()}
	}
	timeout := sp.Timeout
	if timeout <= 0 {
		timeout = s.cfg.Timeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout+asyncGrace)
	defer cancel()
	path, query, _ := strings.Cut(inv.Path, "?")
	host := inv.Host
	if host == "" {
		host = asyncHost
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+asyncHost+"/", bytes.NewReader(inv.Body))
	if err != nil {
		return async.Result{Error: err.Error(), Final: true}
	}
	// Opaque: the path goes as it was given, escapes and all.
	req.URL = &url.URL{Scheme: "http", Host: asyncHost, Opaque: router.Prefix + inv.Owner + "/" + inv.Function + path, RawQuery: query}
	req.Host = host
	if inv.ContentType != "" {
		req.Header.Set("Content-Type", inv.ContentType)
	}
	req.Header.Set("User-Agent", "spry-async")
	req.Header.Set("Spry-Invocation-Id", inv.ID)
	req.Header.Set("Spry-Attempt", strconv.Itoa(inv.Attempts))
	if inv.FailureOf != "" {
		req.Header.Set(async.FailureHeader, inv.FailureOf)
	}
	t0 := time.Now()
	res, err := s.asyncClient.Do(req)
	r := async.Result{Version: sp.Version, MaxAttempts: sp.AsyncRetries + 1, OnFailure: sp.AsyncOnFailure}
	if err != nil {
		r.Duration = time.Since(t0)
		r.Error = attemptError(ctx, err, timeout)
		return r
	}
	defer res.Body.Close()
	body, err := io.ReadAll(io.LimitReader(res.Body, async.MaxResponse+1))
	if err == nil && len(body) > async.MaxResponse {
		// The rest is read, not kept: the function's answer ends as it
		// would for a client that reads it all.
		body, r.Truncated = body[:async.MaxResponse], true
		_, err = io.Copy(io.Discard, res.Body)
	}
	r.Duration = time.Since(t0)
	if err != nil {
		// An answer cut short is no answer: the attempt is retried.
		r.Error = "the answer was cut short: " + attemptError(ctx, err, timeout)
		return r
	}
	r.Status, r.ContentType, r.Body = res.StatusCode, res.Header.Get("Content-Type"), body
	switch {
	case res.Header.Get("Spry-Error") != "":
		// The router's own answer (a timeout, a crash, a full queue).
		var eb errdefs.Body
		if json.Unmarshal(body, &eb) == nil && eb.Error.Message != "" {
			r.Error = eb.Error.Code + ": " + eb.Error.Message
		} else {
			r.Error = res.Header.Get("Spry-Error")
		}
	case !r.Succeeded():
		r.Error = "the function answered " + res.Status
	}
	return r
}

// attemptError says why an attempt got no (whole) answer.
func attemptError(ctx context.Context, err error, timeout time.Duration) string {
	switch {
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return fmt.Sprintf("timed out: no answer within the function's timeout (%v)", timeout)
	case ctx.Err() != nil:
		return "cut off: the server is stopping"
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	return err.Error()
}

// asyncAttempt logs one attempt in the function's logs, and counts
// finished invocations.
func (s *Server) asyncAttempt(inv *async.Invocation, r async.Result, status string, next time.Time) {
	line := async.Outcome(inv, s.async.Attempts(r.MaxAttempts), r, status, time.Now(), next)
	s.logs.Append(logstore.Entry{Owner: inv.Owner, Function: inv.Function, FunctionID: inv.FunctionID, Version: r.Version,
		Stream: logstore.StreamSystem, Line: line})
	if status != async.StatusQueued {
		s.metrics.Async(inv.Owner, inv.Function, inv.FunctionID, status)
	}
}

// asyncDestination resolves a failed invocation's on-failure
// destination, owner's function name, to its id.
func (s *Server) asyncDestination(ctx context.Context, owner, name string) (string, error) {
	sp, err := s.fns.Live(ctx, owner, name)
	if err != nil {
		return "", err
	}
	return sp.FunctionID, nil
}

// asyncForward logs, in the failed invocation's function's logs, where
// its event went (or why it went nowhere), and counts it.
func (s *Server) asyncForward(inv *async.Invocation, dest string, fwd *async.Invocation, err error) {
	line, outcome := fmt.Sprintf("async invocation %s: sent on to %s as invocation %s", inv.ID, dest, inv.ForwardedTo), "forwarded"
	if fwd == nil {
		outcome = "forward_failed"
		if errors.Is(err, errdefs.ErrNotFound) {
			line = fmt.Sprintf("async invocation %s: not sent on: its on-failure destination %s does not exist", inv.ID, dest)
		} else {
			line = fmt.Sprintf("async invocation %s: not sent on to %s: %v", inv.ID, dest, err)
		}
	}
	s.logs.Append(logstore.Entry{Owner: inv.Owner, Function: inv.Function, FunctionID: inv.FunctionID,
		Stream: logstore.StreamSystem, Line: line})
	s.metrics.Async(inv.Owner, inv.Function, inv.FunctionID, outcome)
}

// pruneAsync removes the invocations of functions that no longer exist:
// one enqueued while its function was deleted may land after the
// deletion took the function's, and a server stopped in between never
// took them.
func (s *Server) pruneAsync(ctx context.Context) error {
	ids, err := s.invocations.Functions(ctx)
	if err != nil || len(ids) == 0 {
		return err
	}
	live := s.fns.Owners(ids)
	for _, id := range ids {
		if _, ok := live[id]; !ok {
			if err := s.invocations.DeleteFunction(ctx, id); err != nil {
				return err
			}
			s.log.Info("removed a deleted function's invocations", "function_id", id)
		}
	}
	return nil
}
