/**
 * Error paths through the real binaries: `stoa gateway` and `stoa meta` as separate processes
 * (the metaserver with a 1 s TTL, so a dead publisher is removed within seconds), publishers as
 * `stoa pub` processes. The gateway's parser and router are tested in-process under
 * test/gateway; here the point is that the compiled gateway answers with the same HTTP errors,
 * and that a SIGKILLed `stoa pub` (socket files left behind) is a 502 and then disappears from
 * the metaserver, and that a second `stoa pub` for a live pub_id steals nothing.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync } from "node:fs";
import { publisherSocketPath } from "../../src/core/paths.ts";
import { rawExchange } from "../fixtures/gateway-helpers.ts";
import { freePorts, type Proc, requireBinary, Scope } from "../fixtures/e2e-helpers.ts";
import { eventually } from "../helpers/eventually.ts";

const scope = new Scope();
let runDir = "";
let stateDir = "";
/** The metaserver with a 1 s TTL and 1 s deregister-after. */
let meta = "";
let ports = { service: 0, string: 0, ping: 0 };
const KINDS = ["service", "string", "ping"] as const;

beforeAll(async () => {
  requireBinary();
  runDir = scope.tempDir();
  stateDir = scope.tempDir();
  const [s = 0, t = 0, p = 0, m = 0] = freePorts(4);
  ports = { service: s, string: t, ping: p };
  meta = `http://127.0.0.1:${m}`;
  const gw = scope.stoa("gateway", ["gateway", "--listen", "127.0.0.1", "--ports", `${s},${t},${p}`, "--run-dir", runDir, "--workers", "2"]);
  const ms = scope.stoa("meta", ["meta", "--listen", `127.0.0.1:${m}`, "--db", ":memory:", "--state-dir", stateDir, "--ttl", "1s", "--deregister-after", "1s"]);
  await Promise.all([gw.waitFor("out", /^gateway: /m, 15_000), ms.waitFor("out", /^metaserver: /m, 15_000)]);
});

afterAll(async () => {
  await scope.cleanup();
});

/** `stoa pub NAME … --stay`, fed `value`; resolves with its pub_id once confirmed. */
async function startPub(name: string, metaUrl: string, value: string, extra: string[] = []): Promise<{ pub: Proc; pubId: string }> {
  const pub = scope.stoa(`pub ${name}`, ["pub", name, "--meta", metaUrl, "--run-dir", runDir, "--state-dir", stateDir, "--stay", ...extra], { stdin: true });
  const m = await pub.waitFor("out", /^publishing \S+ as (\S+): /m, 15_000);
  pub.write(`${value}\n`);
  return { pub, pubId: m[1] ?? "" };
}

/** `stoa sub NAME --latest` until it prints `want` (the value may still be on its way). */
async function latestIs(name: string, metaUrl: string, want: string): Promise<void> {
  let last = "";
  await eventually(`${name} to have the latest value ${want}`, async () => {
    const r = await scope.stoa("sub --latest", ["sub", name, "--meta", metaUrl, "--latest"]).output();
    last = `exit ${r.code}: ${r.out}${r.err}`;
    return r.code === 0 && r.out === `${want}\n` ? true : undefined;
  }, { timeoutMs: 10_000 }).catch((err: unknown) => {
    throw new Error(`${String(err)}; last try: ${last}`);
  });
}

