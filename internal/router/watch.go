package router

import (
	"sync"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/spry-run/spry/internal/httpserve"
)

// StatusClientClosed is the status logged for a request whose client hung
// up before the function answered (nginx's 499).
const StatusClientClosed = 499

// clientWatch notices a client that hangs up while its request waits:
// the wait for an instance ends, and the connection to the instance is
// closed, which aborts the function's request (its request.signal).
type clientWatch struct {
	mu    sync.Mutex
	timer *time.Timer
	stop  func()
	ended bool
}

// watchClient starts the timer that starts the watch; nil if the
// connection cannot be watched. Nothing else may read the client's
// connection meanwhile: the request's body must have been read.
func (rt *Router) watchClient(ctx *fasthttp.RequestCtx, inv *invocation) *clientWatch {
	conn, ok := ctx.Conn().(*httpserve.Conn)
	if !ok {
		return nil
	}
	w := &clientWatch{}
	w.timer = time.AfterFunc(rt.cfg.WatchAfter, func() {
		w.mu.Lock()
		defer w.mu.Unlock()
		if w.ended {
			return
		}
		w.stop = conn.Watch(func() {
			inv.gone.Store(true)
			inv.actx.abort()
			if c := inv.up.Load(); c != nil {
				c.conn.Close()
			}
		})
	})
	return w
}

// end stops the watch. Once it returns, the watch closes nothing more, so
// the instance's connection may go back to the pool.
func (w *clientWatch) end() {
	if w == nil {
		return
	}
	w.timer.Stop()
	w.mu.Lock()
	w.ended = true
	stop := w.stop
	w.stop = nil
	w.mu.Unlock()
	if stop != nil {
		stop()
	}
}

// clientClosed ends a request whose client went away: nothing is left to
// answer, and the connection cannot carry another request.
func clientClosed(ctx *fasthttp.RequestCtx) {
	ctx.Response.Reset()
	ctx.SetStatusCode(StatusClientClosed)
	ctx.SetConnectionClose()
}
