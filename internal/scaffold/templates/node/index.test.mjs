// Run with: node --test (or npm test)
import { test } from "node:test";
import assert from "node:assert/strict";
import fn from "./index.mjs";

test("greets by name", async () => {
  const res = await fn.fetch(new Request("http://x/hello?name=Ada"), { env: {}, name: "__NAME__", requestId: "t" });
  assert.equal(res.status, 200);
  assert.deepEqual(await res.json(), {
    message: "Hello, Ada!",
    path: "/hello",
    function: "__NAME__",
    requestId: "t",
  });
});

test("reads the greeting from ctx.env", async () => {
  const res = await fn.fetch(new Request("http://x/"), { env: { GREETING: "Howdy" }, name: "__NAME__", requestId: "t" });
  assert.equal((await res.json()).message, "Howdy, world!");
});
