// The part of ctx.kv that Spry's Deno and Node bootstraps share: each
// gets it in place of its "@spry:kv-client" line, and defines kvDial,
// which opens the server's socket its own way.
//
// ctx.kv speaks to the server over one connection an instance keeps,
// made on the first call: each request is a line of JSON with an id,
// which its answer, a line too, carries back, so that calls made at once
// share the connection and are answered in any order. A connection that
// fails fails the calls it carries; the next call makes another.
//
// kvDial(on) starts connecting to KV_SOCKET and returns { send(line),
// busy(yes), close() }: send writes a line (queued until connected, and
// in order); busy says whether calls wait for answers (an idle
// connection must not keep the instance's event loop alive); close ends
// it. It calls on.data(text) with the answers' text as it comes, and
// on.end(err) once, when the connection ends: err is an Error to fail
// the waiting calls with, or null.
const KV_SOCKET = "/run/spry-kv.sock";

// The server's bound on a request's bytes (kv.MaxRequest): past it, it
// says so and closes the connection, failing every call on it; the call
// is refused here instead, with the server's error.
const KV_MAX_REQUEST = 398336;

// The server closes a connection on which no request begins for a
// minute (kv.ConnIdleTimeout). A call sent as it does so would fail, so
// a connection idle this long is not used again: the call makes another.
const KV_REUSE_IDLE_MS = 50000;

let kvLink = null; // the connection the next call goes on, if one is open
let kvLastId = 0;

// kvNow is the clock the idle time is read by (a test sets another).
let kvNow = () => performance.now();

function kvCall(req) {
  req.id = ++kvLastId;
  const line = JSON.stringify(req) + "\n";
  // No UTF-16 unit takes more than three bytes in UTF-8.
  if (3 * (line.length - 1) > KV_MAX_REQUEST && new TextEncoder().encode(line).length - 1 > KV_MAX_REQUEST) {
    return Promise.reject(kvError({ code: "too_large", message: `kv: a request is at most ${KV_MAX_REQUEST} bytes` }));
  }
  const now = kvNow();
  if (kvLink !== null && kvLink.calls.size === 0 && now - kvLink.lastUsed >= KV_REUSE_IDLE_MS) {
    const idle = kvLink;
    kvEnded(idle, null);
    idle.conn.close();
  }
  const link = kvLink ?? (kvLink = kvOpen());
  link.lastUsed = now;
  return new Promise((resolve, reject) => {
    link.calls.set(req.id, { resolve, reject });
    if (link.calls.size === 1) link.conn.busy(true);
    link.conn.send(line);
  });
}

function kvOpen() {
  // calls: id -> the call waiting for its answer; rest: an answer's
  // start, its end yet to come; last: the error the server answered a
  // line it could not read with, before closing the connection.
  // lastUsed: when a call last went or was answered (kvNow).
  const link = { calls: new Map(), rest: "", last: null, ended: false, conn: null, lastUsed: 0 };
  link.conn = kvDial({
    data: (text) => kvReceived(link, text),
    end: (err) => kvEnded(link, err),
  });
  return link;
}

function kvReceived(link, text) {
  let start = 0;
  for (let nl; !link.ended && (nl = text.indexOf("\n", start)) !== -1; start = nl + 1) {
    const line = link.rest + text.slice(start, nl);
    link.rest = "";
    kvAnswered(link, line);
  }
  link.rest += text.slice(start);
}

function kvAnswered(link, line) {
  let res;
  try {
    res = JSON.parse(line);
  } catch {
    kvEnded(link, new Error("ctx.kv: the storage's answer was cut off"));
    link.conn.close();
    return;
  }
  const call = link.calls.get(res?.id);
  if (call === undefined) {
    // No call's: the server could not read a line, and closes.
    if (res?.error) link.last = res.error;
    return;
  }
  link.calls.delete(res.id);
  link.lastUsed = kvNow();
  if (link.calls.size === 0) link.conn.busy(false);
  if (res.error) call.reject(kvError(res.error));
  else call.resolve(res);
}

function kvEnded(link, err) {
  if (link.ended) return;
  link.ended = true;
  if (kvLink === link) kvLink = null;
  for (const call of link.calls.values()) {
    if (link.last) call.reject(kvError(link.last));
    else if (link.rest !== "") call.reject(new Error("ctx.kv: the storage's answer was cut off"));
    else call.reject(err ?? new Error("ctx.kv: the connection to storage was closed"));
  }
  link.calls.clear();
}

// kvError is the server's error as the code sees it: its message, with
// its code (invalid_argument, quota_exceeded, ...).
function kvError(e) {
  const err = new Error(e.message);
  err.code = e.code;
  return err;
}

