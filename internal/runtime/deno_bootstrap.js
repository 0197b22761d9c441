// Spry's Deno bootstrap. It runs inside the sandbox before any user code.
// It listens on the instance's Unix socket at once, so a pooled instance is
// ready before it knows its function, and warms up the request path (Deno
// loads parts of itself on first use). Then it takes one specialization
// request on its control socket (which only the supervisor can reach; the
// router never sends there), imports that function's bundle, answers the
// supervisor and serves. Requests that arrive while the import runs wait.
const SOCKET = "/run/spry/http.sock";
const CONTROL = "/run/spry/control.sock";
const encoder = new TextEncoder();
// The first line on stdout: the sandbox's setup is done (the supervisor
// sets up the network beside the rest of the start).
Deno.stdout.writeSync(encoder.encode("SPRY-BOOT\n"));
// Answers the bootstrap's own warm-up request; unknowable from outside.
const WARMUP = crypto.randomUUID();

let handler = null;
// The default export's scheduled method, bound, or null.
let scheduled = null;
// Set when the function's import failed: the message every waiting and
// later request is answered with, since the supervisor no longer waits
// for the import before it hands out the instance.
let failed = null;
let resolveLoaded;
const loaded = new Promise((r) => (resolveLoaded = r));
let meta = { name: "", owner: "", version: 0, env: {} };
// The specialization's error_mark: this bootstrap's error answers carry
// it, so that the router tells them from the function's. It is in no
// object the function is given; a function that patches the runtime's
// own classes to read it could only pass its answers for the platform's
// errors, misleading nobody but its own callers.
let errorMark = "";

function errorResponse(status, code, message) {
  return new NativeResponse(JSON.stringify({ error: { code, message } }), {
    status,
    headers: { "content-type": "application/json", "spry-error": code, "spry-error-mark": errorMark },
  });
}

// How a body stream is read before the head goes out (body.js, which
// both runtimes share) goes here.
/* @spry:body */

// Responses whose body is a stream (or an async iterable) the function
// made: the Response class functions see marks them, and settle reads
// their start before Deno sends the head, as Node's bootstrap does.
// Others (a string's, a buffer's, fetch()'s, Response.json's) go to Deno
// as they are, on its fast paths. A subclass costs a response next to
// nothing; a Proxy's construct trap would cost each ~0.6 us.
const NativeResponse = Response;
// Node's words for a status the Fetch standard does not take.
const STATUS_RANGE = 'init["status"] must be in the range of 200 to 599, inclusive.';
// The 101s Deno.upgradeWebSocket made: any other 101 (Response.json's,
// say) is refused as a status out of range, not sent as an upgrade that
// never happens.
const upgrades = new WeakSet();
const NativeReadableStream = ReadableStream;
const streamed = new WeakSet();
const FunctionsResponse = class Response extends NativeResponse {
  constructor(body, init) {
    super(body, init);
    // A Blob's or FormData's body is a stream to Deno, which would send
    // it chunked: read at once, it goes with its length, as on Node.
    if (body instanceof NativeReadableStream || body instanceof Blob || body instanceof FormData ||
        (body !== null && typeof body === "object" && typeof body[Symbol.asyncIterator] === "function")) {
      streamed.add(this);
    }
    // Deno takes a 101 here (for its own upgradeWebSocket), Node and the
    // Fetch standard do not: the same RangeError on both runtimes.
    if (init?.status !== undefined && this.status === 101) throw new RangeError(STATUS_RANGE);
  }

  // The Responses Deno makes itself (fetch's, Response.json's) are
  // Responses too; a function's own subclass keeps the usual test.
  static [Symbol.hasInstance](value) {
    if (this === FunctionsResponse) return value instanceof NativeResponse;
    return Function.prototype[Symbol.hasInstance].call(this, value);
  }
};
globalThis.Response = FunctionsResponse;

// The error a settled body stream fails with once its head is gone: the
// failure is logged already (bodyFailed), and Deno cuts the answer short.
const BODY_FAILED = new Error("the function's response body failed");

