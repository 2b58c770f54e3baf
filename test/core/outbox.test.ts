import { describe, expect, test } from "bun:test";
import { CopyingOutbox, Outbox } from "../../src/core/outbox.ts";

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

  test("flush says whether the queue is empty", () => {
    const sock = stingySocket(2);
    const out = new Outbox(sock);
    expect(out.flush()).toBe(true);
    out.write(Uint8Array.of(1, 2, 3, 4, 5, 6, 7));
    expect(out.flush()).toBe(false);
    expect(out.flush()).toBe(false);
    expect(out.flush()).toBe(true);
    expect(sock.got).toEqual([1, 2, 3, 4, 5, 6, 7]);
  });

  test("a socket that takes k bytes per write gets every byte once, in order", () => {
    for (const k of [1, 2, 3, 7, 64]) {
      const sock = stingySocket(k);
      const out = new Outbox(sock);
      const sent: number[] = [];
      for (let i = 0; i < 20; i++) {
        const chunk = Uint8Array.from({ length: i }, (_, j) => (i * 31 + j) & 0xff);
        sent.push(...chunk);
        out.write(chunk);
        if (i % 3 === 0) out.flush();
      }
      while (!out.flush());
      expect(sock.got).toEqual(sent);
      expect(out.written).toBe(sent.length);
    }
  });

  test("a closed socket's -1 counts as nothing taken", () => {
    const out = new Outbox({ write: () => -1 });
    out.write(Uint8Array.of(1, 2));
    expect(out.queued).toBe(2);
    expect(out.written).toBe(0);
    expect(out.flush()).toBe(false);
    expect(out.queued).toBe(2);
  });

  test("counts the bytes written and the most that were queued at once", () => {
    const sock = stingySocket(1);
    const out = new Outbox(sock);
    out.write(new Uint8Array(5)); // 1 written, 4 queued
    out.write(new Uint8Array(3)); // 7 queued
    out.flush(); // 6
    out.write(new Uint8Array(1)); // 7 again, not more
    expect(out.maxQueued).toBe(7);
    sock.room = 100;
    out.flush();
    expect(out.written).toBe(9);
    expect(out.queued).toBe(0);
    expect(out.maxQueued).toBe(7);
  });
});

describe("Outbox cap", () => {
  test("refuses a tail that would take the queue past maxQueuedBytes, and queues none of it", () => {
    const sock = stingySocket(2);
    const out = new Outbox(sock, { maxQueuedBytes: 5 });
    expect(out.write(Uint8Array.of(1, 2, 3, 4, 5, 6, 7))).toBe(true); // 2 sent, 5 queued: at the cap
    expect(out.queued).toBe(5);
    expect(out.write(Uint8Array.of(8))).toBe(false);
    expect(out.queued).toBe(5);
    sock.room = 100;
    expect(out.flush()).toBe(true);
    expect(sock.got).toEqual([1, 2, 3, 4, 5, 6, 7]);
  });

  test("the part the socket took stays sent when the tail is refused", () => {
    const sock = stingySocket(3);
    const out = new Outbox(sock, { maxQueuedBytes: 4 });
    expect(out.write(Uint8Array.of(1, 2, 3, 4, 5, 6, 7, 8))).toBe(false);
    expect(sock.got).toEqual([1, 2, 3]);
    expect(out.written).toBe(3);
    expect(out.queued).toBe(0);
  });

  test("a write the socket takes whole never counts against the cap", () => {
    const out = new Outbox(stingySocket(100), { maxQueuedBytes: 0 });
    expect(out.write(new Uint8Array(50))).toBe(true);
    expect(out.queued).toBe(0);
  });
});

describe("Outbox copy or view", () => {
  /** Writes a Buffer (what Bun's data event hands over), changes it, then lets it all out. */
  function sentAfterReuse(writeOptions: { copy?: boolean }): number[] {
    const sock = stingySocket(2);
    const out = new Outbox(sock);
    const buf = Buffer.from([1, 2, 3, 4, 5]);
    out.write(buf, writeOptions);
    buf.fill(9); // the caller reuses its buffer
    sock.room = 100;
    out.flush();
    return sock.got;
  }

  test("queues a view by default: a changed buffer is sent changed", () => {
    expect(sentAfterReuse({})).toEqual([1, 2, 9, 9, 9]);
    expect(sentAfterReuse({ copy: false })).toEqual([1, 2, 9, 9, 9]);
  });

  test("queues a copy of the tail with copy: the bytes as they were at write()", () => {
    expect(sentAfterReuse({ copy: true })).toEqual([1, 2, 3, 4, 5]);
  });
});

