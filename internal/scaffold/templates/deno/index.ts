// __NAME__: a Spry function. Run it locally with `spry dev .`.

// What the platform passes along with each request.
interface Context {
  env: Record<string, string>; // set with --env KEY=VALUE
  name: string;
  owner?: string;
  version?: number;
  requestId: string;
  waitUntil?(promise: Promise<unknown>): void;
}

export default {
  fetch(req: Request, ctx: Context): Response {
    const url = new URL(req.url);
    const who = url.searchParams.get("name") ?? "world";
    const greeting = ctx.env.GREETING ?? "Hello";
    return Response.json({
      message: `${greeting}, ${who}!`,
      path: url.pathname,
      function: ctx.name,
      requestId: ctx.requestId,
    });
  },
};