// concat is chunks, size bytes in all, as one array.
function concat(chunks, size) {
  if (chunks.length === 1) return chunks[0];
  const whole = new Uint8Array(size);
  let off = 0;
  for (const c of chunks) {
    whole.set(c, off);
    off += c.byteLength;
  }
  return whole;
}

// settle is res with its body stream's start read (readEarly): a body
// that ended at once goes whole, with its length; one that failed (or
// yielded something not bytes) is a 500; anything else streams on, the
// chunks read checked as they come.
async function settle(res, req) {
  if (res.bodyUsed || res.body.locked) return res; // Deno says what is wrong
  const reader = res.body.getReader();
  let early, size, done, pending;
  try {
    ({ early, size, done, pending } = await readEarly(reader));
  } catch (err) {
    bodyFailed(reader, err);
    return errorResponse(500, "function_error", "the function's response body failed; see its logs");
  }
  if (done) return new NativeResponse(concat(early, size), res);
  // Set once Deno cancels the answer (the client left, the timeout came):
  // the read under way then ends, and there is nothing left to fail.
  let cancelled = false;
  return new NativeResponse(new NativeReadableStream({
    async pull(c) {
      if (early.length > 0) {
        c.enqueue(early.shift());
        return;
      }
      try {
        const r = await (pending ?? read(reader));
        pending = null;
        if (cancelled) return;
        if (r.done) c.close();
        else c.enqueue(chunkBytes(r.value));
      } catch (err) {
        if (cancelled) return;
        bodyFailed(reader, err);
        c.error(BODY_FAILED);
      }
    },
    cancel(reason) {
      cancelled = true;
      abortRequest(req);
      return reader.cancel(reason);
    },
  }, { highWaterMark: 0 }), res);
}

// ctx.kv: the function's key-value storage, kept by the server (one
// namespace per function, across versions and deploys), over one
// connection to the server's socket (kv_client.js). Values are anything
// JSON can hold.
function kvDial(on) {
  let conn = null;
  let closed = false;
  let out = []; // lines not yet written
  let writing = false;
  const fail = (err) => {
    on.end(closed ? null : new Error(`ctx.kv: ${err.message}`));
    close();
  };
  const close = () => {
    closed = true;
    try { conn?.close(); } catch { /* closed already */ }
  };
  // Lines sent while a write is under way go together in the next.
  const flush = async () => {
    writing = true;
    try {
      while (out.length > 0 && !closed) {
        const bytes = encoder.encode(out.length === 1 ? out[0] : out.join(""));
        out = [];
        for (let off = 0; off < bytes.length;) off += await conn.write(bytes.subarray(off));
      }
    } catch (err) {
      fail(err);
    } finally {
      writing = false;
    }
  };
  const read = async () => {
    const buf = new Uint8Array(64 << 10);
    const decoder = new TextDecoder();
    try {
      for (let n; (n = await conn.read(buf)) !== null;) on.data(decoder.decode(buf.subarray(0, n), { stream: true }));
      on.end(null);
      close();
    } catch (err) {
      fail(err);
    }
  };
  Deno.connect({ transport: "unix", path: KV_SOCKET }).then((c) => {
    conn = c;
    if (closed) return close();
    // The connection waits for answers without keeping the event loop
    // alive (the server it serves does that).
    c.unref();
    read();
    if (out.length > 0) flush();
  }, (err) => {
    closed = true;
    on.end(new Error(`ctx.kv: storage is not reachable: ${err.message}`));
  });
  return {
    send(line) {
      out.push(line);
      if (conn !== null && !writing) flush();
    },
    busy() {},
    close,
  };
}

// The part of ctx.kv both runtimes share (kv_client.js) goes here.
/* @spry:kv-client */

function makeContext(req) {
  return {
    env: meta.env,
    kv,
    name: meta.name,
    owner: meta.owner,
    version: meta.version,
    // A getter: reading headers builds the Request's Headers object, a
    // cost most functions never ask for.
    get requestId() {
      return req.headers.get("spry-request-id") ?? "";
    },
    waitUntil(p) {
      Promise.resolve(p).catch((err) => console.error("waitUntil:", err));
    },
  };
}

