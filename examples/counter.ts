// Counts its visits per path in ctx.kv, the function's own key-value
// store, kept by the server across requests, instances and deploys:
//   spry deploy examples/counter.ts
//   curl http://127.0.0.1:8080/fn/admin/counter/home   # -> home: 1 visit
//   spry kv ls counter                                 # visits/home  1
interface KV {
  add(key: string, delta?: number, options?: { expireIn?: number }): Promise<number>;
  list(options?: { prefix?: string; limit?: number; cursor?: string }): Promise<{
    entries: { key: string; value: unknown }[];
    cursor: string | null;
  }>;
}

export default {
  async fetch(req: Request, ctx: { kv: KV }): Promise<Response> {
    const path = new URL(req.url).pathname.slice(1) || "index";
    if (path === "all") {
      // Every path's count, a page at a time.
      const counts: Record<string, unknown> = {};
      let cursor: string | null = "";
      while (cursor !== null) {
        const page = await ctx.kv.list({ prefix: "visits/", cursor });
        for (const e of page.entries) counts[e.key.slice("visits/".length)] = e.value;
        cursor = page.cursor;
      }
      return Response.json(counts);
    }
    // Atomic: requests at once each count.
    const n = await ctx.kv.add("visits/" + path);
    return new Response(`${path}: ${n} visit${n === 1 ? "" : "s"}\n`);
  },
};
