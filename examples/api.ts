// A small JSON API that routes on the sub-path the function is called
// with: /fn/<owner>/api/users, /fn/<owner>/api/users/2, POST /users.
interface User {
  id: number;
  name: string;
}

const users: User[] = [
  { id: 1, name: "Ada" },
  { id: 2, name: "Grace" },
];

function json(body: unknown, status = 200): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json" },
  });
}

export default {
  async fetch(req: Request): Promise<Response> {
    const { pathname } = new URL(req.url);
    const parts = pathname.split("/").filter(Boolean);
    if (parts[0] !== "users") return json({ error: "not found", path: pathname }, 404);
    if (parts.length === 1 && req.method === "GET") return json(users);
    if (parts.length === 1 && req.method === "POST") {
      const body = await req.json().catch(() => null);
      if (!body || typeof body.name !== "string") return json({ error: "want {\"name\": string}" }, 400);
      const user = { id: users.length + 1, name: body.name };
      users.push(user);
      return json(user, 201);
    }
    if (parts.length === 2 && req.method === "GET") {
      const user = users.find((u) => u.id === Number(parts[1]));
      return user ? json(user) : json({ error: "no such user" }, 404);
    }
    return json({ error: "method not allowed" }, 405);
  },
};
