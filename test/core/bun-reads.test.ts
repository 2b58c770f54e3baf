/**
 * An assumption the gateway's hot path rests on (src/gateway/router.ts passes
 * `freshChunks: true` to core/pipe.ts): Bun hands every socket `data` event a buffer of its own,
 * never reused for a later read. If a Bun upgrade changes that, this fails before a queued
 * tail can be silently overwritten.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { join } from "node:path";

const dir = mkdtempSync("/tmp/br-");
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("Bun socket reads", () => {
  test("each data event gets a buffer no later read writes into", async () => {
    const chunks: { view: Uint8Array; copy: Uint8Array }[] = [];
    const done = Promise.withResolvers<void>();
    const path = join(dir, "s.sock");
    const server = Bun.listen({
      unix: path,
      socket: {
        data(_s, chunk) {
          chunks.push({ view: chunk, copy: new Uint8Array(chunk) });
        },
        close: () => done.resolve(),
      },
    });
    try {
      const client = await Bun.connect({ unix: path, socket: { data() {} } });
      for (let i = 0; i < 200; i++) {
        client.write(new Uint8Array(4096).fill(i));
        await Bun.sleep(1); // separate reads
      }
      client.end();
      await done.promise;
      expect(chunks.length).toBeGreaterThan(20);
      // Every view still holds what it held when it was delivered.
      for (const c of chunks) expect(Buffer.from(c.view).equals(Buffer.from(c.copy))).toBe(true);
      const buffers = new Set(chunks.map((c) => c.view.buffer));
      expect(buffers.size).toBe(chunks.length);
    } finally {
      server.stop(true);
    }
  });
});
