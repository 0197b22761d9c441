// Spry's Deno bootstrap. It runs inside the sandbox before any user code.
// It listens on the instance's Unix socket at once, so a pooled instance is
// ready before it knows its function; then it reads one specialization
// message on stdin, imports that function's bundle and serves it. Requests
// that arrive while the import runs wait for it.
const SOCKET = "/run/spry/http.sock";
const encoder = new TextEncoder();

let handler = null;
let failed = false;
let resolveLoaded;
const loaded = new Promise((r) => (resolveLoaded = r));
let meta = { name: "", owner: "", version: 0, env: {} };

function errorResponse(status, code, message) {
  return new Response(JSON.stringify({ error: { code, message } }), {
    status,
    headers: { "content-type": "application/json", "spry-error": code },
  });
}

function makeContext(req) {
  return {
    env: meta.env,
    name: meta.name,
    owner: meta.owner,
    version: meta.version,
    requestId: req.headers.get("spry-request-id") ?? "",
    waitUntil(p) {
      Promise.resolve(p).catch((err) => console.error("waitUntil:", err));
    },
  };
}

Deno.serve({
  path: SOCKET,
  onListen() {
    // The first line on stdout, written before any user code exists, tells
    // the supervisor the instance is ready.
    Deno.stdout.writeSync(encoder.encode("SPRY-READY\n"));
  },
  onError(err) {
    console.error("uncaught exception in function:", err);
    return errorResponse(500, "function_error", "the function threw an uncaught exception; see its logs");
  },
}, async (raw) => {
  if (handler === null) await loaded;
  const req = publicRequest(raw);
  if (failed) {
    return errorResponse(502, "function_failed", "the function failed to load; see its logs");
  }
  let res;
  if (legacy) {
    res = await callLegacyCompatible(req);
  } else {
    res = await handler(req, makeContext(req));
  }
  if (!(res instanceof Response)) {
    console.error(`function returned ${res === null ? "null" : typeof res}, not a Response`);
    return errorResponse(500, "function_error", "the function did not return a Response; see its logs");
  }
  return res;
});

// A default-exported function may also be written in the older
// Deno.RequestEvent style that the svrless seed used:
//   export default async function handler({ req }) { req.respondWith(new Response("hi")); }
// so such functions get, besides the Request, a `req` property holding a
// RequestEvent-like { request, respondWith }; whichever answer comes
// first (the returned Response or the one given to respondWith) is used.
let legacy = false;

function callLegacyCompatible(req) {
  return new Promise((resolve, reject) => {
    let answered = false;
    const answer = (r) => {
      if (!answered) {
        answered = true;
        Promise.resolve(r).then(resolve, reject);
      }
    };
    Object.defineProperty(req, "req", {
      value: { request: req, respondWith: answer },
      enumerable: false,
    });
    Promise.resolve()
      .then(() => handler(req, makeContext(req)))
      // Returning without a Response and without respondWith is an error
      // (answered as one below), not a wait.
      .then(answer, reject);
  });
}

// Deno names requests on a Unix socket http+unix://; the function sees
// the scheme its caller used instead.
function publicRequest(req) {
  if (!req.url.startsWith("http+unix:")) return req;
  const scheme = req.headers.get("x-forwarded-proto") === "https" ? "https" : "http";
  return new Request(scheme + req.url.slice("http+unix".length), req);
}

function pickHandler(mod) {
  const d = mod.default;
  if (typeof d === "function") {
    legacy = true;
    return d;
  }
  if (d && typeof d.fetch === "function") return d.fetch.bind(d);
  throw new TypeError("the module's default export is neither a function nor an object with a fetch method");
}

async function readSpecialization() {
  const reader = Deno.stdin.readable.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  while (true) {
    const { value, done } = await reader.read();
    if (done) Deno.exit(0); // the supervisor closed stdin: retire quietly
    buf += decoder.decode(value, { stream: true });
    const nl = buf.indexOf("\n");
    if (nl >= 0) {
      reader.releaseLock();
      return JSON.parse(buf.slice(0, nl));
    }
  }
}

const spec = await readSpecialization();
meta = {
  name: spec.name,
  owner: spec.owner,
  version: spec.version,
  env: Object.freeze({ ...(spec.env ?? {}) }),
};
try {
  handler = pickHandler(await import(spec.module));
} catch (err) {
  failed = true;
  console.error("function failed to load:", err);
  resolveLoaded();
  // Answer what is waiting, then exit so the supervisor records the crash
  // and the next request starts a fresh instance.
  setTimeout(() => Deno.exit(1), 50);
}
resolveLoaded();
