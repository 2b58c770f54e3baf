/**
 * MetaClient: errors passed through from a real metaserver (once per store, meta-stores.ts
 * `forEachStore`), lookups by name, URLs it takes, and what it says about servers that are
 * missing, silent, or not a metaserver.
 */
import { describe, expect, test } from "bun:test";
import { StoaError } from "../../src/core/errors.ts";
import { MetaClient } from "../../src/meta/client.ts";
import { MetaApiError } from "../../src/meta/protocol.ts";
import { startTestMeta } from "../fixtures/meta-helpers.ts";
import { forEachStore } from "../fixtures/meta-stores.ts";
import { rejection } from "../helpers/rejection.ts";

const failure = (p: Promise<unknown>): Promise<StoaError> => rejection(p, StoaError);

forEachStore((kind) => {
  describe("MetaClient against a metaserver", () => {
    test("passes the server's error through with its status, code and message", async () => {
      const t = await startTestMeta({ kind });
      try {
        await t.client.register({ name: "a/b", pub_id: "p1", host: "h" });
        const err = await failure(t.client.register({ name: "a/b/c", host: "h" }));
        expect(err).toBeInstanceOf(MetaApiError);
        expect(err.code).toBe("usage");
        expect(err.message).toBe("name a/b/c lies below publisher a/b (pub_id p1); publishers are leaves, so choose a name outside a/b/");
        const gone = await failure(t.client.heartbeat("p2"));
        expect([(gone as MetaApiError).status, (gone as MetaApiError).error, gone.code]).toEqual([404, "not_found", "closed"]);
        const dup = await failure(t.client.register({ name: "a/b", host: "h" }));
        expect([(dup as MetaApiError).status, dup.code]).toEqual([409, "in_use"]);
      } finally {
        await t.meta.close();
      }
    });

    test("finds a publisher by its exact name, and explains a directory or a miss", async () => {
      const t = await startTestMeta({ kind });
      try {
        await t.client.register({ name: "lab/temp", host: "h" });
        await t.client.register({ name: "lab/temperature", host: "h" });
        await t.client.register({ name: "lab/hum/in", host: "h" });
        expect((await t.client.findByName("lab/temp"))?.name).toBe("lab/temp");
        expect(await t.client.findByName("lab/hum")).toBeNull();
        expect(await t.client.findByName("lab/tem")).toBeNull();
        expect((await t.client.lookup("lab/temperature")).name).toBe("lab/temperature");
        expect((await failure(t.client.lookup("lab"))).message).toBe(
          "lab is a directory, not a publisher; it holds 3: lab/hum/in, lab/temp, lab/temperature",
        );
        const miss = await failure(t.client.lookup("nope"));
        expect([miss.code, miss.message]).toEqual(["closed", `no publisher named nope is registered at ${t.meta.url}; is it running?`]);
        expect((await failure(t.client.findByName("a//b"))).code).toBe("usage");
      } finally {
        await t.meta.close();
      }
    });

    test("takes a base URL with or without scheme and trailing slash", async () => {
      const t = await startTestMeta({ kind });
      try {
        const bare = new MetaClient(`127.0.0.1:${t.meta.port}/`);
        expect(bare.baseUrl).toBe(`http://127.0.0.1:${t.meta.port}`);
        expect((await bare.health()).status).toBe("ok");
        expect(() => new MetaClient("ftp://x")).toThrow(/http:\/\/ or https:\/\//);
        expect(() => new MetaClient("http://x/?q=1")).toThrow(/no \?query/);
      } finally {
        await t.meta.close();
      }
    });
  });
});

describe("MetaClient", () => {
  test("refuses an invalid pub_id before it could be resolved into another route", async () => {
    const client = new MetaClient("http://127.0.0.1:1");
    expect(() => client.get("..")).toThrow(/pub_id "\.\." is not valid/);
  });

  test("an unreachable metaserver is an io error that names the URL", async () => {
    const probe = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => new Response() });
    const port = probe.port ?? 0;
    probe.stop(true);
    const err = await failure(new MetaClient(`http://127.0.0.1:${port}`).health());
    expect(err.code).toBe("io");
    expect(err.message).toStartWith(`cannot reach the metaserver at http://127.0.0.1:${port}: `);
    expect(err.message).toContain("is stoa meta (or stoa up) running there?");
  });

  test("something that is not a metaserver is named as such", async () => {
    const other = Bun.serve({
      hostname: "127.0.0.1",
      port: 0,
      fetch: (req) => (new URL(req.url).pathname === "/v1/health" ? Response.json({ hello: 1 }) : new Response("nope", { status: 404 })),
    });
    try {
      const client = new MetaClient(`http://127.0.0.1:${other.port}`);
      const schema = await failure(client.health());
      expect([schema.code, schema.message]).toEqual([
        "schema",
        `the metaserver at http://127.0.0.1:${other.port} sent an unexpected answer to GET /v1/health; is that URL a stoa metaserver of this version?`,
      ]);
      const notMeta = await failure(client.list());
      expect(notMeta.message).toContain("answered GET /v1/publishers?limit=10000 with HTTP 404; is that URL a stoa metaserver?");
    } finally {
      await other.stop(true);
    }
  });

  test("a metaserver that does not answer in time is a timeout", async () => {
    const silent = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
    try {
      const err = await failure(new MetaClient(`http://127.0.0.1:${silent.port}`, { timeoutMs: 200 }).health());
      expect([err.code, err.message]).toEqual(["timeout", `the metaserver at http://127.0.0.1:${silent.port} did not answer GET /v1/health within 0.2s`]);
    } finally {
      silent.stop(true);
    }
  });
});

describe("lookup while the publisher registers", () => {
  test("a name registered between the exact query and the prefix query is found, not called a directory (regression, issue 10)", async () => {
    const info = {
      name: "demo/clock",
      pub_id: "c1",
      host: "::1",
      ports: { service: 8081, string: 8082, ping: 8083 },
      urls: { service: "ws://[::1]:8081/pub/c1", string: "ws://[::1]:8082/pub/c1", ping: "ws://[::1]:8083/pub/c1" },
      state: "pending",
      registered_at: new Date().toISOString(),
    };
    // The exact query comes first and finds nothing; by the prefix query the name is there.
    const server = Bun.serve({
      hostname: "127.0.0.1",
      port: 0,
      fetch: (req) => {
        const url = new URL(req.url);
        const publishers = url.searchParams.has("name") ? [] : [info];
        return Response.json({ publishers, next_cursor: null });
      },
    });
    try {
      const client = new MetaClient(`http://127.0.0.1:${server.port}`);
      expect((await client.lookup("demo/clock")).pub_id).toBe("c1");
    } finally {
      await server.stop(true);
    }
  });
});
