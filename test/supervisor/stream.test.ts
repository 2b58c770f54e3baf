/**
 * stream.ts: whole messages over a SEQPACKET pair — short ones in one piece, long ones (up to
 * MAX_CONTROL_FRAME_BYTES) in pieces with the descriptors on the last, the queue when the socket
 * is full, EOF, and every kind of bad piece (a fuzz of raw pieces) making the stream "broken"
 * with the descriptors that came closed, never an exception or a leak.
 */
import { describe, expect, test } from "bun:test";
import { existsSync, readdirSync } from "node:fs";
import { MAX_FDS_PER_MESSAGE, MAX_MESSAGE_BYTES, OwnedFd, sendFds, socketPair } from "../../src/ffi/fdpass.ts";
import { errno, libc, strerror } from "../../src/ffi/libc.ts";
import { MAX_CONTROL_FRAME_BYTES } from "../../src/supervisor/protocol.ts";
import { MessageStream } from "../../src/supervisor/stream.ts";
import { fuzzSeed, prng } from "../helpers/prng.ts";

function pair(): [MessageStream, MessageStream, OwnedFd, OwnedFd] {
  const [a, b] = socketPair({ nonBlocking: true });
  return [new MessageStream(a, "a"), new MessageStream(b, "b"), a, b];
}

function eventfd(): OwnedFd {
  const fd = libc().eventfd(0, 0o2000000);
  if (fd < 0) throw new Error(`eventfd: ${strerror(errno())}`);
  return new OwnedFd(fd, "test eventfd");
}

function collect(s: MessageStream): { message: Uint8Array; fds: OwnedFd[] }[] {
  const got: { message: Uint8Array; fds: OwnedFd[] }[] = [];
  s.receive((message, fds) => got.push({ message, fds }));
  return got;
}

const openFds = (): number => readdirSync("/proc/self/fd").length;