function upgradeRequest(pubId: string): string {
  return (
    `GET /pub/${pubId} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
  );
}

describe("routing errors from the compiled gateway", () => {
  test(
    "an unknown pub_id is a 404 with a JSON body on every port, for HTTP, WebSocket and prelude clients",
    async () => {
      for (const kind of KINDS) {
        const res = await fetch(`http://127.0.0.1:${ports[kind]}/pub/nobody-here`);
        expect(res.status).toBe(404);
        expect(res.headers.get("content-type")).toBe("application/json");
        expect(await res.json()).toEqual({ error: "unknown_pub_id", message: expect.stringContaining("nobody-here") });

        const ws = await rawExchange(ports[kind], upgradeRequest("nobody-here"));
        expect(ws.status).toBe(404);
        expect(ws.body?.error).toBe("unknown_pub_id");

        const raw = await rawExchange(ports[kind], "STOA1 nobody-here\n");
        expect(raw.status).toBe(404);
        expect(raw.body?.error).toBe("unknown_pub_id");
      }
      // Bun's WebSocket client sees a failed handshake, not a connection to something.
      const ws = new WebSocket(`ws://127.0.0.1:${ports.service}/pub/nobody-here`);
      const outcome = await new Promise<string>((resolve) => {
        ws.onopen = () => resolve("open");
        ws.onerror = () => resolve("error");
      });
      expect(outcome).toBe("error");
    },
    30_000,
  );

  test.each([
    ["..", "GET /pub/.. HTTP/1.1\r\n\r\n"],
    ["../ to escape the run dir", "GET /pub/../../etc/passwd HTTP/1.1\r\n\r\n"],
    ["%2e%2e", "GET /pub/%2e%2e HTTP/1.1\r\n\r\n"],
    ["%2E%2E%2F", "GET /pub/%2E%2E%2Fgateway.sock HTTP/1.1\r\n\r\n"],
    ["%2F", "GET /pub/a%2Fb HTTP/1.1\r\n\r\n"],
    ["a%2F..%2Fb", "GET /pub/a%2F..%2Fb HTTP/1.1\r\n\r\n"],
    ["a/../b in a prelude", "STOA1 a/../b\n"],
    [".. in a prelude", "STOA1 ..\n"],
    ["%2e%2e in a prelude", "STOA1 %2e%2e\n"],
    ["%252e%252e (double-encoded) after the pub_id", "GET /pub/p/%252e%252e/gateway.sock HTTP/1.1\r\n\r\n"],
    ["%252f (double-encoded) after the pub_id", "GET /pub/p/x%252fy HTTP/1.1\r\n\r\n"],
  ])(
    "a traversal attempt (%s) is a 400 invalid_pub_id with a JSON body",
    async (_what, line) => {
      for (const kind of KINDS) {
        const reply = await rawExchange(ports[kind], line);
        expect(reply.status).toBe(400);
        expect(reply.body).toEqual({ error: "invalid_pub_id", message: expect.any(String) });
      }
    },
    30_000,
  );

  test(
    "/pub/nobody/../<live> is refused (400), never routed to <live> or to nobody",
    async () => {
      // The gateway routes on the first segment only, but a proxy in front could normalise the
      // path and authorise another publisher than the one routed to: such paths are refused.
      const { pubId } = await startPub("err/target", meta, "reachable");
      await latestIs("err/target", meta, "reachable");
      const reply = await rawExchange(ports.ping, upgradeRequest(`nobody/../${pubId}`));
      expect(reply.status).toBe(400);
      expect(reply.body?.error).toBe("invalid_pub_id");
    },
    30_000,
  );
});

describe("a publisher that dies without cleaning up", () => {
  test(
    "SIGKILLed: its socket files stay, the gateway answers 502, the metaserver marks it stale then removes it",
    async () => {
      const { pub, pubId } = await startPub("err/dead", meta, "last words");
      await latestIs("err/dead", meta, "last words");
      pub.proc.kill("SIGKILL");
      await pub.exited;
      for (const kind of KINDS) expect(existsSync(publisherSocketPath(runDir, pubId, kind))).toBe(true);

      for (const kind of KINDS) {
        const ws = await rawExchange(ports[kind], upgradeRequest(pubId));
        expect(ws.status).toBe(502);
        expect(ws.body).toEqual({ error: "target_down", message: expect.any(String) });
        const res = await fetch(`http://127.0.0.1:${ports[kind]}/pub/${pubId}`);
        expect(res.status).toBe(502);
        expect(((await res.json()) as { error: string }).error).toBe("target_down");
      }
      const sub = await scope.stoa("sub --latest", ["sub", "err/dead", "--meta", meta, "--latest"]).output();
      expect(sub.code).not.toBe(0);

      // TTL 1 s, then 1 s stale before removal: well inside 10 s.
      const states = new Set<string>();
      await eventually(
        "the metaserver to remove the dead publisher",
        async () => {
          const res = await fetch(`${meta}/v1/publishers/${pubId}`);
          if (res.status === 404) return true;
          states.add(((await res.json()) as { state: string }).state);
          return undefined;
        },
        { timeoutMs: 10_000, everyMs: 50 },
      );
      expect(states.has("stale")).toBe(true);
      const listed = (await (await fetch(`${meta}/v1/publishers?prefix=err/dead`)).json()) as { publishers: unknown[] };
      expect(listed.publishers).toEqual([]);
    },
    30_000,
  );

  test(
    "a new stoa pub with the dead one's pub_id reclaims the stale sockets and is reachable again",
    async () => {
      const { pub, pubId } = await startPub("err/phoenix", meta, "first life");
      await latestIs("err/phoenix", meta, "first life");
      pub.proc.kill("SIGKILL");
      await pub.exited;
      expect(existsSync(publisherSocketPath(runDir, pubId, "ping"))).toBe(true);
      expect((await rawExchange(ports.ping, `STOA1 ${pubId}\n`)).status).toBe(502);

      // Same name and pub_id: the metaserver takes it as the publisher restarting.
      const again = await startPub("err/phoenix", meta, "second life", ["--pub-id", pubId]);
      expect(again.pubId).toBe(pubId);
      await latestIs("err/phoenix", meta, "second life");
      // Confirmed again (polled: with a 1 s TTL a heartbeat late under load briefly shows stale).
      await eventually("the registration to be live", async () => {
        const info = (await (await fetch(`${meta}/v1/publishers/${pubId}`)).json()) as { state: string };
        return info.state === "live" ? true : undefined;
      });
    },
    30_000,
  );
});

