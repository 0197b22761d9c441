// How Spry's Deno and Node bootstraps start an answer whose body is a
// stream (docs/functions.md, "The response"): each gets this in place of
// its "@spry:body" line, and sends the answer its own way.
//
// What the stream yields within the turn of the event loop in which the
// function returned its Response is read before the answer's head goes
// out: a body made whole at once then goes with its length, and a stream
// that fails at once (or yields something that is not bytes) is answered
// with a 500 and a log line, not a 200 cut short. Anything slower is
// streamed as it comes, its head sent at once (server-sent events), and a
// failure past that can only cut the answer short.

// Bytes of a body read before the head goes out, at most: past them the
// answer streams (a stream that yields at once without end must not be
// held in memory).
const STREAM_PREFETCH = 1 << 20;
const TICK = Symbol("tick");

// chunkBytes is a chunk of a body stream as bytes. As on Deno (and in
// the Fetch standard, which asks for a Uint8Array), a chunk must be bytes
// already: any ArrayBufferView is taken, anything else is a TypeError.
function chunkBytes(value) {
  if (value instanceof Uint8Array) return value;
  if (ArrayBuffer.isView(value)) return new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
  let what;
  if (value === null || value === undefined) what = String(value);
  else if (typeof value === "string") what = "a string (encode text with TextEncoder, or pipe the stream through a TextEncoderStream)";
  else if (value instanceof ArrayBuffer) what = "an ArrayBuffer (wrap it in a Uint8Array)";
  else if (typeof value === "object") what = "an object";
  else what = "a " + typeof value;
  throw new TypeError("a Response body stream must yield Uint8Array chunks, not " + what);
}

// read reads the next chunk. Its failure is handled where it is awaited,
// possibly later; the no-op catch keeps it from counting as an unhandled
// rejection meanwhile.
function read(reader) {
  const p = reader.read();
  p.catch(() => {});
  return p;
}

// readEarly reads what reader's stream yields within this turn of the
// event loop (at most STREAM_PREFETCH bytes and one more look): early,
// its chunks as bytes, and size, their length; done if the stream ended,
// else pending, the read under way. It throws the stream's error, or the
// TypeError of a chunk that is not bytes.
async function readEarly(reader) {
  const tick = new Promise((r) => setImmediate(r, TICK));
  const early = [];
  let size = 0;
  let pending = read(reader);
  for (;;) {
    const r = await Promise.race([pending, tick]);
    if (r === TICK) return { early, size, done: false, pending };
    if (r.done) return { early, size, done: true, pending: null };
    const chunk = chunkBytes(r.value);
    early.push(chunk);
    size += chunk.byteLength;
    pending = read(reader);
    if (size >= STREAM_PREFETCH) {
      // A body given whole (a large buffer) comes as one chunk and ends
      // at once: one more look. (pending keeps what it yields.)
      const next = await Promise.race([pending, tick]);
      const done = next !== TICK && next.done;
      return { early, size, done, pending: done ? null : pending };
    }
  }
}

// bodyFailed logs why a body stream failed and cancels it (a chunk that
// was not bytes leaves it running).
function bodyFailed(reader, err) {
  reader.cancel(err).catch(() => {});
  console.error("the function's response body failed:", err);
}
