// Spry's Node.js bootstrap. It runs inside the sandbox before any user
// code. It listens on the instance's Unix socket at once, so a pooled
// instance is ready before it knows its function; then it reads one
// specialization message on stdin, imports that function's bundle and
// serves it. Requests that arrive while the import runs wait for it.
//
// Two contracts are served:
//
//   fetch:   export default { fetch(req, ctx) }  or
//            export default async function (req, ctx)
//            req is a WHATWG Request; the handler returns a Response.
//   express: module.exports = (req, res) => { ... }  or
//            export default function (req, res) { ... }
//            req/res are Node's, with a small Express-like surface
//            (req.query, req.body, res.status(), res.send(), res.json()...).
//
// Which one a module uses (see pickHandler):
//   1. an explicit `export const contract = "fetch" | "express"` (or a
//      `contract` property on the default export, for CommonJS) wins;
//   2. a default export with a fetch method (an object, or a class with a
//      static one) is fetch;
//   3. a function declaring at most one parameter (Function.length) is
//      fetch: an express handler needs res;
//   4. a function declaring two or more is fetch if its second parameter is
//      named ctx, context or env (or is destructured, as in
//      `(req, { env })`), and express otherwise: (req, res),
//      (request, response), (req, res, next), minified names...
import { randomUUID } from "node:crypto";
import { writeSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import { createRequire, syncBuiltinESMExports } from "node:module";
import querystring from "node:querystring";
import { Readable } from "node:stream";
import v8 from "node:v8";

// V8's flags are the instance's, set at its start: a function that set
// them at run time (v8.setFlagsFromString, which the permission model
// leaves open) reached V8's natives syntax, its internal functions
// unchecked, or turned off WebAssembly's bounds checks, a way past the
// permission model into the process's memory. The flags are frozen
// after V8 starts (--freeze-flags-after-init), where setting one aborts
// the process; this makes it a plain error.
v8.setFlagsFromString = function setFlagsFromString() {
  const err = new Error("Access to this API has been restricted: V8's flags are set when the instance starts");
  err.code = "ERR_ACCESS_DENIED";
  throw err;
};
syncBuiltinESMExports();

// The first line on stdout: the sandbox's setup is done (the supervisor
// sets up the network beside the rest of the start). Writes to a pipe
// are synchronous.
process.stdout.write("SPRY-BOOT\n");

const SOCKET = "/run/spry/http.sock";
const CONTROL = "/run/spry/control.sock";
// Answers the bootstrap's own warm-up request; unknowable from outside.
const WARMUP = randomUUID();
const MAX_BODY = 10 << 20; // express contract: bodies are read in full

let handler = null; // (req, res) => Promise<void>
// The default export's scheduled method, bound, or null.
let scheduled = null;
// Set when the function's import failed: the message every waiting and
// later request is answered with, since the supervisor no longer waits
// for the import before it hands out the instance.
let failed = null;
let resolveLoaded;
const loaded = new Promise((r) => (resolveLoaded = r));
let meta = { name: "", owner: "", version: 0, env: Object.freeze({}) };
// The specialization's error_mark: this bootstrap's error answers carry
// it, so that the router tells them from the function's. It is in no
// object the function is given; a function that patches the runtime's
// own classes to read it could only pass its answers for the platform's
// errors, misleading nobody but its own callers.
let errorMark = "";
let specReadDone;
const specRead = new Promise((r) => (specReadDone = r));

class HTTPError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function sendError(res, status, code, message, extraHeaders = {}) {
  if (res.headersSent) {
    // Too late for a status: cut the response short so the client sees
    // it is incomplete.
    res.destroy();
    return;
  }
  for (const name of res.getHeaderNames()) res.removeHeader(name);
  res.statusMessage = undefined;
  // An answer that failed as it began (a status Node refuses, say) left
  // the length of its body counted: the check would fail this one too,
  // whose length is set right here.
  res.strictContentLength = false;
  const body = JSON.stringify({ error: { code, message } });
  res.writeHead(status, {
    "content-type": "application/json",
    "content-length": Buffer.byteLength(body),
    "spry-error": code,
    "spry-error-mark": errorMark,
    ...extraHeaders,
  });
  res.end(body);
}

// An Upgrade header that asks for a WebSocket (a list of protocols).
const WEBSOCKET = /(^|,)\s*websocket\s*(,|$)/i;

async function serve(req, res) {
  // Misuse such as writing after end() is logged rather than left to crash
  // the instance as an unhandled 'error' event; a client that goes away
  // mid-request is not worth a log line.
  res.on("error", (err) => console.error("response error:", err));
  req.on("error", () => {});
  // A body longer than the Content-Length the function set fails rather
  // than going out whole: the bytes past it would reach the platform as
  // the answer to the next request on the connection. One that falls
  // short fails too, rather than leave the answer waiting for the rest.
  res.strictContentLength = true;
  try {
    if (handler === null) {
      if (req.headers["spry-warmup"] === WARMUP) {
        await warmHandler(req, res);
        return;
      }
      await loaded;
    }
    if (failed !== null) {
      sendError(res, 502, "function_failed", failed);
      return;
    }
    if (WEBSOCKET.test(req.headers.upgrade ?? "")) {
      // Node has no web-standard way for a fetch handler to accept one
      // (Deno.upgradeWebSocket is Deno's): the platform says so, rather
      // than the function failing on a missing API.
      sendError(res, 501, "not_implemented", "WebSockets need the Deno runtime (deploy with --runtime deno); a Node.js function cannot accept them");
      return;
    }
    await handler(req, res);
  } catch (err) {
    try {
      if (err instanceof HTTPError) {
        sendError(res, err.status, err.code, err.message, err.status === 413 ? { connection: "close" } : {});
        return;
      }
      console.error("uncaught exception in function:", err);
      sendError(res, 500, "function_error", "the function threw an uncaught exception; see its logs");
    } catch {
      res.destroy();
    }
  }
}

const server = http.createServer({
  maxHeaderSize: 64 << 10,
  // The platform reuses connections; keep them longer than its idle
  // timeout so it never sends on a connection we are closing.
  keepAliveTimeout: 120_000,
  // The platform enforces the invocation timeout.
  headersTimeout: 0,
  requestTimeout: 0,
}, serve);
// Node's HTTP parser knows a fixed set of methods (http.METHODS) and
// refuses any other before a handler could see it, with a bare 400 that
// does not say why. Such a request gets a 501 that says so instead; other
// malformed requests keep Node's own answers.
const clientErrorAnswers = {
  HPE_HEADER_OVERFLOW: "HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\n\r\n",
  HPE_CHUNK_EXTENSIONS_OVERFLOW: "HTTP/1.1 413 Payload Too Large\r\nConnection: close\r\n\r\n",
  ERR_HTTP_REQUEST_TIMEOUT: "HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n\r\n",
};
const unknownMethodBody = JSON.stringify({ error: {
  code: "not_implemented",
  message: "Node.js serves only the request methods it knows: " + http.METHODS.join(", "),
} });
server.on("clientError", (err, socket) => {
  const answer = () => {
    if (socket.writable && (!socket._httpMessage || !socket._httpMessage._headerSent)) {
      socket.write(err.code === "HPE_INVALID_METHOD"
        ? "HTTP/1.1 501 Not Implemented\r\nContent-Type: application/json\r\nSpry-Error: not_implemented\r\n" +
          `Spry-Error-Mark: ${errorMark}\r\n` +
          `Content-Length: ${Buffer.byteLength(unknownMethodBody)}\r\nConnection: close\r\n\r\n` + unknownMethodBody
        : clientErrorAnswers[err.code] ?? "HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n");
    }
    socket.destroy(err);
  };
  // A request can come before the specialization is read: the 501,
  // the platform's answer, waits for the mark that says so.
  if (err.code === "HPE_INVALID_METHOD") specRead.then(answer);
  else answer();
});
server.keepAliveTimeout = 120_000;
server.headersTimeout = 0;
server.requestTimeout = 0;
server.timeout = 0;
// warmHandler runs the fetch contract's path once (Request from the
// incoming message, Response back), before any function exists.
let warmHandler = (req, res) =>
  fetchAdapter(async (r) => {
    await r.json();
    new URL(r.url).searchParams.get("x");
    return Response.json({ ok: true });
  })(req, res);

// stdin is the supervisor's lifeline: it closes when the supervisor dies,
// however it dies, and the instance must not outlive it.
process.stdin.on("end", () => process.exit(0));
process.stdin.on("error", () => process.exit(0));
process.stdin.resume();

let listening = 0;
function onListen() {
  if (++listening < 2) return;
  // Under gVisor, a connection to our own host-backed socket does not come
  // back, so that sandbox skips the warm-up.
  if (process.argv.includes("--no-warmup")) ready();
  else warmUp().then(ready, ready);
}

// ready writes the first line on stdout, before any user code exists: it
// tells the supervisor the instance is ready. Writes to a pipe are
// synchronous.
function ready() {
  process.stdout.write("SPRY-READY\n");
}

// warmUp sends one request through the server, so the first real request
// does not pay for loading and compiling that path.
function warmUp() {
  return new Promise((resolve) => {
    const req = http.request({ socketPath: SOCKET, method: "POST", path: "/warm?x=1", headers: { "spry-warmup": WARMUP, "content-type": "application/json" } }, (res) => {
      res.resume();
      res.on("end", resolve);
      res.on("error", resolve);
    });
    req.on("error", resolve);
    req.end("{}");
  });
}

server.listen(SOCKET, onListen);

// ---------------------------------------------------------------------------
// The fetch contract.

// ctx.kv: the function's key-value storage, kept by the server (one
// namespace per function, across versions and deploys), over one
// connection to the server's socket (kv_client.js). Values are anything
// JSON can hold.
function kvDial(on) {
  let connected = false;
  let failure = null;
  const sock = net.createConnection(KV_SOCKET, () => (connected = true));
  sock.setEncoding("utf8");
  sock.on("data", on.data);
  sock.on("error", (err) => {
    failure = new Error(connected ? `ctx.kv: ${err.message}` : `ctx.kv: storage is not reachable: ${err.message}`);
  });
  sock.on("close", () => on.end(failure));
  return {
    send(line) {
      sock.write(line);
    },
    // Waiting for answers, the socket keeps the event loop alive, as a
    // connection per call did; idle, it does not.
    busy(yes) {
      if (yes) sock.ref();
      else sock.unref();
    },
    close() {
      sock.destroy();
    },
  };
}

// The part of ctx.kv both runtimes share (kv_client.js) goes here.
/* @spry:kv-client */

function makeContext(requestId) {
  return {
    env: meta.env,
    kv,
    name: meta.name,
    owner: meta.owner,
    version: meta.version,
    requestId,
    waitUntil(p) {
      Promise.resolve(p).catch((err) => console.error("waitUntil:", err));
    },
  };
}

// sentURL is the request's URL as the client sent it, as Deno's req.url
// is: the scheme the client used (the router says which), the Host as
// written, and the target (its dot segments, say, not resolved); "" if
// the Host is not just an authority (one with a path, query, fragment or
// userinfo in it must not change the URL's path) or the target not a path.
function sentURL(req) {
  const h = req.headers.host;
  if (!h || !/^[^/?#@\\\s]+$/.test(h) || !req.url.startsWith("/")) return "";
  // Concatenate rather than resolve: a path like //a/b must stay a path.
  return (req.headers["x-forwarded-proto"] === "https" ? "https://" : "http://") + h + req.url;
}

function requestURL(req, sent = sentURL(req)) {
  const scheme = req.headers["x-forwarded-proto"] === "https" ? "https://" : "http://";
  try {
    if (sent !== "") return new URL(sent);
    if (req.url.startsWith("/")) return new URL(scheme + "localhost" + req.url);
    return new URL(req.url);
  } catch {
    try {
      return new URL(scheme + "localhost" + (req.url.startsWith("/") ? req.url : "/"));
    } catch {
      return new URL(scheme + "localhost/");
    }
  }
}

function toRequest(req, signal) {
  const headers = new Headers();
  const raw = req.rawHeaders;
  for (let i = 0; i < raw.length; i += 2) {
    try {
      headers.append(raw[i], raw[i + 1]);
    } catch {
      // A header Node accepted but Headers does not: leave it out.
    }
  }
  // The Fetch standard's Request refuses TRACE (and TRACK, which Node's
  // parser does not know); Deno hands it to the function, and so does
  // this: made as a POST, it then says TRACE.
  const trace = req.method === "TRACE";
  const init = { method: trace ? "POST" : req.method, headers, signal };
  if (req.method !== "GET" && req.method !== "HEAD") {
    init.body = Readable.toWeb(req);
    init.duplex = "half";
  }
  const sent = sentURL(req);
  const url = requestURL(req, sent);
  const request = new Request(url, init);
  if (trace) Object.defineProperty(request, "method", { value: "TRACE", enumerable: true });
  if (sent !== "" && sent !== url.href) sentURLs.set(request, sent);
  return request;
}

// req.url is the URL as sent, as on Deno, where new URL(req.url) would
// change it (a Host in capitals or with its default port, a path with dot
// segments or characters a URL escapes): sentURLs holds those, and the
// getter gives them. new URL(req.url) is the same URL on both runtimes.
const sentURLs = new WeakMap();
const nativeURL = Object.getOwnPropertyDescriptor(Request.prototype, "url");
Object.defineProperty(Request.prototype, "url", {
  configurable: true,
  enumerable: nativeURL.enumerable,
  get() {
    return sentURLs.get(this) ?? nativeURL.get.call(this);
  },
});

function fetchAdapter(fn) {
  return async (req, res) => {
    const ac = new AbortController();
    res.once("close", () => {
      if (!res.writableFinished) ac.abort();
    });
    // A client that left while its request waited (for the module to
    // load) is gone already: its close came before anyone listened.
    if (res.destroyed) ac.abort();
    const request = toRequest(req, ac.signal);
    const out = await fn(request, makeContext(req.headers["spry-request-id"] ?? ""));
    if (!(out instanceof Response)) {
      console.error(`function returned ${out === null ? "null" : typeof out}, not a Response`);
      sendError(res, 500, "function_error", "the function did not return a Response; see its logs");
      return;
    }
    if (out.type === "error") {
      // Its status is 0, which Node's own error would name instead; Deno's words.
      console.error("uncaught exception in function:", new TypeError("Return value from serve handler must not be an error response (like Response.error())"));
      sendError(res, 500, "function_error", "the function threw an uncaught exception; see its logs");
      return;
    }
    await writeResponse(res, out, req.method === "HEAD");
  };
}

// How a body stream is read before the head goes out (body.js, which
// both runtimes share) goes here.
/* @spry:body */

// write writes chunk, waiting for the socket to drain; false once the
// client is gone.
function write(res, chunk, gone) {
  if (gone.value) return Promise.resolve(false);
  if (res.write(chunk)) return Promise.resolve(true);
  return new Promise((resolve) => {
    const done = () => {
      res.off("drain", done);
      res.off("close", done);
      resolve(!gone.value);
    };
    res.on("drain", done);
    res.on("close", done);
  });
}

// endWhole sends a body read in full, with its length: Node leaves it
// out of the answer to a HEAD request, which Deno (and the GET) give. As
// on Deno, the length is the body's, whatever Content-Length the function
// set, but for a HEAD's answer, which may give the GET's.
function endWhole(res, chunks, size, head) {
  if (!res.hasHeader("transfer-encoding") && !(head && res.hasHeader("content-length"))) {
    res.setHeader("content-length", size);
  }
  res.end(chunks.length === 1 ? chunks[0] : Buffer.concat(chunks, size));
}

// writeResponse sends out; head: the request was a HEAD, whose answer
// has no body. The status line has the standard reason phrase, as on
// Deno: out.statusText is not sent.
async function writeResponse(res, out, head) {
  res.statusCode = out.status;
  for (const [name, value] of out.headers) {
    // A Response has no trailers to announce, and Node fails the answer
    // that names some without sending them chunked: Trailer is dropped,
    // as on Deno.
    if (name !== "set-cookie" && name !== "trailer") res.setHeader(name, value);
  }
  const cookies = out.headers.getSetCookie();
  if (cookies.length > 0) res.setHeader("set-cookie", cookies);
  if (out.body === null) {
    // No body is a length of 0, as on Deno, but in the answer to a HEAD
    // or with a 304, whose length is the GET's.
    if (!head && out.status !== 304 && res.hasHeader("content-length")) res.setHeader("content-length", 0);
    res.end();
    return;
  }
  const gone = { value: false };
  const reader = out.body.getReader();
  res.once("close", () => {
    if (!res.writableFinished) {
      gone.value = true;
      reader.cancel().catch(() => {});
    }
  });
  // What the stream yields within this turn of the event loop: a body made
  // from a string or buffer is complete by then and goes out with a
  // Content-Length; anything slower is streamed (chunked) as it comes.
  let early, pending;
  try {
    let size, done;
    ({ early, size, done, pending } = await readEarly(reader));
    if (done) {
      endWhole(res, early, size, head);
      return;
    }
  } catch (err) {
    // Before the head: the answer can still say so.
    bodyFailed(reader, err);
    sendError(res, 500, "function_error", "the function's response body failed; see its logs");
    return;
  }
  if (head) {
    // The body is not sent: reading on (an endless event stream, say)
    // would keep the answer, and the connection, from ever ending.
    reader.cancel().catch(() => {});
    res.end();
    return;
  }
  if (early.length === 0) res.flushHeaders(); // e.g. server-sent events: headers now
  // A Content-Length the function set ends the answer there, as on Deno:
  // what the stream yields past it is not sent (the platform would take
  // it for the answer to the next request on the connection).
  let left = Infinity;
  if (res.hasHeader("content-length") && !res.hasHeader("transfer-encoding")) {
    const n = Number(res.getHeader("content-length"));
    if (Number.isSafeInteger(n) && n >= 0) left = n;
  }
  const send = (chunk) => {
    if (chunk.byteLength > left) chunk = chunk.subarray(0, left);
    left -= chunk.byteLength;
    return write(res, chunk, gone);
  };
  try {
    for (const chunk of early) {
      if (left === 0 || !(await send(chunk))) break;
    }
    while (left > 0 && !gone.value) {
      const r = await pending;
      if (r.done) break;
      if (!(await send(chunkBytes(r.value)))) return;
      pending = read(reader);
    }
    if (gone.value) return;
    if (left === 0) reader.cancel().catch(() => {});
    res.end();
  } catch (err) {
    if (gone.value) return;
    // After the head: the answer is cut short, so the client sees it is
    // incomplete.
    bodyFailed(reader, err);
    res.destroy();
  }
}

// ---------------------------------------------------------------------------
// The express contract.

function readBody(req) {
  const declared = Number(req.headers["content-length"]);
  if (declared > MAX_BODY) {
    return Promise.reject(new HTTPError(413, "too_large", "the request body is larger than 10 MiB"));
  }
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    const onData = (chunk) => {
      size += chunk.length;
      if (size > MAX_BODY) {
        req.off("data", onData);
        req.pause();
        reject(new HTTPError(413, "too_large", "the request body is larger than 10 MiB"));
        return;
      }
      chunks.push(chunk);
    };
    req.on("data", onData);
    req.once("end", () => resolve(Buffer.concat(chunks, size)));
    // The client went away mid-body: nobody to answer, nothing to log.
    const cut = () => reject(new HTTPError(400, "invalid_argument", "the request body was cut short"));
    req.once("error", cut);
    req.once("close", () => {
      if (!req.complete) cut();
    });
  });
}

function parseBody(req, raw) {
  const type = (req.headers["content-type"] ?? "").split(";")[0].trim().toLowerCase();
  if (raw.length === 0) return type.startsWith("text/") ? "" : {};
  if (type === "application/json" || type.endsWith("+json")) {
    try {
      return JSON.parse(raw.toString("utf8"));
    } catch (err) {
      throw new HTTPError(400, "invalid_argument", "the request body is not valid JSON: " + err.message);
    }
  }
  if (type === "application/x-www-form-urlencoded") return querystring.parse(raw.toString("utf8"));
  if (type.startsWith("text/")) return raw.toString("utf8");
  return raw;
}

const MIME = {
  html: "text/html; charset=utf-8",
  text: "text/plain; charset=utf-8",
  json: "application/json; charset=utf-8",
  bin: "application/octet-stream",
};

// checkStatus is code if a Response could have it (200 to 599), as on
// the fetch contract; else it throws as a Response does (a 500). Node
// would send a 1xx as an interim answer with the body after it, which
// no client reads as the answer, and fail the answer for a 0.
function checkStatus(code) {
  const n = Number(code);
  if (!Number.isInteger(n) || n < 200 || n > 599) {
    throw new RangeError(`res.status(${JSON.stringify(code)}): a status must be an integer in the range of 200 to 599, inclusive.`);
  }
  return n;
}

function decorate(req, res, raw) {
  const url = requestURL(req);
  req.originalUrl = req.url;
  req.path = url.pathname;
  req.query = querystring.parse(url.search.slice(1));
  req.params = {};
  req.rawBody = raw;
  req.body = parseBody(req, raw);
  req._body = true; // tells body-parser (Express) the body is parsed already
  req.get = req.header = (name) => {
    const key = String(name).toLowerCase();
    if (key === "referer" || key === "referrer") return req.headers.referer ?? req.headers.referrer;
    return req.headers[key];
  };

  res.locals = {};
  // Set directly too (res.statusCode = 101, or writeHead's), a status
  // is checked as res.status checks it: a 101 went out as an upgrade
  // that never happened, a 502 at the router.
  let statusCode = res.statusCode;
  Object.defineProperty(res, "statusCode", {
    configurable: true,
    enumerable: true,
    get: () => statusCode,
    set: (code) => {
      statusCode = checkStatus(code);
    },
  });
  res.status = (code) => {
    res.statusCode = checkStatus(code);
    return res;
  };
  res.set = res.header = (field, value) => {
    if (field !== null && typeof field === "object") {
      for (const [k, v] of Object.entries(field)) res.set(k, v);
    } else {
      res.setHeader(field, Array.isArray(value) ? value.map(String) : String(value));
    }
    return res;
  };
  res.get = (field) => res.getHeader(field);
  res.append = (field, value) => {
    res.appendHeader(field, Array.isArray(value) ? value.map(String) : String(value));
    return res;
  };
  res.type = (type) => {
    res.setHeader("content-type", MIME[type] ?? (type.includes("/") ? type : "application/octet-stream"));
    return res;
  };
  res.json = (obj) => {
    if (!res.hasHeader("content-type")) res.setHeader("content-type", MIME.json);
    const body = JSON.stringify(obj);
    res.end(body === undefined ? "" : body);
    return res;
  };
  res.send = (body) => {
    if (body === undefined || body === null) {
      res.end();
    } else if (typeof body === "string") {
      if (!res.hasHeader("content-type")) res.setHeader("content-type", MIME.html);
      res.end(body);
    } else if (body instanceof Uint8Array || body instanceof ArrayBuffer) {
      if (!res.hasHeader("content-type")) res.setHeader("content-type", MIME.bin);
      res.end(body instanceof ArrayBuffer ? Buffer.from(body) : body);
    } else {
      res.json(body);
    }
    return res;
  };
  res.sendStatus = (code) => {
    res.statusCode = checkStatus(code);
    res.setHeader("content-type", MIME.text);
    res.end(http.STATUS_CODES[code] ?? String(code));
    return res;
  };
  res.redirect = (a, b) => {
    const [code, location] = typeof a === "number" ? [a, b] : [302, a];
    res.statusCode = checkStatus(code);
    res.setHeader("location", location);
    res.end();
    return res;
  };
}

function expressAdapter(fn) {
  return async (req, res) => {
    const raw = await readBody(req);
    decorate(req, res, raw);
    await fn(req, res);
  };
}

// ---------------------------------------------------------------------------
// Loading the function.

// secondParam returns the source text of fn's second declared parameter,
// or "" when it cannot tell.
function secondParam(fn) {
  let src;
  try {
    src = Function.prototype.toString.call(fn);
  } catch {
    return "";
  }
  const open = src.indexOf("(");
  if (open < 0) return "";
  const params = [];
  let depth = 0;
  let quote = "";
  let start = open + 1;
  for (let i = open + 1; i < src.length; i++) {
    const c = src[i];
    if (quote) {
      if (c === "\\") i++;
      else if (c === quote) quote = "";
    } else if (c === '"' || c === "'" || c === "`") {
      quote = c;
    } else if (c === "(" || c === "[" || c === "{") {
      depth++;
    } else if (c === ")" || c === "]" || c === "}") {
      if (depth === 0) {
        params.push(src.slice(start, i));
        break;
      }
      depth--;
    } else if (c === "," && depth === 0) {
      params.push(src.slice(start, i));
      start = i + 1;
    }
  }
  const p = params[1] ?? "";
  return p.replace(/\/\*[\s\S]*?\*\/|\/\/[^\n]*/g, "").trim();
}

function detectContract(fn) {
  if (fn.length <= 1) return "fetch";
  const second = secondParam(fn);
  if (second.startsWith("{") || /^_*(ctx|context|env)\d*(\s*=.*)?$/is.test(second)) return "fetch";
  return "express";
}

function pickHandler(mod) {
  let d = mod.default;
  // CommonJS that set exports.default (with __esModule) nests it once more.
  if (d !== null && typeof d === "object" && typeof d.fetch !== "function" &&
      (typeof d.default === "function" || typeof d.default?.fetch === "function")) {
    d = d.default;
  }
  if (d !== null && (typeof d === "object" || typeof d === "function") && typeof d.scheduled === "function") {
    scheduled = d.scheduled.bind(d);
  }
  const contract = mod.contract ?? d?.contract;
  if (contract !== undefined && contract !== "fetch" && contract !== "express") {
    throw new TypeError(`the module's contract is ${JSON.stringify(contract)}; want "fetch" or "express"`);
  }
  let fn;
  let chosen = contract;
  if (d !== null && (typeof d === "object" || typeof d === "function") && typeof d.fetch === "function") {
    fn = d.fetch.bind(d);
    chosen ??= "fetch";
  } else if (typeof d === "function") {
    fn = d;
    chosen ??= detectContract(d);
  } else {
    throw new TypeError("the module's default export is neither a function nor an object with a fetch method");
  }
  return chosen === "express" ? expressAdapter(fn) : fetchAdapter(fn);
}

// readSpecialization serves the control socket until the supervisor sends
// the function; answer(status, body) goes back to it once the import ends.
// The socket stays open: later requests get a 409, which the supervisor's
// probe of a suspect instance takes as proof that its event loop runs.
function readSpecialization() {
  return new Promise((resolve) => {
    let taken = false;
    // The supervisor connects while the process waits in the pool, long
    // before it sends anything: no header or request timeout here.
    const control = http.createServer({ headersTimeout: 0, requestTimeout: 0 }, (req, res) => {
      if (taken) {
        if (req.method === "POST" && req.url === "/scheduled") {
          runScheduled(req, res);
          return;
        }
        res.writeHead(409).end("already specialized");
        return;
      }
      taken = true;
      let body = "";
      req.setEncoding("utf8");
      req.on("data", (s) => (body += s));
      req.on("end", () => {
        const answer = (status, obj) => {
          res.writeHead(status, { "content-type": "application/json" }).end(JSON.stringify(obj));
        };
        try {
          resolve({ spec: JSON.parse(body), answer });
        } catch (err) {
          answer(400, { error: String(err) });
        }
      });
    });
    control.listen(CONTROL, onListen);
  });
}

// runScheduled runs the function's scheduled method for the event the
// supervisor sends on the control socket (which nothing but the
// supervisor, and the function's own code, reach): 200 once it has
// returned, 500 if it threw, 501 if the module has none, 502 if the
// module failed to load, 400 for a body that is not an event.
function runScheduled(req, res) {
  let body = "";
  req.setEncoding("utf8");
  req.on("data", (s) => (body += s));
  req.on("end", async () => {
    const answer = (status, obj) => {
      res.writeHead(status, { "content-type": "application/json" }).end(JSON.stringify(obj));
    };
    let event;
    try {
      const { cron, scheduledTime } = JSON.parse(body);
      event = { type: "scheduled", cron, scheduledTime };
    } catch (err) {
      answer(400, { error: String(err) });
      return;
    }
    await loaded;
    if (failed !== null) return answer(502, { error: failed });
    if (scheduled === null) return answer(501, { error: "the module's default export has no scheduled method" });
    try {
      await scheduled(event, makeContext(""));
    } catch (err) {
      console.error("scheduled run threw:", err);
      return answer(500, { error: loadFailure(err) });
    }
    answer(200, { ok: true });
  });
}

// loadFailure is an import's error as one short line.
function loadFailure(err) {
  const s = String(err?.message ?? err).replace(/\s+/g, " ").trim();
  return s.length > 300 ? s.slice(0, 300) + "..." : s;
}

const { spec, answer } = await readSpecialization();
errorMark = String(spec.error_mark ?? "");
specReadDone();
const env = Object.fromEntries(Object.entries(spec.env ?? {}).map(([k, v]) => [k, String(v)]));
meta = { name: spec.name, owner: spec.owner, version: spec.version, env: Object.freeze(env) };
// The function's environment, and nothing else.
for (const k of Object.keys(process.env)) delete process.env[k];
Object.assign(process.env, env);
// Bundles are ES modules; CommonJS code bundled into one calls require()
// for node: built-ins, which an ES module does not have.
globalThis.require = createRequire(new URL(spec.module));
// From here on, an error nothing handles (a promise rejected with no
// handler, an exception thrown from a timer or an event) is the
// function's: it is logged with its stack, and the instance serves on,
// its other requests too, as on Cloudflare Workers. (Before, it is the
// bootstrap's own, and ends the instance. An instance out of memory ends
// all the same: that is no exception.)
process.on("unhandledRejection", (reason) => console.error("unhandled rejection in function:", reason));
process.on("uncaughtException", (err) => console.error("uncaught exception in function:", err));
try {
  handler = pickHandler(await import(spec.module));
  // Before any request runs the function's code, and written at once: an
  // answer on the control socket waits for the event loop, which a
  // handler may block, and until the supervisor hears, the instance
  // counts as loading (which a timeout does not kill).
  writeSync(1, "SPRY-LOADED\n");
  answer(200, { ok: true });
} catch (err) {
  const message = loadFailure(err);
  failed = "the function failed to load: " + message;
  console.error("function failed to load:", err);
  answer(500, { error: message });
  resolveLoaded();
  // Answer what is waiting, then exit so the supervisor records the crash
  // and the next request starts a fresh instance.
  setTimeout(() => process.exit(1), 50);
}
resolveLoaded();
