// The part of ctx.kv that Spry's Deno and Node bootstraps share: each
// gets it in place of its "@spry:kv-client" line, and defines kvCall,
// the one call over the server's socket, its own way.
function kvAnswer(text) {
  let res;
  try {
    res = JSON.parse(text);
  } catch {
    throw new Error("ctx.kv: the storage's answer was cut off");
  }
  if (res.error) {
    const err = new Error(res.error.message);
    err.code = res.error.code;
    throw err;
  }
  return res;
}

function kvKey(what, key) {
  if (typeof key !== "string") throw new TypeError(`ctx.kv.${what}: the key must be a string`);
  // A lone surrogate has no UTF-8 form: sent as JSON's escape, the
  // server would read it as U+FFFD, making distinct keys one.
  if (!key.isWellFormed()) throw new TypeError(`ctx.kv.${what}: the key must be well-formed Unicode (it has a lone surrogate)`);
  return key;
}

function kvExpireIn(what, options) {
  const expireIn = options?.expireIn ?? 0;
  if (typeof expireIn !== "number" || !Number.isInteger(expireIn) || expireIn < 0) {
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
    const res = await kvCall({ op: "list", prefix: prefix === null ? "" : String(prefix), cursor: cursor === null ? "" : String(cursor), limit });
    return { entries: res.entries, cursor: res.cursor };
  },
});
