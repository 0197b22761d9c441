package router

import (
	"github.com/valyala/fasthttp"

	"github.com/spry-run/spry/internal/httpserve"
)

// StatusClientClosed is the status logged for a request whose client hung
// up before the function answered (nginx's 499).
const StatusClientClosed = 499

// watchClient marks the request as waiting (for an instance, then for the
// function's answer) on a connection the listener watches once the wait
// lasts (httpserve.Listener): a hang-up then ends the wait for an
// instance, and closes the connection to the instance, which aborts the
// function's request (its request.signal). Nothing else may read the
// client's connection until endWatch: the request's body must have been
// read.
func (inv *invocation) watchClient(ctx *fasthttp.RequestCtx) {
	if c, ok := httpserve.ConnOf(ctx.Conn()); ok && inv.watched == nil {
		inv.watched = c
		c.Await(&inv.wait, inv.start, inv)
	}
}

// endWatch ends the watch. Once it returns, a hang-up closes nothing more,
// so the instance's connection may go back to the pool.
func (inv *invocation) endWatch() {
	if inv.watched != nil {
		inv.watched.EndWait()
	}
}

// ClientGone is called by the watch when the client hangs up.
func (inv *invocation) ClientGone() {
	inv.gone.Store(true)
	inv.actx.abort()
	if c := inv.up.Load(); c != nil {
		c.conn.Close()
	}
}

// clientClosed ends a request whose client went away: nothing is left to
// answer, and the connection cannot carry another request.
func clientClosed(ctx *fasthttp.RequestCtx) {
	ctx.Response.Reset()
	ctx.SetStatusCode(StatusClientClosed)
	ctx.SetConnectionClose()
}
