// The smallest Spry function: answers "Hello, <name>" (?name=Ada).
export default {
  fetch(req: Request): Response {
    const name = new URL(req.url).searchParams.get("name") ?? "world";
    return new Response(`Hello, ${name}\n`, {
      headers: { "content-type": "text/plain; charset=utf-8" },
    });
  },
};