// stdin is the supervisor's lifeline: it closes when the supervisor dies,
// however it dies, and the instance must not outlive it.
(async () => {
  try {
    for await (const _ of Deno.stdin.readable) { /* nothing is ever sent */ }
  } finally {
    Deno.exit(0);
  }
})();

let listening = 0;
function onListen() {
  if (++listening < 2) return;
  // Under gVisor, a connection to our own host-backed socket does not come
  // back, so that sandbox skips the warm-up.
  if (Deno.args.includes("--no-warmup")) ready();
  else warmUp().then(ready, ready);
}

// ready writes the first line on stdout, before any user code exists:
// it tells the supervisor the instance is ready.
function ready() {
  Deno.stdout.writeSync(encoder.encode("SPRY-READY\n"));
}

// warmUp runs one request through the server and the usual web APIs, so
// the first real request does not pay for loading them.
async function warmUp() {
  // The module loader's first import is slow; pay it here, not on the
  // function's cold start.
  const warmFile = "/tmp/.spry-warm.js";
  Deno.writeTextFileSync(warmFile, "export default { fetch() { return new Response('warm'); } };");
  pickHandler(await import("file://" + warmFile));
  Deno.removeSync(warmFile);
  const conn = await Deno.connect({ transport: "unix", path: SOCKET });
  await conn.write(encoder.encode(`POST /warm?x=1 HTTP/1.1\r\nHost: spry\r\nSpry-Warmup: ${WARMUP}\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}`));
  const buf = new Uint8Array(4096);
  while ((await conn.read(buf)) !== null) { /* read to the end */ }
  conn.close();
}

async function warmRequest(req) {
  await req.json();
  new URL(req.url).searchParams.get("x");
  new Headers(req.headers).get("host");
  const res = Response.json({ ok: true }, { headers: { "x-warm": "1" } });
  await new Response(new ReadableStream({ start(c) { c.enqueue(encoder.encode("x")); c.close(); } })).text();
  new TextDecoder().decode(encoder.encode("warm"));
  return res;
}

Deno.serve({
  path: SOCKET,
  onListen,
  onError(err) {
    if (err !== BODY_FAILED) console.error("uncaught exception in function:", err);
    return errorResponse(500, "function_error", "the function threw an uncaught exception; see its logs");
  },
}, async (req) => {
  if (handler === null) {
    if (req.headers.get("spry-warmup") === WARMUP) return warmRequest(req);
    await loaded;
  }
  if (failed !== null) {
    return errorResponse(502, "function_failed", failed);
  }
  let res;
  if (legacy) {
    res = await callLegacyCompatible(req);
  } else {
    res = await handler(req, makeContext(req));
  }
  if (!(res instanceof NativeResponse)) {
    console.error(`function returned ${res === null ? "null" : typeof res}, not a Response`);
    return errorResponse(500, "function_error", "the function did not return a Response; see its logs");
  }
  if (res.status === 101 && !upgrades.has(res)) {
    console.error("uncaught exception in function:", new RangeError(STATUS_RANGE));
    return errorResponse(500, "function_error", "the function threw an uncaught exception; see its logs");
  }
  return streamed.has(res) ? settle(res, req) : res;
});

// Deno aborts req.signal when the client hangs up, but not always when
// it cancels an answer's body mid-way (the client left, or the router
// cut it at the timeout): it may take the body's end for the request's.
// Node always does, and so does this: a request's signal also aborts
// when its streamed answer is cancelled. The signal a function reads is
// made at its first read, which most functions never make.
const nativeSignal = Object.getOwnPropertyDescriptor(Request.prototype, "signal");
const signals = new WeakMap();
function requestSignal(req) {
  let s = signals.get(req);
  if (s === undefined) {
    const ac = new AbortController();
    s = { ac, signal: AbortSignal.any([nativeSignal.get.call(req), ac.signal]) };
    signals.set(req, s);
  }
  return s;
}
function abortRequest(req) {
  requestSignal(req).ac.abort();
}
Object.defineProperty(Request.prototype, "signal", {
  configurable: true,
  enumerable: nativeSignal.enumerable,
  get() {
    return requestSignal(this).signal;
  },
});