describe("MessageStream", () => {
  test("a short message and its descriptors arrive whole, once; the sender's copies are closed once sent", () => {
    const [a, b] = pair();
    const efd = eventfd();
    const number = efd.fd;
    expect(a.send(new Uint8Array([1, 2, 3]), [efd])).toBe(true);
    expect(efd.closed).toBe(true);
    expect(existsSync(`/proc/self/fd/${number}`)).toBe(false);
    const got = collect(b);
    expect(got.length).toBe(1);
    expect([...got[0]!.message]).toEqual([1, 2, 3]);
    expect(got[0]!.fds.length).toBe(1);
    got[0]!.fds[0]!.close();
    expect(collect(b)).toEqual([]);
    a.close();
    b.close();
  });

  test("a 1 MiB message goes in pieces and comes back byte for byte, descriptors on its last piece; order kept", () => {
    const [a, b] = pair();
    const big = prng(7).bytes(MAX_CONTROL_FRAME_BYTES);
    const fds = Array.from({ length: MAX_FDS_PER_MESSAGE }, eventfd);
    expect(a.send(big, fds)).toBe(true);
    expect(a.send(new Uint8Array([9]))).toBe(true);
    const got: { message: Uint8Array; fds: OwnedFd[] }[] = [];
    // The socket holds only part of 1 MiB: flush and read in turns, as the supervisor's poll does.
    for (let i = 0; i < 200 && got.length < 2; i++) {
      b.receive((message, f) => got.push({ message, fds: f }));
      a.flush();
    }
    expect(got.length).toBe(2);
    expect(Buffer.from(got[0]!.message).equals(Buffer.from(big))).toBe(true);
    expect(got[0]!.fds.length).toBe(MAX_FDS_PER_MESSAGE);
    expect([...got[1]!.message]).toEqual([9]);
    for (const f of got[0]!.fds) f.close();
    expect(a.queued).toBe(0);
    a.close();
    b.close();
  });

  test("limits: an empty message, one over 1 MiB or with too many descriptors is refused with its descriptors closed", () => {
    const [a, b] = pair();
    for (const [bytes, n] of [[0, 0], [MAX_CONTROL_FRAME_BYTES + 1, 0], [1, MAX_FDS_PER_MESSAGE + 1]] as const) {
      const fds = Array.from({ length: n }, eventfd);
      expect(() => a.send(new Uint8Array(bytes), fds)).toThrow(/a stream message is 1\.\./);
      for (const f of fds) expect(f.closed).toBe(true);
    }
    a.close();
    b.close();
  });

  test("the peer's EOF makes the stream closed; sending then answers false and closes the descriptors; close() closes queued ones", () => {
    const [a, b] = pair();
    b.close();
    expect(a.receive(() => {})).toBe("closed");
    const efd = eventfd();
    expect(a.send(new Uint8Array([1]), [efd])).toBe(false);
    expect(efd.closed).toBe(true);
    const [c, d] = pair();
    // Fill d's receive queue until c has to queue; then close c: the queued descriptors go too.
    const held: OwnedFd[] = [];
    for (let i = 0; i < 10_000 && c.queued === 0; i++) {
      const f = eventfd();
      held.push(f);
      c.send(new Uint8Array(MAX_MESSAGE_BYTES - 1), [f]);
    }
    expect(c.queued).toBeGreaterThan(0);
    const last = held.at(-1)!;
    expect(last.closed).toBe(false);
    c.close();
    expect(last.closed).toBe(true);
    expect(c.state).toBe("closed");
    d.close();
  });

  test("bad pieces break the stream with the reason, close what came with them, and never throw", () => {
    const cases: [string, Uint8Array, number, RegExp][] = [
      ["an unknown mark", new Uint8Array([7, 1, 2]), 0, /marked 7/],
      ["descriptors on a piece that is not the last", new Uint8Array([1, 1, 2]), 2, /descriptors on a piece/],
      ["an empty message", new Uint8Array([0]), 1, /empty message/],
    ];
    for (const [what, bytes, n, reason] of cases) {
      const [raw, theirs] = socketPair({ nonBlocking: true });
      const s = new MessageStream(theirs, "peer");
      const fds = Array.from({ length: n }, eventfd);
      const before = openFds();
      expect(sendFds(raw, bytes, fds)).toBe("sent");
      for (const f of fds) f.close();
      let called = 0;
      expect({ what, state: s.receive(() => called++) }).toEqual({ what, state: "broken" });
      expect(s.problem).toMatch(reason);
      expect(called).toBe(0);
      expect(openFds()).toBeLessThanOrEqual(before - n - 1); // what arrived, and the stream's own socket
      raw.close();
    }
  });

  test("a message over 1 MiB in pieces breaks the stream", () => {
    const [raw, theirs] = socketPair({ nonBlocking: true });
    const s = new MessageStream(theirs, "peer");
    const piece = new Uint8Array(MAX_MESSAGE_BYTES);
    piece[0] = 1;
    let state = "open";
    for (let i = 0; i < 40 && state === "open"; i++) {
      sendFds(raw, piece);
      state = s.receive(() => {});
    }
    expect(state).toBe("broken");
    expect(s.problem).toMatch(/over 1048576 bytes/);
    raw.close();
  });

  test("fuzz: 3,000 random pieces (marks, lengths, descriptors) never throw, and every descriptor sent is closed by the receiver or handed over", () => {
    const r = prng(fuzzSeed(14));
    const start = openFds();
    for (let round = 0; round < 30; round++) {
      const [raw, theirs] = socketPair({ nonBlocking: true });
      const s = new MessageStream(theirs, "peer");
      const handed: OwnedFd[] = [];
      for (let i = 0; i < 100 && s.state === "open"; i++) {
        const length = 1 + r.int(r.int(4) === 0 ? 2000 : 20);
        const bytes = r.bytes(length);
        if (r.int(3) > 0) bytes[0] = r.int(2);
        const fds = Array.from({ length: r.int(4) === 0 ? 1 + r.int(3) : 0 }, eventfd);
        const sent = sendFds(raw, bytes, fds);
        for (const f of fds) f.close();
        if (sent !== "sent") break;
        s.receive((_m, f) => handed.push(...f));
      }
      for (const f of handed) f.close();
      s.close();
      raw.close();
    }
    expect(openFds()).toBe(start);
  });
});
