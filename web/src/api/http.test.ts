import { describe, expect, it } from "vitest";
import { ApiClient, ApiError, queryString } from "./http";
import { SessionApi } from "./session";

interface Call {
  url: string;
  init: RequestInit;
}

function fakeServer(answer: (call: Call) => Response) {
  const calls: Call[] = [];
  const fetch = (url: string, init: RequestInit = {}) => {
    const call = { url, init };
    calls.push(call);
    return Promise.resolve(answer(call));
  };
  return { calls, fetch };
}

const json = (body: unknown, status = 200, type = "application/json") =>
  new Response(JSON.stringify(body), { status, headers: { "Content-Type": type } });

describe("ApiClient", () => {
  it("sends the CSRF token on unsafe requests only", async () => {
    const server = fakeServer((c) =>
      c.url.endsWith("/api/session") && c.init.method === "POST"
        ? json({ user: "ann", role: "operator", csrf_token: "tok-1", expires_at: "x" })
        : json({}),
    );
    const client = new ApiClient({ baseUrl: "http://pacs:8042/", fetch: server.fetch });
    await new SessionApi(client).login("ann", "pw");
    await client.get("/api/jobs");
    await client.post("/api/jobs", { kind: "send" });
    await client.delete("/api/jobs/1");
    const headers = server.calls.map((c) => (c.init.headers as Record<string, string>)["X-CSRF-Token"]);
    expect(server.calls[0]!.url).toBe("http://pacs:8042/api/session");
    expect(headers).toEqual([undefined, undefined, "tok-1", "tok-1"]);
    expect(server.calls[2]!.init.body).toBe('{"kind":"send"}');
  });

  it("uses a bearer token instead of the CSRF header", async () => {
    const server = fakeServer(() => json([]));
    const client = new ApiClient({ bearerToken: "secret", fetch: server.fetch });
    client.csrfToken = "ignored";
    await client.post("/api/admin/reload");
    const headers = server.calls[0]!.init.headers as Record<string, string>;
    expect(headers.Authorization).toBe("Bearer secret");
    expect(headers["X-CSRF-Token"]).toBeUndefined();
  });

  it("turns problem+json into ApiError and reports 401", async () => {
    const server = fakeServer(() =>
      json({ type: "about:blank", title: "Bad Gateway", status: 502, detail: "AE ORTHANC did not answer" }, 502, "application/problem+json"),
    );
    const client = new ApiClient({ fetch: server.fetch });
    const error = await client.get("/api/studies?source=ORTHANC").catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ApiError);
    expect((error as ApiError).status).toBe(502);
    expect((error as ApiError).message).toBe("Bad Gateway: AE ORTHANC did not answer");

    const unauthorized = fakeServer(() => json({ detail: "log in" }, 401));
    const client2 = new ApiClient({ fetch: unauthorized.fetch });
    const seen: number[] = [];
    client2.onUnauthorized = (e) => seen.push(e.status);
    await expect(client2.get("/api/jobs")).rejects.toThrow("log in");
    expect(seen).toEqual([401]);
  });

  it("reads FastAPI's validation detail list", async () => {
    const server = fakeServer(() => json({ detail: [{ loc: ["body", "port"], msg: "too big" }] }, 422));
    const error = (await new ApiClient({ fetch: server.fetch }).put("/x", {}).catch((e: unknown) => e)) as ApiError;
    expect(error.detail).toBe("body.port: too big");
  });

  it("a missing session is null, not an error", async () => {
    const server = fakeServer(() => json({ detail: "no session" }, 401));
    expect(await new SessionApi(new ApiClient({ fetch: server.fetch })).current()).toBeNull();
  });

  it("builds query strings without empty values", () => {
    expect(queryString({ a: "x y", b: "", c: undefined, d: 0, e: null })).toBe("?a=x+y&d=0");
    expect(queryString({})).toBe("");
  });
});
