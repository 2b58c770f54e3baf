import { describe, expect, test } from "bun:test";
import { randomBytes } from "node:crypto";
import { publisherSocketPath } from "../../src/core/paths.ts";
import { bindUnix } from "../../src/core/unixsock.ts";
import { rawEcho, gatewayTestScope } from "../fixtures/gateway-helpers.ts";
import { FinishingOutbox } from "../fixtures/pipe-helpers.ts";

const scope = gatewayTestScope();
const { gateway, own, defer } = scope;

interface Client {
  out: FinishingOutbox;
  received(): string;
  ended: Promise<void>;
  closed: Promise<void>;
}

async function client(port: number): Promise<Client> {
  const chunks: Buffer[] = [];
  const ended = Promise.withResolvers<void>();
  const closed = Promise.withResolvers<void>();
  let out: FinishingOutbox | undefined;
  const sock = await Bun.connect({
    hostname: "127.0.0.1",
    port,
    allowHalfOpen: true,
    socket: {
      data: (_s, d) => void chunks.push(Buffer.from(d)),
      drain: () => out?.flush(),
      end: () => ended.resolve(),
      close: () => {
        ended.resolve();
        closed.resolve();
      },
    },
  });
  defer(() => void sock.end());
  out = new FinishingOutbox(sock);
  return { out, received: () => Buffer.concat(chunks).toString(), ended: ended.promise, closed: closed.promise };
}

// Both data paths keep the same contract: raw fds in the splicer thread, and Bun's sockets.
for (const dataPath of ["epoll", "bun"] as const) {
  describe(`${dataPath} data path`, () => {
    describe("half-close through the gateway", () => {
      test("the client's FIN reaches the publisher, whose reply still reaches the client", async () => {
        const gw = await gateway({ dataPath });
        const got: Buffer[] = [];
        const binding = await bindUnix(publisherSocketPath(scope.runDir, "h1", "service"), (unix) =>
          Bun.listen({
            unix,
            allowHalfOpen: true,
            socket: {
              data: (_s, d) => void got.push(Buffer.from(d)),
              end(s) {
                // Answers only once the request is complete, i.e. after the client's FIN.
                s.write(`got ${Buffer.concat(got).length} bytes`);
                s.end();
              },
            },
          }),
        );
        defer(() => binding.close(true));
        const c = await client(gw.ports.service);
        c.out.write("STOA1 h1\nthe whole request");
        c.out.finish("shutdown");
        await c.closed;
        expect(c.received()).toBe("got 17 bytes");
      });

      test("the publisher's FIN reaches the client, which can still send to the publisher", async () => {
        const gw = await gateway({ dataPath });
        const afterFin = Promise.withResolvers<string>();
        const got: Buffer[] = [];
        const binding = await bindUnix(publisherSocketPath(scope.runDir, "h2", "string"), (unix) =>
          Bun.listen({
            unix,
            allowHalfOpen: true,
            socket: {
              open(s) {
                s.write("server done talking");
                s.shutdown();
              },
              data: (_s, d) => void got.push(Buffer.from(d)),
              end(s) {
                afterFin.resolve(Buffer.concat(got).toString());
                s.end();
              },
              // Bun reports a FIN on a socket whose write side is already shut as a close.
              close: () => afterFin.resolve(Buffer.concat(got).toString()),
            },
          }),
        );
        defer(() => binding.close(true));
        const c = await client(gw.ports.string);
        c.out.write("STOA1 h2\n");
        await c.ended;
        expect(c.received()).toBe("server done talking");
        c.out.write("client still talking");
        c.out.finish("shutdown");
        expect(await afterFin.promise).toBe("client still talking");
      });
    });

    describe("large transfers", () => {
      test("64 MiB through the gateway and back arrive intact (SHA-256)", async () => {
        const gw = await gateway({ dataPath });
        const echo = await rawEcho(publisherSocketPath(scope.runDir, "big", "service"), { keep: false });
        defer(() => echo.close());
        const payload = randomBytes(64 * 1024 * 1024);
        const expected = new Bun.CryptoHasher("sha256").update(payload).digest("hex");
        const hasher = new Bun.CryptoHasher("sha256");
        let received = 0;
        const done = Promise.withResolvers<void>();
        let out: FinishingOutbox | undefined;
        const sock = await Bun.connect({
          hostname: "127.0.0.1",
          port: gw.ports.service,
          allowHalfOpen: true,
          socket: {
            data(_s, d) {
              hasher.update(d);
              received += d.length;
            },
            drain: () => out?.flush(),
            end: () => done.resolve(),
            close: () => done.resolve(),
          },
        });
        defer(() => void sock.end());
        out = new FinishingOutbox(sock);
        out.write("STOA1 big\n");
        for (let at = 0; at < payload.length; at += 1024 * 1024) out.write(payload.subarray(at, at + 1024 * 1024));
        out.finish("shutdown");
        await done.promise;
        expect(received).toBe(payload.length);
        expect(hasher.digest("hex")).toBe(expected);
        const stats = await gw.stats();
        expect(stats.bytes.service.in).toBe(payload.length);
        expect(stats.bytes.service.out).toBe(payload.length);
        expect(stats.splicedConnections).toBe(dataPath === "epoll" ? 1 : 0);
      }, 60_000);
    });
  });
}
