import { describe, expect, test } from "bun:test";
import { Outbox } from "../../src/core/outbox.ts";

/** A socket that takes at most `room` bytes per write, like a full Bun socket. */
function stingySocket(room: number) {
  const got: number[] = [];
  return {
    got,
    room,
    write(data: Uint8Array): number {
      const n = Math.min(this.room, data.byteLength);
      for (const b of data.subarray(0, n)) got.push(b);
      return n;
    },
  };
}

describe("Outbox", () => {
  test("queues what a short write did not take and writes it, in order, on flush", () => {
    const sock = stingySocket(3);
    const out = new Outbox(sock);
    out.write(Uint8Array.of(1, 2, 3, 4, 5));
    out.write(Uint8Array.of(6, 7));
    expect(sock.got).toEqual([1, 2, 3]);
    expect(out.queued).toBe(4);
    sock.room = 1;
    out.flush();
    expect(sock.got).toEqual([1, 2, 3, 4]);
    expect(out.queued).toBe(3);
    sock.room = 100;
    out.flush();
    expect(sock.got).toEqual([1, 2, 3, 4, 5, 6, 7]);
    expect(out.queued).toBe(0);
  });

  test("never writes past a queue: later bytes wait behind earlier ones", () => {
    const sock = stingySocket(0);
    const out = new Outbox(sock);
    out.write(Uint8Array.of(1));
    sock.room = 100;
    out.write(Uint8Array.of(2));
    expect(sock.got).toEqual([]);
    out.flush();
    expect(sock.got).toEqual([1, 2]);
  });

  test("clear drops what is queued", () => {
    const out = new Outbox(stingySocket(0));
    out.write(new Uint8Array(10));
    out.clear();
    expect(out.queued).toBe(0);
  });
});
