// Run with: deno test --allow-read index_test.ts
import fn from "./index.ts";

function assertEquals(actual: unknown, expected: unknown) {
  const a = JSON.stringify(actual), e = JSON.stringify(expected);
  if (a !== e) throw new Error(`got ${a}, want ${e}`);
}

Deno.test("greets by name", async () => {
  const res = await fn.fetch(new Request("http://x/hello?name=Ada"), { env: {}, name: "__NAME__", requestId: "t" });
  assertEquals(res.status, 200);
  assertEquals(await res.json(), {
    message: "Hello, Ada!",
    path: "/hello",
    function: "__NAME__",
    requestId: "t",
  });
});

Deno.test("reads the greeting from ctx.env", async () => {
  const res = await fn.fetch(new Request("http://x/"), { env: { GREETING: "Howdy" }, name: "__NAME__", requestId: "t" });
  assertEquals((await res.json()).message, "Howdy, world!");
});