// A default-exported function may also be written in the older
// Deno.RequestEvent style that the svrless seed used:
//   export default async function handler({ req }) { req.respondWith(new Response("hi")); }
// so such functions get, besides the Request, a `req` property holding a
// RequestEvent-like { request, respondWith }; whichever answer comes
// first (the returned Response or the one given to respondWith) is used.
let legacy = false;

// answers maps a request served in the RequestEvent style to the function
// that settles its response; the `req` getter below reaches it, so nothing
// is attached to each request unless a handler asks for it.
const answers = new WeakMap();
Object.defineProperty(Request.prototype, "req", {
  configurable: true,
  get() {
    const request = this;
    return { request, respondWith: (r) => answers.get(request)?.(r) };
  },
});

function callLegacyCompatible(req) {
  return new Promise((resolve, reject) => {
    let answered = false;
    const answer = (r) => {
      if (!answered) {
        answered = true;
        Promise.resolve(r).then(resolve, reject);
      }
    };
    answers.set(req, answer);
    Promise.resolve()
      .then(() => handler(req, makeContext(req)))
      // Returning without a Response and without respondWith is an error
      // (answered as one below), not a wait.
      .then(answer, (err) => {
        // Thrown after respondWith: too late for the answer, not for
        // the logs.
        if (answered) console.error("uncaught exception in function:", err);
        else reject(err);
      });
  });
}

// Deno names requests on a Unix socket http+unix://; functions see the
// scheme their caller used instead. Patching the getter once costs nothing
// per request (a new Request per request would halve throughput).
const urlGetter = Object.getOwnPropertyDescriptor(Request.prototype, "url");
Object.defineProperty(Request.prototype, "url", {
  configurable: true,
  enumerable: urlGetter.enumerable,
  get() {
    const url = urlGetter.get.call(this);
    if (!url.startsWith("http+unix:")) return url;
    return (this.headers.get("x-forwarded-proto") === "https" ? "https" : "http") + url.slice("http+unix".length);
  },
});

// Deno.upgradeWebSocket closes the request, and then reads req.url (for
// the socket's inspector): the getter above then read a header Deno had
// not read yet, which throws once the request is closed, and the upgrade
// failed silently (an error event on the socket, no open event, nothing
// sent after the 101). The headers are read first, all of them (a few
// microseconds, on upgrades only): the url, and the headers, stay
// readable after the upgrade, in the socket's handlers too.
const nativeUpgradeWebSocket = Deno.upgradeWebSocket;
Deno.upgradeWebSocket = function upgradeWebSocket(req, options) {
  if (req instanceof Request) for (const _ of req.headers) { /* read them all */ }
  const upgrade = nativeUpgradeWebSocket(req, options);
  upgrades.add(upgrade.response);
  return upgrade;
};

// loadFailure is an import's error as one short line.
function loadFailure(err) {
  const s = String(err?.message ?? err).replace(/\s+/g, " ").trim();
  return s.length > 300 ? s.slice(0, 300) + "..." : s;
}

function pickHandler(mod) {
  const d = mod.default;
  if (d && (typeof d === "object" || typeof d === "function") && typeof d.scheduled === "function") {
    scheduled = d.scheduled.bind(d);
  }
  // A fetch method wins, as on Node, whatever carries it: an object, a
  // class with a static one (which cannot be called as a function), or
  // a function.
  if (d && (typeof d === "object" || typeof d === "function") && typeof d.fetch === "function") {
    return d.fetch.bind(d);
  }
  if (typeof d === "function") {
    legacy = true;
    return d;
  }
  throw new TypeError("the module's default export is neither a function nor an object with a fetch method");
}

// readSpecialization serves the control socket until the supervisor sends
// the function; answer (a Response) goes back to it once the import ends.
function readSpecialization() {
  return new Promise((resolve) => {
    let taken = false;
    Deno.serve({ path: CONTROL, onListen }, async (req) => {
      if (taken) {
        if (req.method === "POST" && new URL(req.url).pathname === "/scheduled") return runScheduled(req);
        return new Response("already specialized", { status: 409 });
      }
      taken = true;
      const spec = await req.json();
      const { promise, resolve: answer } = Promise.withResolvers();
      resolve({ spec, answer });
      return await promise;
    });
  });
}

