// Reads its configuration from ctx.env, set at deploy time:
//   spry deploy examples/env.ts --env GREETING=Howdy --env TARGET=partner
interface Ctx {
  env: Record<string, string>;
  name: string;
  requestId: string;
}

export default async function (_req: Request, ctx: Ctx): Promise<Response> {
  const greeting = ctx.env.GREETING ?? "Hello";
  const target = ctx.env.TARGET ?? "world";
  return new Response(`${greeting}, ${target}! (from ${ctx.name}, request ${ctx.requestId})\n`);
}
