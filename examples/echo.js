// Echoes the request back as JSON: method, path, query, headers and the
// body's size and SHA-256, so any body size can be checked. Plain
// JavaScript works as well as TypeScript.
export default {
  async fetch(req) {
    const url = new URL(req.url);
    const body = new Uint8Array(await req.arrayBuffer());
    const digest = await crypto.subtle.digest("SHA-256", body);
    const hex = [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
    const text = body.length <= 4096 ? new TextDecoder().decode(body) : null;
    return Response.json({
      method: req.method,
      path: url.pathname,
      query: url.search,
      headers: Object.fromEntries(req.headers),
      bodySize: body.length,
      bodySha256: hex,
      body: text,
    }, { headers: { "x-echo": "yes" } });
  },
};