// runScheduled runs the function's scheduled method for the event the
// supervisor sends on the control socket (which nothing but the
// supervisor, and the function's own code, reach): 200 once it has
// returned, 500 if it threw, 501 if the module has none, 502 if the
// module failed to load, 400 for a body that is not an event.
async function runScheduled(req) {
  let cron, scheduledTime;
  try {
    ({ cron, scheduledTime } = await req.json());
  } catch (err) {
    return Response.json({ error: String(err) }, { status: 400 });
  }
  await loaded;
  if (failed !== null) return Response.json({ error: failed }, { status: 502 });
  if (scheduled === null) {
    return Response.json({ error: "the module's default export has no scheduled method" }, { status: 501 });
  }
  try {
    await scheduled({ type: "scheduled", cron, scheduledTime }, makeContext(req));
  } catch (err) {
    console.error("scheduled run threw:", err);
    return Response.json({ error: loadFailure(err) }, { status: 500 });
  }
  return Response.json({ ok: true });
}

// One specialization per life: the control socket refuses any other. Its
// 409 is also the answer to the supervisor's probe of a suspect instance
// (one a request ran out of time on): proof that the event loop runs.
const { spec, answer } = await readSpecialization();
errorMark = String(spec.error_mark ?? "");
meta = {
  name: spec.name,
  owner: spec.owner,
  version: spec.version,
  env: Object.freeze({ ...(spec.env ?? {}) }),
};
// process.env holds the function's env vars, as on Node (a copy the
// function may change), rather than read the sandbox's through Deno.env,
// which throws (no env permission): npm code reads it, NODE_ENV say.
// (The named export, import { env } from "node:process", still throws.)
// Set at the first read of the global: Deno loads its Node layer then,
// ~17 ms of a cold start that most functions never pay (read here, it
// made every cold start that much slower).
const processGlobal = Object.getOwnPropertyDescriptor(globalThis, "process");
if (processGlobal?.get) {
  let env = null;
  Object.defineProperty(globalThis, "process", {
    configurable: true,
    enumerable: processGlobal.enumerable,
    get() {
      const p = processGlobal.get.call(globalThis);
      if (env === null && p) {
        env = { ...meta.env };
        Object.defineProperty(p, "env", { value: env, writable: true, enumerable: true, configurable: true });
      }
      return p;
    },
    set(v) {
      Object.defineProperty(globalThis, "process", { value: v, writable: true, enumerable: processGlobal.enumerable, configurable: true });
    },
  });
} else if (processGlobal?.value) {
  Object.defineProperty(processGlobal.value, "env", { value: { ...meta.env }, writable: true, enumerable: true, configurable: true });
}
// From here on, an error nothing handles (a promise rejected with no
// handler, an exception thrown from a timer or an event) is the
// function's: it is logged with its stack, and the instance serves on,
// its other requests too, as on Cloudflare Workers. (Before, it is the
// bootstrap's own, and ends the instance. An instance out of memory ends
// all the same: that is no exception.)
globalThis.addEventListener("unhandledrejection", (e) => {
  e.preventDefault();
  console.error("unhandled rejection in function:", e.reason);
});
globalThis.addEventListener("error", (e) => {
  e.preventDefault();
  console.error("uncaught exception in function:", e.error);
});
try {
  handler = pickHandler(await import(spec.module));
  // Before any request runs the function's code, and written at once: an
  // answer on the control socket waits for the event loop, which a
  // handler may block, and until the supervisor hears, the instance
  // counts as loading (which a timeout does not kill).
  Deno.stdout.writeSync(encoder.encode("SPRY-LOADED\n"));
  answer(Response.json({ ok: true }));
} catch (err) {
  const message = loadFailure(err);
  failed = "the function failed to load: " + message;
  console.error("function failed to load:", err);
  answer(Response.json({ error: message }, { status: 500 }));
  resolveLoaded();
  // Answer what is waiting, then exit so the supervisor records the crash
  // and the next request starts a fresh instance.
  setTimeout(() => Deno.exit(1), 50);
}
resolveLoaded();