describe("Outbox clear", () => {
  test("drops what is queued, keeps the counts, and the outbox can be used again", () => {
    const sock = stingySocket(1);
    const out = new Outbox(sock);
    out.write(Uint8Array.of(1, 2, 3));
    out.clear();
    expect(out.queued).toBe(0);
    expect(out.flush()).toBe(true);
    expect(out.written).toBe(1);
    expect(out.maxQueued).toBe(2);
    sock.room = 100;
    out.write(Uint8Array.of(4));
    expect(sock.got).toEqual([1, 4]);
  });

  test("a socket that closes (and is cleared) inside write() leaves nothing queued", () => {
    let out: Outbox | undefined;
    out = new Outbox({
      write(data) {
        out?.clear(); // Bun fires close synchronously from inside a write
        return data.byteLength > 1 ? 1 : 0;
      },
    });
    expect(out.write(Uint8Array.of(1, 2, 3))).toBe(true);
    expect(out.queued).toBe(0);
    expect(out.flush()).toBe(true);
  });

  test("a socket that closes (and is cleared) inside flush() stops it", () => {
    const writes: number[] = [];
    let closeOnWrite = false;
    let out: Outbox | undefined;
    out = new Outbox({
      write(data) {
        writes.push(data.byteLength);
        if (!closeOnWrite) return 0;
        out?.clear();
        return 1;
      },
    });
    out.write(Uint8Array.of(1, 2, 3));
    out.write(Uint8Array.of(4, 5));
    closeOnWrite = true;
    expect(out.flush()).toBe(true);
    expect(writes).toEqual([3, 3]); // the second chunk was never tried
    expect(out.queued).toBe(0);
    expect(out.written).toBe(1);
  });
});

describe("CopyingOutbox", () => {
  test("copies what a short write did not take, so the writer may reuse its buffer; order holds across many short writes", () => {
    const sock = stingySocket(3);
    const out = new CopyingOutbox(sock);
    const reused = new Uint8Array(5);
    const expected: number[] = [];
    let next = 0;
    for (let round = 0; round < 200; round++) {
      for (let i = 0; i < reused.length; i++) reused[i] = next++ & 0xff;
      expected.push(...reused);
      out.write(reused);
      reused.fill(0xee); // the writer reuses its buffer at once
      sock.room = round % 7;
      out.flush();
    }
    sock.room = 1 << 20;
    expect(out.flush()).toBe(true);
    expect(sock.got).toEqual(expected);
    expect(out.queued).toBe(0);
    expect(out.written).toBe(expected.length);
    expect(out.maxQueued).toBeGreaterThan(0);
  });

  test("flush writes the whole queue in one call", () => {
    const sizes: number[] = [];
    const sock = { room: 0, write(d: Uint8Array) { sizes.push(d.byteLength); return Math.min(this.room, d.byteLength); } };
    const out = new CopyingOutbox(sock);
    for (let i = 0; i < 5; i++) out.write(new Uint8Array(10));
    sock.room = 1000;
    sizes.length = 0;
    expect(out.flush()).toBe(true);
    expect(sizes).toEqual([50]);
  });

  test("a write past the cap queues nothing of it and returns false; clear empties it", () => {
    const sock = stingySocket(0);
    const out = new CopyingOutbox(sock, { maxQueuedBytes: 8 });
    expect(out.write(new Uint8Array(6))).toBe(true);
    expect(out.write(new Uint8Array(3))).toBe(false);
    expect(out.queued).toBe(6);
    out.clear();
    expect(out.queued).toBe(0);
    sock.room = 10;
    expect(out.write(Uint8Array.of(9))).toBe(true);
    expect(sock.got).toEqual([9]);
  });
});