function kvKey(what, key) {
  if (typeof key !== "string") throw new TypeError(`ctx.kv.${what}: the key must be a string`);
  // A lone surrogate has no UTF-8 form: sent as JSON's escape, the
  // server would read it as U+FFFD, making distinct keys one.
  if (!key.isWellFormed()) throw new TypeError(`ctx.kv.${what}: the key must be well-formed Unicode (it has a lone surrogate)`);
  return key;
}

// A number the server reads as a whole one (an int64): past
// Number.MAX_SAFE_INTEGER a double is no exact whole number, and past
// int64's range the server could not read the request at all, and would
// close the connection, failing every call on it.
function kvWhole(n) {
  return typeof n === "number" && Number.isSafeInteger(n);
}

function kvExpireIn(what, options) {
  const expireIn = options?.expireIn ?? 0;
  if (!kvWhole(expireIn) || expireIn < 0) {
    throw new TypeError(`ctx.kv.${what}: expireIn must be a whole number of milliseconds`);
  }
  return expireIn;
}

// kvIfVersion reads options.ifVersion into a request: absent, the write
// is made whatever the key holds; null, only if it holds nothing; a
// version (as getEntry gives), only if its value is still that one.
function kvIfVersion(what, options, req) {
  const v = options?.ifVersion;
  if (v === undefined) return req;
  if (v !== null && (typeof v !== "string" || v === "")) {
    throw new TypeError(`ctx.kv.${what}: ifVersion must be a version (a string, as getEntry gives) or null`);
  }
  req.ifVersion = v;
  return req;
}

const kv = Object.freeze({
  // get returns the key's value, or null if it has none.
  async get(key) {
    return (await kvCall({ op: "get", key: kvKey("get", key) })).value;
  },
  // getEntry returns { key, value, version }: the value's version, for a
  // write made only if it is unchanged (ifVersion); null if none.
  async getEntry(key) {
    const res = await kvCall({ op: "get", key: kvKey("getEntry", key) });
    return { key, value: res.value, version: res.version };
  },
  // set stores value (anything JSON can hold); options.expireIn (ms)
  // makes it expire; with options.ifVersion, only if the key is as read
  // (see kvIfVersion). It returns { ok, version }: ok false (version
  // null) if ifVersion did not hold, and nothing was written.
  async set(key, value, options = {}) {
    kvKey("set", key);
    const expireIn = kvExpireIn("set", options);
    const json = JSON.stringify(value);
    if (json === undefined) throw new TypeError("ctx.kv.set: the value must be something JSON can hold");
    const res = await kvCall(kvIfVersion("set", options, { op: "set", key, value: JSON.parse(json), expireIn }));
    return { ok: res.ok, version: res.version ?? null };
  },
  // add adds delta (1 by default) to the key's number (0 if it has
  // none), atomically, and returns the sum; options.expireIn (ms) gives
  // the entry a new expiry, else it keeps the one it has.
  async add(key, delta = 1, options = {}) {
    kvKey("add", key);
    if (typeof delta !== "number" || !Number.isFinite(delta)) {
      throw new TypeError("ctx.kv.add: delta must be a finite number");
    }
    return (await kvCall({ op: "add", key, delta, expireIn: kvExpireIn("add", options) })).value;
  },
  // delete removes the key; with options.ifVersion, only if it is as
  // read. It returns { ok }: false if ifVersion did not hold.
  async delete(key, options = {}) {
    const res = await kvCall(kvIfVersion("delete", options, { op: "delete", key: kvKey("delete", key) }));
    return { ok: res.ok };
  },
  // list returns { entries: [{ key, value, version }], cursor }: up to limit
  // (100; at most 1000) entries whose keys start with prefix, in key
  // order, after cursor; cursor is null on the last page.
  async list(options = {}) {
    const { prefix = "", cursor = "", limit = 0 } = options ?? {};
    const text = (what, v) => {
      const s = v === null ? "" : String(v);
      // As a key's: sent escaped, the server would read U+FFFD.
      if (!s.isWellFormed()) throw new TypeError(`ctx.kv.list: the ${what} must be well-formed Unicode (it has a lone surrogate)`);
      return s;
    };
    if (limit !== null && !kvWhole(limit)) throw new TypeError("ctx.kv.list: limit must be a whole number (1 to 1000)");
    const res = await kvCall({ op: "list", prefix: text("prefix", prefix), cursor: text("cursor", cursor), limit: limit ?? 0 });
    return { entries: res.entries, cursor: res.cursor };
  },
});