describe("a live publisher is never stolen", () => {
  // Its own metaserver with the default 15 s TTL: heartbeats every 5 s, so a registration
  // lost by mistake is not silently restored by a heartbeat before we look.
  let meta15 = "";
  beforeAll(async () => {
    const [m = 0] = freePorts(1);
    meta15 = `http://127.0.0.1:${m}`;
    const ms = scope.stoa("meta (ttl 15s)", ["meta", "--listen", `127.0.0.1:${m}`, "--db", ":memory:", "--state-dir", stateDir]);
    await ms.waitFor("out", /^metaserver: /m, 15_000);
  });

  test(
    "a second stoa pub with a live pub_id exits 1 saying why, and the live one keeps its sockets, subscribers and registration",
    async () => {
      const { pub, pubId } = await startPub("err/owner", meta15, "mine");
      await latestIs("err/owner", meta15, "mine");
      const texts: string[] = [];
      const ws = new WebSocket(`ws://127.0.0.1:${ports.string}/pub/${pubId}`);
      ws.onmessage = (e: MessageEvent) => texts.push(String(e.data));
      await new Promise<void>((resolve, reject) => {
        ws.onopen = () => resolve();
        ws.onerror = () => reject(new Error("cannot subscribe"));
      });
      try {
        const thief = scope.stoa("pub (same pub_id)", ["pub", "err/owner", "--meta", meta15, "--run-dir", runDir, "--state-dir", stateDir, "--pub-id", pubId], { stdin: true });
        thief.write("stolen\n");
        thief.endStdin();
        const r = await thief.output();
        expect(r.code).toBe(1);
        expect(r.err).toContain("served by a live process");

        // The live publisher still serves on its sockets, through the gateway...
        for (const kind of KINDS) expect(existsSync(publisherSocketPath(runDir, pubId, kind))).toBe(true);
        pub.write("still mine\n");
        await eventually("the subscriber to get the next value", () => texts.includes("still mine"));
        expect(texts).not.toContain("stolen");
        // ...and stays registered and findable by name, unchanged.
        const res = await fetch(`${meta15}/v1/publishers/${pubId}`);
        expect(res.status).toBe(200);
        expect(((await res.json()) as { state: string }).state).toBe("live");
        const sub = await scope.stoa("sub --latest", ["sub", "err/owner", "--meta", meta15, "--latest"]).output();
        expect(sub.err).toBe("");
        expect(sub.out).toBe("still mine\n");
        expect(sub.code).toBe(0);
      } finally {
        ws.close();
      }
    },
    30_000,
  );

  test(
    "with --internal tcp too: a second stoa pub with a live pub_id is refused and the live one stays reachable",
    async () => {
      // No socket files to find a live owner by: the gateway's explicit route and the
      // metaserver's registration are all there is, and neither may be taken over.
      const { pubId } = await startPub("err/tcp-owner", meta15, "mine over tcp", ["--internal", "tcp"]);
      await latestIs("err/tcp-owner", meta15, "mine over tcp");
      const thief = scope.stoa("pub tcp (same pub_id)", ["pub", "err/tcp-owner", "--meta", meta15, "--run-dir", runDir, "--state-dir", stateDir, "--pub-id", pubId, "--internal", "tcp"], { stdin: true });
      thief.write("stolen\n");
      thief.endStdin();
      const r = await thief.output();
      const sub = await scope.stoa("sub --latest", ["sub", "err/tcp-owner", "--meta", meta15, "--latest"]).output();
      expect({ thiefExit: r.code, latest: sub.out, subErr: sub.err }).toEqual({ thiefExit: 1, latest: "mine over tcp\n", subErr: "" });
    },
    30_000,
  );
});
