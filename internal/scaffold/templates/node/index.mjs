// __NAME__: a Spry function. Run it locally with `spry dev . --runtime node`.

export default {
  /**
   * @param {Request} req
   * @param {{ env: Record<string, string>, name: string, requestId: string }} ctx
   * @returns {Response}
   */
  fetch(req, ctx) {
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
